"""Intensity normalisation, as nnU-Net does it.

* MRI channels: z-score over the foreground (non-zero voxels of the case), background set to 0.
* CT channels: clip to the 0.5/99.5 percentiles of the labelled foreground intensities of the
  training cases, then z-score with that foreground's mean and standard deviation. Those
  dataset-level statistics are stored, so prediction normalises new cases identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from monai.transforms import NormalizeIntensity

#: voxels sampled per case when collecting CT statistics: bounds memory on large datasets
CT_SAMPLES_PER_CASE = 100_000


@dataclass
class Normaliser:
    """Per-channel normalisation; ``kinds`` is ``"MRI"`` or ``"CT"`` per channel, ``ct_stats``
    holds ``{"clip": [lo, hi], "mean": m, "std": s}`` per CT channel."""

    kinds: list[str]
    ct_stats: dict[int, dict[str, float]] = field(default_factory=dict)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise ``image`` (C, ...) and return float32 of the same shape."""
        out = np.empty(image.shape, dtype=np.float32)
        foreground = np.any(image != 0, axis=0)
        for c, kind in enumerate(self.kinds):
            if kind == "CT":
                st = self.ct_stats[c]
                clipped = np.clip(image[c], st["clip"][0], st["clip"][1])
                out[c] = NormalizeIntensity(subtrahend=st["mean"], divisor=st["std"])(clipped)
            else:
                # the foreground mask is shared by all channels (nnU-Net's "nonzero" mask), so a
                # channel's own zeros inside the brain are normalised, not treated as background
                ch = image[c].astype(np.float32)
                vals = ch[foreground]
                if vals.size == 0:
                    out[c] = 0.0
                    continue
                mean, std = float(vals.mean()), float(vals.std())
                out[c] = np.where(foreground, (ch - mean) / max(std, 1e-8), 0.0)
        return out

    def background_value(self) -> np.ndarray:
        """Normalised value of empty space per channel (used to pad slices and crops)."""
        vals = []
        for c, kind in enumerate(self.kinds):
            if kind == "CT":
                st = self.ct_stats[c]
                vals.append((st["clip"][0] - st["mean"]) / st["std"])
            else:
                vals.append(0.0)
        return np.asarray(vals, dtype=np.float32)

    def to_json(self) -> dict:
        return {"kinds": list(self.kinds), "ct_stats": {str(k): v for k, v in self.ct_stats.items()}}

    @classmethod
    def from_json(cls, obj: dict) -> "Normaliser":
        return cls(list(obj["kinds"]), {int(k): v for k, v in obj.get("ct_stats", {}).items()})


def fit_ct_stats(samples: Iterable[np.ndarray]) -> dict[str, float]:
    """Dataset-level CT statistics from per-case samples of labelled-foreground intensities."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    if values.size == 0:
        raise ValueError("no labelled foreground voxels to compute CT statistics from")
    lo, hi = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, lo, hi)
    return {"clip": [float(lo), float(hi)], "mean": float(clipped.mean()), "std": float(max(clipped.std(), 1e-8))}


def sample_foreground(channel: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to CT_SAMPLES_PER_CASE intensities of ``channel`` where ``label`` > 0."""
    vals = channel[label > 0]
    if vals.size > CT_SAMPLES_PER_CASE:
        vals = rng.choice(vals, CT_SAMPLES_PER_CASE, replace=False)
    return vals
