"""Evaluate a folder of predicted label maps against ground truth and write the reports.

Predictions are ``<case>.nii.gz`` files (or ``.nii``, ``.mha``, ``.nrrd``), one per case; the
probability and uncertainty maps written next to them (``<case>_prob.*``, ``<case>_uncertainty.*``)
are ignored. Ground truth is a dataset folder that :func:`~semiseg.data.cases.discover`
understands, or a flat folder of ``<case>`` label maps (nnU-Net ``labelsTr``).

The two folders are easily swapped (nnU-Net's ``evaluate_folder`` takes ground truth first), so
a prediction folder that is a dataset, or ground truth that holds semiseg's predictions (marked in
their headers), is refused, and the reports are never written into the ground-truth folder.
Everything is validated and computed before anything is written, so bad input leaves no output.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from semiseg.data.cases import discover
from semiseg.data.io import check_same_geometry, is_prediction, read_label, strip_ending
from semiseg.data.labels import BINARY, BRATS2021, BRATS2023, LabelScheme, scheme_from_dataset_json
from semiseg.errors import SemisegInputError
from semiseg.evaluation.metrics import EMPTY_POLICY, METRICS, region_metrics, summarise
from semiseg.files import atomic_path, check_output, os_problem, read_json, removed_on_failure

PER_CASE_CSV = "evaluation_per_case.csv"
SUMMARY_JSON = "evaluation_summary.json"
CSV_COLUMNS = ("case", "region", "dice", "iou", "hd95", "gt_voxels", "pred_voxels")
#: side outputs of inference that sit next to the predictions but are not label maps
IGNORED_PREDICTION_SUFFIXES = ("_prob", "_uncertainty")
#: tried in this order when no scheme is given or found: the first whose values cover the data wins
INFERABLE_SCHEMES = (BINARY, BRATS2021, BRATS2023)


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate_folders`.

    Attributes:
        rows: one dict per case x region with the keys of :data:`CSV_COLUMNS`.
        summary: the content of the summary JSON (NaN where it has null).
        per_case_csv: path of the per-case CSV written.
        summary_json: path of the summary JSON written.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    per_case_csv: Path
    summary_json: Path


def _image_files(folder: Path, ignore_suffixes: tuple[str, ...] = ()) -> dict[str, Path]:
    """Map case id -> image file for the files directly in ``folder``."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise SemisegInputError(folder, f"cannot be listed: {os_problem(exc)}") from None
    for f in entries:
        # hidden files include half-written temporaries of atomic writes
        if f.name.startswith(".") or not f.is_file():
            continue
        stem = strip_ending(f.name)
        if stem is None or stem.endswith(ignore_suffixes):
            continue
        if stem in found:
            raise SemisegInputError(f, f"case {stem!r} has two files: {found[stem].name} and {f.name}")
        found[stem] = f
    return found


