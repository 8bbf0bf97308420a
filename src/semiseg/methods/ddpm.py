"""DDPM pretraining (Ho et al. 2020; improved-diffusion settings of braintumor-ddpm): an
unconditional denoiser trained on every cached slice, labels unused. Its EMA weights are what
``ddpm-pixel`` and ``ddpm-finetune`` build on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method, make_ema, register
from semiseg.models.diffusion import build_sampler, build_scheduler, build_unet
from semiseg.preprocess.cache import DataInfo
from semiseg.training.batches import DiffusionBatches, SliceSource, Stream
from semiseg.training.checkpoint import EMA_PREFIX, fit_state_dict, latest_checkpoint, load_model_state
from semiseg.training.context import TrainContext

#: axis of a batch of cached slices (B, C, x, y) that runs left-right (RAS: x)
LEFT_RIGHT_AXIS = -2


def unet_config(model: dict[str, Any], slice_size: int) -> dict[str, Any]:
    """The preset's model block with the data's slice size filled in (and checked)."""
    levels = len(model["channel_mult"])
    if slice_size % 2 ** (levels - 1):
        raise SemisegInputError(
            None, f"slice size {slice_size} is not divisible by {2 ** (levels - 1)}, as {levels} UNet levels need"
        )
    return {**model, "image_size": slice_size}


def timestep_index(spec: float | int, total: int) -> int:
    """A timestep given as a fraction of the schedule (0.05) or as an index (200) -> index."""
    t = int(round(spec * total)) if isinstance(spec, float) and spec < 1 else int(spec)
    if not 0 <= t < total:
        raise SemisegInputError(None, f"timestep {spec} is outside the DDPM's 0..{total - 1}")
    return t


def load_pretrained_denoiser(run_dir: Path, unet: DiffusionModelUNet, skip: tuple[str, ...] = ()) -> None:
    """Load a DDPM run's EMA denoiser weights into ``unet``; tensors whose names start with a
    prefix in ``skip`` (a replaced head) are left as initialised."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        raise SemisegInputError(run_dir, "has no checkpoint to load the DDPM from")
    state = load_model_state(folder)
    prefix = EMA_PREFIX + "module." if any(k.startswith(EMA_PREFIX) for k in state) else "unet."
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k[len(prefix):].startswith(skip)}
    tensors.update({k: v for k, v in unet.state_dict().items() if k.startswith(skip)})
    fit_state_dict(unet, tensors, folder)


@register
class DDPM(Method):
    """DDPM with MSE loss on MONAI's DiffusionModelUNet and DDPMScheduler.

    ``diffusion.prediction``: ``epsilon`` (Ho et al., braintumor-ddpm) or ``v_prediction``
    (Salimans & Ho 2022); ``diffusion.loss_weighting``: ``uniform`` (the reference) or ``min_snr``
    (Hang et al. 2023, weight min(SNR, gamma)/SNR for epsilon, min(SNR, gamma)/(SNR + 1) for v),
    which speeds up convergence by not letting the near-noise-free timesteps dominate.
    """

    name = "ddpm"
    config_files = ["ddpm"]
    segments = False

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        self.unet = build_unet(unet_config(config["model"], self.data.slice_size), self.channels)
        self.scheduler = build_scheduler(config["diffusion"])
        self.scale = float(config["diffusion"].get("data_scale", 1.0))
        self.weighting = str(config["diffusion"].get("loss_weighting", "uniform"))
        if self.weighting not in ("uniform", "min_snr"):
            raise SemisegInputError(None, f"diffusion.loss_weighting must be uniform or min_snr, got {self.weighting!r}")
        self.gamma = float(config["diffusion"].get("min_snr_gamma", 5.0))
        decay = config["train"].get("ema_decay")
        self.ema = make_ema(self.unet, float(decay)) if decay else None

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        items = ctx.plan.unlabelled_items(ctx.cache)
        source = SliceSource(ctx.cache, items, labelled=False)
        stream = Stream(len(items), int(self.config["train"]["batch_size"]), ctx.seed, ctx.info)
        # cached slices are (C, x, y) in RAS order: x runs left-right, so a left-right mirror
        # (the reference's horizontal flip of a radiological view) flips axis -2; flipping y
        # would show brains mirrored front to back, which never occur at test time
        hflip = bool(self.config["train"].get("hflip", True))
        self._batches = DiffusionBatches(source, stream, self.scale, LEFT_RIGHT_AXIS if hflip else None, ctx.seed, ctx.info.rank)

    def batch_maker(self) -> DiffusionBatches:
        return self._batches

    def next_batch(self, step: int) -> dict[str, torch.Tensor]:
        return self._batches(step)

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        noise = torch.randn_like(x)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (x.shape[0],), device=x.device)
        noisy = self.scheduler.add_noise(original_samples=x, noise=noise, timesteps=t)
        v = self.scheduler.prediction_type == "v_prediction"
        target = self.scheduler.get_velocity(x, noise, t) if v else noise
        per_image = F.mse_loss(self.unet(noisy, t).float(), target, reduction="none").flatten(1).mean(1)
        if self.weighting == "min_snr":
            alpha = self.scheduler.alphas_cumprod.to(x.device)[t]
            snr = alpha / (1 - alpha)
            per_image = per_image * snr.clamp(max=self.gamma) / (snr + 1 if v else snr)
        return per_image.mean(), {}

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.unet)

    def denoiser(self) -> nn.Module:
        """The network used downstream and for sampling: the EMA copy when kept."""
        return self.ema.module if self.ema is not None else self.unet

    @torch.no_grad()
    def sample(self, n: int, steps: int = 50, seed: int = 0) -> np.ndarray:
        """Generate ``n`` slices with DDIM in ``steps`` steps; returns (n, C, S, S) in z-score units."""
        net = self.denoiser().eval()
        device = next(net.parameters()).device
        size = int(self.data.slice_size)
        sampler = build_sampler(self.config["diffusion"], steps)
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn((n, self.channels, size, size), generator=g).to(device)
        for t in sampler.timesteps:
            eps = net(x, torch.full((n,), int(t), device=device, dtype=torch.long))
            x, _ = sampler.step(eps, int(t), x)
        return (x * self.scale).float().cpu().numpy()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise SemisegInputError(None, "this is a DDPM pretraining run; train a segmentation method on it with --ddpm")
