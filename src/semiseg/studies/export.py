"""The nnU-Net bridge, outward: a run's (or a study's) labelled items as an nnU-Net v2 raw
dataset, so nnU-Net, the field's baseline, trains on exactly the labels a semiseg run had.

What is written, from the prepared cache (the data every semiseg method sees)::

    Dataset<ID>_<NAME>/dataset.json          channels, the scheme's classes as consecutive labels
    Dataset<ID>_<NAME>/imagesTr, labelsTr    2D: each labelled slice as a one-slice image;
                                             3D: each labelled case's cropped volume
    Dataset<ID>_<NAME>/imagesTs              every test patient: 2D its stack of cached slices,
                                             3D its cropped volume (their labels stay out)
    Dataset<ID>_<NAME>/splits_final.json     cross-validation folds over the labelled items,
                                             grouped by patient; the test patients are in none
    Dataset<ID>_<NAME>/semiseg_export.json   what was exported from where (read back by studies'
                                             ``external`` methods to score nnU-Net's predictions)

Images are the cache's normalised intensities and labels its class indices, on the cache's grid;
predictions nnU-Net makes for ``imagesTs`` are therefore on that grid too and are scored by a
study exactly like semiseg's own methods (``space: export``). One-slice 2D images get a slice
spacing of 999 mm, nnU-Net's own convention for 2D data, so it plans a 2D configuration and
predicts the test stacks slice by slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

import semiseg
from semiseg.data.io import write_nifti
from semiseg.errors import SemisegInputError
from semiseg.files import atomic_dir, write_json, write_text
from semiseg.preprocess.cache import Cache
from semiseg.training.plan import DataPlan

EXPORT_INFO = "semiseg_export.json"
SPLITS = "splits_final.json"
ENDING = ".nii.gz"
#: nnU-Net's slice spacing for 2D images (its NaturalImage2DIO reports 999): never resampled along
SLICE_AXIS_SPACING = 999.0
FOLDS = 5


@dataclass(frozen=True)
class Export:
    """One exported dataset: its folder, training identifiers (nnU-Net case names) -> semiseg
    items, and the test patients in ``imagesTs``."""

    folder: Path
    training: dict[str, str]
    test: tuple[str, ...]
    dims: int


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's ``Dataset<3-digit ID>_<name>`` (letters, digits, ``-`` and ``_`` kept)."""
    if not 1 <= dataset_id <= 999:
        raise SemisegInputError(None, f"--id {dataset_id}: nnU-Net dataset IDs are 1 to 999")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_") or "semiseg"
    return f"Dataset{dataset_id:03d}_{clean}"


def item_identifier(item: str, dims: int) -> str:
    """nnU-Net case name of a labelled item: ``case_z070`` for slice 70 of a case (2D), the case (3D)."""
    if dims == 3:
        return item
    case, _, z = item.rpartition(":")
    return f"{case}_z{int(z):03d}"


def patient_folds(items: dict[str, str], dims: int, folds: int = FOLDS, seed: int = 0) -> list[dict[str, list[str]]]:
    """Cross-validation folds over the training identifiers with every patient's items in one fold
    (nnU-Net's own random folds would split one patient's slices between training and validation).
    With a single patient there is one fold that validates on its training data."""
    patient = {ident: (item.rpartition(":")[0] if dims == 2 else item) for ident, item in items.items()}
    patients = sorted(set(patient.values()))
    if len(patients) < 2:
        return [{"train": sorted(items), "val": sorted(items)}]
    k = min(folds, len(patients))
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    fold_of = {p: i % k for i, p in enumerate(order)}
    return [
        {"train": sorted(i for i in items if fold_of[patient[i]] != f), "val": sorted(i for i in items if fold_of[patient[i]] == f)}
        for f in range(k)
    ]


def _labels(cache: Cache) -> dict[str, int]:
    names: dict[str, int] = {}
    for i, name in enumerate(cache.scheme.class_names):
        names[name if name not in names else f"{name} ({i})"] = i
    return names


