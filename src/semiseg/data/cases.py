"""Case discovery: find the cases of a dataset folder and the files of each case.

Formats recognised automatically:

* BraTS 2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (labels 0/1/2/4)
* BraTS 2023: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (labels 0/1/2/3)
* nnU-Net v2 raw: ``dataset.json``, ``imagesTr/<case>_0000<file_ending>``,
  ``labelsTr/<case><file_ending>``, ``imagesTs/``, with the ``file_ending`` dataset.json names
  (``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd``) and its labels, region-based ones included

A single BraTS case folder is a dataset of one case. Cases without a label file are kept as
unlabelled cases. BraTS modalities are named as in 2021 (``t1, t1ce, t2, flair``) whatever the
year, so a model trained on one naming predicts on the other; the 2023 names work as aliases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from semiseg.data.io import IMAGE_ENDINGS, strip_ending
from semiseg.data.labels import BRATS2021, BRATS2023, LabelScheme, scheme_from_dataset_json
from semiseg.errors import SemisegInputError
from semiseg.files import os_problem, read_json

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
#: BraTS 2023 file suffix -> the 2021 name semiseg uses
BRATS2023_TO_2021 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
#: every name a user may type for a BraTS modality
MODALITY_ALIASES = {
    **BRATS2023_TO_2021,
    "t1post": "t1ce", "t1gd": "t1ce", "t1c": "t1ce", "t1ce": "t1ce",
    "t1": "t1", "t1w": "t1", "t2": "t2", "t2w": "t2", "flair": "flair", "t2flair": "flair",
}


@dataclass
class Case:
    """One patient: modality name -> image file, and the label file if annotated."""

    case_id: str
    images: dict[str, Path]
    label: Path | None = None

    @property
    def labelled(self) -> bool:
        return self.label is not None


@dataclass
class Dataset:
    """A discovered dataset.

    Attributes:
        root: the folder given by the user.
        format: ``brats2021``, ``brats2023`` or ``nnunet``.
        modalities: channel names in channel order (the user's selection, or all available).
        kinds: per modality, ``"MRI"`` or ``"CT"`` (CT gets Hounsfield clipping, not z-score).
        scheme: the label scheme of the dataset.
        cases: cases sorted by id.
    """

    root: Path
    format: str
    modalities: tuple[str, ...]
    kinds: dict[str, str]
    scheme: LabelScheme
    cases: list[Case]
    notes: list[str] = field(default_factory=list)

    @property
    def labelled_cases(self) -> list[Case]:
        return [c for c in self.cases if c.labelled]


def canonical_modality(name: str) -> str:
    """Return semiseg's name for a modality typed by a user (``T2F`` -> ``flair``)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    return MODALITY_ALIASES.get(key, name.strip().lower())


def _list(folder: Path) -> list[Path]:
    """The entries of a folder; one that cannot be listed (permission denied) is a one-line error."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise SemisegInputError(folder, f"cannot be listed: {os_problem(exc)}") from None


def _brats_files(folder: Path) -> tuple[str, dict[str, Path], Path | None] | None:
    """Recognise a BraTS case folder; return (format, modality files, seg file) or None."""
    prefix = folder.name
    found: dict[str, dict[str, Path]] = {"brats2021": {}, "brats2023": {}}
    seg: dict[str, Path] = {}
    for f in _list(folder):
        stem = strip_ending(f.name)
        if stem is None:
            continue
        for fmt, sep in (("brats2021", "_"), ("brats2023", "-")):
            if not stem.startswith(prefix + sep):
                continue
            suffix = stem[len(prefix) + 1 :].lower()
            if suffix == "seg":
                seg[fmt] = f
            elif fmt == "brats2021" and suffix in BRATS_MODALITIES:
                found[fmt][suffix] = f
            elif fmt == "brats2023" and suffix in BRATS2023_TO_2021:
                found[fmt][BRATS2023_TO_2021[suffix]] = f
    for fmt in ("brats2021", "brats2023"):
        if found[fmt]:
            return fmt, found[fmt], seg.get(fmt)
    return None


def _select(
    available_per_case: dict[str, set[str]], order: tuple[str, ...], wanted: list[str] | None, root: Path
) -> tuple[tuple[str, ...], list[str]]:
    """Choose the channels: the user's selection (checked in every case) or all common ones."""
    notes: list[str] = []
    if wanted:
        chosen = []
        for w in wanted:
            m = canonical_modality(w)
            if m in chosen:
                continue
            chosen.append(m)
        for case_id, avail in available_per_case.items():
            missing = [m for m in chosen if m not in avail]
            if missing:
                raise SemisegInputError(
                    root / case_id,
                    f"modality {', '.join(missing)} not found; this case has {', '.join(sorted(avail)) or 'none'}",
                )
        return tuple(chosen), notes
    common = set.intersection(*available_per_case.values())
    if not common:
        raise SemisegInputError(root, "no modality is present in every case")
    everything = set.union(*available_per_case.values())
    if everything != common:
        notes.append(
            f"using the modalities every case has ({', '.join(m for m in order if m in common)}); "
            f"ignoring {', '.join(sorted(everything - common))}, which some cases lack"
        )
    ordered = [m for m in order if m in common] + sorted(common - set(order))
    return tuple(ordered), notes


def _discover_brats(root: Path, modalities: list[str] | None) -> Dataset | None:
    single = _brats_files(root) if root.is_dir() else None
    folders = [root] if single else [p for p in _list(root) if p.is_dir()]
    cases: list[tuple[str, dict[str, Path], Path | None]] = []
    fmts = set()
    for folder in folders:
        hit = single if folder is root else _brats_files(folder)
        if hit is None:
            continue
        fmt, images, seg = hit
        fmts.add(fmt)
        cases.append((folder.name, images, seg))
    if not cases:
        return None
    if len(fmts) > 1:
        raise SemisegInputError(root, "mixes BraTS 2021 (_t1ce) and BraTS 2023 (-t1c) file naming")
    fmt = fmts.pop()
    chosen, notes = _select({cid: set(imgs) for cid, imgs, _ in cases}, BRATS_MODALITIES, modalities, root)
    return Dataset(
        root=root,
        format=fmt,
        modalities=chosen,
        kinds={m: "MRI" for m in chosen},
        scheme=BRATS2021 if fmt == "brats2021" else BRATS2023,
        cases=[Case(cid, {m: imgs[m] for m in chosen}, seg) for cid, imgs, seg in cases],
        notes=notes,
    )


def _read_dataset_json(path: Path) -> dict:
    meta = read_json(path, "dataset.json")
    for key in ("channel_names", "labels"):
        if not isinstance(meta.get(key), dict) or not meta[key]:
            raise SemisegInputError(path, f"has no {key!r} entry (a JSON object)")
    ending = meta.setdefault("file_ending", ".nii.gz")
    if ending not in IMAGE_ENDINGS:
        raise SemisegInputError(path, f"file_ending {ending!r} is not one semiseg reads ({', '.join(IMAGE_ENDINGS)})")
    order = meta.get("regions_class_order")
    if order is not None and not isinstance(order, list):
        raise SemisegInputError(path, f"regions_class_order must be a list, got {order!r}")
    return meta


def _discover_nnunet(root: Path, modalities: list[str] | None) -> Dataset:
    meta_path = root / "dataset.json"
    meta = _read_dataset_json(meta_path)
    ending = meta["file_ending"]
    try:
        channels = {int(k): str(v) for k, v in meta["channel_names"].items()}
    except ValueError:
        raise SemisegInputError(meta_path, f"channel_names keys must be channel numbers, got {list(meta['channel_names'])}") from None
    names = {i: canonical_modality(n) for i, n in channels.items()}
    kinds = {names[i]: ("CT" if n.strip().upper() == "CT" else "MRI") for i, n in channels.items()}
    scheme = scheme_from_dataset_json(meta["labels"], str(meta_path), meta.get("regions_class_order"))
    pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")

    cases: list[Case] = []
    for sub, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / sub
        if not folder.is_dir():
            continue
        per_case: dict[str, dict[str, Path]] = {}
        for f in _list(folder):
            m = pattern.match(f.name)
            if not m:
                continue
            idx = int(m.group(2))
            if idx not in names:
                raise SemisegInputError(f, f"channel {idx:04d} is not in dataset.json's channel_names")
            per_case.setdefault(m.group(1), {})[names[idx]] = f
        for cid, imgs in per_case.items():
            label = root / "labelsTr" / f"{cid}{ending}" if labelled else None
            cases.append(Case(cid, imgs, label if label is not None and label.exists() else None))
    if not cases:
        raise SemisegInputError(root, f"dataset.json found but no images named <case>_0000{ending} in imagesTr/ or imagesTs/")
    order = tuple(names[i] for i in sorted(names))
    chosen, notes = _select({c.case_id: set(c.images) for c in cases}, order, modalities, root)
    for c in cases:
        c.images = {m: c.images[m] for m in chosen}
    cases.sort(key=lambda c: c.case_id)
    return Dataset(root, "nnunet", chosen, {m: kinds[m] for m in chosen}, scheme, cases, notes)


def discover(path: str | PathLike, modalities: list[str] | None = None) -> Dataset:
    """Find the cases in ``path`` (a dataset folder or one BraTS case folder).

    Args:
        path: the folder.
        modalities: channels to use, e.g. ``["flair", "t1ce"]``; default every channel all cases have.

    Returns:
        the :class:`Dataset`; raises SemisegInputError when nothing usable is found.
    """
    root = Path(path)
    if not root.exists():
        raise SemisegInputError(root, "folder not found")
    if not root.is_dir():
        raise SemisegInputError(root, "is a file; expected a dataset or case folder")
    if (root / "dataset.json").exists():
        return _discover_nnunet(root, modalities)
    found = _discover_brats(root, modalities)
    if found is None:
        raise SemisegInputError(
            root,
            "no cases found: expected BraTS 2021 folders (<case>/<case>_flair.nii.gz), "
            "BraTS 2023 folders (<case>/<case>-t2f.nii.gz) or an nnU-Net dataset (dataset.json, imagesTr/)",
        )
    return found
