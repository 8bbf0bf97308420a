import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import write_image
from semiseg.data.io import check_same_geometry, read_header, read_image, read_label, write_nifti
from semiseg.errors import SemisegInputError


def test_nan_voxels_are_named(tmp_path: Path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    p = write_image(tmp_path / "x.nii.gz", data)
    with pytest.raises(SemisegInputError, match=r"x\.nii\.gz: contains 1 NaN/Inf voxels"):
        read_image(p)


def test_truncated_gzip(tmp_path: Path):
    p = write_image(tmp_path / "x.nii.gz", np.random.rand(32, 32, 32).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SemisegInputError, match="x.nii.gz"):
        read_image(p)


def test_not_nifti(tmp_path: Path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(SemisegInputError, match="cannot be read as NIfTI"):
        read_header(p)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8, 3)])
def test_wrong_dimensionality(tmp_path: Path, shape):
    p = write_image(tmp_path / "x.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(SemisegInputError, match="expected a 3D image"):
        read_header(p)


def test_trailing_singleton_dimension_is_accepted(tmp_path: Path):
    p = write_image(tmp_path / "x.nii.gz", np.zeros((8, 8, 8, 1), np.float32))
    data, header = read_image(p)
    assert data.shape == (8, 8, 8) and header.shape == (8, 8, 8)


def test_label_values_checked(tmp_path: Path):
    p = write_image(tmp_path / "seg.nii.gz", np.array([0, 1, 3], np.int16).reshape(3, 1, 1).repeat(2, 1).repeat(2, 2))
    with pytest.raises(SemisegInputError, match=r"label values \[3\] are outside"):
        read_label(p, allowed=(0, 1, 2, 4))
    q = write_image(tmp_path / "frac.nii.gz", np.full((2, 2, 2), 0.5, np.float32))
    with pytest.raises(SemisegInputError, match="non-integer"):
        read_label(q)


def test_geometry_mismatch(tmp_path: Path):
    a = read_header(write_image(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32)))
    b = read_header(write_image(tmp_path / "b.nii.gz", np.zeros((4, 4, 5), np.float32)))
    aff = np.diag([2.0, 1, 1, 1])
    c = read_header(write_image(tmp_path / "c.nii.gz", np.zeros((4, 4, 4), np.float32), aff))
    with pytest.raises(SemisegInputError, match=r"b\.nii\.gz: shape \(4, 4, 5\) differs"):
        check_same_geometry(a, b)
    with pytest.raises(SemisegInputError, match="affine differs"):
        check_same_geometry(a, c)


def test_write_is_atomic_and_keeps_header(tmp_path: Path):
    aff = np.array([[-1.0, 0, 0, 10], [0, 1, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    src = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), aff)
    src.set_qform(aff, code=1)
    src.set_sform(aff, code=4)
    out = tmp_path / "o.nii.gz"
    write_nifti(out, np.ones((3, 4, 5), np.uint8), aff, src.header)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, aff)
    assert int(img.header["sform_code"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["o.nii.gz"]
