"""`semiseg export-nnunet`: exactly a run's labelled items as nnU-Net v2 raw data, the test
patients held out, accepted by nnU-Net's own dataset integrity check."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from helpers import TINY, TINY_NET
from semiseg.preprocess.cache import Cache
from semiseg.runs import read_run_record, train
from semiseg.studies.export import SLICE_AXIS_SPACING, read_export_info
from semiseg.training.plan import make_plan
from test_cli import assert_one_line_error, semiseg


def verify_with_nnunet(folder: Path) -> None:
    verify = pytest.importorskip(
        "nnunetv2.experiment_planning.verify_dataset_integrity",
        reason="nnunetv2 is not installed (pip install nnunetv2; .ci/run installs the part this check needs)",
    )
    verify.verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


@pytest.mark.parametrize("dims", [2, 3])
def test_study_export_is_exactly_the_runs_items_and_passes_nnunets_check(dims: int, tiny_cache: Path, tmp_path: Path):
    budget = 3 if dims == 2 else 2
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"out": "brain", "cache": str(tiny_cache), "methods": ["supervised"], "budgets": [budget], "seeds": [0, 1], "dims": dims}))
    r = semiseg("export-nnunet", str(study), "--out", str(tmp_path / "raw"), "--id", "501", "--seeds", "1")
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "raw" / f"Dataset501_brain_n{budget}_s1"
    assert r.stdout.strip().splitlines()[-1].startswith(str(folder))
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [folder.name]  # one dataset: seed 1 only

    cache = Cache(tiny_cache)
    plan = make_plan(cache, dims, budget, 1)
    info = read_export_info(folder)
    assert sorted(info["training"].values()) == sorted(plan.labelled) and info["test"] == cache.ids("test")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == len(plan.labelled) and meta["labels"] == {"background": 0, "necrotic core": 1, "oedema": 2, "enhancing tumour": 3}
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(f"{i}.nii.gz" for i in info["training"])
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == sorted(f"{c}_{i:04d}.nii.gz" for c in cache.ids("test") for i in range(4))

    # the exported voxels are the cache's
    ident, item = next(iter(info["training"].items()))
    image = nib.load(str(folder / "imagesTr" / f"{ident}_0002.nii.gz"))
    label = np.asarray(nib.load(str(folder / "labelsTr" / f"{ident}.nii.gz")).dataobj)
    if dims == 2:
        case, _, z = item.rpartition(":")
        assert np.array_equal(np.asarray(image.dataobj)[..., 0], np.asarray(cache.slices(case)[int(z), 2], np.float32))
        assert np.array_equal(label[..., 0], cache.slice_labels(case)[int(z)])
        assert image.header.get_zooms()[2] == SLICE_AXIS_SPACING
    else:
        assert np.array_equal(np.asarray(image.dataobj), np.asarray(cache.volume(item)[2], np.float32))
        assert np.array_equal(label, cache.volume_label(item))

    # folds group each patient's items; the test patients are in none
    folds = json.loads((folder / "splits_final.json").read_text())
    patient = {i: (it.rpartition(":")[0] if dims == 2 else it) for i, it in info["training"].items()}
    assert sorted(i for f in folds for i in f["val"]) == sorted(info["training"])
    for f in folds:
        assert not {patient[i] for i in f["val"]} & {patient[i] for i in f["train"]}
        assert not set(cache.ids("test")) & {patient[i] for i in f["train"] + f["val"]}
    verify_with_nnunet(folder)


def test_run_export_and_errors(tiny_cache: Path, tmp_path: Path):
    run = train(tiny_cache, "supervised", tmp_path / "run", preset="small", seed=2, labelled_items=["case01:9", "case01:12", "case05:10"],
                overrides=TINY + TINY_NET + ["dims=2", "train.steps=2"])
    r = semiseg("export-nnunet", str(run), "--out", str(tmp_path / "raw"), "--name", "my run")
    assert r.returncode == 0, r.stderr
    info = read_export_info(tmp_path / "raw" / "Dataset500_my-run")
    assert sorted(info["training"].values()) == sorted(read_run_record(run).plan.labelled) == ["case01:12", "case01:9", "case05:10"]
    assert sorted(info["training"]) == ["case01_z009", "case01_z012", "case05_z010"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert_one_line_error(semiseg("export-nnunet", str(run), "--out", str(tmp_path / "raw"), "--name", "my run"), "Dataset500_my-run: already exists")
    assert_one_line_error(semiseg("export-nnunet", str(tmp_path / "nope"), "--out", str(tmp_path / "raw")), "nope: is neither a run folder")
    assert_one_line_error(semiseg("export-nnunet", str(run), "--out", str(tmp_path / "raw"), "--id", "1000"), "--id 1000: nnU-Net dataset IDs are 1 to 999")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
