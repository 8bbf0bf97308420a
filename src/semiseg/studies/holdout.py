"""Score a trained method on the cache's held-out test patients, through the one predict path.

Every test patient's whole volume is predicted (2D methods slice by slice, 3D methods with sliding
windows) and scored under several protocols, each a value of the ``protocol`` column:

* ``central_slices`` (2D methods): the paper's protocol, Dice, IoU and HD95 per slice on a few
  evenly spaced central slices of each patient (``test_slices_per_case``), at the cached slice
  resolution, in millimetres of that resolution. One row per slice.
* ``all_slices``: every axial slice of the patient, Dice and IoU per slice averaged over the
  slices where they are defined (the both-empty ones are left out), plus ``fp_slices``, the share of
  the patient's region-free slices on which the region is predicted anyway (false positives a user
  sees when scrolling through the volume). One row per patient.
* ``volume``: Dice, IoU and HD95 (mm) of the stacked 3D prediction. One row per patient.

With ``postprocess="largest_component"`` the whole-volume protocols are also scored after keeping
only the largest connected component of the predicted foreground, as ``all_slices+lcc`` and
``volume+lcc``, so the report shows what the post-processing changes, for every method alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from semiseg.evaluation.metrics import region_metrics
from semiseg.inference.predict import predict_slices, predict_volume
from semiseg.methods.base import Method
from semiseg.preprocess.cache import Cache
from semiseg.preprocess.splits import slice_pool

PROTOCOLS = ("central_slices", "all_slices", "volume")
POSTPROCESS = {"largest_component": "lcc"}


def primary_protocol(dims: int, slices_per_case: int | None) -> str:
    """The protocol a study's main table shows: the paper's central slices for 2D studies that
    set ``test_slices_per_case``, else whole volumes."""
    return "central_slices" if dims == 2 and slices_per_case else "volume"


def central_slices(cache: Cache, case_id: str, per_case: int) -> list[int]:
    """The paper's ``per_case`` evenly spaced central slices of a case."""
    return slice_pool(cache.cases[case_id].n_slices, count=per_case)


def keep_largest_component(pred: np.ndarray) -> np.ndarray:
    """Keep the largest 3D connected component of the foreground (all classes > 0 together, as
    nnU-Net's "foreground as one region"); class values inside it are kept.

    MONAI's KeepLargestConnectedComponent does the same but needs scikit-image on the CPU; scipy's
    labelling (full connectivity, like MONAI's default) avoids that extra dependency.
    """
    labels, n = ndimage.label(pred > 0, structure=np.ones((3,) * pred.ndim))
    if n <= 1:
        return pred
    largest = np.bincount(labels.ravel())[1:].argmax() + 1
    return np.where(labels == largest, pred, 0).astype(pred.dtype)


def _rows(case_id: str, slice_index: int | str, protocol: str, metrics: dict[str, dict[str, float]], names: Sequence[str]) -> list[dict]:
    """Result rows; each carries the region's voxel counts in ground truth and prediction, which say
    whether a score was left out (both empty) or is a miss (exactly one empty)."""
    return [
        {"case": case_id, "slice": slice_index, "protocol": protocol, "region": region, "metric": m, "value": values[m],
         "gt_voxels": int(values["gt_voxels"]), "pred_voxels": int(values["pred_voxels"])}
        for region, values in metrics.items()
        for m in names
    ]


def score_volume(pred: np.ndarray, gt: np.ndarray, cache: Cache, spacing: Sequence[float], case_id: str, protocol: str) -> list[dict]:
    """Rows of Dice, IoU and HD95 (mm) per region for a whole-volume class map."""
    scheme = cache.scheme
    return _rows(case_id, "", protocol, region_metrics(scheme.to_values(pred), scheme.to_values(gt), scheme, spacing), ("dice", "iou", "hd95"))


def score_all_slices(pred: np.ndarray, gt: np.ndarray, cache: Cache, spacing: Sequence[float], case_id: str, protocol: str) -> list[dict]:
    """Per-patient rows of mean per-slice Dice and IoU and the false-positive slice share, for class
    maps (Z, H, W) stacked along the first axis. HD95 is left to the volume protocol (per-slice HD95
    of every slice would cost more than the rest of the evaluation together)."""
    scheme = cache.scheme
    pred_v, gt_v = scheme.to_values(pred), scheme.to_values(gt)
    rows = []
    for region in scheme.regions:
        p = scheme.region_mask(pred_v, region).reshape(len(pred), -1)
        g = scheme.region_mask(gt_v, region).reshape(len(gt), -1)
        n_p, n_g = p.sum(1), g.sum(1)
        inter = (p & g).sum(1)
        defined = (n_p + n_g) > 0
        dice = np.where(defined, 2 * inter / np.maximum(n_p + n_g, 1), np.nan)
        iou = np.where(defined, inter / np.maximum(n_p + n_g - inter, 1), np.nan)
        empty = n_g == 0
        values = {
            "dice": float(np.nanmean(dice)) if defined.any() else float("nan"),
            "iou": float(np.nanmean(iou)) if defined.any() else float("nan"),
            "fp_slices": float((n_p[empty] > 0).mean()) if empty.any() else float("nan"),
            "gt_voxels": int(n_g.sum()),
            "pred_voxels": int(n_p.sum()),
        }
        rows += _rows(case_id, "", protocol, {region: values}, ("dice", "iou", "fp_slices"))
    return rows


