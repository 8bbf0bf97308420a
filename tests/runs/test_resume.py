"""A DDPM pretraining killed with SIGKILL midway, then resumed, ends where an uninterrupted run
ends: same step, same weights, a continuous log. The killed run builds its batches in two
DataLoader worker processes, the uninterrupted one in the training process: exact resume holds
with workers, and workers change nothing; the wall time is summed over both parts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY_DDPM
from semiseg.training.checkpoint import latest_checkpoint, load_model_state
from semiseg.training.log import TIMING_FILE, read_log, read_timing, total_seconds

pytestmark = pytest.mark.slow

SETTINGS = [s for s in TINY_DDPM if not s.startswith(("train.steps", "train.checkpoint_every", "train.log_every"))]
SETTINGS += ["train.steps=30", "train.checkpoint_every=5", "train.log_every=1"]


def cli(*args: str, workers: int = 0) -> list[str]:
    cmd = [sys.executable, "-m", "semiseg", *args, "--set", f"train.workers={workers}"]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd


def env() -> dict:
    return {**os.environ, "SEMISEG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_cache: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    subprocess.run(cli("pretrain", str(tiny_cache), "--out", str(straight), "--preset", "small"), check=True, env=env())

    run = tmp_path / "killed"
    proc = subprocess.Popen(cli("pretrain", str(tiny_cache), "--out", str(run), "--preset", "small", workers=2), env=env())
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = latest_checkpoint(run) if (run / "latest.json").exists() else None
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(run).name.split("-")[1])
    assert 10 <= killed_at < 30, "the run finished before it could be killed"
    load_model_state(latest_checkpoint(run))  # loadable right after the kill
    (killed,) = read_timing(run / TIMING_FILE)
    assert killed["first_step"] == 0 and killed["last_step"] >= killed_at and killed["seconds"] > 0

    subprocess.run(cli("pretrain", str(tiny_cache), "--out", str(run), "--preset", "small", "--resume", workers=2), check=True, env=env())
    assert latest_checkpoint(run).name == "step-00000030"
    first, resumed = read_timing(run / TIMING_FILE)
    assert first["seconds"] >= killed["seconds"] and first["last_step"] == killed["last_step"]  # the killed part is kept
    assert (resumed["first_step"], resumed["last_step"], resumed["device"]) == (killed_at, 30, "cpu")
    assert total_seconds(run / TIMING_FILE) == pytest.approx(first["seconds"] + resumed["seconds"])
    steps = [int(r["step"]) for r in read_log(run / "train_log.csv")]
    assert steps == list(range(1, 31))
    a, b = load_model_state(latest_checkpoint(straight)), load_model_state(latest_checkpoint(run))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), f"{k} differs after resume"
