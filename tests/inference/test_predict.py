"""The predict path writes NIfTI files in exactly the input's geometry and label values."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY, TINY_NET, blob_case, data_info, write_brats_case, write_image
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.inference.predict import predict, predict_slices
from semiseg.methods.base import CPU_PREDICT_BATCH, get_method
from semiseg.runs import train


@pytest.fixture
def sup2d(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def sup3d(tiny_cache: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sup3d") / "run"
    train(tiny_cache, "supervised", run, preset="small", n_labelled=2, overrides=TINY + TINY_NET + ["dims=3"])
    return run


ODD_AFFINE = np.array([[0, 0, -1.2, 40.0], [0.9, 0, 0, -20.0], [0, 2.0, 0, 5.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("run_fixture", ["sup2d", "sup3d"])
def test_outputs_match_input_geometry_and_2023_values(run_fixture, request, tmp_path: Path):
    run = request.getfixturevalue(run_fixture)
    data = tmp_path / "in"
    write_brats_case(data, "BraTS-GLI-00001-000", year=2023, shape=(30, 26, 20), affine=ODD_AFFINE, seed=5)
    out = tmp_path / "out"
    paths = predict(run, data, out, probabilities=True, uncertainty=True)
    assert [p.name for p in paths] == ["BraTS-GLI-00001-000.nii.gz"]
    ref = nib.load(str(data / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz"))
    seg = nib.load(str(paths[0]))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    prob = nib.load(str(out / "BraTS-GLI-00001-000_prob.nii.gz"))
    assert prob.shape == ref.shape + (4,)
    p = np.asarray(prob.dataobj)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-3)
    # the segmentation is the arg-max of the written probabilities (BraTS 2023 values)
    assert np.array_equal(np.asarray([0, 1, 2, 3])[p.argmax(-1)], np.asarray(seg.dataobj))
    unc = nib.load(str(out / "BraTS-GLI-00001-000_uncertainty.nii.gz"))
    assert unc.shape == ref.shape
    assert sorted(f.name for f in out.iterdir()) == sorted(
        ["BraTS-GLI-00001-000.nii.gz", "BraTS-GLI-00001-000_prob.nii.gz", "BraTS-GLI-00001-000_uncertainty.nii.gz"]
    )


def test_prediction_is_the_same_in_any_voxel_order(tmp_path: Path, tiny_cache: Path):
    """The same head stored in RAS and in LPS voxel order (same world coordinates) gets the same
    segmentation in world space, and that segmentation finds the tumour."""
    run = tmp_path / "longer"
    train(tiny_cache, "supervised", run, preset="small", n_labelled=6, overrides=["dims=2", "train.steps=150", "train.batch_size=4", "train.lr=3e-3"])
    images, label = blob_case((36, 36, 24), seed=3)
    ras = np.eye(4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = [35.0, 35.0]  # voxel (0, 0) of the flipped array is world (35, 35): same world grid
    segs = {}
    for name, affine, flip in (("ras", ras, lambda a: a), ("lps", lps, lambda a: a[::-1, ::-1])):
        folder = tmp_path / name / "c"
        for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
            write_image(folder / f"c_{m}.nii.gz", np.ascontiguousarray(flip(images[c])), affine)
        out = np.asarray(nib.load(str(predict(run, folder, tmp_path / f"out-{name}")[0])).dataobj)
        segs[name] = flip(out)
    assert np.array_equal(segs["ras"], segs["lps"])
    wt_pred, wt_gt = segs["ras"] > 0, label > 0
    assert 2 * (wt_pred & wt_gt).sum() / (wt_pred.sum() + wt_gt.sum()) > 0.4


def test_missing_modality_names_what_was_found(sup2d: Path, tmp_path: Path):
    data = tmp_path / "in"
    write_brats_case(data, "c0", modalities=("flair", "t1ce"))
    with pytest.raises(SemisegInputError, match=r"modality t1, t2 not found; this case has flair, t1ce"):
        predict(sup2d, data, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_case_writes_nothing(sup2d: Path, tmp_path: Path):
    data = tmp_path / "in"
    write_brats_case(data, "c0", seed=1)
    folder = write_brats_case(data, "c1", seed=2)
    img = np.ones((24, 24, 16), np.float32)
    img[0, 0, 0] = np.inf
    write_image(folder / "c1_t2.nii.gz", img)
    out = tmp_path / "out"
    with pytest.raises(SemisegInputError, match=r"c1_t2\.nii\.gz: contains 1 NaN/Inf voxels"):
        predict(sup2d, data, out)
    assert not out.exists()


def test_nnunet_flat_folder_and_ddpm_run_refused(sup2d: Path, tiny_ddpm: Path, tmp_path: Path):
    images, _ = blob_case((24, 24, 16))
    flat = tmp_path / "imagesTs"
    for c in range(4):
        write_image(flat / f"case7_{c:04d}.nii.gz", images[c])
    assert [p.name for p in predict(sup2d, flat, tmp_path / "out")] == ["case7.nii.gz"]
    with pytest.raises(SemisegInputError, match="DDPM pretraining run"):
        predict(tiny_ddpm, flat, tmp_path / "out2")


def test_an_mha_dataset_round_trips_its_geometry_exactly(tmp_path: Path):
    """An nnU-Net dataset stored as .mha (file_ending .mha, oblique-free but permuted and flipped
    axes, odd origin and anisotropic spacing) is prepared, trained on, and predicted into .mha
    files whose size, origin, spacing and direction are the input's bit for bit; they evaluate
    against the dataset's own .mha labels."""
    import json

    import SimpleITK as sitk

    from semiseg.data.cases import discover
    from semiseg.data.io import is_prediction
    from semiseg.evaluation.evaluate import evaluate_folders
    from semiseg.preprocess.cache import build_cache

    root = tmp_path / "Dataset003_Mha"
    geometry = {"spacing": (1.1, 0.9, 2.3), "origin": (-12.5, 30.25, 7.0), "direction": (0, -1, 0, 1, 0, 0, 0, 0, 1)}

    def mha(data: np.ndarray, path: Path) -> None:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.swapaxes(data, 0, 2)))
        img.SetSpacing(geometry["spacing"])
        img.SetOrigin(geometry["origin"])
        img.SetDirection(geometry["direction"])
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(path), True)

    for i in range(5):
        images, label = blob_case((30, 28, 18), seed=i)
        sub = "imagesTr" if i < 4 else "imagesTs"
        for c in range(2):
            mha(images[c], root / sub / f"m_{i:03d}_{c:04d}.mha")
        if i < 4:
            mha((label > 0).astype(np.uint8), root / "labelsTr" / f"m_{i:03d}.mha")
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 4, "file_ending": ".mha"}))
    cache = build_cache(discover(root), tmp_path / "cache", slice_size=32, test_fraction=0.25)
    run = train(cache.root, "supervised", tmp_path / "run", preset="small", n_labelled=3, overrides=TINY + TINY_NET + ["dims=2"])
    paths = predict(run, root, tmp_path / "pred", probabilities=True)
    assert sorted(p.name for p in paths) == [f"m_{i:03d}.mha" for i in range(5)]
    for p in paths:
        src = sitk.ReadImage(str(root / ("imagesTr" if p.stem != "m_004" else "imagesTs") / f"{p.stem}_0000.mha"))
        out = sitk.ReadImage(str(p))
        assert (out.GetSize(), out.GetOrigin(), out.GetSpacing(), out.GetDirection()) == (
            src.GetSize(), src.GetOrigin(), src.GetSpacing(), src.GetDirection())
        assert is_prediction(p) and set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 1}
    prob = sitk.ReadImage(str(tmp_path / "pred" / "m_000_prob.mha"))
    assert prob.GetNumberOfComponentsPerPixel() == 2 and prob.GetOrigin() == geometry["origin"]
    (tmp_path / "pred" / "m_004.mha").unlink()  # no ground truth for the imagesTs case
    result = evaluate_folders(tmp_path / "pred", root)
    assert result.summary["n_cases"] == 4 and list(result.summary["regions"]) == ["lesion"]


def test_auto_batch_size_is_small_on_a_cpu_and_changes_no_prediction():
    cls = get_method("supervised")
    cfg = load_config(cls.config_files, "small", overrides=["network.features=[8,8,16,16,16,8]"])
    assert cfg["predict"]["batch_size"] == "auto"
    model = cls(cfg, data_info(slice_size=32)).eval()
    assert model.predict_batch_size() == CPU_PREDICT_BATCH
    slices = torch.randn(7, 1, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    calls: list[int] = []
    probs, _ = predict_slices(model, slices, on_batch=calls.append)
    assert calls == [2, 2, 2, 1]
    model.config["predict"]["batch_size"] = 7
    together, _ = predict_slices(model, slices)
    np.testing.assert_allclose(probs, together, rtol=1e-4, atol=1e-6)
