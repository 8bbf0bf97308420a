"""Load one case's images and label into arrays, validating everything downstream relies on:
every modality and the label share one 3D grid, voxels are finite, label values fit the scheme."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiseg.data.cases import Case
from semiseg.data.io import Header, check_same_geometry, read_header, read_image, read_label
from semiseg.data.labels import LabelScheme


@dataclass
class LoadedCase:
    """A case in the input's voxel grid: ``image`` (C, X, Y, Z) float32, ``label`` (X, Y, Z) int16
    label values or None, and the header of the first modality (the reference geometry)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    header: Header


def check_case_headers(case: Case) -> Header:
    """Check, from headers only, that all files of ``case`` exist, are 3D and share one grid."""
    headers = [read_header(p) for p in case.images.values()]
    if case.label is not None:
        headers.append(read_header(case.label))
    for h in headers[1:]:
        check_same_geometry(headers[0], h)
    return headers[0]


def load_case(case: Case, scheme: LabelScheme | None, with_label: bool = True) -> LoadedCase:
    """Read ``case``'s modalities (in its channel order) and, if ``with_label``, its label map."""
    ref = check_case_headers(case)
    channels = []
    for path in case.images.values():
        data, _ = read_image(path)
        channels.append(data)
    label = None
    if with_label and case.label is not None:
        label, _ = read_label(case.label, allowed=None if scheme is None else scheme.values)
    return LoadedCase(case.case_id, np.stack(channels), label, ref)
