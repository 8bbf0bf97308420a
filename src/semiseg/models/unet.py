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


class SegUNet(BasicUNet):
    """MONAI's BasicUNet with dropout in the decoder and access to the pre-head embedding.

    Dropout sits after the bottleneck and after the first up-block, as in SSL4MIS's UA-MT 3D U-Net,
    so Monte Carlo dropout perturbs the decoder while the encoder stays deterministic. The
    embedding used by embedding matching is the last decoder feature map, before the 1x1 head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes.
        features: BasicUNet's six feature widths.
        dropout: decoder dropout probability.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        dropout: float = 0.3,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features=tuple(features), dropout=0.0)
        drop = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        self.drop_bottleneck = drop(dropout)
        self.drop_up = drop(dropout)
        self.embedding_channels = int(features[5])

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, embedding) for ``x`` (B, C_in, *spatial); both at the input's size."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.drop_bottleneck(self.down_4(x3))
        u4 = self.drop_up(self.upcat_4(x4, x3))
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(u1), u1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

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


def enable_mc_dropout(module: nn.Module) -> None:
    """Put ``module`` in eval mode except its dropout layers (Monte Carlo dropout)."""
    module.eval()
    for m in module.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
            m.train()
