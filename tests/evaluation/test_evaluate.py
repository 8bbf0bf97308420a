"""Tests of semiseg.evaluation.evaluate on tiny NIfTI folders written in tmp_path."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from semiseg.data.io import write_nifti
from semiseg.data.labels import BINARY, BRATS2021, BRATS2023, LabelScheme
from semiseg.errors import SemisegInputError
from semiseg.evaluation.evaluate import (
    CSV_COLUMNS,
    PER_CASE_CSV,
    SUMMARY_JSON,
    evaluate_folders,
    summary_table,
)
from semiseg.evaluation.metrics import METRICS, region_metrics

SHAPE = (10, 10, 6)
# 0.75 is exact in float32, so the spacing read back from the NIfTI header equals this one
SPACING = (0.75, 0.75, 5.0)


def affine(spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def save(path: Path, data: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, np.asarray(data, dtype=np.int16), affine(spacing))
    return path


def tumour(et: int, offset: int = 0) -> np.ndarray:
    """A BraTS-like label map: oedema block, necrotic core, enhancing rim part."""
    a = np.zeros(SHAPE, dtype=np.int16)
    a[2 + offset : 8 + offset, 2:8, 1:5] = 2
    a[3 + offset : 6 + offset, 3:6, 2:4] = 1
    a[6 + offset : 7 + offset, 3:6, 2:4] = et
    return a


def blob(offset: int = 0, value: int = 1) -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.int16)
    a[2 + offset : 6 + offset, 3:7, 1:4] = value
    return a


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def outputs(*folders: Path) -> list[Path]:
    return [f / name for f in folders for name in (PER_CASE_CSV, SUMMARY_JSON) if (f / name).exists()]


def assert_rows_match(rows: list[dict[str, str]], expected: dict[str, dict[str, dict[str, float]]]) -> None:
    """CSV rows agree with region_metrics computed directly (NaN read back as nan)."""
    assert len(rows) == sum(len(v) for v in expected.values())
    for row in rows:
        want = expected[row["case"]][row["region"]]
        for m in METRICS:
            got = float(row[m])
            assert (math.isnan(got) and math.isnan(want[m])) or got == pytest.approx(want[m], rel=1e-9), (row, m)
        assert int(row["gt_voxels"]) == want["gt_voxels"] and int(row["pred_voxels"]) == want["pred_voxels"]


# ---------------------------------------------------------------- BraTS dataset ground truth


def make_brats(root: Path, sep: str, image: str, cases: dict[str, np.ndarray]) -> Path:
    for cid, seg in cases.items():
        save(root / cid / f"{cid}{sep}seg.nii.gz", seg)
        # discovery needs at least one image per case
        write_nifti(root / cid / f"{cid}{sep}{image}.nii.gz", np.ones(SHAPE, np.float32), affine())
    return root


@pytest.mark.parametrize(
    "scheme, et, sep, image",
    [(BRATS2021, 4, "_", "flair"), (BRATS2023, 3, "-", "t2f")],
)
def test_brats_dataset(tmp_path: Path, scheme: LabelScheme, et: int, sep: str, image: str) -> None:
    gts = {"BraTS-001": tumour(et), "BraTS-002": tumour(et)}
    preds = {"BraTS-001": tumour(et), "BraTS-002": tumour(et, offset=1)}
    gt_dir = make_brats(tmp_path / "brats", sep, image, gts)
    pred_dir = tmp_path / "pred"
    for cid, p in preds.items():
        save(pred_dir / f"{cid}.nii.gz", p)
        # inference side outputs in the same folder are not predictions
        write_nifti(pred_dir / f"{cid}_prob.nii.gz", np.zeros(SHAPE, np.float32), affine())
        write_nifti(pred_dir / f"{cid}_uncertainty.nii.gz", np.zeros(SHAPE, np.float32), affine())

    result = evaluate_folders(pred_dir, gt_dir)

    assert result.per_case_csv == pred_dir / PER_CASE_CSV  # default out_dir is pred_dir
    assert result.summary_json == pred_dir / SUMMARY_JSON
    expected = {cid: region_metrics(preds[cid], gts[cid], scheme, SPACING) for cid in gts}
    rows = read_csv(result.per_case_csv)
    assert [(r["case"], r["region"]) for r in rows] == [
        (c, r) for c in sorted(gts) for r in ("WT", "TC", "ET")
    ]
    assert_rows_match(rows, expected)
    assert result.rows[0]["dice"] == 1.0 and result.rows[3]["dice"] < 1.0

    summary = json.loads(result.summary_json.read_text())
    assert summary["scheme"] == scheme.name
    assert summary["n_cases"] == 2
    assert "empty" in summary["empty_policy"]
    for region in ("WT", "TC", "ET"):
        for m in METRICS:
            values = [expected[c][region][m] for c in sorted(gts)]
            s = summary["regions"][region][m]
            assert s["mean"] == pytest.approx(np.mean(values))
            assert s["std"] == pytest.approx(np.std(values))
            assert s["median"] == pytest.approx(np.median(values))
            assert (s["n"], s["n_nan"]) == (2, 0)


# ---------------------------------------------------------------- flat ground-truth folder


def test_flat_folder_binary_inferred_with_empty_cases(tmp_path: Path) -> None:
    gts = {"a": blob(), "b": blob(), "c": np.zeros(SHAPE, np.int16), "d": blob()}
    # a: shifted by one voxel; b: perfect; c: both empty -> NaN; d: missed entirely -> worst
    preds = {"a": blob(offset=1), "b": blob(), "c": np.zeros(SHAPE, np.int16), "d": np.zeros(SHAPE, np.int16)}
    gt_dir, pred_dir, out_dir = tmp_path / "labels", tmp_path / "pred", tmp_path / "report"
    for cid in gts:
        save(gt_dir / f"{cid}.nii.gz", gts[cid])
    for cid in ("a", "b", "c"):
        save(pred_dir / f"{cid}.nii.gz", preds[cid])
    save(pred_dir / "d.nii", preds["d"])  # uncompressed NIfTI is accepted too

    result = evaluate_folders(pred_dir, gt_dir, out_dir=out_dir)

    assert outputs(pred_dir) == []  # everything went to out_dir
    assert result.summary["scheme"] == "binary"
    expected = {cid: region_metrics(preds[cid], gts[cid], BINARY, SPACING) for cid in gts}
    rows = read_csv(out_dir / PER_CASE_CSV)
    assert_rows_match(rows, expected)
    by_case = {r["case"]: r for r in rows}
    assert by_case["a"]["dice"] != "nan" and float(by_case["a"]["hd95"]) == pytest.approx(0.75)
    assert by_case["c"]["dice"] == by_case["c"]["iou"] == by_case["c"]["hd95"] == "nan"
    diagonal = math.sqrt(7.5**2 + 7.5**2 + 30.0**2)
    assert (float(by_case["d"]["dice"]), float(by_case["d"]["hd95"])) == (0.0, pytest.approx(diagonal))

    summary = json.loads((out_dir / SUMMARY_JSON).read_text())
    dice = summary["regions"]["foreground"]["dice"]
    assert (dice["n"], dice["n_nan"]) == (4, 1)
    a_dice = expected["a"]["foreground"]["dice"]
    assert dice["mean"] == pytest.approx((a_dice + 1.0 + 0.0) / 3)  # nanmean over a, b, d
    assert summary["regions"]["foreground"]["hd95"]["mean"] == pytest.approx((0.75 + 0.0 + diagonal) / 3)


def test_all_nan_region_is_null_in_json(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "labels", tmp_path / "pred"
    for cid in ("x", "y"):
        save(gt_dir / f"{cid}.nii.gz", tumour(et=4) * (tumour(4) != 4))  # no enhancing tumour anywhere
        save(pred_dir / f"{cid}.nii.gz", tumour(et=4) * (tumour(4) != 4))
    result = evaluate_folders(pred_dir, gt_dir, scheme=BRATS2021)
    text = result.summary_json.read_text()
    # strict JSON: no NaN constants
    et = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["regions"]["ET"]
    assert et["dice"]["mean"] is None and et["dice"]["n_nan"] == 2
    assert math.isnan(result.summary["regions"]["ET"]["dice"]["mean"])
    table = summary_table(result)
    assert [c.header for c in table.columns][:4] == ["Region", "Dice", "IoU", "HD95 (mm)"]
    console = Console(record=True, width=120)
    console.print(table)
    rendered = console.export_text()
    assert "WT" in rendered and "1.000 ± 0.000" in rendered and "n/a" in rendered


def test_flat_labels_scheme_from_parent_dataset_json(tmp_path: Path) -> None:
    root = tmp_path / "Dataset009_Organs"
    labels = {"background": 0, "liver": 1, "tumour": 2}
    (root).mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
    gt = blob()
    gt[3, 4, 2] = 2
    save(root / "labelsTr" / "case_001.nii.gz", gt)
    save(tmp_path / "pred" / "case_001.nii.gz", blob())
    result = evaluate_folders(tmp_path / "pred", root / "labelsTr")
    assert result.summary["scheme"] == "dataset"
    assert result.summary["region_labels"] == {"liver": [1], "tumour": [2]}
    by_region = {r["region"]: r for r in result.rows}
    assert by_region["tumour"]["dice"] == 0.0 and by_region["tumour"]["gt_voxels"] == 1
    assert by_region["liver"]["gt_voxels"] == 4 * 4 * 3 - 1


def test_nnunet_dataset_root(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Spleen"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "file_ending": ".nii.gz"})
    )
    for cid in ("s1", "s2"):
        write_nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", np.zeros(SHAPE, np.float32), affine())
        save(root / "labelsTr" / f"{cid}.nii.gz", blob())
        save(tmp_path / "pred" / f"{cid}.nii.gz", blob(offset=1))
    result = evaluate_folders(tmp_path / "pred", root)
    assert result.summary["n_cases"] == 2
    assert result.summary["region_labels"] == {"spleen": [1]}
    assert [r["hd95"] for r in result.rows] == [pytest.approx(0.75)] * 2


@pytest.mark.parametrize(
    "values, name",
    [((0, 1, 2, 4), "brats2021"), ((0, 1, 2, 3), "brats2023"), ((0, 2), "brats2021"), ((0,), "binary")],
)
def test_scheme_inference(tmp_path: Path, values: tuple[int, ...], name: str) -> None:
    gt = np.zeros(SHAPE, np.int16)
    for i, v in enumerate(values):
        gt[i, :, :] = v
    save(tmp_path / "gt" / "c.nii.gz", gt)
    save(tmp_path / "pred" / "c.nii.gz", np.zeros(SHAPE, np.int16))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "gt").summary["scheme"] == name


def test_inference_uses_prediction_values_too(tmp_path: Path) -> None:
    save(tmp_path / "gt" / "c.nii.gz", blob())  # 0/1 alone would be binary
    save(tmp_path / "pred" / "c.nii.gz", blob(value=3))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "gt").summary["scheme"] == "brats2023"


def test_explicit_scheme_wins(tmp_path: Path) -> None:
    save(tmp_path / "gt" / "c.nii.gz", blob())
    save(tmp_path / "pred" / "c.nii.gz", blob())
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", scheme=BRATS2021)
    assert result.summary["scheme"] == "brats2021"
    assert [r["region"] for r in result.rows] == ["WT", "TC", "ET"]


# ---------------------------------------------------------------- bad input: error, no output


def _good_flat(tmp_path: Path) -> tuple[Path, Path]:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for cid in ("a", "b"):
        save(gt_dir / f"{cid}.nii.gz", blob())
        save(pred_dir / f"{cid}.nii.gz", blob())
    return gt_dir, pred_dir


def _missing_prediction(gt: Path, pred: Path) -> Path:
    (pred / "b.nii.gz").unlink()
    return gt / "b.nii.gz"


def _extra_prediction(gt: Path, pred: Path) -> Path:
    return save(pred / "zzz.nii.gz", blob())


def _shape_mismatch(gt: Path, pred: Path) -> Path:
    return save(pred / "b.nii.gz", np.zeros((10, 10, 7), np.int16))


def _affine_mismatch(gt: Path, pred: Path) -> Path:
    return save(pred / "b.nii.gz", blob(), spacing=(1.0, 1.0, 5.0))


def _pred_value_outside(gt: Path, pred: Path) -> Path:
    return save(pred / "b.nii.gz", blob(value=7))


def _unreadable_prediction(gt: Path, pred: Path) -> Path:
    (pred / "b.nii.gz").write_bytes(b"not a nifti at all")
    return pred / "b.nii.gz"


def _unreadable_gt(gt: Path, pred: Path) -> Path:
    (gt / "a.nii.gz").write_bytes(b"\x1f\x8b truncated")
    return gt / "a.nii.gz"


def _empty_prediction_folder(gt: Path, pred: Path) -> Path:
    for f in pred.iterdir():
        f.unlink()
    write_nifti(pred / "a_prob.nii.gz", np.zeros(SHAPE, np.float32), affine())  # not a prediction
    return pred


def _not_inferable(gt: Path, pred: Path) -> Path:
    save(gt / "b.nii.gz", blob(value=5))
    return gt / "b.nii.gz"


def _not_inferable_across_files(gt: Path, pred: Path) -> Path:
    # 4 (BraTS 2021 only) in the GT, 3 (BraTS 2023 only) in a prediction: no scheme has both
    save(gt / "a.nii.gz", blob(value=4))
    return save(pred / "b.nii.gz", blob(value=3))


def _no_pred_folder(gt: Path, pred: Path) -> Path:
    for f in pred.iterdir():
        f.unlink()
    pred.rmdir()
    return pred


@pytest.mark.parametrize(
    "break_input",
    [
        _missing_prediction,
        _extra_prediction,
        _shape_mismatch,
        _affine_mismatch,
        _pred_value_outside,
        _unreadable_prediction,
        _unreadable_gt,
        _empty_prediction_folder,
        _not_inferable,
        _not_inferable_across_files,
        _no_pred_folder,
    ],
)
def test_bad_input_raises_and_writes_nothing(tmp_path: Path, break_input: Callable[[Path, Path], Path]) -> None:
    gt_dir, pred_dir = _good_flat(tmp_path)
    named = break_input(gt_dir, pred_dir)
    out_dir = tmp_path / "out"
    with pytest.raises(SemisegInputError) as info:
        evaluate_folders(pred_dir, gt_dir, out_dir=out_dir)
    assert info.value.path == str(named)
    assert outputs(out_dir, gt_dir) == []
    if pred_dir.exists():
        assert outputs(pred_dir) == []
        # the default out_dir (pred_dir) is left clean as well
        with pytest.raises(SemisegInputError):
            evaluate_folders(pred_dir, gt_dir)
        assert outputs(pred_dir) == [] and [p.name for p in pred_dir.iterdir() if p.name.startswith(".")] == []


def test_gt_value_outside_explicit_scheme(tmp_path: Path) -> None:
    gt_dir, pred_dir = _good_flat(tmp_path)
    save(gt_dir / "b.nii.gz", blob(value=2))
    with pytest.raises(SemisegInputError) as info:
        evaluate_folders(pred_dir, gt_dir, scheme=BINARY)
    assert info.value.path == str(gt_dir / "b.nii.gz")
    assert "outside" in info.value.problem
    assert outputs(pred_dir) == []


def test_brats_value_outside_dataset_scheme(tmp_path: Path) -> None:
    gt_dir = make_brats(tmp_path / "brats", "_", "flair", {"c1": tumour(4)})
    save(tmp_path / "pred" / "c1.nii.gz", tumour(3))  # BraTS 2023 value in a 2021 dataset
    with pytest.raises(SemisegInputError) as info:
        evaluate_folders(tmp_path / "pred", gt_dir)
    assert info.value.path == str(tmp_path / "pred" / "c1.nii.gz")
    assert outputs(tmp_path / "pred") == []


def test_gt_folder_without_labels(tmp_path: Path) -> None:
    (tmp_path / "gt" / "sub").mkdir(parents=True)
    save(tmp_path / "pred" / "a.nii.gz", blob())
    with pytest.raises(SemisegInputError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert info.value.path == str(tmp_path / "gt")
    assert "label maps" in info.value.problem