#: a case's predicted class map, stacked along the first axis: (Z, S, S) slices in 2D, (Z, X, Y) in
#: 3D; given the case and, in 2D, the slices that must be predicted (the others may stay 0)
Predicted = Callable[[str, list[int]], np.ndarray]


def evaluate_on_cache(
    method: Method,
    cache: Cache,
    case_ids: Sequence[str],
    slices_per_case: int | None = None,
    keep: Sequence[tuple[str, int]] = (),
    postprocess: str | None = None,
    whole_volume: bool = True,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score ``method`` on the test cases under every protocol (see the module docstring);
    returns metric rows and the predicted class maps of the slices listed in ``keep``
    (``"case:z"`` -> 2D class map), for overlay figures. Without ``whole_volume`` a 2D method is
    scored on its central slices only (and only those are predicted)."""

    def predicted(cid: str, zs: list[int]) -> np.ndarray:
        if method.dims == 2:
            pred = np.zeros((cache.cases[cid].n_slices, cache.slice_size, cache.slice_size), np.uint8)  # (Z, S, S)
            if zs:
                probs, _ = predict_slices(method, np.asarray(cache.slices(cid)[zs]))
                pred[zs] = probs.argmax(1)
            return pred
        probs, _ = predict_volume(method, np.asarray(cache.volume(cid)))
        return np.moveaxis(probs.argmax(0).astype(np.uint8), -1, 0)

    return score_class_maps(cache, case_ids, method.dims, predicted, slices_per_case, keep, postprocess, whole_volume)


def score_class_maps(
    cache: Cache,
    case_ids: Sequence[str],
    dims: int,
    predicted: Predicted,
    slices_per_case: int | None = None,
    keep: Sequence[tuple[str, int]] = (),
    postprocess: str | None = None,
    whole_volume: bool = True,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score the class maps ``predicted`` gives for the test cases, whoever made them (a trained
    method, or an external tool's predictions): the rows and kept slices of :func:`evaluate_on_cache`."""
    if postprocess is not None and postprocess not in POSTPROCESS:
        raise ValueError(f"unknown post-processing {postprocess!r}; choose one of {', '.join(POSTPROCESS)}")
    rows: list[dict] = []
    kept: dict[str, np.ndarray] = {}
    for cid in case_ids:
        geom = cache.cases[cid].geometry
        if dims == 2:
            central = central_slices(cache, cid, slices_per_case) if slices_per_case else []
            zs = list(range(cache.cases[cid].n_slices)) if whole_volume else sorted(set(central) | {z for c, z in keep if c == cid})
            pred = predicted(cid, zs)
            gt = np.asarray(cache.slice_labels(cid))
            sx, sy = geom.slice_spacing(cache.slice_size)
            slice_spacing, volume_spacing = (sx, sy), (geom.spacing[2], sx, sy)
            if central:
                for z in central:
                    metrics = region_metrics(cache.scheme.to_values(pred[z]), cache.scheme.to_values(gt[z]), cache.scheme, slice_spacing)
                    rows += _rows(cid, geom.input_slice(z), "central_slices", metrics, ("dice", "iou", "hd95"))
        else:
            # stacked along the first axis like the 2D methods' slices: (Z, X, Y)
            pred = predicted(cid, [])
            gt = np.moveaxis(np.asarray(cache.volume_label(cid)), -1, 0)
            volume_spacing = (geom.spacing[2], geom.spacing[0], geom.spacing[1])
        for kc, kz in keep:
            if kc == cid:
                kept[f"{cid}:{kz}"] = pred[kz]
        if dims == 2 and not whole_volume:
            continue
        variants = [("", pred)]
        if postprocess:
            variants.append(("+" + POSTPROCESS[postprocess], keep_largest_component(pred)))
        for suffix, p in variants:
            rows += score_all_slices(p, gt, cache, volume_spacing[1:], cid, "all_slices" + suffix)
            rows += score_volume(p, gt, cache, volume_spacing, cid, "volume" + suffix)
    return rows, kept
