"""Running a study safely: a local worker pool and two sweeps at once give the sequential sweep's
results byte for byte and never train a run twice; --keep-going, --list, --shard and --report-only
through the real CLI; the pool pins its workers."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import small_study, worker_placement

pytestmark = pytest.mark.slow

ENV = {**os.environ, "SEMISEG_PROGRESS": "0"}


def sweep(study: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "semiseg", "sweep", str(study), *args], env=ENV, cwd=study.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=1800)
    return proc.returncode, out, err


def events(out: Path) -> list[tuple[str, str]]:
    """(pid, message) of every line of OUT/sweep.log."""
    rows = []
    for line in (out / "sweep.log").read_text().splitlines():
        m = re.match(r"\S+ \S+ pid=(\d+)(?: job=\S+)? (.*)$", line)
        assert m, line
        rows.append((m.group(1), m.group(2)))
    return rows


def started(out: Path) -> Counter:
    """How often each run was started or resumed, over every process."""
    return Counter(re.sub(r"^(start|resume from step \d+) (.*) \(.*$", r"\2", msg) for _, msg in events(out)
                   if msg.startswith(("start ", "resume ")))


def test_worker_pool_gives_the_sequential_results(sequential: Path, study_data: Path, tmp_path: Path):
    code, _, err = finish(sweep(small_study(tmp_path, study_data, "pool"), "--workers", "2", "--threads", "1"))
    assert code == 0, err[-3000:]
    out = tmp_path / "pool"
    assert (out / "results.csv").read_bytes() == (sequential / "results.csv").read_bytes()
    log = events(out)
    assert any(msg == "worker pool: 2 processes x 1 threads" for _, msg in log)
    runners = {pid for pid, msg in log if msg.startswith("start ") and "+" not in msg}  # the grid's and upper-bound runs
    parent = {pid for pid, msg in log if msg.startswith("set-up: prepare")}
    assert len(runners) == 2 and not runners & parent, log  # two worker processes trained the runs
    # a worker pretrained the DDPM, and a supervised run started before it was done
    order = [msg for _, msg in log]
    pretrain = next(pid for pid, msg in log if msg.startswith("set-up: pretrain"))
    assert pretrain in runners, log
    assert any(msg.startswith("start supervised") for msg in order[:order.index("set-up: the DDPM is pretrained")]), log
    assert set(started(out).values()) == {1} and len(started(out)) == 10  # the grid's 4, the 2 upper-bound runs, 4 guided rounds
    # every kind of run is in the results: the grid, the external method, the guided rounds, the upper bound
    from semiseg.studies.stats import UPPER_BOUND

    methods = {line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]}
    assert methods == {"supervised", "ddpm-finetune", "truth", "supervised+random", UPPER_BOUND}, methods
    # the two guided chains (seeds 0 and 1) ran side by side, in two new worker processes
    chains = {msg.split(":")[0]: pid for pid, msg in log if msg.startswith("guided chain") and msg.endswith("2 rounds to run (threads=1)")}
    assert set(chains) == {"guided chain supervised+random seed 0", "guided chain supervised+random seed 1"}, log
    assert len(set(chains.values())) == 2 and not set(chains.values()) & (parent | runners), log


def test_two_sweeps_at_once_never_train_the_same_run(sequential: Path, study_data: Path, tmp_path: Path):
    study = small_study(tmp_path, study_data, "twice")
    first, second = sweep(study, "--threads", "1"), sweep(study, "--threads", "1")
    for proc in (first, second):
        code, _, err = finish(proc)
        assert code == 0, err[-3000:]
    out = tmp_path / "twice"
    log = [msg for _, msg in events(out)]
    assert sum(m.startswith("set-up: prepare") for m in log) == 1 and sum(m.startswith("set-up: pretrain") for m in log) == 1
    runs = started(out)
    assert set(runs.values()) == {1} and len(runs) == 10, runs  # the grid's 4, 2 upper-bound runs, 4 guided rounds: each once
    assert {"supervised n=2 seed=0", "ddpm-finetune n=2 seed=0", "supervised n=2 seed=1", "ddpm-finetune n=2 seed=1"} < set(runs)
    for seed in (0, 1):  # each chain ran once; the other process waited for it, then found it done
        assert sum(m.startswith(f"guided chain supervised+random seed {seed}: 2 rounds to run") for m in log) == 1, log
    for log_file in out.glob("runs/*/*/train_log.csv"):  # one training each: every logged step once, in order
        steps = [int(line.split(",")[0]) for line in log_file.read_text().splitlines()[1:]]
        assert steps == sorted(set(steps)), log_file
    assert (out / "results.csv").read_bytes() == (sequential / "results.csv").read_bytes()


def test_keep_going_list_shard_and_report_only(study_data: Path, tmp_path: Path):
    from filelock import FileLock

    # job order: supervised s0, mean-teacher s0, supervised s1, mean-teacher s1; mean-teacher raises (a dropout site the U-Net does not have)
    bad = {"all": ["train.steps=4", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2", "network.features=[8,8,16,16,16,8]"],
           "mean-teacher": ["network.dropout_at=[nowhere]"]}
    study = small_study(tmp_path, study_data, "kg", methods=("supervised", "mean-teacher"), settings=bad, extras=False)
    out = tmp_path / "kg"

    code, stdout, err = finish(sweep(study, "--keep-going", "--shard", "2/2"))  # the two mean-teacher runs: both fail
    assert code == 3, err[-3000:]
    assert "failed: mean-teacher n=2 seed=0: the settings do not build a mean-teacher model (ValueError: network.dropout_at" in err
    assert "2 runs are not finished" in stdout
    record = json.loads((out / "failures" / "mean-teacher-n2-s0.json").read_text())
    assert "network.dropout_at: unknown site" in record["error"] and "Traceback" in record["traceback"], record
    assert not (out / "report.html").exists()  # the supervised runs are still to do

    with FileLock(out / "locks" / "supervised-n2-s0.lock"):  # as if another process were training it
        code, listing, err = finish(sweep(study, "--list"))
    assert code == 0, err
    rows = [line for line in listing.splitlines() if "supervised" in line or "mean-teacher" in line]
    assert sum("running" in r for r in rows) == 1 and sum("to do" in r for r in rows) == 1
    assert sum("failed" in r and "unknown site" in r for r in rows) == 2
    assert "done: 0, running: 1, failed: 2, to do: 1" in listing

    code, _, err = finish(sweep(study, "--report-only"))  # nothing finished yet: one line, exit 2
    assert code == 2 and "no run of the study has finished yet" in err and "Traceback" not in err

    code, stdout, err = finish(sweep(study, "--shard", "1/2"))  # the supervised runs; then the study is complete
    assert code == 3, err[-3000:]  # it has failed runs
    html = (out / "report.html").read_text()
    assert "Runs not in these results (2)" in html and "unknown site" in html and "report:" in stdout
    results = (out / "results.csv").read_text().splitlines()[1:]
    assert results and {r.split(",")[0] for r in results} == {"supervised"}

    (out / "report.html").unlink()
    code, stdout, err = finish(sweep(study, "--report-only"))
    assert code == 0 and (out / "report.html").exists(), err


def test_attempt_leaves_held_runs_and_this_sweeps_failures_alone(tmp_path: Path):
    """Without training anything: a run another process holds is busy; a failure recorded since the
    sweep began (by another process) is not retried; the states --list shows follow."""
    import time

    from filelock import FileLock

    from semiseg.studies.execution import BUSY, FAILED, RUNNING, TODO, StudySetup, attempt, record_failure, run_state
    from semiseg.studies.sweep import RunKey, load_study

    study = load_study(None, out=str(tmp_path / "s"), cache=str(tmp_path / "cache"), methods=["supervised"], budgets=[2])
    setup, run = StudySetup(tmp_path / "cache", None), RunKey("supervised", 2, 0)
    (tmp_path / "s" / "locks").mkdir(parents=True)
    assert run_state(study.out, run) == TODO
    with FileLock(tmp_path / "s" / "locks" / f"{run.name}.lock"):
        assert attempt(study, setup, run).status == BUSY and run_state(study.out, run) == RUNNING
    since = time.time() - 1
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record_failure(study.out, run, exc)
    outcome = attempt(study, setup, run, since=since)
    assert outcome.status == FAILED and outcome.failure.error == "ValueError: boom" and run_state(study.out, run) == FAILED


def test_a_held_guided_chain_is_busy_and_running_the_others_are_not(tmp_path: Path):
    """Without training anything: guided chains lock one by one, so another process's chain is
    left to it (and shown running) while the other chains stay free for this process."""
    from filelock import FileLock

    from semiseg.studies.active import Chain
    from semiseg.studies.execution import BUSY, RUNNING, TODO, StudySetup, chain_lock, run_chain_locked, study_states
    from semiseg.studies.sweep import load_study

    study = load_study(None, out=str(tmp_path / "s"), cache=str(tmp_path / "cache"), methods=["supervised"], budgets=[2],
                       seeds=[0, 1], selection={"strategy": "hybrid", "rounds": [1, 2]})
    (tmp_path / "s" / "locks").mkdir(parents=True)
    with FileLock(tmp_path / "s" / "locks" / f"{chain_lock('supervised+hybrid', 1)}.lock"):
        assert run_chain_locked(study, StudySetup(tmp_path / "cache", None), Chain("supervised", "hybrid", 1)) == BUSY
        states = study_states(study, None)
    guided = {(run.budget, run.seed): state for run, state in states.items() if run.method == "supervised+hybrid"}
    assert guided == {(1, 0): TODO, (2, 0): TODO, (1, 1): RUNNING, (2, 1): RUNNING}


def test_pool_pins_each_worker_to_a_gpu_and_its_threads():
    import multiprocessing

    from semiseg.studies.execution import make_pool

    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(2)
        with make_pool(2, ["3", "5"], threads=1) as pool:
            placements = [f.result(timeout=300) for f in [pool.submit(worker_placement, barrier) for _ in range(2)]]
    assert sorted(placements) == [("3", 1), ("5", 1)]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_pool_workers_end_when_the_sweep_is_killed(tmp_path: Path):
    """``kill -9`` of a sweep must not leave its workers training unseen."""
    import time

    script = (
        "import os, time\n"
        "from semiseg.studies.execution import make_pool\n"
        "pool = make_pool(1, None, threads=1)\n"
        "pid = pool.submit(os.getpid).result()\n"
        "pool.submit(time.sleep, 120)\n"
        "print(pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    worker = int(sweep.stdout.readline())
    assert _running(worker)
    sweep.kill()
    sweep.wait()
    deadline = time.time() + 20
    while _running(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(worker), "the worker outlived its sweep"


def test_setup_under_torchrun_prepares_once_and_pretrains_with_every_rank(study_data: Path, tmp_path: Path):
    """As a Slurm set-up job with several tasks runs it (one process per GPU; here two on the CPU)."""
    import shutil

    from semiseg.studies.execution import existing_setup
    from semiseg.studies.sweep import load_study
    from semiseg.training.log import read_log

    study = small_study(tmp_path, study_data, "ddp")
    script = tmp_path / "setup.py"
    script.write_text("import sys\nfrom semiseg.studies.execution import setup_study\nfrom semiseg.studies.sweep import load_study\n"
                      "setup_study(load_study(sys.argv[1]))\n")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(study)], capture_output=True, text=True,
                            env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [msg for _, msg in events(tmp_path / "ddp")]
    assert [m.split(" ")[1] for m in log] == ["prepare", "pretrain", "the"] and log[-1] == "set-up: the DDPM is pretrained", log
    assert existing_setup(load_study(study)) is not None
    assert [r["step"] for r in read_log(tmp_path / "ddp" / "ddpm" / "train_log.csv")] == [2, 4]


def test_option_mistakes_are_one_line_errors(tmp_path: Path, study_data: Path):
    study = small_study(tmp_path, study_data, "opts")
    for args, fragment in [
        (["--shard", "3/2"], "--shard '3/2': i must be between 1 and n"),
        (["--partition", "gpu"], "--partition is a Slurm option: add --executor slurm"),
        (["--executor", "slurm", "--workers", "2"], "--workers is for local sweeps"),
        (["--executor", "pbs"], "--executor 'pbs': expected local or slurm"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
    ]:
        result = subprocess.run([sys.executable, "-m", "semiseg", "sweep", str(study), *args], capture_output=True, text=True, env=ENV)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)
    assert not (tmp_path / "opts").exists()
