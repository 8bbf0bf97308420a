"""The segmentation U-Net shared by the supervised baseline, mean teacher and embedding matching."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from semiseg.errors import SemisegInputError

#: times BasicUNet halves its input (max-pooling by 2)
POOLINGS = 4

#: where dropout can sit: after the bottleneck, after the first up-block, before the 1x1 head
DROPOUT_SITES = ("bottleneck", "up", "head")


class SegUNet(BasicUNet):
    """MONAI's BasicUNet with dropout in the decoder and access to the pre-head embedding.

    By default dropout sits after the bottleneck and after the first up-block, as in SSL4MIS's
    UA-MT 3D U-Net, so Monte Carlo dropout perturbs the decoder while the encoder stays
    deterministic; ``dropout_at`` may add ``head`` (element-wise dropout on the embedding, just
    before the head). The embedding used by embedding matching is the last decoder feature map,
    before the 1x1 head (and before any head dropout).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes.
        features: BasicUNet's six feature widths.
        dropout: decoder dropout probability.
        dropout_at: the sites that get dropout, from :data:`DROPOUT_SITES`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        dropout: float = 0.3,
        dropout_at: Sequence[str] = ("bottleneck", "up"),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features=tuple(features), dropout=0.0)
        unknown = set(dropout_at) - set(DROPOUT_SITES)
        if unknown:
            raise ValueError(f"network.dropout_at: unknown site(s) {sorted(unknown)}; choose from {DROPOUT_SITES}")
        drop = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        off = nn.Identity()
        self.drop_bottleneck = drop(dropout) if "bottleneck" in dropout_at and dropout > 0 else off
        self.drop_up = drop(dropout) if "up" in dropout_at and dropout > 0 else off
        self.drop_head = nn.Dropout(dropout) if "head" in dropout_at and dropout > 0 else off
        self.embedding_channels = int(features[5])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The deterministic encoder: skip features x0..x3 and the bottleneck (before dropout)."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return x0, x1, x2, x3, self.down_4(x3)

    def decode(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from :meth:`encode`'s output; every dropout site is in here."""
        x0, x1, x2, x3, x4 = feats
        u4 = self.drop_up(self.upcat_4(self.drop_bottleneck(x4), x3))
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(self.drop_head(u1)), u1

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, embedding) for ``x`` (B, C_in, *spatial); both at the input's size."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    @torch.no_grad()
    def mc_predict(self, x: torch.Tensor, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte Carlo dropout: mean softmax over ``passes`` stochastic decoder passes (B, C, *S),
        and the deterministic embedding (B, D, *S). The encoder, which has no dropout, runs once;
        the passes run as one batch. Call in eval mode: this switches dropout on and off itself."""
        feats = self.encode(x)
        _, emb = self.decode(feats)
        drops = dropout_layers(self)
        if passes <= 1 or not drops:
            return torch.softmax(self.final_conv(emb).float(), 1), emb
        for m in drops:
            m.train()
        try:
            rep = [f.repeat(passes, *([1] * (f.dim() - 1))) for f in feats]
            logits, _ = self.decode(rep)
        finally:
            for m in drops:
                m.eval()
        probs = torch.softmax(logits.float(), 1).reshape(passes, x.shape[0], *logits.shape[1:])
        return probs.mean(0), emb

    @staticmethod
    def check_input_size(spatial: Sequence[int], setting: str) -> None:
        """One-line error, naming ``setting``, for inputs too small for the network: after its
        poolings the bottleneck's instance norm needs more than one voxel."""
        deepest = [int(s) // 2**POOLINGS for s in spatial]
        if min(deepest) < 1 or math.prod(deepest) < 2:
            raise SemisegInputError(
                None,
                f"{setting} {list(spatial)} is too small for the U-Net's {POOLINGS} poolings (its deepest level would be "
                f"{'x'.join(map(str, deepest))} voxels); use at least {2 ** (POOLINGS + 1)} along each side",
            )


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``module`` that drop something (p > 0): what Monte Carlo dropout samples."""
    return [m for m in module.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)) and m.p > 0]


def enable_mc_dropout(module: nn.Module) -> None:
    """Put ``module`` in eval mode except its dropout layers (Monte Carlo dropout)."""
    module.eval()
    for m in dropout_layers(module):
        m.train()


def build_unet(config: dict, dims: int, channels: int, classes: int) -> SegUNet:
    """The U-Net of a segmentation method from its ``network`` settings (shared by all of them,
    so the baseline and the students have the same network and dropout)."""
    net = config["network"]
    return SegUNet(dims, channels, classes, net["features"], float(net.get("dropout", 0.0)), tuple(net.get("dropout_at", ("bottleneck", "up"))))
