"""Every command's success path, run as users run it (the console script's command group under
typer's CliRunner): exit code 0, the outputs it promises, and the line it ends with. The sweep's
is in studies/test_sweep.py (a `python -m semiseg sweep` subprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_battery import invoke
from helpers import TINY, TINY_DDPM, TINY_NET, write_brats_case

pytestmark = pytest.mark.slow


def sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def ok(*args) -> str:
    """Run a command that must succeed; return its last line."""
    outcome = invoke(*args)
    assert outcome.code == 0 and not outcome.error, outcome.error or outcome.stderr
    return outcome.last_line


def test_synth_then_prepare(tmp_path: Path):
    data, cache = tmp_path / "phantom", tmp_path / "cache"
    # --unlabeled: the spelling accepted beside --unlabelled
    assert ok("synth", data, "--cases", "3", "--unlabeled", "1", "--shape", "32,32,24", "--spacing", "3") == f"wrote 3 cases to {data}"
    assert sorted(p.name for p in data.iterdir()) == ["Phantom_00000", "Phantom_00001", "Phantom_00002"]
    assert not list((data / "Phantom_00002").glob("*seg*"))
    last = ok("prepare", data, "--out", cache, "--slice-size", "32", "--test-fraction", "0.5")
    assert last == f"cache {cache}: 1 train, 1 test, 1 unlabelled cases"
    index = json.loads((cache / "index.json").read_text())
    assert index["slice_size"] == 32 and len(index["cases"]) == 3


def test_pretrain_sample_train_predict_evaluate(tiny_cache: Path, tmp_path: Path):
    ddpm, run, ft = tmp_path / "ddpm", tmp_path / "sup", tmp_path / "ft"
    assert ok("pretrain", tiny_cache, "--out", ddpm, "--preset", "small", *sets(TINY_DDPM)) == f"run {ddpm}"
    assert (ddpm / "checkpoints" / "step-00000004" / "ema.safetensors").exists()

    png = tmp_path / "samples.png"
    assert ok("sample", ddpm, "--out", png, "--count", "2", "--steps", "3") == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    last = ok("train", tiny_cache, "--method", "supervised", "--labelled", "3", "--out", run, "--preset", "small",
              *sets(TINY + TINY_NET))
    assert last == f"run {run}"
    assert {p.name for p in run.iterdir()} >= {"config.json", "latest.json", "checkpoints", "train_log.csv", "loss_curve.png", ".lock"}

    assert ok("train", tiny_cache, "-M", "ddpm-finetune", "--labelled", "2", "--ddpm", ddpm, "--out", ft, "-p", "small", *sets(TINY)) == f"run {ft}"
    recorded = json.loads((ft / "config.json").read_text())["config"]["ddpm"]
    assert recorded["checkpoint"] == "step-00000004" and len(recorded["sha256"]) == 64

    data = tmp_path / "new"
    write_brats_case(data, "p1", shape=(30, 26, 20), seed=4)
    preds = tmp_path / "preds"
    assert ok("predict", run, data, "--out", preds, "--probabilities") == f"wrote 1 segmentations to {preds}"
    assert sorted(p.name for p in preds.iterdir()) == ["p1.nii.gz", "p1_prob.nii.gz"]
    seg = nib.load(str(preds / "p1.nii.gz"))
    assert seg.shape == (30, 26, 20) and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}

    # the ground truth of p1 in a flat folder, evaluated against the prediction
    gt = tmp_path / "gt"
    gt.mkdir()
    shutil.copy(data / "p1" / "p1_seg.nii.gz", gt / "p1.nii.gz")
    report = tmp_path / "report"
    outcome = invoke("evaluate", "--pred", preds, "--gt", gt, "--out", report)
    assert outcome.code == 0, outcome.error or outcome.stderr
    assert outcome.last_line == f"wrote {report / 'evaluation_per_case.csv'} and {report / 'evaluation_summary.json'}"
    assert "Evaluation of 1 cases (brats2021)" in outcome.stdout
    summary = json.loads((report / "evaluation_summary.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["regions"]) == {"WT", "TC", "ET"}
    assert len((report / "evaluation_per_case.csv").read_text().splitlines()) == 1 + 3


def test_patient(tmp_path: Path):
    case = write_brats_case(tmp_path / "data", "BraTS2021_00003", shape=(36, 36, 24), seed=3)
    out = tmp_path / "out"
    last = ok("patient", case, "--out", out, "--method", "supervised", "--label-count", "2", "--slice-size", "32", "-p", "small",
              *sets(TINY + TINY_NET))
    assert last.startswith(f"segmentation {out / 'BraTS2021_00003.nii.gz'}; per-slice Dice {out / 'slice_dice.png'} (annotated: [")
    assert {"BraTS2021_00003.nii.gz", "slice_dice.csv", "slice_dice.png", "cache", "run-supervised"} <= {p.name for p in out.iterdir()}


def test_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The quick demo, shrunk to seconds: every method, one budget, a few steps."""
    from semiseg.studies import demo

    tiny = {"cases": 6, "shape": (32, 32, 24), "spacing": 3.0, "slice_size": 32, "ddpm_steps": 2, "ddpm_batch": 2,
            "budgets": [2], "seeds": [0], "steps": 2, "pixel_steps": 2, "test_slices_per_case": 2}
    monkeypatch.setitem(demo.MODES, "quick", tiny)
    out = tmp_path / "demo"
    outcome = invoke("demo", "--quick", "--out", out)
    assert outcome.code == 0, outcome.error or outcome.stderr
    report = out / "study" / "report.html"
    assert outcome.last_line == f"report: {report.resolve()}"
    summary = (out / "study" / "summary.csv").read_text()
    assert all(m in summary for m in demo.METHODS)
    from semiseg.studies.execution import available_cores

    cores = available_cores()  # two runs at a time on a multi-core CPU, the DDPM pretrained beside them
    pooled = f"worker pool: 2 processes x {cores // 2} threads" in (out / "study" / "sweep.log").read_text()
    assert pooled == (cores >= 2), cores