def _channel_names(cache: Cache) -> dict[str, str]:
    # the cache is normalised already: a channel called "CT" would make nnU-Net clip and scale it again
    return {str(i): (f"{m} (normalised)" if cache.index["kinds"].get(m) == "CT" else m) for i, m in enumerate(cache.modalities)}


def _write_case(folder: Path, ident: str, image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, label_folder: Path | None) -> None:
    """``image`` (C, X, Y, Z) as one file per channel, ``label`` (X, Y, Z) as class indices."""
    for c, channel in enumerate(np.asarray(image, dtype=np.float32)):
        write_nifti(folder / f"{ident}_{c:04d}{ENDING}", channel, affine)
    if label is not None and label_folder is not None:
        write_nifti(label_folder / f"{ident}{ENDING}", np.asarray(label, dtype=np.uint8), affine)


def _slice_affine(cache: Cache, case_id: str) -> np.ndarray:
    sx, sy = cache.cases[case_id].geometry.slice_spacing(cache.slice_size)
    return np.diag([sx, sy, SLICE_AXIS_SPACING, 1.0])


def _volume_affine(cache: Cache, case_id: str) -> np.ndarray:
    return np.diag([*cache.cases[case_id].geometry.spacing, 1.0])


def _commands(dataset_id: int, dims: int, folds: int, folder: Path) -> str:
    config = "2d" if dims == 2 else "3d_fullres"
    fold_list = " ".join(str(f) for f in range(folds))
    return "\n".join([
        f"# {folder.name}: exported by semiseg {semiseg.__version__}",
        "",
        "Train nnU-Net on exactly these labelled items and predict the held-out test patients:",
        "",
        "```bash",
        f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c {config} --verify_dataset_integrity",
        f"cp {SPLITS} \"$nnUNet_preprocessed/{folder.name}/\"     # folds grouped by patient",
        f"for fold in {fold_list}; do nnUNetv2_train {dataset_id} {config} $fold; done",
        f"nnUNetv2_predict -i imagesTs -o PREDICTIONS -d {dataset_id} -c {config} -f {fold_list}",
        "```",
        "",
        "Then score PREDICTIONS like semiseg's own methods: list it under `external:` in the study",
        "(`space: export`), e.g. `external: {nnunet: {predictions: nnunet/n{budget}-s{seed}, space: export}}`.",
        "",
    ])


def export_plan(
    cache: Cache, plan: DataPlan, out: str | PathLike, dataset_id: int, name: str, source: str, overwrite: bool = False
) -> Export:
    """Write the nnU-Net raw dataset of ``plan``'s labelled items and test patients under ``out``
    (built under a temporary name: a failure leaves nothing behind)."""
    folder = Path(out) / dataset_folder_name(dataset_id, name)
    if folder.exists() and not overwrite:
        raise SemisegInputError(folder, "already exists (use --overwrite to replace it)")
    dims = plan.dims
    if f"{dims}d" not in cache.dims:
        raise SemisegInputError(cache.root, f"was prepared without {dims}D data; prepare it with --dims 2d,3d")
    training = {item_identifier(item, dims): item for item in plan.labelled}
    if not training:
        raise SemisegInputError(None, f"{source} has no labelled items to export")
    folds = patient_folds(training, dims)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for ident, item in training.items():
            if dims == 2:
                case, _, z = item.rpartition(":")
                image = np.asarray(cache.slices(case)[int(z)])[..., None]  # (C, S, S, 1)
                label = np.asarray(cache.slice_labels(case)[int(z)])[..., None]
                _write_case(tmp / "imagesTr", ident, image, _slice_affine(cache, case), label, tmp / "labelsTr")
            else:
                _write_case(tmp / "imagesTr", ident, cache.volume(item), _volume_affine(cache, item), cache.volume_label(item), tmp / "labelsTr")
        for case in plan.test:
            if dims == 2:
                stack = np.moveaxis(np.asarray(cache.slices(case)), 0, -1)  # (Z, C, S, S) -> (C, S, S, Z)
                _write_case(tmp / "imagesTs", case, stack, _slice_affine(cache, case), None, None)
            else:
                _write_case(tmp / "imagesTs", case, cache.volume(case), _volume_affine(cache, case), None, None)
        write_json(tmp / "dataset.json", {
            "channel_names": _channel_names(cache),
            "labels": _labels(cache),
            "numTraining": len(training),
            "file_ending": ENDING,
            "name": folder.name,
            "description": f"semiseg export of {source}: {len(training)} labelled {'slices' if dims == 2 else 'cases'}, "
                           f"{len(plan.test)} held-out test patients in imagesTs",
            "reference": f"semiseg {semiseg.__version__} export-nnunet",
            "licence": "that of the source data",
            "converted_by": f"semiseg {semiseg.__version__}",
        })
        write_json(tmp / SPLITS, folds)
        write_json(tmp / EXPORT_INFO, {
            "semiseg_version": semiseg.__version__,
            "source": source,
            "cache": str(cache.root.resolve()),
            "dims": dims,
            "plan": plan.to_json(),
            "training": training,
            "test": list(plan.test),
            "slice_axis_spacing": SLICE_AXIS_SPACING if dims == 2 else None,
        })
        write_text(tmp / "README.md", _commands(dataset_id, dims, len(folds), folder))
    return Export(folder, training, tuple(plan.test), dims)


