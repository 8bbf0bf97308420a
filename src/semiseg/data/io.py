"""Image reading and writing with validation: everything nnU-Net reads as 3D medical images.

NIfTI (``.nii.gz``, ``.nii``) is read with nibabel, MetaImage (``.mha``) and NRRD (``.nrrd``) with
SimpleITK. Every format is turned into the same form: voxels indexed (i, j, k) as NIfTI stores
them and a RAS affine as nibabel gives it (ITK's LPS origin and direction converted, as nibabel
and MONAI's ITKReader do), so everything downstream is format-blind. Every read checks what
downstream code relies on (3D, one value per voxel, finite, integer labels) and raises
:class:`~semiseg.errors.SemisegInputError` naming the file; every write is atomic and writes the
format its name asks for, with the geometry of a reference image copied exactly.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from semiseg.errors import SemisegInputError
from semiseg.files import atomic_path, os_problem

#: affines of co-registered images may differ by float noise; anything larger is a real mismatch
AFFINE_TOLERANCE = 1e-3
NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".mha", ".nrrd")
#: the 3D formats nnU-Net's readers accept, which are the ones semiseg reads and writes
IMAGE_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS
#: written into the header of every prediction (NIfTI ``descrip``, ITK metadata), so a folder of
#: predictions can be told from ground truth
PREDICTION_MARK = "semiseg prediction"
_ITK_MARK_KEY = "semiseg"
#: ITK stores LPS coordinates, NIfTI RAS: the first two axes change sign
_LPS = np.diag([-1.0, -1.0, 1.0])


def image_ending(name: str) -> str | None:
    """The image format ending of a file name (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``), or None."""
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), None)


def strip_ending(name: str) -> str | None:
    """A file name without its image ending, or None if it is not an image semiseg reads."""
    ending = image_ending(name)
    return None if ending is None else name[: -len(ending)]


@dataclass
class Header:
    """Geometry of an image (any format semiseg reads), read without loading its voxels: voxel
    ``shape`` in NIfTI's (i, j, k) order and the RAS ``affine``."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _check_file(path: Path) -> str:
    if not path.exists():
        raise SemisegInputError(path, "file not found")
    if not path.is_file():
        raise SemisegInputError(path, "is not a file")
    if not os.access(path, os.R_OK):  # nibabel reports a refused open as a format error
        raise SemisegInputError(path, "cannot be read: permission denied")
    ending = image_ending(path.name)
    if ending is None:
        raise SemisegInputError(path, f"is not an image semiseg reads ({', '.join(IMAGE_ENDINGS)})")
    return ending


def _open(path: Path) -> nib.Nifti1Image:
    _check_file(path)
    try:
        img = nib.load(str(path))
    except OSError as exc:
        if exc.errno is not None:  # the OS refused (permission denied, I/O error), not the format
            raise SemisegInputError(path, f"cannot be read: {os_problem(exc)}") from None
        raise SemisegInputError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # nibabel raises many types for foreign or truncated files
        raise SemisegInputError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SemisegInputError(path, f"is a {type(img).__name__}, not a NIfTI image")
    return img


