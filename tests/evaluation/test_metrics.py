"""Tests of semiseg.evaluation.metrics against hand-computed numbers."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from semiseg.data.labels import BINARY, BRATS2021, BRATS2023, LabelScheme
from semiseg.evaluation.metrics import METRICS, image_diagonal_mm, region_metrics, summarise

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shifted(mask: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Shift ``mask`` by ``k`` voxels along ``axis``, filling with zeros (no wrap-around)."""
    out = np.zeros_like(mask)
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    src[axis] = slice(0, mask.shape[axis] - k)
    dst[axis] = slice(k, None)
    out[tuple(dst)] = mask[tuple(src)]
    return out


def cube(shape: tuple[int, ...], start: int, side: int, value: int = 1) -> np.ndarray:
    a = np.zeros(shape, dtype=np.int16)
    a[tuple(slice(start, start + side) for _ in shape)] = value
    return a


def test_metric_names() -> None:
    assert METRICS == ("dice", "iou", "hd95")


def test_identity_is_perfect() -> None:
    rng = np.random.default_rng(0)
    gt = rng.choice(np.array(BRATS2021.values, dtype=np.int16), size=(10, 9, 8))
    out = region_metrics(gt, gt.copy(), BRATS2021, (1.0, 1.0, 1.0))
    assert set(out) == {"WT", "TC", "ET"}
    for region, m in out.items():
        assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["hd95"] == 0.0, region
        assert m["gt_voxels"] == m["pred_voxels"] == int(np.isin(gt, BRATS2021.regions[region]).sum())


# A cube of side n shifted by k voxels along one axis: overlap (n-k)n^2, so Dice = (n-k)/n and
# IoU = (n-k)/(n+k). HD95: every surface voxel of one cube is within k voxels (along the shift
# axis) of the other's surface, and the n^2 voxels of the leading face (1/6 of the surface, far
# above 5 %) are exactly k away, so both directed 95th percentiles are exactly k * spacing[axis].
N, K = 6, 2


@pytest.mark.parametrize(
    "spacing, axis, expected_hd",
    [
        ((1.0, 1.0, 1.0), 0, 2.0),
        ((1.0, 1.0, 1.0), 2, 2.0),
        ((0.8, 0.8, 5.0), 2, 10.0),  # shift along z: 2 slices of 5 mm, not 2 (voxels)
        ((0.8, 0.8, 5.0), 0, 1.6),  # the same shift along x is only 1.6 mm
        ((0.8, 0.8, 5.0), 1, 1.6),
    ],
)
def test_shifted_cube(spacing: tuple[float, ...], axis: int, expected_hd: float) -> None:
    gt = cube((16, 16, 16), 4, N)
    pred = shifted(gt, axis, K)
    m = region_metrics(pred, gt, BINARY, spacing)["foreground"]
    assert m["dice"] == pytest.approx((N - K) / N, abs=1e-12)
    assert m["iou"] == pytest.approx((N - K) / (N + K), abs=1e-12)
    assert m["hd95"] == pytest.approx(expected_hd, rel=1e-6)
    assert m["gt_voxels"] == m["pred_voxels"] == N**3


def test_spacing_applies_per_axis() -> None:
    # one voxel each, offset by (1, 0, 1) voxels: distance sqrt(0.8^2 + 5^2) mm in both directions
    gt = np.zeros((5, 5, 5), dtype=np.int16)
    pred = np.zeros_like(gt)
    gt[2, 2, 2] = 1
    pred[3, 2, 3] = 1
    m = region_metrics(pred, gt, BINARY, (0.8, 0.7, 5.0))["foreground"]
    assert m["hd95"] == pytest.approx(math.hypot(0.8, 5.0), rel=1e-6)
    assert m["dice"] == 0.0 and m["iou"] == 0.0


def test_int_spacing_is_accepted() -> None:
    # MONAI rejects a spacing mixing int and float; region_metrics normalises it
    gt = cube((8, 8, 8), 2, 3)
    m = region_metrics(shifted(gt, 2, 1), gt, BINARY, (1, 1, 5.0))["foreground"]
    assert m["hd95"] == pytest.approx(5.0)


def test_both_empty_is_nan() -> None:
    z = np.zeros((6, 7, 8), dtype=np.int16)
    m = region_metrics(z, z.copy(), BINARY, (1.0, 1.0, 1.0))["foreground"]
    assert math.isnan(m["dice"]) and math.isnan(m["iou"]) and math.isnan(m["hd95"])
    assert m["gt_voxels"] == 0 and m["pred_voxels"] == 0


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_is_worst(empty_side: str) -> None:
    shape, spacing = (10, 12, 8), (1.0, 2.0, 3.0)
    full = cube(shape, 2, 3)
    empty = np.zeros(shape, dtype=np.int16)
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI empty-mask warnings leak out
        m = region_metrics(pred, gt, BINARY, spacing)["foreground"]
    diagonal = math.sqrt(10**2 + 24**2 + 24**2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diagonal)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95"] == pytest.approx(diagonal)
    assert math.isfinite(m["hd95"])
    assert (m["gt_voxels"], m["pred_voxels"]) == ((27, 0) if empty_side == "pred" else (0, 27))


