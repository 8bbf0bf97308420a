"""The synthetic phantom: determinism, format, contrasts that make it brain-like, case-to-case
variation that makes it hard, and the dataset writer's BraTS layout and atomicity."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from semiseg.data import phantom
from semiseg.data.cases import discover
from semiseg.data.io import read_label
from semiseg.data.labels import BRATS2021
from semiseg.data.phantom import (
    CSF,
    MODALITIES,
    WM,
    PhantomCase,
    case_seed,
    synthesize_case,
    synthesize_case_with_tissue,
    write_phantom_dataset,
)
from semiseg.errors import SemisegInputError

SMALL = (64, 64, 48)
SPACING = (3.0, 3.0, 3.0)
#: small-shape seeds whose case has enhancing tumour, necrosis and oedema
FULL_TUMOUR_SEEDS = (11, 13, 14)
VARIATION_SEEDS = range(16)

Cases = dict[int, tuple[PhantomCase, np.ndarray]]


@pytest.fixture(scope="module")
def small_cases() -> Cases:
    return {s: synthesize_case_with_tissue(s, shape=SMALL, spacing=SPACING) for s in VARIATION_SEEDS}


@pytest.fixture(scope="module")
def default_case() -> tuple[PhantomCase, np.ndarray]:
    """One case at the default 1.5 mm resolution, where thin structures (rims, vessels) are resolved."""
    return synthesize_case_with_tissue(2)


def _arrays(case: PhantomCase) -> list[np.ndarray]:
    return [case.images[m] for m in MODALITIES] + [case.label]


def test_same_seed_same_arrays_other_seed_differs(small_cases: Cases) -> None:
    again = synthesize_case(3, shape=SMALL, spacing=SPACING)
    first = small_cases[3][0]
    for a, b in zip(_arrays(first), _arrays(again)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    other = small_cases[4][0]
    for a, b in zip(_arrays(first), _arrays(other)):
        assert not np.array_equal(a, b)


def test_keys_shapes_dtypes_labels_affine(small_cases: Cases) -> None:
    case = small_cases[0][0]
    assert tuple(case.images) == ("t1", "t1ce", "t2", "flair")
    for image in case.images.values():
        assert image.dtype == np.float32 and image.shape == SMALL
        assert np.isfinite(image).all() and image.min() >= 0
    assert case.label.dtype == np.uint8 and case.label.shape == SMALL
    assert set(np.unique(case.label)) <= {0, 1, 2, 4}
    assert case.affine.dtype == np.float64 and case.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(case.affine), [3.0, 3.0, 3.0, 1.0])
    # the volume's centre voxel is at the origin (RAS+ with a centred origin)
    centre = case.affine @ np.array([*((np.array(SMALL) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_air_is_exactly_zero_and_noise_only_in_head(small_cases: Cases) -> None:
    for case, tissue in small_cases.values():
        head = tissue != phantom.AIR
        assert 0.2 < head.mean() < 0.8
        for image in case.images.values():
            assert (image[~head] == 0).all()
            # every head voxel is non-zero, so cropping to the non-zero box finds the head
            assert (image[head] > 0).all()
        assert (case.label[~head] == 0).all()


def _relative_means(case: PhantomCase, tissue: np.ndarray, modality: str) -> dict[str, float]:
    """Mean intensity per region divided by the case's white-matter median (removes scanner scale)."""
    image = case.images[modality]
    normal = case.label == 0
    wm = np.median(image[(tissue == WM) & normal])
    regions = {
        "wm": (tissue == WM) & normal,
        "csf": (tissue == CSF) & normal,
        "ed": case.label == 2,
        "ncr": case.label == 1,
        "et": case.label == 4,
    }
    return {name: float(image[mask].mean() / wm) for name, mask in regions.items()}


