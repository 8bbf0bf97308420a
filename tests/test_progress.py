"""Progress when the output is not a terminal: plain lines every ``every`` units with count, info,
elapsed time and ETA, instead of a live bar printed only at the end."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_DDPM
from semiseg.progress import PlainProgress, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_n_units_with_info_and_eta():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(out, clock)
    task = bar.add_task("ddpm", total=10, completed=2, info="", unit="step", every=4)  # resumed at step 2
    for step in range(3, 11):
        clock.now += 1.5
        if step % 4 == 0:
            bar.update(task, info=f"loss {1 / step:.3g}, 8.0 img/s")
        bar.update(task, completed=step)
    lines = out.getvalue().splitlines()
    # steps 4 and 8 (multiples of every) and the last one; 2 steps in 3 s -> 6 steps left take 9 s
    assert lines == [
        "ddpm: step 4/10, loss 0.25, 8.0 img/s, elapsed 0:00:03, eta 0:00:09",
        "ddpm: step 8/10, loss 0.125, 8.0 img/s, elapsed 0:00:09, eta 0:00:03",
        "ddpm: step 10/10, loss 0.125, 8.0 img/s, elapsed 0:00:12, eta 0:00:00",
    ]


def test_plain_default_every_and_quiet_subtasks():
    out = io.StringIO()
    bar = PlainProgress(out, Clock())
    task = bar.add_task("prepare", total=100, info="", unit="case")
    quiet = bar.add_task("  case1", total=5, info="", every=0)
    for i in range(1, 101):
        bar.update(task, completed=i)
    bar.advance(quiet, 5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and lines[0].startswith("prepare: case 5/100,") and lines[-1].startswith("prepare: case 100/100,")
    assert format_seconds(3725) == "1:02:05" and format_seconds(float("nan")) == "?"


@pytest.mark.slow
def test_pretrain_redirected_to_a_file_logs_a_line_per_log_every(tiny_cache: Path, tmp_path: Path):
    """`semiseg pretrain ... > log.txt`: the log has a line per log_every steps (step, loss, images/s, ETA)."""
    env = {k: v for k, v in os.environ.items() if k != "SEMISEG_PROGRESS"} | {"OMP_NUM_THREADS": "1"}
    overrides = [a for s in TINY_DDPM + ["train.steps=6", "train.log_every=2", "train.checkpoint_every=6"] for a in ("--set", s)]
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "semiseg", "pretrain", str(tiny_cache), "--out", str(tmp_path / "run"), "--preset", "small", *overrides],
                              stdout=fh, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = log.read_text().splitlines()
    steps = [ln for ln in lines if ln.startswith("ddpm: step")]
    assert [re.match(r"ddpm: step (\d+)/6,", ln).group(1) for ln in steps] == ["2", "4", "6"], lines
    for ln in steps:
        assert re.search(r"loss [\d.e+-]+, (.*, )?[\d.]+ img/s, (\d+% waiting for data, )?elapsed \d:\d\d:\d\d, eta \d:\d\d:\d\d$", ln), ln
    assert lines[-1] == f"run {tmp_path / 'run'}"