def _itk_message(exc: Exception) -> str:
    """The informative line of an ITK exception (they span many lines, with C++ file names)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("/", "sitk::", "in ")) and ".cxx:" not in ln and ".h:" not in ln]
    return (useful or lines or [type(exc).__name__])[-1][:200]


def _itk_reader(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SemisegInputError(path, f"cannot be read as {image_ending(path.name)} ({_itk_message(exc)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise SemisegInputError(path, f"has {reader.GetNumberOfComponents()} values per voxel; expected one (a scalar image)")
    return reader


def _itk_affine(origin, spacing, direction) -> np.ndarray:
    """RAS affine of an ITK geometry (LPS origin, spacing, row-major direction), as nibabel gives it."""
    n = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ d @ np.diag(np.asarray(spacing, dtype=np.float64)[:3])
    affine[:3, 3] = _LPS @ np.asarray(origin, dtype=np.float64)[:3]
    return affine


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    # BraTS and many converters write 3D images with a trailing singleton 4th dim: accept those
    squeezed = tuple(shape[:3]) if len(shape) > 3 and all(s == 1 for s in shape[3:]) else tuple(shape)
    if len(squeezed) != 3:
        raise SemisegInputError(path, f"expected a 3D image, found {len(shape)}D with shape {tuple(shape)}")
    if min(squeezed) < 1:
        raise SemisegInputError(path, f"has an empty dimension, shape {tuple(shape)}")
    return squeezed  # type: ignore[return-value]


def read_header(path: str | PathLike) -> Header:
    """Read the shape and affine of a 3D image without its voxels; raise SemisegInputError if it is not one."""
    path = Path(path)
    if _check_file(path) in ITK_ENDINGS:
        reader = _itk_reader(path)
        shape = _spatial_shape(path, tuple(int(s) for s in reader.GetSize()))
        affine = _itk_affine(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
    else:
        img = _open(path)
        shape = _spatial_shape(path, tuple(int(s) for s in img.shape))
        affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SemisegInputError(path, "has a degenerate or non-finite affine")
    return Header(path, shape, affine)


def _load_voxels(path: Path, dtype: type) -> np.ndarray:
    if image_ending(path.name) in ITK_ENDINGS:
        import SimpleITK as sitk

        _itk_reader(path)  # the header's checks first, with their messages
        try:
            data = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError as exc:
            raise SemisegInputError(path, f"is truncated or corrupt ({_itk_message(exc)})") from None
        data = data.transpose(tuple(range(data.ndim))[::-1])  # ITK arrays are (k, j, i): back to NIfTI's (i, j, k)
    else:
        try:
            data = np.asanyarray(_open(path).dataobj)
        except OSError as exc:
            if exc.errno is not None:  # the OS refused (permission denied, I/O error), not the format
                raise SemisegInputError(path, f"cannot be read: {os_problem(exc)}") from None
            raise SemisegInputError(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
        except (EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
            raise SemisegInputError(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if np.iscomplexobj(data):
        raise SemisegInputError(path, "has complex voxels; expected real values")
    return np.asarray(data, dtype=dtype).reshape(_spatial_shape(path, data.shape))


def read_image(path: str | PathLike) -> tuple[np.ndarray, Header]:
    """Read a 3D intensity image as float32 and its header; NaN or Inf voxels are an input error."""
    path = Path(path)
    header = read_header(path)
    data = _load_voxels(path, np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise SemisegInputError(path, f"contains {int(bad.sum())} NaN/Inf voxels")
    return data, header


def read_label(path: str | PathLike, allowed: tuple[int, ...] | None = None) -> tuple[np.ndarray, Header]:
    """Read a 3D label map as int16; values must be integers (and within ``allowed`` if given)."""
    path = Path(path)
    header = read_header(path)
    raw = _load_voxels(path, np.float64)
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
    description: str | None = None,
) -> None:
    """Write ``data`` as NIfTI at ``path`` atomically, keeping ``header``'s fields where given."""
    img = nib.Nifti1Image(data, affine, header=header)
    if description is not None:
        img.header["descrip"] = description.encode("ascii")
    img.set_data_dtype(data.dtype)
    if header is not None:
        # keep the input's qform/sform codes so viewers place the output exactly over the input
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.header["scl_slope"] = 1.0
        img.header["scl_inter"] = 0.0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_like(path: str | PathLike, data: np.ndarray, reference: str | PathLike, affine: np.ndarray, prediction: bool = True) -> None:
    """Write ``data`` (i, j, k[, channels]) at ``path`` atomically, in the format ``path`` names, in the
    geometry of the image ``reference`` (whose voxel grid ``data`` is on; ``affine`` is its RAS affine).

    A NIfTI reference's header is kept (qform/sform codes, units); an ITK reference's origin,
    spacing and direction are copied exactly. A last axis beyond three is stored as one volume per
    channel (NIfTI) or as values per voxel (ITK). ``prediction`` marks the file as semiseg's output.
    """
    path, reference = Path(path), Path(reference)
    if image_ending(path.name) in ITK_ENDINGS:
        import SimpleITK as sitk

        vector = data.ndim == 4
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.swapaxes(data, 0, 2)), isVector=vector)
        if image_ending(reference.name) in ITK_ENDINGS:
            ref = _itk_reader(reference)
            n = ref.GetDimension()
            img.SetOrigin(ref.GetOrigin()[:3])
            img.SetSpacing(ref.GetSpacing()[:3])
            img.SetDirection(tuple(np.asarray(ref.GetDirection()).reshape(n, n)[:3, :3].ravel()))
        else:
            spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            img.SetOrigin(tuple(float(v) for v in _LPS @ affine[:3, 3]))
            img.SetSpacing(tuple(float(v) for v in spacing))
            img.SetDirection(tuple(float(v) for v in (_LPS @ affine[:3, :3] / spacing).ravel()))
        if prediction:
            img.SetMetaData(_ITK_MARK_KEY, PREDICTION_MARK)
        with atomic_path(path) as tmp:
            sitk.WriteImage(img, str(tmp), True)
        return
    header = _open(reference).header.copy() if image_ending(reference.name) in NIFTI_ENDINGS else None
    write_nifti(path, data, affine, header, PREDICTION_MARK if prediction else None)


def is_prediction(path: str | PathLike) -> bool:
    """True if the image at ``path`` was written by semiseg's predict (see :data:`PREDICTION_MARK`)."""
    path = Path(path)
    try:
        if image_ending(path.name) in ITK_ENDINGS:
            reader = _itk_reader(path)
            return reader.HasMetaDataKey(_ITK_MARK_KEY) and reader.GetMetaData(_ITK_MARK_KEY) == PREDICTION_MARK
        return _open(path).header["descrip"].item().decode("ascii", "replace") == PREDICTION_MARK
    except SemisegInputError:
        return False
