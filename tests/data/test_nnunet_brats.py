"""BraTS as nnU-Net's own conversion writes it (nnU-Net v2's Dataset137_BraTS21.py: labels remapped
to consecutive values, a region-based dataset.json) is prepared, trained on, predicted and
evaluated as WT/TC/ET, and the scores equal those of the same predictions in BraTS's labels."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import TINY, TINY_NET, write_brats_case
from semiseg.inference.predict import predict
from semiseg.preprocess.cache import Cache
from semiseg.runs import train

pytestmark = pytest.mark.slow


def convert_like_nnunet(brats: Path, out: Path) -> Path:
    """Dataset137_BraTS21.py, step by step: images copied to channels 0-3 (t1, t1ce, t2, flair),
    segmentations remapped BraTS 2 -> 1, 1 -> 2, 4 -> 3 with the geometry copied, and the
    dataset.json that its generate_dataset_json call writes, key for key."""
    folder = out / "Dataset137_BraTS2021"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = sorted(p.name for p in brats.iterdir() if p.name.startswith("BraTS"))
    for c in cases:
        for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
            shutil.copy(brats / c / f"{c}_{m}.nii.gz", folder / "imagesTr" / f"{c}_{i:04d}.nii.gz")
        img = sitk.ReadImage(str(brats / c / f"{c}_seg.nii.gz"))
        npy = sitk.GetArrayFromImage(img)
        new = np.zeros_like(npy)
        new[npy == 4] = 3
        new[npy == 2] = 1
        new[npy == 1] = 2
        corr = sitk.GetImageFromArray(new)
        corr.CopyInformation(img)
        sitk.WriteImage(corr, str(folder / "labelsTr" / f"{c}.nii.gz"))
    dataset_json = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "licence": "see https://www.synapse.org/#!Synapse:syn25829067/wiki/610863",
        "converted_by": "Please enter your name, especially when sharing datasets with others in a common infrastructure!",
        "reference": "see https://www.synapse.org/#!Synapse:syn25829067/wiki/610863",
        "regions_class_order": [1, 2, 3],
        "dataset_release": "1.0",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    return folder


def back_to_brats(pred: Path, out: Path) -> None:
    """nnU-Net's convert_labels_back_to_BraTS on a folder of predictions."""
    out.mkdir()
    for f in pred.glob("*.nii.gz"):
        img = sitk.ReadImage(str(f))
        seg = sitk.GetArrayFromImage(img)
        new = np.zeros_like(seg)
        new[seg == 1] = 2
        new[seg == 3] = 4
        new[seg == 2] = 1
        back = sitk.GetImageFromArray(new)
        back.CopyInformation(img)
        sitk.WriteImage(back, str(out / f.name))


def semiseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEMISEG_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "semiseg", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_nnunet_converted_brats_is_prepared_trained_and_evaluated_as_wt_tc_et(tmp_path: Path):
    brats = tmp_path / "BraTS2021"
    for i in range(6):
        write_brats_case(brats, f"BraTS2021_{i:05d}", shape=(36, 36, 24), seed=i)
    dataset = convert_like_nnunet(brats, tmp_path)

    r = semiseg("prepare", str(dataset), "--out", "cache", "--slice-size", "32", "--test-fraction", "0.34", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # it was refused: "regions use label values [1, 2] that are not classes"
    cache = Cache(tmp_path / "cache")
    assert cache.scheme.values == (0, 1, 2, 3)
    assert cache.scheme.regions == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}

    run = train(cache.root, "supervised", tmp_path / "run", preset="small", n_labelled=3, overrides=TINY + TINY_NET + ["dims=2"])
    preds = predict(run, dataset / "imagesTr", tmp_path / "pred")
    assert sorted(p.name for p in preds) == sorted(f"{c}.nii.gz" for c in (p.name for p in brats.iterdir()))

    r = semiseg("evaluate", "--gt", str(dataset), "--pred", "pred", "--out", "eval-nnunet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    nnunet = json.loads((tmp_path / "eval-nnunet" / "evaluation_summary.json").read_text())
    assert list(nnunet["regions"]) == ["WT", "TC", "ET"] and nnunet["n_cases"] == 6

    back_to_brats(tmp_path / "pred", tmp_path / "pred-brats")
    r = semiseg("evaluate", "--gt", str(brats), "--pred", "pred-brats", "--out", "eval-brats", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert nnunet["scheme"] == "dataset-regions"
    original = json.loads((tmp_path / "eval-brats" / "evaluation_summary.json").read_text())
    assert original["scheme"] == "brats2021"
    with open(tmp_path / "eval-nnunet" / "evaluation_per_case.csv") as a, open(tmp_path / "eval-brats" / "evaluation_per_case.csv") as b:
        assert a.read() == b.read()  # every case, region and metric identical
    # the model's classes really are nnU-Net's: some tumour was found
    assert any(v["dice"]["mean"] > 0 for v in nnunet["regions"].values())
