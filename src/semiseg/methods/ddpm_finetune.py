"""The paper's proposal (Alshenoudy et al. 2023): fine-tune the pretrained noise predictor into a
segmentation network.

The DDPM's EMA denoiser gets a new output layer, SiLU + a zero-initialised 3x3 convolution to the
classes (as braintumor-ddpm's DenoiseNetwork), and sees the slice noised to a fixed small
timestep. The encoder and middle block stay frozen by default; the decoder, time embedding and
head train with (weighted) cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.methods.base import register
from semiseg.methods.ddpm import load_pretrained_denoiser, timestep_index, unet_config
from semiseg.methods.segmentation import SegmentationMethod
from semiseg.models.diffusion import build_scheduler, build_unet
from semiseg.preprocess.cache import DataInfo
from semiseg.training.context import TrainContext

HEAD = "out."
#: seed of the noise used at prediction time, so predictions are reproducible
PREDICT_NOISE_SEED = 0


@register
class DDPMFinetune(SegmentationMethod):
    name = "ddpm-finetune"
    config_files = ["segmentation", "ddpm_finetune"]
    needs_ddpm = True

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        if self.dims != 2:
            raise SemisegInputError(None, f"{self.name} works on 2D slices (the DDPM is 2D); set dims=2")
        ddpm = config["ddpm"]
        self.unet = build_unet(unet_config(ddpm["model"], self.data.slice_size), self.channels)
        width = self.unet.out[-1].conv.in_channels
        head = nn.Conv2d(width, self.num_classes, kernel_size=3, padding=1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.unet.out = nn.Sequential(nn.SiLU(), head)
        self.scheduler = build_scheduler(ddpm["diffusion"])
        self.scale = float(ddpm["diffusion"].get("data_scale", 1.0))
        self.t = timestep_index(config["timestep"], self.scheduler.num_train_timesteps)
        for name in config.get("freeze", []):
            getattr(self.unet, name).requires_grad_(False)

    def setup(self, ctx: TrainContext) -> None:
        assert ctx.ddpm_run is not None
        load_pretrained_denoiser(ctx.ddpm_run, self.unet, skip=(HEAD,))
        super().setup(ctx)

    def _noised(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((x.shape[0],), self.t, device=x.device, dtype=torch.long)
        return self.scheduler.add_noise(original_samples=x / self.scale, noise=noise, timesteps=t), t

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            noise = torch.randn_like(x)  # fresh noise per call, as braintumor-ddpm's q_sample(noise=None)
        else:
            # one fixed noise field shared by every slice (as ddpm-pixel's): a slice's prediction
            # then does not depend on which batch, or which place in it, the slice was given
            g = torch.Generator(device="cpu").manual_seed(PREDICT_NOISE_SEED)
            noise = torch.randn((1, *x.shape[1:]), generator=g).to(x.device, x.dtype).expand_as(x)
        noisy, t = self._noised(x, noise)
        return self.unet(noisy, t)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's last feature map, what the segmentation head reads."""
        seen: list[torch.Tensor] = []
        hook = self.unet.out.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.logits(x)
        finally:
            hook.remove()
        return seen[0]