def _find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Return case id -> prediction file; raise if the folder is missing or holds none."""
    if not pred_dir.exists():
        raise SemisegInputError(pred_dir, "prediction folder not found")
    if not pred_dir.is_dir():
        raise SemisegInputError(pred_dir, "is a file; expected a folder of <case>.nii.gz predictions")
    if (pred_dir / "dataset.json").exists() or (pred_dir.name == "labelsTr" and (pred_dir.parent / "dataset.json").exists()):
        raise SemisegInputError(pred_dir, "is an nnU-Net dataset (ground truth), not predictions: did you swap --gt and --pred?")
    preds = _image_files(pred_dir, IGNORED_PREDICTION_SUFFIXES)
    if not preds:
        try:
            discover(pred_dir)
        except SemisegInputError:
            raise SemisegInputError(pred_dir, "contains no predictions (<case>.nii.gz)") from None
        raise SemisegInputError(pred_dir, "is a BraTS dataset (ground truth), not predictions: did you swap --gt and --pred?")
    return preds


def _scheme_from_json_file(path: Path) -> LabelScheme:
    """Read the label scheme from an nnU-Net ``dataset.json``."""
    meta = read_json(path, "dataset description")
    if not isinstance(meta.get("labels"), dict):
        raise SemisegInputError(path, "has no 'labels' entry")
    return scheme_from_dataset_json(meta["labels"], str(path))


def _find_ground_truth(gt: Path) -> tuple[dict[str, Path], LabelScheme | None]:
    """Return case id -> label file and the scheme the ground truth declares (None if it doesn't)."""
    if not gt.exists():
        raise SemisegInputError(gt, "ground-truth folder not found")
    if not gt.is_dir():
        raise SemisegInputError(gt, "is a file; expected a dataset folder or a folder of <case>.nii.gz label maps")
    flat = _image_files(gt)
    if (gt / "dataset.json").exists() or not flat:
        # a dataset folder: its own errors (bad dataset.json, mixed BraTS naming) are the ones to show
        try:
            dataset = discover(gt)
        except SemisegInputError as exc:
            if exc.path == str(gt) and not (gt / "dataset.json").exists():
                raise SemisegInputError(gt, f"{exc.problem}; or a flat folder of <case>.nii.gz label maps") from None
            raise
    else:
        try:
            # a single BraTS case folder also has NIfTI files at its top level
            dataset = discover(gt)
        except SemisegInputError:
            dataset = None
        if dataset is None:
            parent_json = gt.parent / "dataset.json"
            return flat, (_scheme_from_json_file(parent_json) if parent_json.exists() else None)
    labels = {c.case_id: c.label for c in dataset.labelled_cases if c.label is not None}
    if not labels:
        raise SemisegInputError(gt, "has no labelled cases (no segmentation files found)")
    return labels, dataset.scheme


def _infer_scheme(files: list[Path]) -> LabelScheme:
    """Choose the first built-in scheme whose values cover every label value in ``files``.

    Raises SemisegInputError naming the first file whose values leave no scheme possible.
    """
    present: set[int] = set()
    for f in files:
        labels, _ = read_label(f)
        present.update(int(v) for v in np.unique(labels))
        if not any(present <= set(s.values) for s in INFERABLE_SCHEMES):
            raise SemisegInputError(
                f,
                f"cannot infer the label scheme: label values so far are {sorted(present)}, which fit "
                "none of binary (0/1), brats2021 (0/1/2/4), brats2023 (0/1/2/3); give the scheme",
            )
    return next(s for s in INFERABLE_SCHEMES if present <= set(s.values))


def _fmt_float(x: float) -> str:
    return "nan" if math.isnan(x) else repr(float(x))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r["case"], r["region"], *(_fmt_float(r[m]) for m in METRICS), r["gt_voxels"], r["pred_voxels"]])
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    """Replace NaN by None: strict JSON has no NaN, and null reads back as "undefined"."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def evaluate_folders(
    pred_dir: str | PathLike,
    gt: str | PathLike,
    scheme: LabelScheme | None = None,
    out_dir: str | PathLike | None = None,
) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` against its ground truth and write the reports.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` (``.nii``, ``.mha``, ``.nrrd``) predictions (label values).
        gt: a dataset folder (BraTS, nnU-Net) or a flat folder of ``<case>`` label maps.
        scheme: label scheme; default the dataset's (or the parent ``dataset.json``'s), else
            inferred from the label values (binary, BraTS 2021, BraTS 2023).
        out_dir: where to write ``evaluation_per_case.csv`` and ``evaluation_summary.json``;
            default ``pred_dir``.

    Returns:
        the :class:`EvaluationResult`. Any bad input raises SemisegInputError before anything
        is written.
    """
    pred_dir = Path(pred_dir)
    gt = Path(gt)
    out = Path(out_dir) if out_dir is not None else pred_dir
    preds = _find_predictions(pred_dir)
    gt_files, gt_scheme = _find_ground_truth(gt)
    check_output(out, "folder")

    for case_id, path in preds.items():
        if case_id not in gt_files:
            raise SemisegInputError(path, f"prediction for case {case_id!r}, which has no ground truth in {gt}")
    for case_id, path in gt_files.items():
        if case_id not in preds:
            raise SemisegInputError(path, f"ground truth of case {case_id!r} has no prediction in {pred_dir}")

    # semiseg marks its predictions; ground truth that carries the mark was swapped with them
    first = gt_files[min(gt_files)]
    if is_prediction(first) and not is_prediction(preds[min(gt_files)]):
        raise SemisegInputError(gt, f"holds semiseg predictions ({first.name}), not ground truth: did you swap --gt and --pred?")
    gt_root = gt.resolve()
    for folder in {gt_root, *(f.parent.resolve() for f in gt_files.values())}:
        if out.resolve() == folder or folder in out.resolve().parents:
            raise SemisegInputError(out, f"is inside the ground truth {gt}; the reports go elsewhere (--out)")

    case_ids = sorted(gt_files)
    if scheme is None:
        scheme = gt_scheme
    if scheme is None:
        # a first pass over the values only; the arrays are not kept, so memory stays one case
        scheme = _infer_scheme([gt_files[c] for c in case_ids] + [preds[c] for c in case_ids])

    rows: list[dict[str, Any]] = []
    for case_id in case_ids:
        gt_labels, gt_header = read_label(gt_files[case_id], allowed=scheme.values)
        pred_labels, pred_header = read_label(preds[case_id], allowed=scheme.values)
        check_same_geometry(gt_header, pred_header)
        # the GT's spacing is the reference; the affines agree within tolerance anyway
        per_region = region_metrics(pred_labels, gt_labels, scheme, gt_header.spacing)
        for region, values in per_region.items():
            rows.append({"case": case_id, "region": region, **values})

    regions: dict[str, dict[str, Any]] = {}
    for region in scheme.regions:
        region_rows = [r for r in rows if r["region"] == region]
        regions[region] = {m: summarise(r[m] for r in region_rows) for m in METRICS}
    summary: dict[str, Any] = {
        "scheme": scheme.name,
        "region_labels": {k: list(v) for k, v in scheme.regions.items()},
        "n_cases": len(case_ids),
        "empty_policy": EMPTY_POLICY,
        "regions": regions,
    }

    csv_path = out / PER_CASE_CSV
    json_path = out / SUMMARY_JSON
    # both files are complete before either replaces an older one
    with removed_on_failure(out), atomic_path(csv_path) as csv_tmp, atomic_path(json_path) as json_tmp:
        csv_tmp.write_text(_csv_text(rows))
        json_tmp.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return EvaluationResult(rows=rows, summary=summary, per_case_csv=csv_path, summary_json=json_path)


def _mean_std(stats: dict[str, Any], digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(result: EvaluationResult) -> Table:
    """Return a rich table: one row per region, Dice/IoU/HD95 as mean ± std, and empty-case counts."""
    summary = result.summary
    table = Table(title=f"Evaluation of {summary['n_cases']} cases ({summary['scheme']})")
    table.add_column("Region")
    table.add_column("Dice", justify="right")
    table.add_column("IoU", justify="right")
    table.add_column("HD95 (mm)", justify="right")
    table.add_column("Both empty", justify="right")
    for region, stats in summary["regions"].items():
        table.add_row(
            region,
            _mean_std(stats["dice"], 3),
            _mean_std(stats["iou"], 3),
            _mean_std(stats["hd95"], 2),
            str(stats["dice"]["n_nan"]),
        )
    return table
