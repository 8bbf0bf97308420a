import numpy as np
import pytest
import torch

from semiseg.preprocess.geometry import (
    canonical_spacing,
    from_canonical,
    make_geometry,
    resize_stack,
    square_slices,
    to_canonical,
    unsquare_slices,
)

AFFINES = {
    "ras": np.diag([1.0, 1.0, 1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "permuted_anisotropic": np.array([[0, 0, 2.0, 0], [-0.8, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", AFFINES)
def test_canonical_round_trip_and_spacing(name):
    affine = AFFINES[name]
    rng = np.random.default_rng(0)
    vol = np.zeros((2, 10, 12, 14), np.float32)
    vol[:, 2:8, 3:9, 4:12] = rng.random((2, 6, 6, 8))
    can = to_canonical(vol, affine)
    assert np.array_equal(from_canonical(can, affine), vol)
    geom = make_geometry(can, None, affine, vol.shape[1:])
    assert np.array_equal(geom.uncrop(geom.crop(can), fill=0.0), vol)
    spacing = canonical_spacing(affine)
    if name == "permuted_anisotropic":
        # affine columns: voxel axis 0 (0.8 mm) runs along A, axis 1 (5 mm) along S, axis 2 (2 mm) along R
        assert spacing == pytest.approx((2.0, 0.8, 5.0))


def test_slice_index_mapping_follows_flips():
    affine = np.diag([1.0, 1.0, -1.0, 1.0])  # z runs inferior
    vol = np.zeros((1, 6, 6, 10), np.float32)
    vol[0, 1:5, 1:5, 3:8] = 1
    can = to_canonical(vol, affine)
    geom = make_geometry(can, None, affine, vol.shape[1:])
    for original in range(3, 8):
        z = geom.cache_slice(original)
        assert z is not None and geom.input_slice(z) == original
        assert np.array_equal(geom.crop(can)[0, :, :, z], vol[0, 1:5, 1:5, original])
    assert geom.cache_slice(0) is None


def test_square_slices_round_trip():
    vol = np.random.default_rng(1).random((3, 7, 11, 5)).astype(np.float32)
    can = np.zeros((3, 20, 20, 9), np.float32)
    can[:, 4:11, 2:13, 1:6] = vol
    geom = make_geometry(can, None, np.eye(4), (20, 20, 9))
    slices = square_slices(geom.crop(can), geom, pad_value=np.zeros(3, np.float32))
    assert slices.shape == (5, 3, 11, 11)
    assert np.array_equal(unsquare_slices(slices, geom), geom.crop(can))


def test_resize_stack_nearest_keeps_labels():
    lab = torch.randint(0, 4, (2, 1, 30, 30)).float()
    out = resize_stack(lab, 64, "nearest")
    assert out.shape == (2, 1, 64, 64) and set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
