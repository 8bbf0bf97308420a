"""Users' mistakes end with one line on stderr, exit code 2, no traceback and no output left."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
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
    result = semiseg("sample", str(run), "--count", "1", "--steps", "2", "--out", str(tmp_path / "s.png"))
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


# ---------------------------------------------------------------- the CLI's own conventions
def _commands():
    import typer.main

    from semiseg.cli import app

    group = typer.main.get_command(app)
    return group, {name: group.get_command(None, name) for name in group.list_commands(None)}


def test_version():
    from semiseg import __version__

    r = semiseg("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"semiseg {__version__}"


def test_help_shows_boolean_flags_as_flags():
    """typer's rich panels printed `--resume <bool>`; every command's help shows flags bare."""
    from typer.testing import CliRunner

    from semiseg.cli import app

    _, commands = _commands()
    for name, command in commands.items():
        text = CliRunner().invoke(app, [name, "--help"]).output
        assert "<bool>" not in text, name
        for param in command.params:
            if getattr(param, "is_flag", False) and param.opts[0] != "--help":
                line = next(ln for ln in text.splitlines() if param.opts[0] in ln)
                assert f"{param.opts[0]} <" not in line, (name, line)
    assert "  --resume  " in CliRunner().invoke(app, ["train", "--help"]).output


def test_one_spelling_of_labelled_with_the_other_as_alias_and_one_meaning_of_n():
    _, commands = _commands()
    seen_n = set()
    for name, command in commands.items():
        for param in command.params:
            opts = set(param.opts) | set(getattr(param, "secondary_opts", []))
            for opt in opts:
                if "labelled" in opt:
                    assert opt.replace("labelled", "labeled") in opts, (name, opt)
                if "labeled" in opt:
                    assert opt.replace("labeled", "labelled") in opts, (name, opt)
            if "-n" in opts:
                seen_n.add(param.name)
    assert seen_n == {"cases"}


def test_synth_accepts_unlabeled(tmp_path: Path):
    from typer.testing import CliRunner

    from semiseg.cli import app

    r = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), "-n", "2", "--unlabeled", "1", "--shape", "24,24,16"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "d").glob("*/*_seg.nii.gz"))) == 1 and len(list((tmp_path / "d").iterdir())) == 2


@pytest.fixture(scope="module")
def evaluation_folders(tmp_path_factory) -> tuple[Path, Path]:
    """A BraTS dataset (ground truth) and a folder of semiseg-marked predictions for it."""
    from semiseg.data.io import read_header, write_like

    root = tmp_path_factory.mktemp("evalcli")
    gt = root / "gt"
    for i in range(2):
        write_brats_case(gt, f"c{i}", seed=i)
    pred = root / "pred"
    pred.mkdir()
    for i in range(2):
        seg = gt / f"c{i}" / f"c{i}_seg.nii.gz"
        labels = np.asarray(nib.load(str(seg)).dataobj).astype(np.uint8)
        write_like(pred / f"c{i}.nii.gz", labels, seg, read_header(seg).affine)
    return gt, pred


def test_evaluate_names_its_folders_and_refuses_a_swap(evaluation_folders, tmp_path: Path):
    gt, pred = evaluation_folders

    def files() -> list[str]:
        return sorted(str(p.relative_to(gt.parent)) for p in gt.parent.rglob("*"))

    before = files()
    assert_one_line_error(semiseg("evaluate", str(gt), str(pred)), "name the folders: semiseg evaluate --gt")
    assert_one_line_error(semiseg("evaluate", "--gt", str(pred), "--pred", str(gt)), f"{gt}: is a BraTS dataset (ground truth), not predictions")
    # nnU-Net's labelsTr given as --pred, or ground truth that holds semiseg's predictions
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        shutil.copy(gt / f"c{i}" / f"c{i}_seg.nii.gz", flat / f"c{i}.nii.gz")
    assert_one_line_error(semiseg("evaluate", "--gt", str(pred), "--pred", str(flat)), f"{pred}: holds semiseg predictions")
    assert_one_line_error(semiseg("evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(gt / "c0")), "is inside the ground truth")
    assert files() == before and sorted(p.name for p in flat.iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    r = semiseg("evaluate", "--gt", str(gt), "--pred", str(pred))
    assert r.returncode == 0, r.stderr
    summary = json.loads((pred / "evaluation_summary.json").read_text())
    assert summary["regions"]["WT"]["dice"]["mean"] == 1.0

