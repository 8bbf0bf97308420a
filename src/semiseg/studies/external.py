"""The nnU-Net bridge, inward: predictions made outside semiseg (nnU-Net trained on an
``export-nnunet`` dataset, or any tool) scored by a study exactly like its own methods.

A study lists them under ``external``, one folder of predictions per budget and seed::

    external:
      nnunet: {predictions: nnunet-preds/n{budget}-s{seed}, space: export}
      other-tool: {predictions: other/n{budget}-s{seed}, space: original}

holding ``<test case><ending>`` for every test patient (any format semiseg reads). ``space``
says which grid they are on:

* ``export``: the grid ``semiseg export-nnunet`` wrote ``imagesTs`` on (2D: the stack of cached
  slices, 3D: the cropped volume), values the exported class indices;
* ``original``: the test images' own grid and the dataset's label values, as ``semiseg predict``
  writes them; they are brought onto the cache's grid the way ground truth is when preparing
  (reoriented, cropped, and in 2D squared and resized with nearest-neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg.data.io import check_same_geometry, read_label, strip_ending
from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.preprocess.geometry import resize_stack, square_slices, to_canonical

SPACES = ("export", "original")


@dataclass(frozen=True)
class ExternalMethod:
    """An external method of a study: ``predictions`` is a folder path with ``{budget}`` and
    ``{seed}`` placeholders; ``space`` is ``export`` or ``original`` (see the module docstring)."""

    name: str
    predictions: str
    space: str = "export"

    def folder(self, budget: int, seed: int) -> Path:
        return Path(self.predictions.format(budget=budget, seed=seed))

    @classmethod
    def parse(cls, name: str, spec: Any, base: Path, source: Any) -> "ExternalMethod":
        """An entry of a study's ``external`` mapping: a folder template, or ``{predictions, space}``."""
        if isinstance(spec, str):
            spec = {"predictions": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("predictions"), str) or set(spec) - {"predictions", "space"}:
            raise SemisegInputError(source, f"external method {name!r}: expected {{predictions: FOLDER, space: export|original}}, got {spec!r}")
        space = spec.get("space", "export")
        if space not in SPACES:
            raise SemisegInputError(source, f"external method {name!r}: space must be export or original, got {space!r}")
        try:
            spec["predictions"].format(budget=0, seed=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise SemisegInputError(source, f"external method {name!r}: predictions may use {{budget}} and {{seed}} only ({exc})") from None
        folder = spec["predictions"]
        return cls(name, folder if Path(folder).is_absolute() else str(base / folder), space)


def prediction_files(method: ExternalMethod, budget: int, seed: int, case_ids: list[str]) -> dict[str, Path]:
    """The prediction file of every test case; a missing folder or file is a one-line error."""
    folder = method.folder(budget, seed)
    if not folder.is_dir():
        raise SemisegInputError(folder, f"external method {method.name!r}: prediction folder for budget {budget}, seed {seed} not found")
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        stem = strip_ending(f.name)
        if stem is not None and not f.name.startswith(".") and f.is_file():
            found.setdefault(stem, f)
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise SemisegInputError(folder, f"external method {method.name!r}: no prediction for test case {missing[0]!r} ({len(missing)} missing)")
    return {c: found[c] for c in case_ids}


def _export_space(path: Path, cache: Cache, case_id: str, dims: int) -> np.ndarray:
    labels, header = read_label(path, allowed=tuple(range(cache.scheme.num_classes)))
    entry = cache.cases[case_id]
    expected = (cache.slice_size, cache.slice_size, entry.n_slices) if dims == 2 else tuple(entry.geometry.crop_shape)
    if tuple(header.shape) != tuple(expected):
        raise SemisegInputError(path, f"shape {header.shape} is not the exported grid's {expected}; is its space 'original'?")
    return np.moveaxis(labels.astype(np.uint8), -1, 0)  # (Z, S, S) or (Z, X, Y)


def _original_space(path: Path, cache: Cache, case_id: str, dims: int) -> np.ndarray:
    labels, header = read_label(path, allowed=cache.scheme.values)
    entry = cache.cases[case_id]
    reference = type(header)(Path(entry.sources["images"][cache.modalities[0]]), tuple(entry.geometry.shape), np.asarray(entry.geometry.affine))
    check_same_geometry(reference, header)
    geom = entry.geometry
    classes = cache.scheme.to_classes(geom.crop(to_canonical(labels, header.affine)))  # (X', Y', Z')
    if dims == 3:
        return np.moveaxis(classes, -1, 0)
    squared = square_slices(classes[None], geom, 0)  # (Z', 1, side, side)
    return resize_stack(torch.from_numpy(squared.astype(np.float32)), cache.slice_size, "nearest").numpy()[:, 0].astype(np.uint8)


def class_maps(method: ExternalMethod, cache: Cache, budget: int, seed: int, case_ids: list[str], dims: int) -> dict[str, np.ndarray]:
    """Every test case's predicted class map on the cache's grid, stacked along the first axis
    ((Z, S, S) slices in 2D, (Z, X, Y) in 3D), as :func:`semiseg.studies.holdout.score_class_maps` takes them."""
    files = prediction_files(method, budget, seed, case_ids)
    read = _export_space if method.space == "export" else _original_space
    return {c: read(files[c], cache, c, dims) for c in case_ids}
