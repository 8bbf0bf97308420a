"""The same pretrain command under torchrun with two CPU processes (gloo), each with a DataLoader worker."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_DDPM
from semiseg.training.checkpoint import latest_checkpoint, load_model_state
from semiseg.training.log import read_log

pytestmark = pytest.mark.slow


def test_two_process_ddp_pretrain(tiny_cache: Path, tmp_path: Path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "semiseg", "pretrain", str(tiny_cache), "--out", str(out), "--preset", "small"]
    for s in TINY_DDPM + ["train.workers=1"]:
        cmd += ["--set", s]
    env = {**os.environ, "SEMISEG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert latest_checkpoint(out).name == "step-00000004"
    load_model_state(latest_checkpoint(out))
    rows = read_log(out / "train_log.csv")
    assert [r["step"] for r in rows] == [2, 4]
    # images/s counts both processes' batches
    assert all(r["images_per_s"] > 0 for r in rows)
    assert not list(out.glob("**/*.partial"))
