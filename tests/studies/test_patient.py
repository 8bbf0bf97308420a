"""The patient-level use case: train on a few slices of one case, segment the whole volume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
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
    """The README's `semiseg patient CASE --label-count 3`, without --out: the results go to
    ./<case>-patient."""
    sets = [a for s in TINY + TINY_NET for a in ("--set", s)]
    env = {**os.environ, "SEMISEG_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "semiseg", "patient", str(case), "--label-count", "3", "--method", "supervised",
                        "--slice-size", "32", "--preset", "small", *sets], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "BraTS2021_00007-patient"
    assert r.stdout.strip().splitlines()[-1].startswith(f"segmentation {Path('BraTS2021_00007-patient') / 'BraTS2021_00007.nii.gz'}")
    seg = nib.load(str(out / "BraTS2021_00007.nii.gz"))
    ref = nib.load(str(case / "BraTS2021_00007_flair.nii.gz"))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    gt = np.asarray(nib.load(str(case / "BraTS2021_00007_seg.nii.gz")).dataobj)
    with open(out / "slice_dice.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    annotated = {int(r["slice"]) for r in rows if r["annotated"] == "1"}
    assert len(annotated) == 3 and all(gt[:, :, z].any() for z in annotated)  # picked over the lesion
    assert {r["region"] for r in rows} == {"WT", "TC", "ET"}
    assert (out / "slice_dice.png").stat().st_size > 0


def test_patient_explicit_slices_and_errors(case: Path, tmp_path: Path) -> None:
    result = run_patient(case, tmp_path / "out", "supervised", label_slices=[10, 12], slice_size=32, preset="small", overrides=TINY + TINY_NET)
    assert result["annotated"] == [10, 12]
    with pytest.raises(SemisegInputError, match="either --label-slices or --label-count"):
        run_patient(case, tmp_path / "out2", "supervised", slice_size=32)
    with pytest.raises(SemisegInputError, match="outside"):
        run_patient(case, tmp_path / "out3", "supervised", label_slices=[500], slice_size=32)
