"""Users' mistakes end with one line on stderr, exit code 2, no traceback and no output left."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_brats_case, write_image

ENV = {**os.environ, "SEMISEG_PROGRESS": "0"}


def semiseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semiseg", *args], capture_output=True, text=True, env=ENV, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def dataset_with(tmp_path: Path, damage) -> Path:
    root = tmp_path / "data"
    for i in range(2):
        write_brats_case(root, f"c{i}", seed=i)
    damage(root / "c1")
    return root


def truncate(folder: Path) -> None:
    p = folder / "c1_flair.nii.gz"
    p.write_bytes(p.read_bytes()[:200])


def nan_voxel(folder: Path) -> None:
    img = np.ones((24, 24, 16), np.float32)
    img[3, 3, 3] = np.nan
    write_image(folder / "c1_t1.nii.gz", img)


BAD_INPUTS = {
    "missing file": (lambda f: (f / "c1_t2.nii.gz").unlink(), ["c1", "modality t2 not found"], ["-m", "t1,t2,flair"]),
    "truncated gzip": (truncate, ["c1_flair.nii.gz"], []),
    "NaN voxel": (nan_voxel, ["c1_t1.nii.gz", "NaN/Inf"], []),
    "2D image": (lambda f: write_image(f / "c1_t1ce.nii.gz", np.zeros((24, 24), np.float32)), ["c1_t1ce.nii.gz", "expected a 3D image"], []),
    "4D image": (lambda f: write_image(f / "c1_t1ce.nii.gz", np.zeros((24, 24, 16, 2), np.float32)), ["c1_t1ce.nii.gz", "expected a 3D image"], []),
    "shape mismatch": (lambda f: write_image(f / "c1_t2.nii.gz", np.zeros((24, 24, 15), np.float32)), ["c1_t2.nii.gz", "shape"], []),
    "affine mismatch": (lambda f: write_image(f / "c1_t2.nii.gz", np.zeros((24, 24, 16), np.float32), np.diag([2.0, 1, 1, 1])), ["c1_t2.nii.gz", "affine"], []),
    "wrong label values": (lambda f: write_image(f / "c1_seg.nii.gz", np.full((24, 24, 16), 3, np.int16)), ["c1_seg.nii.gz", "[3]"], []),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_prepare_bad_input(case, tmp_path: Path):
    damage, fragments, extra = BAD_INPUTS[case]
    data = dataset_with(tmp_path, damage)
    out = tmp_path / "cache"
    result = semiseg("prepare", str(data), "--out", str(out), *extra)
    assert_one_line_error(result, *fragments)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(semiseg("prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "c")), "no cases found")
    assert not (tmp_path / "c").exists()


def test_ddpm_with_wrong_channels(tmp_path: Path, tiny_ddpm: Path):
    root = tmp_path / "two"
    for i in range(3):
        write_brats_case(root, f"c{i}", modalities=("flair", "t1ce"), shape=(36, 36, 24), seed=i)
    cache = tmp_path / "cache2"
    assert semiseg("prepare", str(root), "--out", str(cache), "--slice-size", "32").returncode == 0
    out = tmp_path / "run"
    result = semiseg("train", str(cache), "--method", "ddpm-finetune", "--labelled", "2", "--ddpm", str(tiny_ddpm), "--out", str(out))
    assert_one_line_error(result, "DDPM was trained on 4 channels (t1, t1ce, t2, flair) but the cache has 2 channels (t1ce, flair)")
    assert not out.exists()


def test_checkpoint_that_does_not_fit(tmp_path: Path, tiny_ddpm: Path, tiny_cache: Path):
    """A run folder whose config was edited so its weights no longer fit the network."""
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(tiny_ddpm, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["model"]["base_channels"] = 8
    (run / "config.json").write_text(json.dumps(cfg))
    result = semiseg("sample", str(run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert_one_line_error(result, "checkpoint does not fit", "has shape")
    assert not (tmp_path / "s.png").exists()


def test_unknown_setting_and_method(tiny_cache: Path, tmp_path: Path):
    r = semiseg("train", str(tiny_cache), "--method", "nope", "--labelled", "2", "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "unknown method 'nope'")
    r = semiseg("train", str(tiny_cache), "--method", "supervised", "--labelled", "2", "--set", "train.stepz=3", "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "--set: unknown setting 'train.stepz'")
    r = semiseg("train", str(tiny_cache), "--method", "supervised", "--labelled", "99", "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "asked for 99 labelled slices")
    assert not (tmp_path / "r").exists()


def test_help_is_fast_and_lists_commands():
    r = semiseg("--help")
    assert r.returncode == 0
    for cmd in ("synth", "prepare", "pretrain", "train", "predict", "evaluate", "sample", "sweep", "patient", "demo"):
        assert cmd in r.stdout
