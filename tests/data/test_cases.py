import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_brats_case, write_image
from semiseg.data.cases import canonical_modality, discover
from semiseg.errors import SemisegInputError


def test_brats2021_discovery(brats_dataset: Path):
    ds = discover(brats_dataset)
    assert ds.format == "brats2021" and ds.scheme.name == "brats2021"
    assert ds.modalities == ("t1", "t1ce", "t2", "flair")
    assert len(ds.cases) == 7 and len(ds.labelled_cases) == 6
    assert [c for c in ds.cases if not c.labelled][0].case_id == "BraTS2021_00099"


def test_brats2023_names_map_to_2021(tmp_path: Path):
    write_brats_case(tmp_path / "d", "BraTS-GLI-00000-000", year=2023)
    ds = discover(tmp_path / "d", ["t2f", "T1C"])
    assert ds.format == "brats2023" and ds.scheme.values == (0, 1, 2, 3)
    assert ds.modalities == ("flair", "t1ce")
    assert ds.cases[0].images["flair"].name.endswith("-t2f.nii.gz")


def test_single_case_folder(tmp_path: Path):
    folder = write_brats_case(tmp_path, "case1")
    ds = discover(folder)
    assert [c.case_id for c in ds.cases] == ["case1"]


def test_partial_modalities_and_missing_request(tmp_path: Path):
    root = tmp_path / "two"
    for i in range(2):
        write_brats_case(root, f"c{i}", modalities=("flair", "t1ce"), seed=i)
    ds = discover(root)
    assert ds.modalities == ("t1ce", "flair")
    with pytest.raises(SemisegInputError, match=r"modality t2 not found; this case has flair, t1ce"):
        discover(root, ["flair", "t2"])


def test_empty_and_missing_folders(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemisegInputError, match="no cases found"):
        discover(tmp_path / "empty")
    with pytest.raises(SemisegInputError, match="folder not found"):
        discover(tmp_path / "nope")


def test_nnunet_raw(tmp_path: Path):
    root = tmp_path / "Dataset001_Spleen"
    (root).mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "numTraining": 2, "file_ending": ".nii.gz"})
    )
    img = np.zeros((8, 8, 4), np.float32)
    for cid in ("spl_001", "spl_002"):
        write_image(root / "imagesTr" / f"{cid}_0000.nii.gz", img)
        write_image(root / "labelsTr" / f"{cid}.nii.gz", img.astype(np.int16))
    write_image(root / "imagesTs" / "spl_009_0000.nii.gz", img)
    ds = discover(root)
    assert ds.format == "nnunet" and ds.modalities == ("ct",) and ds.kinds == {"ct": "CT"}
    assert [c.case_id for c in ds.cases] == ["spl_001", "spl_002", "spl_009"]
    assert [c.labelled for c in ds.cases] == [True, True, False]
    assert ds.scheme.name == "binary"


def test_canonical_modality_aliases():
    assert canonical_modality("T2F") == "flair"
    assert canonical_modality("t1post") == "t1ce"
    assert canonical_modality("CT") == "ct"


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii"])
def test_nnunet_file_ending_is_honoured(tmp_path: Path, ending: str):
    """Only files with dataset.json's file_ending are the dataset's (a stray .nii.gz is not)."""
    import SimpleITK as sitk

    root = tmp_path / "Dataset002_X"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 2, "file_ending": ending}))
    img = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32))
    for cid in ("a_001", "a_002"):
        for c in (0, 1):
            sitk.WriteImage(img, str(root / "imagesTr" / f"{cid}_{c:04d}{ending}"))
        sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(root / "labelsTr" / f"{cid}{ending}"))
    write_image(root / "imagesTr" / "stray_0000.nii.gz", np.zeros((8, 8, 4), np.float32))
    ds = discover(root)
    assert [c.case_id for c in ds.cases] == ["a_001", "a_002"] and all(c.labelled for c in ds.cases)
    assert ds.modalities == ("t1", "t2") and ds.cases[0].images["t2"].name == f"a_001_0001{ending}"
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": 1}, "file_ending": ".png"}))
    with pytest.raises(SemisegInputError, match=r"file_ending '\.png' is not one semiseg reads"):
        discover(root)
