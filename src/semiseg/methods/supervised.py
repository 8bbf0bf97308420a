"""The supervised baseline: a U-Net trained from scratch on the labelled data alone."""

from __future__ import annotations

from typing import Any

import torch

from semiseg.methods.base import register
from semiseg.methods.segmentation import SegmentationMethod
from semiseg.models.unet import SegUNet
from semiseg.preprocess.cache import DataInfo


@register
class Supervised(SegmentationMethod):
    """MONAI BasicUNet (via :class:`SegUNet`), cross-entropy + Dice, augmentation; no unlabelled data."""

    name = "supervised"
    config_files = ["segmentation", "supervised"]

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        net = config["network"]
        self.net = SegUNet(self.dims, self.channels, self.num_classes, net["features"], net["dropout"])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
