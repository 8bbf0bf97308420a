"""The patient-level use case: train on a few slices of one case, segment the whole volume."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import TINY, TINY_NET, write_brats_case
from semiseg.errors import SemisegInputError
from semiseg.studies.patient import run_patient


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return write_brats_case(tmp_path / "data", "BraTS2021_00007", shape=(36, 36, 24), seed=3)


def test_patient_from_label_count(case: Path, tmp_path: Path) -> None:
    result = run_patient(case, tmp_path / "out", "supervised", label_count=3, slice_size=32, preset="small", overrides=TINY + TINY_NET)
    seg = nib.load(str(result["segmentation"]))
    ref = nib.load(str(case / "BraTS2021_00007_flair.nii.gz"))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    gt = np.asarray(nib.load(str(case / "BraTS2021_00007_seg.nii.gz")).dataobj)
    annotated = result["annotated"]
    assert len(annotated) == 3 and all(gt[:, :, z].any() for z in annotated)  # picked over the lesion
    with open(result["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["slice"]) for r in rows if r["annotated"] == "1"} == set(annotated)
    assert {r["region"] for r in rows} == {"WT", "TC", "ET"}
    assert Path(result["plot"]).stat().st_size > 0


def test_patient_explicit_slices_and_errors(case: Path, tmp_path: Path) -> None:
    result = run_patient(case, tmp_path / "out", "supervised", label_slices=[10, 12], slice_size=32, preset="small", overrides=TINY + TINY_NET)
    assert result["annotated"] == [10, 12]
    with pytest.raises(SemisegInputError, match="either --label-slices or --label-count"):
        run_patient(case, tmp_path / "out2", "supervised", slice_size=32)
    with pytest.raises(SemisegInputError, match="outside"):
        run_patient(case, tmp_path / "out3", "supervised", label_slices=[500], slice_size=32)
