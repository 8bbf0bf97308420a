"""Spatial and intensity augmentation with MONAI's dictionary transforms (flips, rotation,
scaling, gamma), applied per sample with a seed derived from the step, so a resumed run draws
exactly the augmentations an uninterrupted one would.

Two details keep augmented images inside what the networks (and a frozen pretrained DDPM encoder)
see at test time:

* rotated and zoomed images are padded with each channel's *background* value (0 for MRI after
  z-scoring, the clipped minimum for CT), not with 0, which is soft tissue in normalised CT;
* gamma changes only the foreground: background voxels keep their value, as in braintumor-ddpm,
  which applies gamma to [0, 1] intensities whose background is 0.

:class:`StrongAugmenter` is the semi-supervised methods' *strong* view of an unlabelled patch
(FixMatch's idea): intensity-only perturbations (noise, gamma, contrast, bias field, blur) and
optional cut-out, so the teacher's pseudo-labels of the weak view stay aligned voxel for voxel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAdjustContrastd,
    RandAffined,
    RandBiasField,
    RandCoarseDropout,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
)


def plain(x: Any) -> torch.Tensor:
    """A plain tensor: MONAI transforms return MetaTensors, whose per-operation bookkeeping
    slows every later network operation on them several-fold."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class Augmenter:
    """Augment a batch of images (B, C, *spatial) and optional label maps (B, *spatial).

    ``cfg`` keys: ``prob`` (per transform), ``flip``, ``rotate_degrees``, ``scale``, ``gamma``.
    ``prob`` 0 disables augmentation. ``background`` is the normalised value of empty space per
    channel (default 0).
    """

    def __init__(self, cfg: dict[str, Any], dims: int, background: Sequence[float] | np.ndarray | None = None) -> None:
        self.prob = float(cfg.get("prob", 0.0))
        self.enabled = self.prob > 0
        self.background = None if background is None else torch.as_tensor(np.asarray(background, dtype=np.float32))
        if not self.enabled:
            return
        p = self.prob
        both = ["image", "label"]
        rot = math.radians(float(cfg.get("rotate_degrees", 0.0)))
        # in 3D, rotate in the axial plane only: brains and bodies are scanned roughly upright
        rotate_range = (rot,) if dims == 2 else (0.0, 0.0, rot)
        scale = float(cfg.get("scale", 0.0))
        spatial: list = []
        if cfg.get("flip", False):
            spatial += [RandFlipd(both, prob=p, spatial_axis=a, allow_missing_keys=True) for a in range(dims)]
        if rot > 0 or scale > 0:
            # images are shifted so that the background is 0 before this transform: its zero
            # padding then is background padding
            spatial.append(
                RandAffined(
                    both,
                    prob=p,
                    rotate_range=rotate_range,
                    scale_range=(scale,) * dims,
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                    allow_missing_keys=True,
                )
            )
        self.spatial = Compose(spatial)
        self.intensity = Compose([RandAdjustContrastd(["image"], prob=p, gamma=tuple(cfg["gamma"]))]) if cfg.get("gamma") else None

    def _background(self, image: torch.Tensor) -> torch.Tensor:
        """Per-channel background value, shaped to broadcast over one image (C, *spatial)."""
        bg = self.background if self.background is not None else torch.zeros(image.shape[0])
        return bg.to(image.dtype).reshape(-1, *([1] * (image.ndim - 1)))

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.enabled:
            return image, label
        images, labels = [], []
        for i in range(image.shape[0]):
            bg = self._background(image[i])
            sample = {"image": image[i] - bg}
            if label is not None:
                sample["label"] = label[i][None].float()
            sample_seed = (seed * 7919 + i) % (2**32)
            self.spatial.set_random_state(seed=sample_seed)
            out = self.spatial(sample)
            img = plain(out["image"]).float() + bg
            if self.intensity is not None:
                self.intensity.set_random_state(seed=(sample_seed + 1) % (2**32))
                foreground = (img != bg).any(dim=0, keepdim=True)
                img = torch.where(foreground, plain(self.intensity({"image": img})["image"]).float(), img)
            images.append(img)
            if label is not None:
                labels.append(plain(out["label"])[0].round().long())
        return torch.stack(images), (torch.stack(labels) if label is not None else None)


class StrongAugmenter:
    """Intensity-only strong augmentation of images (B, C, *spatial), per sample, seeded.

    ``cfg`` keys (each a MONAI transform applied with probability ``prob``; a missing or zero
    value leaves it out): ``noise_std`` (Gaussian noise), ``gamma`` ([lo, hi]), ``scale``
    (multiplicative intensity), ``shift`` (additive intensity), ``bias_field`` (coefficient
    range), ``blur`` ([lo, hi] sigma in voxels), ``cutout`` (number of boxes of ``cutout_size``
    voxels filled with the image minimum, applied with probability ``cutout_prob``).
    """

    def __init__(self, cfg: dict[str, Any] | None, dims: int) -> None:
        cfg = cfg or {}
        p = float(cfg.get("prob", 0.0))
        transforms: list = []
        if p > 0:
            if cfg.get("gamma"):
                transforms.append(RandAdjustContrast(prob=p, gamma=tuple(cfg["gamma"])))
            if cfg.get("scale"):
                transforms.append(RandScaleIntensity(factors=float(cfg["scale"]), prob=p))
            if cfg.get("shift"):
                transforms.append(RandShiftIntensity(offsets=float(cfg["shift"]), prob=p))
            if cfg.get("bias_field"):
                transforms.append(RandBiasField(coeff_range=(0.0, float(cfg["bias_field"])), prob=p))
            if cfg.get("blur"):
                lo, hi = (float(v) for v in cfg["blur"])
                transforms.append(RandGaussianSmooth(sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi), prob=p))
            if cfg.get("noise_std"):
                transforms.append(RandGaussianNoise(prob=p, std=float(cfg["noise_std"])))
        if cfg.get("cutout") and float(cfg.get("cutout_prob", 0.0)) > 0:
            size = cfg.get("cutout_size", 8)
            size = tuple(size) if isinstance(size, (list, tuple)) else (int(size),) * dims
            transforms.append(RandCoarseDropout(holes=int(cfg["cutout"]), spatial_size=size, fill_value=None, prob=float(cfg["cutout_prob"])))
        self.enabled = bool(transforms)
        self.compose = Compose(transforms) if transforms else None

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.enabled:
            return image
        out = []
        for i in range(image.shape[0]):
            self.compose.set_random_state(seed=(seed * 7919 + i) % (2**32))
            out.append(plain(self.compose(image[i])).float())
        return torch.stack(out)
