"""Real scans (../shared/data/open_ms, MS lesions, 182x218x182 at 1 mm) laid out in BraTS 2021
naming with two modalities only (flair, t1ce): prepare, predict with 2D and 3D methods trained on
the phantom, and a small sweep. Skipped where the real data is absent."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import TINY, TINY_NET, shared_data, tiny_cache_at
from semiseg.data.cases import discover
from semiseg.inference.predict import predict
from semiseg.preprocess.cache import Cache, build_cache
from semiseg.runs import train
from semiseg.studies.sweep import load_study, run_sweep

pytestmark = pytest.mark.slow
TWO = ["flair", "t1ce"]


@pytest.fixture(scope="module")
def ms_brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """open_ms as a BraTS 2021 dataset (symlinks): <p>/<p>_{flair,t1ce,seg}.nii.gz, lesions = label 1."""
    src = shared_data("open_ms")
    root = tmp_path_factory.mktemp("ms") / "brats"
    for patient in sorted(p for p in src.iterdir() if p.is_dir()):
        folder = root / patient.name
        folder.mkdir(parents=True)
        for ours, theirs in (("flair", "flair"), ("t1ce", "t1post"), ("seg", "lesion")):
            (folder / f"{patient.name}_{ours}.nii.gz").symlink_to(patient / f"{theirs}.nii.gz")
    return root


@pytest.fixture(scope="module")
def phantom_two_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic cache with flair and t1ce only, to train models that predict the real scans."""
    return tiny_cache_at(tmp_path_factory.mktemp("two"), TWO)


@pytest.fixture(scope="module")
def ms_cache(ms_brats: Path) -> Cache:
    """The real scans prepared with flair and t1ce only (32 px slices, 3D volumes kept)."""
    return build_cache(discover(ms_brats, TWO), ms_brats.parent / "cache", slice_size=32, test_fraction=0.34)


def test_prepare_real_two_modalities(ms_cache: Cache, ms_brats: Path) -> None:
    cache = ms_cache
    assert list(cache.modalities) == TWO
    assert len(cache.ids("train")) + len(cache.ids("test")) == 3 and len(cache.ids("test")) >= 1
    cid = cache.ids("train")[0]
    vol = np.asarray(cache.volume(cid))
    assert vol.shape[0] == 2 and np.isfinite(vol).all()
    # the crop keeps every lesion voxel: labelled voxels in the cache equal those of the source
    src = nib.load(str(ms_brats / cid / f"{cid}_seg.nii.gz")).get_fdata()
    assert int((np.asarray(cache.volume_label(cid)) > 0).sum()) == int((src > 0).sum())


@pytest.mark.parametrize("method,dims", [("supervised", 2), ("embedmatch", 3)])
def test_predict_real_volumes_in_input_geometry(method: str, dims: int, phantom_two_channel: Path, ms_brats: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    extra = ["uncertainty.passes=2"] if method == "embedmatch" else []
    train(phantom_two_channel, method, run, preset="small", n_labelled=2, overrides=TINY + TINY_NET + [f"dims={dims}"] + extra)
    case = sorted(ms_brats.iterdir())[0]  # one case folder as input (a whole dataset works the same)
    paths = predict(run, case, tmp_path / "pred")
    assert [p.name for p in paths] == [f"{case.name}.nii.gz"]
    for path in paths:
        ref = nib.load(str(ms_brats / path.name[: -len(".nii.gz")] / f"{path.name[: -len('.nii.gz')]}_flair.nii.gz"))
        out = nib.load(str(path))
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}


def test_sweep_on_real_data_two_modalities(ms_cache: Cache, tmp_path: Path) -> None:
    settings = TINY + TINY_NET
    study = load_study(
        None, out=str(tmp_path / "study"), cache=str(ms_cache.root),
        methods=["supervised"], budgets=[2], seeds=[0], preset="small", settings={"all": settings},
        test_slices_per_case=5, overlays=1,
    )
    report = run_sweep(study)
    assert report.exists()
    with open(tmp_path / "study" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the binary lesion mask is BraTS label 1: WT and TC hold it, ET is empty
    assert {r["region"] for r in rows} == {"WT", "TC", "ET"}
    assert len({(r["case"], r["slice"]) for r in rows if r["protocol"] == "central_slices"}) == 5
    assert {r["protocol"] for r in rows} == {"central_slices", "all_slices", "all_slices+lcc", "volume", "volume+lcc"}
