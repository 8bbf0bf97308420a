"""A run killed with SIGKILL at any instant can be resumed (or started again) and ends where an
uninterrupted run ends: same step, same weights, a continuous log; what the kill left behind is
removed. In the first test the killed DDPM pretraining builds its batches in two DataLoader worker
processes, the uninterrupted one in the training process: exact resume holds with workers, and
workers change nothing; the wall time is summed over both parts."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, TINY_DDPM, TINY_NET
from semiseg.errors import SemisegInputError
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
        try:  # the run writes and rotates checkpoints meanwhile: a read may meet one half gone
            ckpt = latest_checkpoint(run) if (run / "latest.json").exists() else None
        except (OSError, RuntimeError, SemisegInputError):
            ckpt = None
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


# ---- a run killed at chosen instants -------------------------------------------------------------
#: runs `semiseg ARGS` and SIGKILLs itself when it is about to rename its NTH temporary into NAME
#: (the file or folder name), exactly as a kill -9 at that instant would leave the run
KILL_AT_RENAME = """
import os, signal, sys
name, nth = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == name:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["semiseg"] + sys.argv[3:]
from semiseg.cli import main
main()
"""

TINY_RUN = ["-M", "supervised", "--labelled", "3", "-p", "small"] + [a for s in TINY + TINY_NET + ["dims=2"] for a in ("--set", s)]


def killed_train(cache: Path, out: Path, name: str, nth: int = 1) -> None:
    """Start `semiseg train` (tiny_run's settings) and kill it at the nth rename into ``name``."""
    cmd = [sys.executable, "-c", KILL_AT_RENAME, name, str(nth), "train", str(cache), "--out", str(out), *TINY_RUN]
    # as many threads as this process, which resumes the run: Adam's first steps turn the rounding
    # differences of another thread count into weight differences of the order of the lr
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(cmd, env={**env(), **threads}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def same_weights(a: Path, b: Path) -> bool:
    """The latest weights of two runs agree (to float rounding: the killed half of a run trains in
    a child process, the rest in this process)."""
    sa, sb = load_model_state(latest_checkpoint(a)), load_model_state(latest_checkpoint(b))
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_killed_while_config_json_is_renamed_into_place(tiny_cache: Path, tiny_run: Path, tmp_path: Path):
    """The first file of a run, caught mid-rename: both --resume and a fresh start work, and end
    where an uninterrupted run does."""
    from cli_battery import invoke

    run = tmp_path / "run"
    killed_train(tiny_cache, run, "config.json")
    left = sorted(p.name for p in run.iterdir() if p.name != ".lock")
    assert len(left) == 1 and left[0].startswith(".config.") and ".tmp" in left[0], left
    again = tmp_path / "again"
    shutil.copytree(run, again)
    for folder, extra in ((run, ["--resume"]), (again, [])):
        outcome = invoke("train", tiny_cache, "--out", folder, *TINY_RUN, *extra)
        assert outcome.code == 0, outcome.error or outcome.stderr
        assert not [p for p in folder.iterdir() if ".tmp" in p.name]
        assert latest_checkpoint(folder).name == "step-00000004" and same_weights(folder, tiny_run)


@pytest.mark.parametrize("name,nth", [("latest.json", 2), ("step-00000004", 1)])
def test_killed_mid_checkpoint_resumes_exactly_and_cleans_up(name: str, nth: int, tiny_cache: Path, tiny_run: Path, tmp_path: Path):
    """Killed while the second checkpoint is put in place (its folder, or the pointer to it): the
    resumed run removes the temporaries and the unused checkpoint and ends where an uninterrupted
    run ends, with a continuous log."""
    from cli_battery import invoke

    run = tmp_path / "run"
    killed_train(tiny_cache, run, name, nth)
    # lock files (.lock, .timing.json.lock) stay
    leftovers = [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers, "the kill left no temporaries"
    assert latest_checkpoint(run).name == "step-00000002"
    outcome = invoke("train", tiny_cache, "--out", run, *TINY_RUN, "--resume")
    assert outcome.code == 0, outcome.error or outcome.stderr
    assert not any(p.exists() for p in leftovers)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004"]
    assert same_weights(run, tiny_run)
    assert [int(r["step"]) for r in read_log(run / "train_log.csv")] == [2, 4]


def test_deleted_latest_json_recovers_from_the_checkpoint(tiny_cache: Path, tiny_run: Path, tmp_path: Path):
    """Without latest.json the newest complete checkpoint is the run's: it predicts and resumes."""
    from cli_battery import invoke

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "latest.json").unlink()
    assert latest_checkpoint(run).name == "step-00000004"
    outcome = invoke("predict", run, tiny_cache.parent / "data" / "case00", "--out", tmp_path / "p")
    assert outcome.code == 0 and (tmp_path / "p" / "case00.nii.gz").exists(), outcome.error or outcome.stderr
    outcome = invoke("train", tiny_cache, "--out", run, *TINY_RUN, "--resume")
    assert outcome.code == 0 and same_weights(run, tiny_run), outcome.error or outcome.stderr
