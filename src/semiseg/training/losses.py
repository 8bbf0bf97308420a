"""Losses shared by the segmentation methods."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

#: label value marking "no label here" in label tensors (unlabelled or padded voxels)
IGNORE = 255


def class_weights(spec: Sequence[float] | None, num_classes: int) -> torch.Tensor | None:
    """Expand a weight list to ``num_classes`` values by repeating its last entry
    (``[0.1, 0.3]`` -> background 0.1, every other class 0.3); None means unweighted."""
    if not spec:
        return None
    values = list(spec)[:num_classes]
    values += [values[-1]] * (num_classes - len(values))
    return torch.tensor(values, dtype=torch.float32)


class SegmentationLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) plus ``dice_weight`` x soft Dice (MONAI).

    ``forward(logits (B, C, *S), target (B, *S) long)`` returns a scalar.
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        w = class_weights(weights, num_classes)
        self.register_buffer("weights", w if w is not None else torch.ones(num_classes), persistent=False)
        self.weighted = w is not None
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = F.cross_entropy(logits, target, weight=self.weights if self.weighted else None, ignore_index=IGNORE)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self.dice(logits, target.unsqueeze(1))
        return loss


def entropy(probs: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Per-voxel entropy of class probabilities (B, C, *S) -> (B, *S); divided by ln C if ``normalise``."""
    ent = -(probs * torch.log(probs.clamp_min(1e-8))).sum(dim=1)
    return ent / math.log(probs.shape[1]) if normalise else ent


def sigmoid_rampup(progress: float) -> float:
    """Laine & Aila's ramp-up exp(-5 (1 - p)^2) for p in [0, 1] (as in SSL4MIS)."""
    p = min(max(progress, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - p) ** 2))
