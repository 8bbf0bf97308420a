"""OS-level failures through the CLI: a folder the user may not write to or read, a read-only
file system, a full disk. Every command ends with one line naming the file and the OS's reason,
exit code 2, and leaves nothing new or changed.

How each condition is made, for real, by the kernel:

* permissions: ``chmod``. Root ignores file modes, so when the tests run as root the commands run
  in a new user namespace (``unshare --user``), where the process keeps its user id but loses its
  power over files: the modes bind again.
* a read-only file system: a read-only bind mount of the output folder, in a private mount
  namespace (``unshare --mount``; unprivileged users add ``--user --map-root-user``).
* a full disk: a 1 MB tmpfs in a private mount namespace, filled to leave a given number of bytes
  (so a run can write its config.json but not its first checkpoint). Without mount namespaces,
  the file-size limit RLIMIT_FSIZE stands in (writes fail with EFBIG instead of ENOSPC).

Each condition's commands run in one process (tests/cli_battery.py), which snapshots the watched
folder before and after each command; a condition that cannot be made here is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import semiseg
from cli_battery import judge
from helpers import TINY, TINY_DDPM, TINY_NET, write_brats_case

pytestmark = pytest.mark.slow
BATTERY = Path(__file__).with_name("cli_battery.py")
ROOT = os.geteuid() == 0


def sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def works(wrapper: list[str]) -> bool:
    """Whether commands can run under ``wrapper`` here (namespaces may be switched off)."""
    if not wrapper:
        return True
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*wrapper, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def mount_wrapper(script: str) -> list[str]:
    """Run a command after ``script`` (mounts) in a private mount namespace."""
    base = ["unshare", "--mount"] if ROOT else ["unshare", "--user", "--map-root-user", "--mount"]
    return [*base, "sh", "-c", f'{script} && exec "$@"', "sh"]


def run_battery(tmp: Path, spec: list[dict], wrapper: list[str]) -> dict[str, dict]:
    """Run the commands of ``spec`` in one process started under ``wrapper``; outcomes by name."""
    spec_path, results = tmp / "spec.json", tmp / "results.json"
    spec_path.write_text(json.dumps(spec, default=str))
    src = str(Path(semiseg.__file__).resolve().parents[1])
    env = {**os.environ, "SEMISEG_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*wrapper, sys.executable, str(BATTERY), str(spec_path), str(results)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["name"]: r for r in json.loads(results.read_text())}


def check(outcomes: dict[str, dict], expected: dict[str, list[str]]) -> None:
    from cli_battery import Outcome

    broken = {}
    for name, fragments in expected.items():
        r = outcomes[name]
        problems = judge(Outcome(r["code"], r["stdout"], r["stderr"], r["error"]), fragments) + r["changes"]
        if problems:
            broken[name] = problems
    assert not broken, json.dumps(broken, indent=1)


@pytest.fixture
def inputs(tmp_path: Path, tiny_cache: Path, tiny_run: Path, tiny_ddpm: Path) -> dict[str, Path]:
    """Inputs every condition uses: data, cache, runs, a prediction and its ground truth."""
    case = write_brats_case(tmp_path / "cases", "p1", seed=2)
    gt, preds = tmp_path / "gt", tmp_path / "preds"
    for folder in (gt, preds):
        folder.mkdir()
        shutil.copy(case / "p1_seg.nii.gz", folder / "p1.nii.gz")
    return {"data": tiny_cache.parent / "data", "cache": tiny_cache, "run": tiny_run, "ddpm": tiny_ddpm, "case": case, "gt": gt, "preds": preds}


def writes(i: dict[str, Path], where: Path) -> dict[str, list]:
    """Every command that writes, with its output under ``where``."""
    return {
        "synth": ["synth", where / "phantom", "--cases", "1", "--shape", "32,32,24"],
        "prepare": ["prepare", i["data"], "--out", where / "cache", "--slice-size", "32"],
        "pretrain": ["pretrain", i["cache"], "--out", where / "ddpm", "-p", "small", *sets(TINY_DDPM)],
        "train": ["train", i["cache"], "-M", "supervised", "--labelled", "2", "--out", where / "run", "-p", "small", *sets(TINY + TINY_NET)],
        "predict": ["predict", i["run"], i["case"], "--out", where / "pred", "--probabilities"],
        "sample": ["sample", i["ddpm"], "--out", where / "s.png", "--count", "1", "--steps", "2"],
        "evaluate": ["evaluate", "--pred", i["preds"], "--gt", i["gt"], "--out", where / "eval"],
        "sweep": ["sweep", "--cache", i["cache"], "--out", where / "study", "--methods", "supervised", "--budgets", "2", "-p", "small"],
        "patient": ["patient", i["case"], "--out", where / "patient", "-M", "supervised", "--label-count", "1", "--slice-size", "32", "-p", "small"],
        "demo": ["demo", "--quick", "--out", where / "demo"],
    }


def test_permission_denied(tmp_path: Path, inputs: dict[str, Path]):
    wrapper = ["unshare", "--user"] if ROOT else []
    if not works(wrapper):
        pytest.skip("running as root, and no user namespace can be made here (`unshare --user`), so chmod cannot deny root anything")
    locked = tmp_path / "locked"
    locked.mkdir()
    preds = locked / "preds"  # evaluate writes next to the predictions by default
    preds.mkdir()
    shutil.copy(inputs["gt"] / "p1.nii.gz", preds / "p1.nii.gz")
    run = locked / "run"
    shutil.copytree(inputs["run"], run)
    data = tmp_path / "data"
    shutil.copytree(inputs["data"], data, ignore=shutil.ignore_patterns("case0[2-7]"))
    cache = tmp_path / "cache"
    shutil.copytree(inputs["cache"], cache)
    study = tmp_path / "study.yaml"
    study.write_text(f"out: {tmp_path / 'study'}\ncache: {cache}\nmethods: [supervised]\nbudgets: [2]\n")
    spec = [{"name": n, "args": a, "watch": locked} for n, a in writes(inputs, locked).items()]
    spec += [
        {"name": "evaluate into the prediction folder", "args": ["evaluate", "--pred", preds, "--gt", inputs["gt"]], "watch": locked},
        {"name": "resume a run in a locked folder", "args": ["train", cache, "-M", "supervised", "--out", run, "--resume"], "watch": locked},
        {"name": "unreadable case folder", "args": ["prepare", data, "--out", tmp_path / "c1"], "watch": tmp_path},
        {"name": "unreadable image", "args": ["prepare", data / "case00", "--out", tmp_path / "c2"], "watch": tmp_path},
        {"name": "unreadable run record", "args": ["predict", run, inputs["case"], "--out", tmp_path / "p"], "watch": tmp_path},
        {"name": "unreadable cache array", "args": ["train", cache, "-M", "supervised", "--labelled", "2", "--out", tmp_path / "r", "-p", "small",
                                                    *sets(TINY + TINY_NET)], "watch": tmp_path},
        {"name": "unreadable study file", "args": ["sweep", study], "watch": tmp_path},
    ]
    modes = {locked: 0o555, preds: 0o555, run: 0o555, data / "case01": 0o000, data / "case00" / "case00_flair.nii.gz": 0o000,
             run / "config.json": 0o000, **{p: 0o000 for p in (cache / "cases").glob("*.slices.npy")}, study: 0o000}
    saved = {p: stat.S_IMODE(p.stat().st_mode) for p in modes}
    try:
        for p, mode in modes.items():
            p.chmod(mode)
        outcomes = run_battery(tmp_path, spec, wrapper)
    finally:
        for p, mode in reversed(list(saved.items())):
            p.chmod(mode)
    denied = ["cannot be written: permission denied"]
    check(outcomes, {
        **{name: denied for name in writes(inputs, locked)},
        "evaluate into the prediction folder": denied,
        "resume a run in a locked folder": denied,
        "unreadable case folder": ["case01: cannot be listed: permission denied"],
        "unreadable image": ["case00_flair.nii.gz: cannot be read: permission denied"],
        "unreadable run record": ["config.json: run record cannot be read: permission denied"],
        "unreadable cache array": [".slices.npy: cannot be read: permission denied"],
        "unreadable study file": ["study.yaml' is not readable"],
    })


def test_read_only_file_system(tmp_path: Path, inputs: dict[str, Path]):
    ro = tmp_path / "ro"
    ro.mkdir()
    preds = ro / "preds"
    preds.mkdir()
    shutil.copy(inputs["gt"] / "p1.nii.gz", preds / "p1.nii.gz")
    shutil.copytree(inputs["run"], ro / "run")
    wrapper = mount_wrapper(f"mount --bind {shlex.quote(str(ro))} {shlex.quote(str(ro))} && mount -o remount,bind,ro {shlex.quote(str(ro))}")
    if not works(wrapper):
        pytest.skip("no private mount namespace can be made here (`unshare --mount`), so no read-only file system")
    spec = [{"name": n, "args": a, "watch": ro} for n, a in writes(inputs, ro).items()]
    spec += [
        {"name": "evaluate into the prediction folder", "args": ["evaluate", "--pred", preds, "--gt", inputs["gt"]], "watch": ro},
        {"name": "resume a run", "args": ["train", inputs["cache"], "-M", "supervised", "--out", ro / "run", "--resume"], "watch": ro},
    ]
    outcomes = run_battery(tmp_path, spec, wrapper)
    check(outcomes, {name: ["cannot be written: read-only file system"] for name in outcomes})


def test_disk_full(tmp_path: Path, inputs: dict[str, Path]):
    full = tmp_path / "full"
    full.mkdir()
    wrapper = mount_wrapper(f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(full))}")
    if works(wrapper):
        room = {"filler": full / ".filler"}
        reason = "no space left on device"
    else:  # the file-size limit: every file may grow to the "free" bytes, and writes beyond fail
        wrapper, room, reason = [], {"fsize": True}, "file too large"
    commands = writes(inputs, full / "work")
    # a run can write its config.json (a few kB) but not its first checkpoint
    free = {"train": 64_000, "pretrain": 64_000}
    spec = [{"name": n, "args": commands[n], "watch": full / "work", "free": free.get(n, 0), **room}
            for n in ("prepare", "pretrain", "train", "predict", "sample", "evaluate", "sweep")]
    outcomes = run_battery(tmp_path, spec, wrapper)
    check(outcomes, {name: ["cannot be written", reason] for name in outcomes})