@pytest.mark.parametrize("seed", FULL_TUMOUR_SEEDS)
def test_relative_contrasts(small_cases: Cases, seed: int) -> None:
    case, tissue = small_cases[seed]
    assert {1, 2, 4} <= set(np.unique(case.label)), "this seed should give a lesion with all sub-regions"
    flair = _relative_means(case, tissue, "flair")
    t2 = _relative_means(case, tissue, "t2")
    t1ce = _relative_means(case, tissue, "t1ce")
    assert flair["ed"] > 1.15 * flair["wm"]
    assert t2["ed"] > 1.3 * t2["wm"]
    assert t1ce["et"] > 1.2 * t1ce["ncr"]
    assert t1ce["et"] > 1.05 * t1ce["wm"]  # rims are 1-2 voxels here: partial volume dims them
    assert flair["csf"] < 0.85 * flair["wm"]  # suppressed CSF
    assert t2["csf"] > 1.1 * t2["wm"]


def test_relative_contrasts_default_resolution(default_case: tuple[PhantomCase, np.ndarray]) -> None:
    case, tissue = default_case
    assert {1, 2, 4} <= set(np.unique(case.label)), "this seed should give a lesion with all sub-regions"
    t1ce = _relative_means(case, tissue, "t1ce")
    flair = _relative_means(case, tissue, "flair")
    t2 = _relative_means(case, tissue, "t2")
    assert t1ce["et"] > 1.2 and t1ce["et"] > 2 * t1ce["ncr"]
    assert flair["ed"] > 1.3 and flair["csf"] < 0.7
    assert t2["ed"] > 1.5 and t2["csf"] > 1.8


def test_cases_vary(small_cases: Cases) -> None:
    volumes, components, wm_levels = [], [], []
    without_et_or_ncr = 0
    for case, tissue in small_cases.values():
        tumour = case.label > 0
        volumes.append(int(tumour.sum()))
        components.append(ndi.label(tumour, np.ones((3, 3, 3)))[1])
        values = set(np.unique(case.label).tolist())
        without_et_or_ncr += tumour.any() and not {1, 4} <= values
        wm_levels.append(float(np.median(case.images["t1"][(tissue == WM) & ~tumour])))
    present = [v for v in volumes if v > 0]
    assert max(present) / min(present) > 3
    assert len(set(components)) >= 2
    assert without_et_or_ncr >= 1
    assert max(wm_levels) / min(wm_levels) > 1.5
    # sub-region make-up varies: the enhancing share of the tumour core
    et_share = [
        (c.label == 4).sum() / max((c.label == 1).sum() + (c.label == 4).sum(), 1) for c, _ in small_cases.values()
    ]
    assert max(et_share) - min(et_share) > 0.5


def test_distractors_mimic_tumour_outside_labels(default_case: tuple[PhantomCase, np.ndarray]) -> None:
    """Label-0 voxels as bright as enhancing tumour on T1ce (vessels, plexus) and as bright as oedema
    on FLAIR (white-matter hyperintensities) exist outside the tumour."""
    case, tissue = default_case
    normal = case.label == 0
    t1ce, flair = _relative_means(case, tissue, "t1ce"), _relative_means(case, tissue, "flair")
    vessels = np.isin(tissue, (phantom.VESSEL, phantom.CHOROID)) & normal
    t1ce_rel = case.images["t1ce"] / np.median(case.images["t1ce"][(tissue == WM) & normal])
    assert (t1ce_rel[vessels] > t1ce["et"]).sum() >= 20
    wmh = (tissue == phantom.WMH) & normal
    flair_rel = case.images["flair"] / np.median(case.images["flair"][(tissue == WM) & normal])
    assert (flair_rel[wmh] > flair["ed"]).sum() >= 20


def test_intensity_alone_does_not_separate_tumour() -> None:
    """A per-voxel Gaussian classifier fitted on four cases segments new cases poorly (context is needed)."""
    def features(case: PhantomCase) -> tuple[np.ndarray, np.ndarray]:
        head = case.images["t1"] > 0
        x = np.stack([case.images[m][head] / np.median(case.images[m][head]) for m in MODALITIES], 1)
        return x, case.label[head]

    train = [features(synthesize_case(s, shape=SMALL, spacing=SPACING)) for s in (20, 21, 22, 23)]
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train]) > 0
    models = []
    for cls in (False, True):
        xc = x[y == cls]
        cov = np.cov(xc.T) + 1e-4 * np.eye(4)
        models.append((xc.mean(0), np.linalg.inv(cov), np.linalg.slogdet(cov)[1], np.log(len(xc) / len(x))))
    dice = []
    for seed in (24, 25, 26, 27):
        xt, yt = features(synthesize_case(seed, shape=SMALL, spacing=SPACING))
        ll = [-0.5 * np.einsum("ij,jk,ik->i", xt - mu, p, xt - mu) - 0.5 * ld + lp for mu, p, ld, lp in models]
        pred = ll[1] > ll[0]
        dice.append(2 * (pred & (yt > 0)).sum() / (pred.sum() + (yt > 0).sum()))
    assert np.mean(dice) < 0.8


