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


# ---------------------------------------------------------------- formats nnU-Net reads
def itk_image(data: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 5.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, -1)):
    """A SimpleITK image of ``data`` given in NIfTI's (i, j, k) order, with an oblique-free but
    permuted and flipped direction, so LPS/RAS and axis-order mistakes show."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.swapaxes(data, 0, 2)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii"])
def test_every_format_reads_like_nifti(tmp_path: Path, ending: str):
    """The same image saved by SimpleITK as .nii.gz (read by nibabel) and as another format gives
    the same voxels in the same order and the same RAS affine."""
    import SimpleITK as sitk

    data = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)
    img = itk_image(data)
    sitk.WriteImage(img, str(tmp_path / "ref.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / f"x{ending}"))
    ref, ref_header = read_image(tmp_path / "ref.nii.gz")
    got, header = read_image(tmp_path / f"x{ending}")
    assert np.array_equal(ref, data) and np.array_equal(got, data)
    assert header.shape == (7, 6, 5) and np.allclose(header.affine, ref_header.affine, atol=1e-5)
    assert header.spacing == pytest.approx((0.7, 0.8, 2.5), abs=1e-6)


def test_itk_formats_are_validated_like_nifti(tmp_path: Path):
    import SimpleITK as sitk

    flat = sitk.GetImageFromArray(np.zeros((8, 8), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.mha"))
    with pytest.raises(SemisegInputError, match=r"flat\.mha: expected a 3D image, found 2D"):
        read_header(tmp_path / "flat.mha")
    vector = sitk.GetImageFromArray(np.zeros((4, 4, 4, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(SemisegInputError, match=r"rgb\.nrrd: has 3 values per voxel"):
        read_header(tmp_path / "rgb.nrrd")
    nan = np.ones((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(itk_image(nan), str(tmp_path / "nan.nrrd"))
    with pytest.raises(SemisegInputError, match=r"nan\.nrrd: contains 1 NaN/Inf voxels"):
        read_image(tmp_path / "nan.nrrd")
    sitk.WriteImage(itk_image(np.full((4, 4, 4), 0.5, np.float32)), str(tmp_path / "frac.mha"))
    with pytest.raises(SemisegInputError, match="non-integer"):
        read_label(tmp_path / "frac.mha")
    sitk.WriteImage(itk_image(np.random.rand(32, 32, 32).astype(np.float32)), str(tmp_path / "cut.mha"))
    raw = (tmp_path / "cut.mha").read_bytes()
    (tmp_path / "cut.mha").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SemisegInputError, match=r"cut\.mha: is truncated or corrupt"):
        read_image(tmp_path / "cut.mha")
    (tmp_path / "junk.mha").write_bytes(b"not an image")
    with pytest.raises(SemisegInputError, match=r"junk\.mha: cannot be read as \.mha"):
        read_header(tmp_path / "junk.mha")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(SemisegInputError, match=r"x\.png: is not an image semiseg reads"):
        read_header(tmp_path / "x.png")


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii.gz"])
def test_write_like_copies_the_reference_geometry_exactly(tmp_path: Path, ending: str):
    import SimpleITK as sitk

    from semiseg.data.io import is_prediction, write_like

    data = np.random.default_rng(1).random((7, 6, 5)).astype(np.float32)
    src = itk_image(data, spacing=(0.123456789, 0.8, 3.3), origin=(1.0000001, -2.5, 7.25))
    sitk.WriteImage(src, str(tmp_path / f"in{ending}"))
    _, header = read_image(tmp_path / f"in{ending}")
    seg = (data > 0.5).astype(np.uint8)
    write_like(tmp_path / f"out{ending}", seg, tmp_path / f"in{ending}", header.affine)
    a, b = sitk.ReadImage(str(tmp_path / f"in{ending}")), sitk.ReadImage(str(tmp_path / f"out{ending}"))
    if ending != ".nii.gz":  # ITK formats: origin, spacing and direction bit for bit
        assert (b.GetOrigin(), b.GetSpacing(), b.GetDirection(), b.GetSize()) == (a.GetOrigin(), a.GetSpacing(), a.GetDirection(), a.GetSize())
    assert np.array_equal(read_label(tmp_path / f"out{ending}")[0], seg)
    assert is_prediction(tmp_path / f"out{ending}") and not is_prediction(tmp_path / f"in{ending}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"in{ending}", f"out{ending}"])
