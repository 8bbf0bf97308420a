"""The paper's patient-level use case: annotate a few slices of one patient, train on them, and
segment the rest of that patient's volume.

The annotated slices come from the case's own label file (the slices a user would annotate); the
rest of that file serves as ground truth for the per-slice Dice curve, which shows quality high
near the annotated slices and lower far from them.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from semiseg.config import load_config
from semiseg.data.cases import Dataset, discover
from semiseg.data.io import read_label
from semiseg.errors import SemisegInputError
from semiseg.evaluation.metrics import region_metrics
from semiseg.files import check_output, removed_on_failure, write_csv
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import Cache, build_cache
from semiseg.progress import log
from semiseg.runs.record import read_run_record
from semiseg.studies import figures
from semiseg.training.distributed import pick_device
from semiseg.training.loop import check_train_settings
from semiseg.training.plan import format_slice


def pick_slices(cache: Cache, case_id: str, count: int) -> list[int]:
    """``count`` annotated (tumour-bearing) cached slices spread evenly over the lesion's extent."""
    if count < 1:
        raise SemisegInputError(None, f"--label-count must be at least 1, got {count}")
    voxels = np.asarray(cache.cases[case_id].slice_label_voxels)
    bearing = np.nonzero(voxels > 0)[0]
    if len(bearing) < count:
        raise SemisegInputError(cache.root, f"the case has {len(bearing)} annotated slices; cannot pick {count}")
    idx = np.linspace(0, len(bearing) - 1, count + 2)[1:-1] if count > 1 else [len(bearing) // 2]
    return sorted({int(bearing[int(round(i))]) for i in idx})


def run_patient(
    case_dir: str | PathLike,
    out: str | PathLike | None = None,
    method: str = "supervised",
    label_slices: list[int] | None = None,
    label_count: int | None = None,
    modalities: list[str] | None = None,
    slice_size: int = 128,
    preset: str = "default",
    overrides: list[str] | None = None,
    ddpm_run: str | PathLike | None = None,
    ddpm_preset: str = "small",
    ddpm_overrides: list[str] | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict:
    """Train on a few slices of one case and segment its whole volume.

    Args:
        case_dir: one case folder (BraTS naming) with its label file.
        out: output folder: cache, run(s), ``<case>.nii.gz``, ``slice_dice.csv``/``.png``; default
            ``<case>-patient`` in the current folder.
        label_slices: axial slice indices of the input volume to train on, or
        label_count: how many tumour-bearing slices to pick evenly over the lesion.

    Returns:
        ``{"segmentation", "plot", "csv", "annotated"}``.
    """
    from semiseg.runs.train import has_progress

    out = Path(out) if out is not None else Path(f"{Path(case_dir).resolve().name}-patient")
    dataset = discover(case_dir, modalities)
    if len(dataset.cases) != 1:
        raise SemisegInputError(case_dir, f"holds {len(dataset.cases)} cases; give one case folder")
    case = dataset.cases[0]
    if case.label is None:
        raise SemisegInputError(case_dir, "has no label file to take the annotated slices from")
    if (label_slices is None) == (label_count is None):
        raise SemisegInputError(None, "give either --label-slices or --label-count")
    if label_count is not None and label_count < 1:
        raise SemisegInputError(None, f"--label-count must be at least 1, got {label_count}")
    cls = get_method(method)
    # every setting is checked before the output folder is made
    check_output(out, "folder")
    pick_device(0, device)
    for files, chosen, extra in [(cls.config_files, preset, (overrides or []) + ["dims=2"])] + (
        [(["ddpm"], ddpm_preset, ddpm_overrides or [])] if cls.needs_ddpm and ddpm_run is None else []
    ):
        check_train_settings(load_config(files, chosen, None, extra)["train"])
    if ddpm_run is not None:
        read_run_record(ddpm_run)
    # a failed patient run keeps trained runs to resume, not its one-case cache (quick to redo)
    with removed_on_failure(out, keep=lambda folder: has_progress(folder, caches=False)):
        return _run_patient(
            dataset, case_dir, out, cls, label_slices, label_count, slice_size, preset, overrides, ddpm_run, ddpm_preset,
            ddpm_overrides, seed, device,
        )


def _run_patient(
    dataset: Dataset, case_dir: str | PathLike, out: Path, cls: type, label_slices: list[int] | None, label_count: int | None,
    slice_size: int, preset: str, overrides: list[str] | None, ddpm_run: str | PathLike | None, ddpm_preset: str,
    ddpm_overrides: list[str] | None, seed: int, device: str | None,
) -> dict:
    from semiseg.inference.predict import predict
    from semiseg.runs import ensure_trained

    method = cls.name
    case = dataset.cases[0]
    cache_dir = out / "cache"
    cache = Cache(cache_dir) if (cache_dir / "index.json").exists() else build_cache(dataset, cache_dir, slice_size=slice_size, test_fraction=0.0)
    geom = cache.cases[case.case_id].geometry
    if label_slices is not None:
        zs = []
        for s in label_slices:
            z = geom.cache_slice(s)
            if z is None:
                raise SemisegInputError(case_dir, f"slice {s} is outside the head/body of this volume")
            zs.append(z)
    else:
        zs = pick_slices(cache, case.case_id, int(label_count))
    annotated = sorted(geom.input_slice(z) for z in zs)
    log(f"[bold]patient[/] {case.case_id}: training {method} on slices {', '.join(map(str, annotated))}")

    if cls.needs_ddpm and ddpm_run is None:
        ddpm_run = ensure_trained(out / "ddpm", cache.root, "ddpm", preset=ddpm_preset, overrides=ddpm_overrides, device=device)
    run = ensure_trained(
        out / f"run-{method}", cache.root, method, preset=preset, overrides=(overrides or []) + ["dims=2"],
        labelled_items=[format_slice(case.case_id, z) for z in zs], seed=seed, ddpm_run=ddpm_run if cls.needs_ddpm else None, device=device,
    )
    seg_path = predict(run, case_dir, out, device=device)[0]

    pred, _ = read_label(seg_path)
    gt, header = read_label(case.label, allowed=dataset.scheme.values)
    axis, _ = geom._axial_axis()
    spacing = [s for i, s in enumerate(header.spacing) if i != axis]
    rows, curves = [], {r: [] for r in dataset.scheme.regions}
    indices = []
    for s in range(gt.shape[axis]):
        g, p = np.take(gt, s, axis=axis), np.take(pred, s, axis=axis)
        if not (g.any() or p.any()):
            continue
        metrics = region_metrics(p, g, dataset.scheme, spacing)
        indices.append(s)
        for region, vals in metrics.items():
            curves[region].append(vals["dice"])
            rows.append({"slice": s, "annotated": int(s in annotated), "region": region, "dice": vals["dice"], "hd95": vals["hd95"]})
    write_csv(out / "slice_dice.csv", rows, ["slice", "annotated", "region", "dice", "hd95"])
    plot = figures.slice_dice_plot(indices, curves, annotated, out / "slice_dice.png", f"{case.case_id}: {method}, {len(zs)} annotated slices")
    return {"segmentation": seg_path, "plot": plot, "csv": out / "slice_dice.csv", "annotated": annotated}
