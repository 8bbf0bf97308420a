"""The console entry point itself (``python -m semiseg``, as the installed ``semiseg`` script runs
it): help, version, the conventions of its options, evaluate's named folders, and users' mistakes
as one line on stderr with exit code 2, no traceback and no output left. The full tables run the
same command group in process: test_cli_commands.py, test_cli_failures.py and test_cli_os.py."""

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
    assert r.stdout.strip().splitlines()[-1] == f"wrote {pred / 'evaluation_per_case.csv'} and {pred / 'evaluation_summary.json'}"
    summary = json.loads((pred / "evaluation_summary.json").read_text())
    assert summary["regions"]["WT"]["dice"]["mean"] == 1.0


def test_damaged_case_is_one_line_and_writes_nothing(tmp_path: Path):
    data = tmp_path / "data"
    for i in range(2):
        write_brats_case(data, f"c{i}", seed=i)
    img = np.ones((24, 24, 16), np.float32)
    img[3, 3, 3] = np.nan
    write_image(data / "c1" / "c1_t1.nii.gz", img)
    result = semiseg("prepare", str(data), "--out", str(tmp_path / "out" / "cache"))
    assert_one_line_error(result, "c1_t1.nii.gz", "NaN/Inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_wrong_setting_and_wrong_option_are_one_line(tiny_cache: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert_one_line_error(semiseg("train", str(tiny_cache), "-M", "supervised", "--labelled", "2", "--set", "train.steps=abc", "--out", str(out)),
                          "--set: setting 'train.steps' must be an integer, got 'abc'")
    assert_one_line_error(semiseg("train", str(tiny_cache), "-M", "supervised", "--labelled", "two", "--out", str(out)),
                          "Invalid value for '--labelled'")
    assert not out.exists()
