"""Evaluate a trained method on the cache's held-out test patients, through the one predict path.

2D methods are scored per test slice (the paper's protocol: Dice etc. per slice, at the cached
slice resolution, in millimetres of that resolution); 3D methods per test case on the cropped
volume (outside the crop both prediction and ground truth are background by construction, so the
scores equal whole-volume scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semiseg.evaluation.metrics import region_metrics
from semiseg.inference.predict import predict_slices, predict_volume
from semiseg.methods.base import Method
from semiseg.preprocess.cache import Cache
from semiseg.preprocess.splits import slice_pool


def test_slices(cache: Cache, case_ids: Sequence[str], per_case: int | None) -> list[tuple[str, int]]:
    """The evaluated slices: ``per_case`` evenly spaced central slices of each case (the paper's
    pool), or every slice when ``per_case`` is None or 0."""
    items = []
    for cid in case_ids:
        n = cache.cases[cid].n_slices
        zs = range(n) if not per_case else slice_pool(n, count=per_case)
        items += [(cid, z) for z in zs]
    return items


def score(pred: np.ndarray, gt: np.ndarray, cache: Cache, spacing: Sequence[float], case_id: str, slice_index: int | None) -> list[dict]:
    """Metric rows (case, slice, region, metric, value) for class-index maps ``pred`` and ``gt``."""
    scheme = cache.scheme
    rows = []
    metrics = region_metrics(scheme.to_values(pred), scheme.to_values(gt), scheme, spacing)
    for region, values in metrics.items():
        for metric in ("dice", "iou", "hd95"):
            rows.append({"case": case_id, "slice": "" if slice_index is None else slice_index, "region": region, "metric": metric, "value": values[metric]})
    return rows


def evaluate_on_cache(
    method: Method, cache: Cache, case_ids: Sequence[str], slices_per_case: int | None = None, keep: Sequence[tuple[str, int]] = ()
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score ``method`` on the test cases; returns metric rows and the predicted class maps of the
    slices listed in ``keep`` (``"case:z"`` -> 2D class map), for overlay figures."""
    rows: list[dict] = []
    kept: dict[str, np.ndarray] = {}
    keep_set = set(keep)
    size = cache.slice_size
    if method.dims == 2:
        items = test_slices(cache, case_ids, slices_per_case)
        scored = set(items)
        by_case: dict[str, list[int]] = {}
        for cid, z in items + [k for k in keep if k not in scored]:
            by_case.setdefault(cid, []).append(z)
        for cid, zs in by_case.items():
            zs = sorted(set(zs))
            probs, _ = predict_slices(method, np.asarray(cache.slices(cid)[zs]))
            pred = probs.argmax(1).astype(np.uint8)
            gt = np.asarray(cache.slice_labels(cid)[zs])
            geom = cache.cases[cid].geometry
            spacing = geom.slice_spacing(size)
            for i, z in enumerate(zs):
                if (cid, z) in keep_set:
                    kept[f"{cid}:{z}"] = pred[i]
                if (cid, z) in scored:
                    rows += score(pred[i], gt[i], cache, spacing, cid, geom.input_slice(z))
    else:
        for cid in case_ids:
            probs, _ = predict_volume(method, np.asarray(cache.volume(cid)))
            pred = probs.argmax(0).astype(np.uint8)
            gt = np.asarray(cache.volume_label(cid))
            rows += score(pred, gt, cache, cache.cases[cid].geometry.spacing, cid, None)
            for kc, kz in keep:
                if kc == cid:
                    kept[f"{cid}:{kz}"] = pred[:, :, kz]
    return rows, kept