def test_2d() -> None:
    # 8x8 square shifted by 2 pixels along axis 1 with spacing (0.5, 2.0): the 8 pixels of the
    # leading column (8 of 28 edge pixels) are exactly 2 pixels = 4 mm away, so HD95 = 4 mm
    gt = np.zeros((16, 16), dtype=np.int16)
    gt[4:12, 3:11] = 1
    pred = shifted(gt, 1, 2)
    m = region_metrics(pred, gt, BINARY, (0.5, 2.0))["foreground"]
    assert m["dice"] == pytest.approx(6 / 8)
    assert m["iou"] == pytest.approx(6 / 10)
    assert m["hd95"] == pytest.approx(4.0, rel=1e-6)
    empty = region_metrics(np.zeros_like(gt), gt, BINARY, (0.5, 2.0))["foreground"]
    assert empty["hd95"] == pytest.approx(math.hypot(16 * 0.5, 16 * 2.0))


@pytest.mark.parametrize("scheme, et", [(BRATS2021, 4), (BRATS2023, 3)])
def test_brats_regions_single_voxels(scheme: LabelScheme, et: int) -> None:
    # one enhancing voxel counts in WT, TC and ET; one oedema voxel only in WT; one necrotic in WT, TC
    gt = np.zeros((5, 5, 5), dtype=np.int16)
    gt[1, 1, 1] = et
    gt[3, 3, 3] = 2
    gt[1, 3, 1] = 1
    m = region_metrics(gt, gt, scheme, (1.0, 1.0, 1.0))
    assert {r: m[r]["gt_voxels"] for r in m} == {"WT": 3, "TC": 2, "ET": 1}


@pytest.mark.parametrize("scheme, et", [(BRATS2021, 4), (BRATS2023, 3)])
def test_brats_regions_from_label_values(scheme: LabelScheme, et: int) -> None:
    # GT: enhancing core cube inside an oedema slab. The prediction calls the core necrotic (1)
    # instead of enhancing: WT and TC are still perfect, ET is missed entirely.
    gt = np.zeros((12, 12, 12), dtype=np.int16)
    gt[2:10, 2:10, 2:10] = 2
    gt[4:8, 4:8, 4:8] = et
    pred = gt.copy()
    pred[pred == et] = 1
    m = region_metrics(pred, gt, scheme, (1.0, 1.0, 2.0))
    for region in ("WT", "TC"):
        assert (m[region]["dice"], m[region]["iou"], m[region]["hd95"]) == (1.0, 1.0, 0.0)
    assert m["WT"]["gt_voxels"] == 8**3 and m["TC"]["gt_voxels"] == 4**3
    assert m["ET"]["dice"] == 0.0 and m["ET"]["pred_voxels"] == 0 and m["ET"]["gt_voxels"] == 64
    assert m["ET"]["hd95"] == pytest.approx(math.sqrt(12**2 + 12**2 + 24**2))


def test_bad_arguments() -> None:
    a = np.zeros((4, 4, 4), dtype=np.int16)
    with pytest.raises(ValueError, match="shape"):
        region_metrics(a, np.zeros((4, 4, 5), dtype=np.int16), BINARY, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        region_metrics(a, a, BINARY, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        region_metrics(a, a, BINARY, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        region_metrics(np.zeros(4), np.zeros(4), BINARY, (1.0,))


def test_summarise() -> None:
    s = summarise([1.0, 2.0, float("nan"), 3.0])
    assert s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(math.sqrt(2 / 3))
    assert s["median"] == pytest.approx(2.0)
    assert (s["n"], s["n_nan"]) == (4, 1)
    assert s == summarise(iter([1.0, 2.0, float("nan"), 3.0]))  # any iterable


def test_summarise_all_nan_and_empty() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarise([float("nan"), float("nan")])
        e = summarise([])
    assert math.isnan(s["mean"]) and math.isnan(s["std"]) and math.isnan(s["median"])
    assert (s["n"], s["n_nan"]) == (2, 2)
    assert math.isnan(e["mean"]) and (e["n"], e["n_nan"]) == (0, 0)


def test_real_spleen_anisotropic() -> None:
    label_path = DATA / "msd_spleen_crop" / "label.nii.gz"
    if not label_path.exists():
        pytest.skip(f"real data not available at {label_path}")
    from semiseg.data.io import read_label

    gt, header = read_label(label_path, allowed=BINARY.values)
    spacing = header.spacing
    assert spacing == pytest.approx((0.795, 0.795, 5.0), abs=1e-3)
    # one slice along z: every shifted surface voxel is at most one slice (5 mm) from the GT
    # surface, and well over 5 % (the caps, the steep walls) are exactly that far
    z = region_metrics(shifted(gt, 2, 1), gt, BINARY, spacing)["foreground"]
    assert z["hd95"] == pytest.approx(5.0, rel=1e-6)
    z_voxels = region_metrics(shifted(gt, 2, 1), gt, BINARY, (1.0, 1.0, 1.0))["foreground"]
    assert z_voxels["hd95"] == pytest.approx(1.0, rel=1e-6)  # the same shift counted in voxels
    x = region_metrics(shifted(gt, 0, 1), gt, BINARY, spacing)["foreground"]
    assert x["hd95"] == pytest.approx(spacing[0], rel=1e-6)
    assert x["hd95"] == pytest.approx(0.795, abs=1e-3)
    assert 0.9 < x["dice"] < 1.0 and z["dice"] < x["dice"]  # thick slices: a z-shift costs more overlap
