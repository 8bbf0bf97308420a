"""The denoising UNet and noise schedule (MONAI), and reading its decoder activations.

Decoder blocks are numbered like improved-diffusion's ``output_blocks`` (which Baranchuk et al.
and braintumor-ddpm index): one block per residual block of the decoder, from the coarsest level
to the finest; a block at an attention level ends with its attention layer. MONAI applies the
up-sampler after a level's last block, so block outputs are at their level's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn


def build_unet(cfg: dict[str, Any], channels: int, out_channels: int | None = None) -> DiffusionModelUNet:
    """MONAI DiffusionModelUNet from a preset's ``model`` block.

    ``cfg`` keys: ``base_channels``, ``channel_mult``, ``num_res_blocks``, ``attention_resolutions``
    (resolutions, in pixels, that get self-attention), ``num_heads``, ``image_size``; and two
    speed settings that leave the numbers as they are (within float rounding; tests/models):
    ``fast_attention`` (PyTorch's fused scaled-dot-product attention instead of an explicit
    attention matrix, default on) and ``channels_last`` (NHWC weights, which oneDNN and cuDNN
    convolve faster, default on).
    """
    widths = [int(cfg["base_channels"] * m) for m in cfg["channel_mult"]]
    size = int(cfg["image_size"])
    resolutions = [size // 2**i for i in range(len(widths))]
    attention = [r in cfg["attention_resolutions"] for r in resolutions]
    heads = int(cfg["num_heads"])
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=channels,
        out_channels=out_channels or channels,
        channels=widths,
        attention_levels=attention,
        num_res_blocks=int(cfg["num_res_blocks"]),
        # MONAI sets the head width, improved-diffusion the head count: convert per level
        num_head_channels=[max(w // heads, 1) for w in widths],
        norm_num_groups=int(cfg.get("norm_groups", 32)),
        use_flash_attention=bool(cfg.get("fast_attention", True)),
    )
    if cfg.get("channels_last", True):
        unet.to(memory_format=torch.channels_last)
    return unet


def build_scheduler(cfg: dict[str, Any]) -> DDPMScheduler:
    """DDPM scheduler from a preset's ``diffusion`` block (``timesteps``, ``schedule``, ``prediction``)."""
    schedule = {"cosine": "cosine", "linear": "linear_beta"}[cfg["schedule"]]
    return DDPMScheduler(
        num_train_timesteps=int(cfg["timesteps"]), schedule=schedule, clip_sample=True, prediction_type=cfg.get("prediction", "epsilon")
    )


def build_sampler(cfg: dict[str, Any], steps: int) -> DDIMScheduler:
    """DDIM scheduler on the same noise schedule and prediction type, for sampling in ``steps`` steps."""
    schedule = {"cosine": "cosine", "linear": "linear_beta"}[cfg["schedule"]]
    sampler = DDIMScheduler(
        num_train_timesteps=int(cfg["timesteps"]), schedule=schedule, clip_sample=True, prediction_type=cfg.get("prediction", "epsilon")
    )
    sampler.set_timesteps(steps)
    return sampler


def decoder_blocks(unet: DiffusionModelUNet) -> list[nn.Module]:
    """The decoder's blocks in improved-diffusion order (see the module docstring)."""
    blocks: list[nn.Module] = []
    for up in unet.up_blocks:
        attentions = getattr(up, "attentions", None)
        for i, res in enumerate(up.resnets):
            blocks.append(attentions[i] if attentions is not None else res)
    return blocks


class _Stop(Exception):
    """Raised by the hook of the last block a :class:`DecoderFeatures` needs, to end the forward."""


class DecoderFeatures:
    """Read decoder activations of a diffusion UNet with forward hooks.

    ``features(x_noisy, t)`` runs the UNet and returns the chosen blocks' activations, each
    bilinearly upsampled to the input size and concatenated: (B, F, H, W). The UNet stops after the
    last chosen block: the rest of the decoder (for braintumor-ddpm's blocks 16-18 of the paper UNet,
    the whole 128 px level, the costliest of all) would only compute an output nobody reads. MONAI's
    forward has no way to stop early, so the last hook raises and the call catches it.
    """

    def __init__(self, unet: DiffusionModelUNet, blocks: Sequence[int]) -> None:
        all_blocks = decoder_blocks(unet)
        bad = [b for b in blocks if not 0 <= b < len(all_blocks)]
        if bad:
            raise ValueError(f"decoder blocks {bad} do not exist; this UNet has blocks 0..{len(all_blocks) - 1}")
        self.unet = unet
        self.blocks = list(blocks)
        self._acts: dict[int, torch.Tensor] = {}
        self._reading = False
        self._handles = [all_blocks[b].register_forward_hook(self._hook(b)) for b in self.blocks]

    def _hook(self, index: int):
        def save(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if self._reading:
                self._acts[index] = out
                if len(self._acts) == len(set(self.blocks)):
                    raise _Stop

        return save

    def channels(self) -> int:
        """Number of features per pixel for one timestep."""
        return sum(self.block_channels())

    def block_channels(self) -> list[int]:
        """Channels of each chosen block, in order."""
        blocks = decoder_blocks(self.unet)
        out = []
        for b in self.blocks:
            m = blocks[b]
            out.append(m.out_channels if hasattr(m, "out_channels") else m.attn.out_proj.out_features)
        return out

    def activations(self, x_noisy: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """The chosen blocks' activations at their own resolution, in order."""
        self._acts.clear()
        self._reading = True
        try:
            self.unet(x_noisy, t)
        except _Stop:
            pass
        finally:
            self._reading = False
        acts = [self._acts[b] for b in self.blocks]
        self._acts.clear()
        return acts

    def __call__(self, x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        size = x_noisy.shape[-2:]
        acts = self.activations(x_noisy, t)
        return torch.cat([F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in acts], dim=1)

    def pooled(self, x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The chosen blocks' activations averaged over space and concatenated: (B, F), without
        upsampling anything (for per-image rather than per-pixel features)."""
        return torch.cat([a.float().mean(dim=(2, 3)) for a in self.activations(x_noisy, t)], dim=1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