def test_default_shape_is_fast() -> None:
    start = time.perf_counter()
    case = synthesize_case(5)
    assert time.perf_counter() - start < 10
    assert case.label.shape == phantom.DEFAULT_SHAPE


def test_bad_geometry_is_an_input_error() -> None:
    with pytest.raises(SemisegInputError, match="shape"):
        synthesize_case(0, shape=(64, 64))
    with pytest.raises(SemisegInputError, match="spacing"):
        synthesize_case(0, shape=SMALL, spacing=(1.0, 0.0, 1.0))


def test_write_dataset_brats_layout(tmp_path: Path) -> None:
    out = tmp_path / "phantom"
    calls = []
    ids = write_phantom_dataset(out, 3, seed=7, shape=SMALL, spacing=SPACING, unlabelled=1,
                                progress=lambda i, n: calls.append((i, n)))
    assert ids == ["Phantom_00000", "Phantom_00001", "Phantom_00002"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert sorted(p.name for p in out.iterdir()) == ids
    for i, case_id in enumerate(ids):
        expected = synthesize_case(case_seed(7, i), case_id, SMALL, SPACING)
        for m in MODALITIES:
            img = nib.load(str(out / case_id / f"{case_id}_{m}.nii.gz"))
            np.testing.assert_allclose(img.affine, expected.affine)
            assert np.array_equal(np.asarray(img.dataobj, dtype=np.float32), expected.images[m])
        seg = out / case_id / f"{case_id}_seg.nii.gz"
        if i < 2:
            data = np.asanyarray(nib.load(str(seg)).dataobj)
            assert data.dtype == np.uint8 and np.array_equal(data, expected.label)
            labels, _ = read_label(seg, allowed=BRATS2021.values)  # passes the project's own validation
            assert np.array_equal(labels, expected.label)
        else:
            assert not seg.exists()
    ds = discover(out)
    assert ds.format == "brats2021" and len(ds.cases) == 3 and len(ds.labelled_cases) == 2


def test_case_does_not_depend_on_number_of_cases(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "a", 1, seed=3, shape=SMALL, spacing=SPACING)
    write_phantom_dataset(tmp_path / "b", 2, seed=3, shape=SMALL, spacing=SPACING)
    name = "Phantom_00000/Phantom_00000_flair.nii.gz"
    a, b = (np.asarray(nib.load(str(tmp_path / d / name)).dataobj) for d in "ab")
    assert np.array_equal(a, b)
    assert case_seed(3, 0) != case_seed(3, 1) != case_seed(4, 1)


def test_refuses_non_empty_folder_accepts_empty(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SemisegInputError, match="already exists and is not empty"):
        write_phantom_dataset(out, 1, shape=SMALL, spacing=SPACING)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_phantom_dataset(empty, 1, shape=SMALL, spacing=SPACING) == ["Phantom_00000"]
    assert (empty / "Phantom_00000" / "Phantom_00000_seg.nii.gz").exists()


@pytest.mark.parametrize("kwargs", [{"cases": 0}, {"cases": 2, "unlabelled": 3}, {"cases": 1, "seed": -1}])
def test_bad_arguments_are_input_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SemisegInputError):
        write_phantom_dataset(tmp_path / "x", shape=SMALL, spacing=SPACING, **kwargs)
    assert not (tmp_path / "x").exists()


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "phantom"
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(out, 3, shape=SMALL, spacing=SPACING, progress=stop)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no half-built temporary folder either
