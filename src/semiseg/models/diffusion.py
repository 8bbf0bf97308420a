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
    (resolutions, in pixels, that get self-attention), ``num_heads``, ``image_size``.
    """
    widths = [int(cfg["base_channels"] * m) for m in cfg["channel_mult"]]
    size = int(cfg["image_size"])
    resolutions = [size // 2**i for i in range(len(widths))]
    attention = [r in cfg["attention_resolutions"] for r in resolutions]
    heads = int(cfg["num_heads"])
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=channels,
        out_channels=out_channels or channels,
        channels=widths,
        attention_levels=attention,
        num_res_blocks=int(cfg["num_res_blocks"]),
        # MONAI sets the head width, improved-diffusion the head count: convert per level
        num_head_channels=[max(w // heads, 1) for w in widths],
        norm_num_groups=int(cfg.get("norm_groups", 32)),
    )


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


class DecoderFeatures:
    """Read decoder activations of a diffusion UNet with forward hooks.

    ``features(x_noisy, t)`` runs the UNet once and returns the chosen blocks' activations,
    each bilinearly upsampled to the input size and concatenated: (B, F, H, W).
    """

    def __init__(self, unet: DiffusionModelUNet, blocks: Sequence[int]) -> None:
        all_blocks = decoder_blocks(unet)
        bad = [b for b in blocks if not 0 <= b < len(all_blocks)]
        if bad:
            raise ValueError(f"decoder blocks {bad} do not exist; this UNet has blocks 0..{len(all_blocks) - 1}")
        self.unet = unet
        self.blocks = list(blocks)
        self._acts: dict[int, torch.Tensor] = {}
        self._handles = [all_blocks[b].register_forward_hook(self._hook(b)) for b in self.blocks]

    def _hook(self, index: int):
        def save(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self._acts[index] = out

        return save

    def channels(self) -> int:
        """Number of features per pixel for one timestep."""
        blocks = decoder_blocks(self.unet)
        total = 0
        for b in self.blocks:
            m = blocks[b]
            total += m.out_channels if hasattr(m, "out_channels") else m.attn.out_proj.out_features
        return total

    def __call__(self, x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._acts.clear()
        self.unet(x_noisy, t)
        size = x_noisy.shape[-2:]
        feats = [F.interpolate(self._acts[b], size=size, mode="bilinear", align_corners=False) for b in self.blocks]
        self._acts.clear()
        return torch.cat(feats, dim=1)

    def pooled(self, x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The chosen blocks' activations averaged over space and concatenated: (B, F), without
        upsampling anything (for per-image rather than per-pixel features)."""
        self._acts.clear()
        self.unet(x_noisy, t)
        feats = [self._acts[b].float().mean(dim=(2, 3)) for b in self.blocks]
        self._acts.clear()
        return torch.cat(feats, dim=1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
