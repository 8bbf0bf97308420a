"""NIfTI reading and writing with validation.

Every read checks what downstream code relies on (3D, finite, integer labels) and raises
:class:`~semiseg.errors.SemisegInputError` naming the file; every write is atomic.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from semiseg.errors import SemisegInputError
from semiseg.files import atomic_path

#: affines of co-registered images may differ by float noise; anything larger is a real mismatch
AFFINE_TOLERANCE = 1e-3


@dataclass
class Header:
    """Geometry of a NIfTI image, read without loading its voxels."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _open(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise SemisegInputError(path, "file not found")
    if not path.is_file():
        raise SemisegInputError(path, "is not a file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign or truncated files
        raise SemisegInputError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SemisegInputError(path, f"is a {type(img).__name__}, not a NIfTI image")
    return img


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    # BraTS and many converters write 3D images with a trailing singleton 4th dim: accept those
    squeezed = tuple(shape[:3]) if len(shape) > 3 and all(s == 1 for s in shape[3:]) else tuple(shape)
    if len(squeezed) != 3:
        raise SemisegInputError(path, f"expected a 3D image, found {len(shape)}D with shape {tuple(shape)}")
    if min(squeezed) < 1:
        raise SemisegInputError(path, f"has an empty dimension, shape {tuple(shape)}")
    return squeezed  # type: ignore[return-value]


def read_header(path: str | PathLike) -> Header:
    """Read the shape and affine of a 3D NIfTI image; raise SemisegInputError if it is not one."""
    path = Path(path)
    img = _open(path)
    shape = _spatial_shape(path, tuple(int(s) for s in img.shape))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SemisegInputError(path, "has a degenerate or non-finite affine")
    return Header(path, shape, affine)


def _load_voxels(path: Path, img: nib.Nifti1Image, dtype: type) -> np.ndarray:
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise SemisegInputError(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return np.asarray(data, dtype=dtype).reshape(_spatial_shape(path, data.shape))


def read_image(path: str | PathLike) -> tuple[np.ndarray, Header]:
    """Read a 3D intensity image as float32 and its header; NaN or Inf voxels are an input error."""
    path = Path(path)
    header = read_header(path)
    data = _load_voxels(path, _open(path), np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise SemisegInputError(path, f"contains {int(bad.sum())} NaN/Inf voxels")
    return data, header


def read_label(path: str | PathLike, allowed: tuple[int, ...] | None = None) -> tuple[np.ndarray, Header]:
    """Read a 3D label map as int16; values must be integers (and within ``allowed`` if given)."""
    path = Path(path)
    header = read_header(path)
    raw = _load_voxels(path, _open(path), np.float64)
    if not np.all(np.isfinite(raw)):
        raise SemisegInputError(path, "label map contains NaN/Inf voxels")
    labels = np.rint(raw)
    if np.abs(labels - raw).max(initial=0.0) > 1e-3:
        raise SemisegInputError(path, "label map has non-integer values")
    labels = labels.astype(np.int16)
    if allowed is not None:
        present = np.unique(labels)
        bad = sorted(set(int(v) for v in present) - set(allowed))
        if bad:
            raise SemisegInputError(
                path, f"label values {bad} are outside the scheme's values {sorted(allowed)}"
            )
    return labels, header


def check_same_geometry(reference: Header, other: Header) -> None:
    """Raise SemisegInputError (naming ``other``) unless it has ``reference``'s shape and affine."""
    if other.shape != reference.shape:
        raise SemisegInputError(
            other.path, f"shape {other.shape} differs from {reference.path.name} {reference.shape}"
        )
    if not np.allclose(other.affine, reference.affine, atol=AFFINE_TOLERANCE):
        raise SemisegInputError(other.path, f"affine differs from {reference.path.name}'s")


def write_nifti(
    path: str | PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> None:
    """Write ``data`` as NIfTI at ``path`` atomically, keeping ``header``'s fields where given."""
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    if header is not None:
        # keep the input's qform/sform codes so viewers place the output exactly over the input
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.header["scl_slope"] = 1.0
        img.header["scl_inter"] = 0.0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def original_header(path: str | PathLike) -> nib.Nifti1Header:
    """Return a copy of the NIfTI header of ``path`` (for writing outputs in the input's geometry)."""
    return _open(Path(path)).header.copy()