def read_export_info(folder: str | PathLike) -> dict[str, Any]:
    """The ``semiseg_export.json`` of an exported dataset."""
    from semiseg.files import read_json

    return read_json(Path(folder) / EXPORT_INFO, "semiseg export record")


def export_source(
    source: str | PathLike,
    out: str | PathLike,
    dataset_id: int = 500,
    name: str | None = None,
    budgets: list[int] | None = None,
    seeds: list[int] | None = None,
    overwrite: bool = False,
) -> list[Export]:
    """Export a run folder (its labelled items), or a study (a study YAML file or study folder):
    one dataset per budget and seed, with the labelled items its runs have (the runs need not
    exist yet: the items follow from the cache, budget and seed). Dataset IDs count up from
    ``dataset_id``."""
    from semiseg.runs import read_run_record
    from semiseg.runs.record import CONFIG
    from semiseg.studies.sweep import load_study, prepare_study_cache, run_path, study_plan

    source = Path(source)
    if source.is_dir() and (source / CONFIG).exists():
        if budgets or seeds:
            raise SemisegInputError(None, "--budgets and --seeds choose runs of a study; a run folder has one set of labelled items")
        record = read_run_record(source)
        if record.method == "ddpm":
            raise SemisegInputError(source, "is a DDPM pretraining run; it has no labelled items to export")
        return [export_plan(Cache(record.cache), record.plan, out, dataset_id, name or source.name, str(source), overwrite)]
    if source.is_dir() and (source / "study.json").exists():
        from semiseg.files import read_json

        study = load_study(None, **read_json(source / "study.json", "study record"))
    elif source.is_file():
        study = load_study(source)
    else:
        raise SemisegInputError(source, "is neither a run folder (config.json), a study folder (study.json) nor a study file")
    cache = prepare_study_cache(study)
    chosen_budgets, chosen_seeds = budgets or study.budgets, seeds or study.seeds
    exports = []
    for i, (b, s) in enumerate((b, s) for b in chosen_budgets for s in chosen_seeds):
        plan = None
        for method in study.methods:  # a finished run's record is what it trained on
            record_path = run_path(study.out, method, b, s) / CONFIG
            if record_path.exists():
                plan = read_run_record(record_path.parent).plan
                break
        plan = plan or study_plan(study, cache, b, s)
        base = name or Path(study.out).name
        exports.append(export_plan(cache, plan, out, dataset_id + i, f"{base}_n{b}_s{s}", f"{study.out} budget {b} seed {s}", overwrite))
    return exports
