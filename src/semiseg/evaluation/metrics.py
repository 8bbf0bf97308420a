"""Per-region segmentation metrics: Dice, IoU and HD95 in millimetres.

Metrics are computed per *region* of a :class:`~semiseg.data.labels.LabelScheme` (e.g. BraTS
WT/TC/ET, each a set of label values), on arrays of label values as stored in files.

HD95 is MONAI's: the surface voxels of each mask are found by binary erosion, the Euclidean
distances (in mm, scaled by the voxel spacing per axis) from every surface voxel of one mask to
the nearest surface voxel of the other are taken in both directions, and the result is the larger
of the two directed 95th percentiles (``torch.quantile``, linear interpolation).

Empty-mask policy (for each region of each case separately):

* prediction and ground truth both empty: Dice, IoU and HD95 are all NaN. Nothing was there to
  find and nothing was predicted, so the scores are undefined rather than perfect. Averages use
  ``nanmean``/``nanstd`` and report how many such cases were left out (``n_nan``).
* exactly one of them empty: Dice 0, IoU 0, and HD95 = the diagonal of the image extent in mm,
  ``sqrt(sum((shape_i * spacing_i) ** 2))``. No two voxel centres of the image are further apart,
  so a missed or hallucinated region always scores at least as badly as any real prediction
  (the BraTS challenge does the same with its fixed 373.13 mm). Never inf or NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from semiseg.data.labels import LabelScheme

METRICS = ("dice", "iou", "hd95")

#: the one-line form of the empty policy, stored in evaluation summaries
EMPTY_POLICY = (
    "both prediction and ground truth empty: dice, iou, hd95 NaN (excluded from means, counted in n_nan); "
    "exactly one empty: dice 0, iou 0, hd95 = image diagonal in mm"
)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Return the diagonal of the image extent, ``sqrt(sum((shape_i * spacing_i)^2))``, in mm."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing: list[float]) -> float:
    """HD95 in mm of two non-empty boolean masks, via MONAI."""
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated ``always_return_as_numpy`` argument internally
        # and warns about it on every call; nothing for our users to act on
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(gt)[None, None],
            include_background=True,  # our single channel is the region, not a background class
            percentile=95,
            spacing=spacing,
        )
    return float(hd.item())


def region_metrics(
    pred: np.ndarray, gt: np.ndarray, scheme: LabelScheme, spacing: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Compute Dice, IoU and HD95 (mm) per region of ``scheme``.

    Args:
        pred: predicted label values, 2D or 3D.
        gt: ground-truth label values, same shape as ``pred``.
        scheme: defines the regions (name -> label values).
        spacing: voxel size in mm along each array axis (``len(spacing) == pred.ndim``).

    Returns:
        region name -> ``{"dice", "iou", "hd95", "gt_voxels", "pred_voxels"}``; see the module
        docstring for empty regions.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected 2D or 3D label maps, got {pred.ndim}D")
    # MONAI rejects a spacing that mixes ints and floats, so normalise to Python floats
    spacing_list = [float(s) for s in spacing]
    if len(spacing_list) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing_list)} entries for a {pred.ndim}D image")
    if not all(math.isfinite(s) and s > 0 for s in spacing_list):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    diagonal = image_diagonal_mm(pred.shape, spacing_list)

    results: dict[str, dict[str, float]] = {}
    for region in scheme.regions:
        p = scheme.region_mask(pred, region)
        g = scheme.region_mask(gt, region)
        n_pred = int(p.sum())
        n_gt = int(g.sum())
        if n_pred == 0 and n_gt == 0:
            dice = iou = hd95 = math.nan
        elif n_pred == 0 or n_gt == 0:
            # MONAI would give NaN here (its quantile of all-inf distances), not a usable score
            dice, iou, hd95 = 0.0, 0.0, diagonal
        else:
            # Dice and IoU are counted by hand rather than with monai.metrics.compute_dice/compute_iou:
            # with ignore_empty=True MONAI returns NaN whenever the ground truth is empty (even
            # for a non-empty prediction, which must score 0), with ignore_empty=False it returns
            # 1.0 when both are empty (which must be NaN); integer counts are also exact.
            inter = int(np.logical_and(p, g).sum())
            dice = 2.0 * inter / (n_pred + n_gt)
            iou = inter / (n_pred + n_gt - inter)
            hd95 = _hd95_mm(p, g, spacing_list)
        results[region] = {
            "dice": dice,
            "iou": iou,
            "hd95": hd95,
            "gt_voxels": n_gt,
            "pred_voxels": n_pred,
        }
    return results


def summarise(values: Iterable[float]) -> dict[str, float | int]:
    """Summarise one metric over cases, ignoring NaNs (undefined, both-empty cases).

    Returns:
        ``{"mean", "std", "median", "n", "n_nan"}``: mean/std (population, ddof 0)/median of the
        non-NaN values (NaN if there are none), ``n`` all values, ``n_nan`` the NaNs among them.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    nan = np.isnan(arr)
    kept = arr[~nan]
    # computed on the NaN-free values, equal to nanmean/nanstd/nanmedian but without numpy's
    # "mean of empty slice" warning when every value is NaN
    if kept.size == 0:
        mean = std = median = math.nan
    else:
        mean, std, median = float(kept.mean()), float(kept.std()), float(np.median(kept))
    return {"mean": mean, "std": std, "median": median, "n": int(arr.size), "n_nan": int(nan.sum())}
