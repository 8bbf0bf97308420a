"""The supervised baseline: a U-Net trained from scratch on the labelled data alone."""

from __future__ import annotations

from typing import Any

import torch

from semiseg.methods.base import register
from semiseg.methods.segmentation import SegmentationMethod
from semiseg.models.unet import build_unet
from semiseg.preprocess.cache import DataInfo


@register
class Supervised(SegmentationMethod):
    """MONAI BasicUNet (via :class:`SegUNet`), cross-entropy + Dice, augmentation; no unlabelled data."""

    name = "supervised"
    config_files = ["segmentation", "supervised"]

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        self.net = build_unet(config, self.dims, self.channels, self.num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
