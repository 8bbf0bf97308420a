"""Pixel-level classifiers on diffusion features (Baranchuk et al. 2022; braintumor-ddpm).

Each slice is noised to the configured timesteps (q_sample), the frozen EMA denoiser runs once per
timestep, the activations of the chosen decoder blocks are upsampled bilinearly to the slice size
and concatenated: one feature vector per pixel. An ensemble of MLPs classifies the pixels; the
prediction is the members' mean probability (or their vote) and the uncertainty their
disagreement (entropy of the vote histogram, divided by ln of the class count).

Memory: with the shared fixed noise the features are deterministic, so those of the labelled
slices are computed once and spilled, half precision, to a file in the run folder. Each slice's
pixels are written in a random order, so a contiguous run of rows is a random sample of that
slice; a training step reads a few such runs with ``os.pread`` (no memory map: mapped pages would
count towards the process's memory as the file is read). Peak memory is therefore one slice's
features plus one batch, whatever the number of labelled slices.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method, register
from semiseg.methods.ddpm import load_pretrained_denoiser, timestep_index, unet_config
from semiseg.models.diffusion import DecoderFeatures, build_scheduler, build_unet
from semiseg.preprocess.cache import DataInfo
from semiseg.training.batches import SliceSource, step_rng
from semiseg.training.context import TrainContext
from semiseg.training.losses import class_weights

#: slices a training step draws its pixels from
SLICES_PER_STEP = 16
SPILL_DIR = ".pixel_features"
#: pixels per block when the ensemble classifies a prediction's rows (see DDPMPixel.member_logits)
MEMBER_ROWS = 4096


class MLPEnsemble(nn.Module):
    """``members`` MLPs in -> h1 -> ReLU -> BN -> h2 -> ReLU -> BN -> classes (Baranchuk's design).

    ``forward(x (N, F))`` returns logits (members, N, classes).
    """

    def __init__(self, in_features: int, hidden: list[int], classes: int, members: int) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = []
            width = in_features
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.BatchNorm1d(h)]
                width = h
            return nn.Sequential(*layers, nn.Linear(width, classes))

        self.members = nn.ModuleList(mlp() for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


@register
class DDPMPixel(Method):
    name = "ddpm-pixel"
    config_files = ["segmentation", "ddpm_pixel"]
    needs_ddpm = True

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        if self.dims != 2:
            raise SemisegInputError(None, f"{self.name} works on 2D slices (the DDPM is 2D); set dims=2")
        if config.get("loss", {}).get("dice_weight"):
            raise SemisegInputError(None, "ddpm-pixel trains on sampled pixels: set loss.dice_weight to 0")
        if config["noise"] not in ("shared", "fresh"):
            raise SemisegInputError(None, f"noise must be 'shared' or 'fresh', got {config['noise']!r}")
        ddpm = config["ddpm"]
        size = int(self.data.slice_size)
        self.unet = build_unet(unet_config(ddpm["model"], size), self.channels).requires_grad_(False)
        self.scheduler = build_scheduler(ddpm["diffusion"])
        self.scale = float(ddpm["diffusion"].get("data_scale", 1.0))
        self.timesteps = [timestep_index(t, self.scheduler.num_train_timesteps) for t in config["timesteps"]]
        self.extractor = DecoderFeatures(self.unet, config["blocks"])
        self.num_features = self.extractor.channels() * len(self.timesteps)
        self.mlps = MLPEnsemble(self.num_features, list(config["hidden"]), self.num_classes, int(config["ensemble"]))
        g = torch.Generator().manual_seed(0)
        # one fixed noise tensor shared by every image (Baranchuk); stored with the weights
        self.register_buffer("noise", torch.randn((self.channels, size, size), generator=g))
        w = class_weights(config.get("loss", {}).get("class_weights"), self.num_classes)
        self.register_buffer("ce_weights", w if w is not None else torch.ones(self.num_classes), persistent=False)
        self.spill: dict[str, Any] | None = None

    # ---- features --------------------------------------------------------------------------
    def _noised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) noised to every timestep in one batch (T*B, C, H, W), timestep-major, and
        the timesteps: one UNet forward for all timesteps uses the cores better than T small ones."""
        x = x / self.scale
        noised, steps = [], []
        for t in self.timesteps:
            noise = self.noise.expand_as(x) if self.config["noise"] == "shared" else torch.randn_like(x)
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            noised.append(self.scheduler.add_noise(original_samples=x, noise=noise, timesteps=tt))
            steps.append(tt)
        return torch.cat(noised), torch.cat(steps)

    @torch.no_grad()
    def pixel_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, F, H, W) of images x (B, C, H, W): per timestep, the chosen blocks' channels."""
        self.unet.eval()
        feats = self.extractor(*self._noised(x)).float()  # (T*B, F/T, H, W)
        return torch.cat(feats.chunk(len(self.timesteps)), dim=1)

    # ---- training --------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        assert ctx.ddpm_run is not None
        load_pretrained_denoiser(ctx.ddpm_run, self.unet)
        self.unet.requires_grad_(False)
        self.source = SliceSource(ctx.cache, ctx.plan.labelled_slices(), labelled=True)
        if self.config["noise"] == "shared":
            self._write_spill(ctx)

    def _write_spill(self, ctx: TrainContext) -> None:
        folder = ctx.run_dir / SPILL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank{ctx.info.rank}.f16"
        pixels = ctx.cache.slice_size**2
        labels = np.empty((len(self.source), pixels), dtype=np.uint8)
        with open(path, "wb") as fh:
            for i in range(len(self.source)):
                batch = self.source.load([i])
                feats = self.pixel_features(batch["image"].to(ctx.device))[0]  # (F, H, W)
                order = np.random.default_rng([ctx.seed, i]).permutation(pixels)
                rows = feats.reshape(self.num_features, pixels).T[torch.from_numpy(order).to(feats.device)]
                fh.write(rows.to(torch.float16).cpu().numpy().tobytes())
                labels[i] = batch["label"][0].reshape(-1).numpy()[order]
        self.spill = {"path": path, "labels": labels, "pixels": pixels, "fd": os.open(path, os.O_RDONLY)}

    def _read_rows(self, slice_index: int, start: int, count: int) -> np.ndarray:
        assert self.spill is not None
        row_bytes = self.num_features * 2
        offset = (slice_index * self.spill["pixels"] + start) * row_bytes
        buf = os.pread(self.spill["fd"], count * row_bytes, offset)
        return np.frombuffer(buf, dtype=np.float16).reshape(count, self.num_features)

    def next_batch(self, step: int) -> dict[str, torch.Tensor]:
        assert self.ctx is not None
        rng = step_rng(self.ctx.seed, step, self.ctx.info.rank)
        total = int(self.config["pixels_per_step"])
        per = max(total // SLICES_PER_STEP, 1)
        chosen = rng.integers(0, len(self.source), SLICES_PER_STEP)
        if self.spill is not None:
            feats, labels = [], []
            for s in chosen:
                start = int(rng.integers(0, self.spill["pixels"] - per + 1))
                feats.append(self._read_rows(int(s), start, per))
                labels.append(self.spill["labels"][s, start : start + per])
            x = torch.from_numpy(np.concatenate(feats).astype(np.float32))
            y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
            return {"features": x, "label": y}
        # fresh noise: features change with every call, so compute them for this step's slices
        batch = self.source.load(sorted(set(int(s) for s in chosen[:2])))
        feats = self.pixel_features(batch["image"].to(self.ctx.device))
        flat = feats.permute(0, 2, 3, 1).reshape(-1, self.num_features)
        pick = torch.from_numpy(rng.choice(flat.shape[0], min(total, flat.shape[0]), replace=False))
        return {"features": flat[pick.to(flat.device)], "label": batch["label"].reshape(-1)[pick]}

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.mlps(batch["features"])  # (M, N, C)
        m, n, c = logits.shape
        target = batch["label"].repeat(m)
        loss = F.cross_entropy(logits.reshape(m * n, c).float(), target, weight=self.ce_weights)
        return loss, {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.mlps.parameters())

    def images_per_step(self) -> int:
        return SLICES_PER_STEP

    def finish(self) -> None:
        if self.spill is not None:
            os.close(self.spill["fd"])
            shutil.rmtree(self.spill["path"].parent, ignore_errors=True)
            self.spill = None

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel diffusion features the MLPs classify."""
        return self.pixel_features(x)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits (M, B*H*W, classes) for images x (B, C, H, W), pixels in (b, h, w) order.

        The same numbers as ``self.mlps`` on :meth:`pixel_features` (up to float rounding), computed
        cheaper: bilinear upsampling is linear and so is each member's first layer, so the first layer
        runs on the blocks' activations at their own resolution and its output is upsampled instead of
        the features. For 1,024 features from 16 and 32 px blocks this turns a 128 px slice's 21
        GMAC of first-layer products (10 members) into under 1.
        """
        self.unet.eval()
        self.mlps.eval()
        b, _, h, w = x.shape
        acts = self.extractor.activations(*self._noised(x))  # per block: (T*B, c, h_k, w_k)
        firsts = [m[0] for m in self.mlps.members]
        weight = torch.cat([f.weight for f in firsts])  # (M*hidden, F): features ordered timestep, block, channel
        bias = torch.cat([f.bias for f in firsts])
        at_size: dict[tuple[int, ...], torch.Tensor] = {}
        col = 0
        for chunk in range(len(self.timesteps)):
            for a, width in zip(acts, self.extractor.block_channels()):
                part = F.conv2d(a[chunk * b : (chunk + 1) * b].float(), weight[:, col : col + width, None, None])
                col += width
                key = tuple(part.shape[-2:])
                at_size[key] = at_size[key] + part if key in at_size else part
        # The full-resolution sum (members x hidden channels per pixel) is the largest tensor here, and
        # on a CPU a fresh large tensor costs more in page faults than the arithmetic that fills it.
        # So the sum and the first ReLU (elementwise, the same numbers) happen in place, and each
        # member classifies rows in blocks small enough for the allocator to reuse their memory.
        first: torch.Tensor | None = None
        for k, v in at_size.items():
            v = v if k == (h, w) else F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
            first = v if first is None else first.add_(v)
        assert first is not None
        first.add_(bias[None, :, None, None]).relu_()
        members = len(firsts)
        rows = first.permute(0, 2, 3, 1).reshape(b * h * w, members, -1)
        out = first.new_empty(members, b * h * w, self.num_classes)
        for i, m in enumerate(self.mlps.members):
            assert isinstance(m[1], nn.ReLU)
            for s in range(0, len(rows), MEMBER_ROWS):
                out[i, s : s + MEMBER_ROWS] = m[2:](rows[s : s + MEMBER_ROWS, i].contiguous())
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        probs = torch.softmax(self.member_logits(x).float(), dim=-1)  # (M, N, C)
        votes = F.one_hot(probs.argmax(-1), self.num_classes).float().mean(0)  # (N, C)
        combined = votes if self.config["combine"] == "vote" else probs.mean(0)
        disagreement = -(votes * torch.log(votes.clamp_min(1e-8))).sum(-1) / math.log(self.num_classes)
        combined = combined.reshape(b, h, w, self.num_classes).permute(0, 3, 1, 2)
        return combined.contiguous(), disagreement.reshape(b, h, w)
