"""The per-case preprocessing pipeline, shared by ``prepare`` (to build the cache) and ``predict``
(for new cases), so both see identical inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from semiseg.data.cases import Case
from semiseg.data.labels import LabelScheme
from semiseg.data.loading import LoadedCase, load_case
from semiseg.preprocess.geometry import CaseGeometry, make_geometry, resize_stack, square_slices, to_canonical
from semiseg.preprocess.normalise import Normaliser


@dataclass
class PreparedCase:
    """A case cropped to its foreground in canonical orientation and normalised.

    ``image`` is (C, X', Y', Z') float32; ``label`` (X', Y', Z') uint8 class indices or None.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: CaseGeometry


def canonicalise(loaded: LoadedCase) -> tuple[np.ndarray, np.ndarray | None]:
    """Reorient a loaded case's image and label to RAS voxel order."""
    affine = loaded.header.affine
    image = to_canonical(loaded.image, affine)
    label = None if loaded.label is None else to_canonical(loaded.label, affine)
    return image, label


def prepare_case(case: Case, scheme: LabelScheme, normaliser: Normaliser, with_label: bool = True) -> PreparedCase:
    """Load, reorient, crop and normalise one case."""
    loaded = load_case(case, scheme, with_label=with_label)
    image, label = canonicalise(loaded)
    geom = make_geometry(image, label, loaded.header.affine, loaded.header.shape)
    image = normaliser(geom.crop(image))
    classes = None if label is None else scheme.to_classes(geom.crop(label))
    return PreparedCase(case.case_id, image, classes, geom)


def case_slices(
    prepared: PreparedCase, size: int, pad_value: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Axial slices of a prepared case, padded to a square and resized to ``size``.

    Returns images (Z', C, size, size) float32 and labels (Z', size, size) uint8 (or None).
    """
    img = square_slices(prepared.image, prepared.geometry, pad_value)
    img = resize_stack(torch.from_numpy(img), size, "bilinear").numpy()
    lbl = None
    if prepared.label is not None:
        sq = square_slices(prepared.label[None], prepared.geometry, 0)
        lbl = resize_stack(torch.from_numpy(sq.astype(np.float32)), size, "nearest").numpy()[:, 0].astype(np.uint8)
    return img, lbl
