"""The preprocessed cache: memory-mapped arrays on disk plus a JSON index.

Layout::

    CACHE/index.json                 settings, label scheme, normalisation, split, per-case geometry
    CACHE/cases/<id>.slices.npy      (Z', C, S, S) float16: axial slices, square-padded, resized to S
    CACHE/cases/<id>.slabels.npy     (Z', S, S) uint8 class indices (labelled cases)
    CACHE/cases/<id>.volume.npy      (C, X', Y', Z') float16: the cropped canonical volume (3D methods)
    CACHE/cases/<id>.vlabel.npy      (X', Y', Z') uint8 class indices (labelled cases)

Arrays are opened with ``np.load(mmap_mode="r")``, so a dataset of any size is read lazily and
never has to fit in memory; one file per case keeps writing streamable (no global concatenation).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from semiseg.data.cases import Dataset
from semiseg.data.labels import LabelScheme
from semiseg.data.loading import check_case_headers, load_case
from semiseg.errors import SemisegInputError
from semiseg.files import atomic_dir, check_output, os_problem, read_json, write_json
from semiseg.preprocess.geometry import CaseGeometry
from semiseg.preprocess.normalise import Normaliser, fit_ct_stats, sample_foreground
from semiseg.preprocess.pipeline import case_slices, prepare_case
from semiseg.preprocess.splits import patient_split

CACHE_VERSION = 1
INDEX = "index.json"
DIMS = ("2d", "3d")


@dataclass(frozen=True)
class DataInfo:
    """What a trained model needs to know about its data; stored in every run's ``config.json``.

    ``modalities`` in channel order, ``kinds`` MRI/CT per modality, the label ``scheme``, the
    ``normaliser`` that prediction applies to new cases, the 2D ``slice_size`` and the dataset
    ``format`` (brats2021, brats2023, nnunet).
    """

    modalities: tuple[str, ...]
    kinds: dict[str, str]
    scheme: LabelScheme
    normaliser: Normaliser
    slice_size: int
    format: str

    @property
    def channels(self) -> int:
        return len(self.modalities)

    def to_json(self) -> dict[str, Any]:
        return {
            "modalities": list(self.modalities),
            "kinds": dict(self.kinds),
            "scheme": self.scheme.to_json(),
            "normalisation": self.normaliser.to_json(),
            "slice_size": self.slice_size,
            "format": self.format,
        }

    @classmethod
    def of(cls, data: "DataInfo | Mapping[str, Any]") -> "DataInfo":
        """``data`` itself, or the record its JSON form describes (as in a run's ``config.json``);
        in a hand-written mapping, such as a benchmark's without a cache, ``kinds`` default to MRI
        for every modality, the normalisation to theirs and the format to nnunet."""
        if isinstance(data, DataInfo):
            return data
        modalities = list(data["modalities"])
        kinds = dict(data.get("kinds") or {m: "MRI" for m in modalities})
        filled = {"kinds": kinds, "normalisation": {"kinds": [kinds[m] for m in modalities]}, "format": "nnunet", **data}
        return cls.from_json(filled)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DataInfo":
        return cls(
            modalities=tuple(obj["modalities"]),
            kinds=dict(obj["kinds"]),
            scheme=LabelScheme.from_json(obj["scheme"]),
            normaliser=Normaliser.from_json(obj["normalisation"]),
            slice_size=int(obj["slice_size"]),
            format=str(obj["format"]),
        )


@dataclass
class CacheCase:
    """Index entry of one cached case; ``role`` is ``train``, ``test`` or ``unlabelled``."""

    case_id: str
    role: str
    labelled: bool
    geometry: CaseGeometry
    n_slices: int
    slice_label_voxels: list[int]
    sources: dict[str, Any]

    def to_json(self) -> dict:
        return {
            "id": self.case_id,
            "role": self.role,
            "labelled": self.labelled,
            "geometry": self.geometry.to_json(),
            "n_slices": self.n_slices,
            "slice_label_voxels": self.slice_label_voxels,
            "sources": self.sources,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "CacheCase":
        return cls(
            obj["id"], obj["role"], obj["labelled"], CaseGeometry.from_json(obj["geometry"]),
            obj["n_slices"], obj["slice_label_voxels"], obj["sources"],
        )


class Cache:
    """A prepared dataset on disk. Arrays are memory-mapped lazily, one file per case."""

    def __init__(self, root: str | PathLike) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise SemisegInputError(self.root, f"is not a semiseg cache (no {INDEX}); create one with `semiseg prepare`")
        index = read_json(index_path, "cache index")
        if index.get("version") != CACHE_VERSION:
            raise SemisegInputError(index_path, f"cache version {index.get('version')} is not {CACHE_VERSION}; prepare it again")
        for key, kind in (("modalities", list), ("kinds", dict), ("scheme", dict), ("normalisation", dict), ("slice_size", int),
                          ("dims", list), ("cases", list), ("format", str)):
            if not isinstance(index.get(key), kind):
                raise SemisegInputError(index_path, f"cache index lacks {key!r} (a JSON {kind.__name__}); prepare the cache again")
        self.index = index
        try:
            self.modalities: tuple[str, ...] = tuple(str(m) for m in index["modalities"])
            self.scheme = LabelScheme.from_json(index["scheme"])
            self.normaliser = Normaliser.from_json(index["normalisation"])
            self.slice_size: int = index["slice_size"]
            self.dims: tuple[str, ...] = tuple(index["dims"])
            self.cases: dict[str, CacheCase] = {c["id"]: CacheCase.from_json(c) for c in index["cases"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SemisegInputError(index_path, f"cache index is malformed ({type(exc).__name__}: {exc}); prepare the cache again") from None
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def channels(self) -> int:
        return len(self.modalities)

    def __getstate__(self) -> dict[str, Any]:
        # sent to DataLoader workers without its open memory maps (pickling one copies the whole
        # array); each process maps the files itself
        return {**self.__dict__, "_arrays": {}}

    def ids(self, role: str | None = None) -> list[str]:
        """Case ids, optionally only those with ``role`` (train, test, unlabelled)."""
        return [cid for cid, c in self.cases.items() if role is None or c.role == role]

    def _array(self, case_id: str, kind: str) -> np.ndarray:
        key = f"{case_id}.{kind}"
        if key not in self._arrays:
            path = self.root / "cases" / f"{key}.npy"
            if not path.exists():
                need = "3d" if kind in ("volume", "vlabel") else "2d"
                if need not in self.dims:
                    raise SemisegInputError(self.root, f"was prepared without {need} data; run `semiseg prepare --dims 2d,3d`")
                raise SemisegInputError(path, "is missing from the cache")
            try:
                array = np.load(path, mmap_mode="r")  # never allow_pickle: an object array is refused
            except OSError as exc:
                raise SemisegInputError(path, f"cannot be read: {os_problem(exc)}") from None
            except ValueError as exc:
                raise SemisegInputError(path, f"is not a cache array ({exc}); prepare the cache again") from None
            self._check_array(path, case_id, kind, array)
            self._arrays[key] = array
        return self._arrays[key]

    def _check_array(self, path: Path, case_id: str, kind: str, array: np.ndarray) -> None:
        """The array has the dtype and shape the index promises (what `build_cache` writes)."""
        s, c, n = self.slice_size, self.channels, self.cases[case_id].n_slices
        crop = tuple(self.cases[case_id].geometry.crop_shape)
        expected = {
            "slices": (np.float16, (n, c, s, s)), "slabels": (np.uint8, (n, s, s)),
            "volume": (np.float16, (c, *crop)), "vlabel": (np.uint8, crop),
        }[kind]
        if array.dtype != expected[0] or tuple(array.shape) != expected[1]:
            raise SemisegInputError(
                path, f"holds {array.dtype} of shape {tuple(array.shape)}, not the {np.dtype(expected[0])} of shape {expected[1]} "
                "the cache index describes; prepare the cache again"
            )

    def check_dims(self, dims: object, setting: str = "dims") -> int:
        """``dims`` (the value of ``setting``) as 2 or 3, if this cache holds data of that kind."""
        if dims not in (2, 3):
            raise SemisegInputError(None, f"{setting} must be 2 or 3, got {dims!r}")
        if f"{dims}d" not in self.dims:
            raise SemisegInputError(self.root, f"was prepared without {dims}D data; prepare it with --dims 2d,3d")
        return int(dims)  # type: ignore[call-overload]

    def check_arrays(self, case_ids: list[str], dims: int) -> None:
        """Open (memory-map, read nothing) every array a run on ``case_ids`` reads, so damaged files
        are found before the run starts."""
        for cid in case_ids:
            if cid not in self.cases:
                raise SemisegInputError(self.root / INDEX, f"has no case {cid!r}")
            kinds = ("slices", "slabels") if dims == 2 else ("volume", "vlabel")
            self._array(cid, kinds[0])
            if self.cases[cid].labelled:
                self._array(cid, kinds[1])

    def slices(self, case_id: str) -> np.ndarray:
        """(Z', C, S, S) float16 memmap of a case's axial slices."""
        return self._array(case_id, "slices")

    def slice_labels(self, case_id: str) -> np.ndarray:
        """(Z', S, S) uint8 memmap of a labelled case's slice class maps."""
        return self._array(case_id, "slabels")

    def volume(self, case_id: str) -> np.ndarray:
        """(C, X', Y', Z') float16 memmap of a case's cropped volume."""
        return self._array(case_id, "volume")

    def volume_label(self, case_id: str) -> np.ndarray:
        """(X', Y', Z') uint8 memmap of a labelled case's class map."""
        return self._array(case_id, "vlabel")

    def data_info(self) -> DataInfo:
        """What a trained model needs to know about this cache's data."""
        return DataInfo(self.modalities, dict(self.index["kinds"]), self.scheme, self.normaliser, self.slice_size, self.index["format"])


def _ct_statistics(dataset: Dataset, cases: list) -> dict[int, dict]:
    ct_channels = [i for i, m in enumerate(dataset.modalities) if dataset.kinds[m] == "CT"]
    if not ct_channels:
        return {}
    if not cases:
        raise SemisegInputError(dataset.root, "CT normalisation needs at least one labelled case")
    rng = np.random.default_rng(0)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    for case in cases:
        loaded = load_case(case, dataset.scheme)
        for c in ct_channels:
            samples[c].append(sample_foreground(loaded.image[c], loaded.label, rng))
    return {c: fit_ct_stats(samples[c]) for c in ct_channels}


def build_cache(
    dataset: Dataset,
    out: str | PathLike,
    slice_size: int = 128,
    dims: tuple[str, ...] = DIMS,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Cache:
    """Preprocess ``dataset`` into a cache at ``out`` and return it opened.

    The cache is built under a temporary name and renamed when complete, so a failure (bad input,
    interruption) leaves no cache behind. ``progress(done, total)`` is called after each case.
    """
    out = Path(out)
    bad_dims = [d for d in dims if d not in DIMS]
    if bad_dims or not dims:
        raise SemisegInputError(None, f"dims must be a subset of {DIMS}, got {dims}")
    if slice_size < 16:
        raise SemisegInputError(None, f"slice size must be at least 16, got {slice_size}")
    check_output(out, "folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SemisegInputError(out, "already exists and is not empty (use --overwrite to replace it)")
    # fail fast on missing/mismatched files before any heavy work
    for case in dataset.cases:
        check_case_headers(case)

    labelled = [c.case_id for c in dataset.cases if c.labelled]
    train, test = patient_split(labelled, test_fraction, split_seed)
    roles = {**{cid: "train" for cid in train}, **{cid: "test" for cid in test}}
    train_cases = [c for c in dataset.cases if roles.get(c.case_id) == "train"]
    normaliser = Normaliser([dataset.kinds[m] for m in dataset.modalities], _ct_statistics(dataset, train_cases))
    pad = normaliser.background_value()

    entries = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "cases").mkdir()
        for i, case in enumerate(dataset.cases):
            prepared = prepare_case(case, dataset.scheme, normaliser)
            base = tmp / "cases" / case.case_id
            label_voxels: list[int] = []
            if "2d" in dims:
                img, lbl = case_slices(prepared, slice_size, pad)
                np.save(f"{base}.slices.npy", img.astype(np.float16))
                if lbl is not None:
                    np.save(f"{base}.slabels.npy", lbl)
                    label_voxels = [int(v) for v in (lbl > 0).sum(axis=(1, 2))]
            if "3d" in dims:
                np.save(f"{base}.volume.npy", prepared.image.astype(np.float16))
                if prepared.label is not None:
                    np.save(f"{base}.vlabel.npy", prepared.label)
            if not label_voxels and prepared.label is not None:
                label_voxels = [int(v) for v in (prepared.label > 0).sum(axis=(0, 1))]
            entries.append(
                CacheCase(
                    case.case_id,
                    roles.get(case.case_id, "unlabelled"),
                    case.labelled,
                    prepared.geometry,
                    prepared.geometry.crop_shape[2],
                    label_voxels,
                    {"images": {m: str(p) for m, p in case.images.items()}, "label": None if case.label is None else str(case.label)},
                ).to_json()
            )
            if progress:
                progress(i + 1, len(dataset.cases))
        write_json(
            tmp / INDEX,
            {
                "version": CACHE_VERSION,
                "source": str(dataset.root),
                "format": dataset.format,
                "modalities": list(dataset.modalities),
                "kinds": dataset.kinds,
                "scheme": dataset.scheme.to_json(),
                "normalisation": normaliser.to_json(),
                "slice_size": slice_size,
                "dims": list(dims),
                "split": {"seed": split_seed, "test_fraction": test_fraction, "train": train, "test": test},
                "cases": entries,
            },
        )
    return Cache(out)
