"""Spatial and intensity augmentation with MONAI's dictionary transforms (flips, rotation,
scaling, gamma), applied per sample with a seed derived from the step, so a resumed run draws
exactly the augmentations an uninterrupted one would."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd


class Augmenter:
    """Augment a batch of images (B, C, *spatial) and optional label maps (B, *spatial).

    ``cfg`` keys: ``prob`` (per transform), ``flip``, ``rotate_degrees``, ``scale``, ``gamma``.
    ``prob`` 0 disables augmentation.
    """

    def __init__(self, cfg: dict[str, Any], dims: int) -> None:
        self.prob = float(cfg.get("prob", 0.0))
        self.enabled = self.prob > 0
        if not self.enabled:
            return
        p = self.prob
        both = ["image", "label"]
        rot = math.radians(float(cfg.get("rotate_degrees", 0.0)))
        # in 3D, rotate in the axial plane only: brains and bodies are scanned roughly upright
        rotate_range = (rot,) if dims == 2 else (0.0, 0.0, rot)
        scale = float(cfg.get("scale", 0.0))
        transforms: list = []
        if cfg.get("flip", False):
            transforms += [RandFlipd(both, prob=p, spatial_axis=a, allow_missing_keys=True) for a in range(dims)]
        if rot > 0 or scale > 0:
            transforms.append(
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
        if cfg.get("gamma"):
            transforms.append(RandAdjustContrastd(["image"], prob=p, gamma=tuple(cfg["gamma"])))
        self.compose = Compose(transforms)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.enabled:
            return image, label
        images, labels = [], []
        for i in range(image.shape[0]):
            sample = {"image": image[i]}
            if label is not None:
                sample["label"] = label[i][None].float()
            self.compose.set_random_state(seed=(seed * 7919 + i) % (2**32))
            out = self.compose(sample)
            images.append(torch.as_tensor(out["image"]).float())
            if label is not None:
                labels.append(torch.as_tensor(out["label"])[0].round().long())
        return torch.stack(images), (torch.stack(labels) if label is not None else None)
