"""Running a study's runs safely, in this process or in a local pool of worker processes.

Safe by construction: every run is trained under its own lock, ``OUT/locks/<run>.lock``, an OS
file lock (``flock``, through the ``filelock`` package) that the kernel releases when its process
ends, however it ends, so there are no stale lock files to clean up. Any number of sweeps, worker
processes or Slurm tasks can work on one study folder; none trains a run another one holds. The
set-up stage (preparing the data, pretraining the shared DDPM) runs under ``OUT/locks/setup.lock``:
the first process does it, the others wait for it and reuse its work. The lock folder must be on a
file system with working ``flock`` (local disks; NFS and Lustre mounted with locking, as clusters
normally are).

A run that raises is recorded in ``OUT/failures/<run>.json`` (error, traceback, host, process,
Slurm job, time) and its lock released; with ``keep_going`` the other runs go on. ``OUT/sweep.log``
gets one line per set-up step and per run started, resumed, finished or failed, with the host and
process (and Slurm job) that did it.

A run's state: ``done`` (its test metrics exist), ``running`` (another process holds its lock),
``failed`` (a failure record and not done) or ``to do``.

Guided label selection (a study's ``selection`` block, :mod:`semiseg.studies.active`) runs chains
of rounds, each round trained on the previous round's picks: they run after the study's other runs,
each chain under its own lock ``OUT/locks/selection-<method>+<strategy>-s<seed>.lock``, chains side
by side in the sweep's worker pool (one after another with one worker; on Slurm one array task
each); a process that finds a chain held waits for it. External methods' predictions are
checked in the set-up stage and scored whenever the report is written.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from semiseg.errors import SemisegInputError
from semiseg.files import check_output, file_lock, read_json, removed_on_failure, write_error, write_json
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log, progress_bar, set_enabled
from semiseg.studies.sweep import (
    RunKey,
    Study,
    check_external,
    is_done,
    overlay_slices,
    prepare_study_cache,
    pretrain_study_ddpm,
    run_one,
    score_external,
    study_runs,
    upper_bound_jobs,
    write_study_outputs,
)
from semiseg.training.log import TIMING_FILE, WallClock

LOCKS = "locks"
FAILURES = "failures"
SWEEP_LOG = "sweep.log"

DONE, RUNNING, FAILED, TODO = "done", "running", "failed", "to do"
#: what :func:`attempt` found: trained it, found it done, it failed, or another process holds it
TRAINED, BUSY = "trained", "busy"

#: exit code of ``semiseg sweep`` when the study has failed runs (2 is reserved for bad input)
EXIT_FAILED_RUNS = 3


# -- locks and the sweep log ---------------------------------------------------------------------


def lock_file(out: str | PathLike, name: str) -> Path:
    return Path(out) / LOCKS / f"{name}.lock"


@contextlib.contextmanager
def holding(out: str | PathLike, name: str, wait: bool = True, waiting: str | None = None) -> Iterator[bool]:
    """Hold the lock ``name`` of a study folder for the block and yield True; without ``wait``,
    yield False at once when another process holds it. ``waiting`` is logged before blocking."""
    path = lock_file(out, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path.parent, exc) from None
    with file_lock(path, wait, (lambda: log(waiting)) if waiting else None) as got:
        yield got


def is_locked(out: str | PathLike, name: str) -> bool:
    """True if a process holds the lock ``name`` now (tried without waiting, released at once)."""
    if not lock_file(out, name).exists():
        return False
    with holding(out, name, wait=False) as got:
        return not got


def slurm_job_id() -> str | None:
    """This process's Slurm job (``<array job>_<task>`` for array tasks), if it runs in one."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def log_event(out: str | PathLike, message: str) -> None:
    """Append one line to OUT/sweep.log (time, host, process, Slurm job, message) and show it."""
    job = slurm_job_id()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    line = f"{stamp} {socket.gethostname()} pid={os.getpid()}{f' job={job}' if job else ''} {message}\n"
    path = Path(out) / SWEEP_LOG
    try:
        # one write() of one line in append mode: concurrent writers' lines never interleave
        with open(path, "a") as fh:
            fh.write(line)
    except OSError as exc:
        raise write_error(path, exc) from None
    log(message)


# -- failure records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A run that raised: what, where and when (``OUT/failures/<run>.json``)."""

    method: str
    budget: int
    seed: int
    error: str
    user_error: bool
    traceback: str
    host: str
    pid: int
    time: str
    slurm_job: str | None = None

    @property
    def run(self) -> RunKey:
        return RunKey(self.method, self.budget, self.seed)


def failure_file(out: str | PathLike, run: RunKey) -> Path:
    return Path(out) / FAILURES / f"{run.name}.json"


def record_failure(out: str | PathLike, run: RunKey, exc: BaseException) -> Failure:
    """Write the failure record of ``run`` for the exception being handled; returns it."""
    user = isinstance(exc, SemisegInputError)
    failure = Failure(
        run.method, run.budget, run.seed, error=str(exc) if user else f"{type(exc).__name__}: {exc}", user_error=user,
        traceback=traceback.format_exc(), host=socket.gethostname(), pid=os.getpid(),
        time=datetime.datetime.now().isoformat(timespec="seconds"), slurm_job=slurm_job_id(),
    )
    write_json(failure_file(out, run), asdict(failure))
    return failure


def read_failure(out: str | PathLike, run: RunKey) -> Failure | None:
    path = failure_file(out, run)
    if not path.exists():
        return None
    raw = read_json(path, "failure record")
    try:
        return Failure(**raw)
    except TypeError:
        raise SemisegInputError(path, "is not a failure record written by semiseg (delete it to retry the run)") from None


def run_state(out: str | PathLike, run: RunKey, lock: str | None = None) -> str:
    """done, running, failed or to do (see the module's docstring); ``lock``: the lock that is held
    while the run trains (default its own; guided selection's rounds: their chain's lock)."""
    if is_done(out, run):
        return DONE
    if is_locked(out, lock or run.name):
        return RUNNING
    if failure_file(out, run).exists():
        return FAILED
    return TODO


# -- the set-up stage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySetup:
    """What every run of a study shares: the prepared cache, the DDPM run, the overlay slices."""

    cache: Path
    ddpm_run: Path | None
    keep: tuple[tuple[str, int], ...] = field(default_factory=tuple)


def needs_ddpm(study: Study) -> bool:
    return any(get_method(m).needs_ddpm for m in study.methods)


def _cache_root(study: Study) -> Path:
    return Path(study.cache) if study.cache else Path(study.out) / "cache"


def _ddpm_root(study: Study) -> Path:
    return Path(study.ddpm["run"]) if study.ddpm.get("run") else Path(study.out) / "ddpm"


def existing_setup(study: Study, complete: bool = True) -> StudySetup | None:
    """The study's set-up if it has been done (``complete``: the DDPM too), without doing any of it.
    With ``complete=False`` an unfinished DDPM is left out (ddpm_run None) instead."""
    from semiseg.runs.train import is_finished

    if not (_cache_root(study) / "index.json").exists():
        return None
    cache = Cache(_cache_root(study))
    ddpm = None
    if needs_ddpm(study):
        ddpm = _ddpm_root(study)
        if not (study.ddpm.get("run") or is_finished(ddpm)):
            if complete:
                return None
            ddpm = None
    return StudySetup(cache.root, ddpm, tuple(overlay_slices(cache, cache.ids("test"), study.overlays, study.dims)))


def check_external_early(study: Study) -> None:
    """The external methods' prediction files, before anything is written, if the data are
    prepared already (else the set-up stage checks them right after preparing)."""
    if study.external and (_cache_root(study) / "index.json").exists():
        check_external(study, Cache(_cache_root(study)))


def setup_study(study: Study, pretrain: bool = True) -> StudySetup:
    """Prepare the data and pretrain the shared DDPM once, under the set-up lock: a process that
    finds another one at it waits, then reuses its work. Launched as several processes (torchrun,
    or a Slurm job with several tasks), rank 0 prepares the data and all ranks train the DDPM.
    Without ``pretrain`` a DDPM that still has to be trained is left out (``ddpm_run`` None)."""
    from semiseg.runs.train import is_finished
    from semiseg.training.distributed import barrier, init_distributed

    out = Path(study.out)
    info = init_distributed()
    waiting = f"waiting for another process to finish the set-up of {out} (prepare + DDPM)"
    with holding(out, "setup", waiting=waiting) if info.main else contextlib.nullcontext():
        if info.main and not (_cache_root(study) / "index.json").exists():
            log_event(out, f"set-up: prepare {study.data} -> {_cache_root(study)}")
        if info.main:
            prepare_study_cache(study)
        barrier(info)  # the other ranks open the cache rank 0 prepared
        cache = prepare_study_cache(study)
        if len(cache.ids("test")) == 0:
            raise SemisegInputError(cache.root, "has no test patients; prepare it with --test-fraction above 0")
        if info.main:
            check_external(study, cache)
        ddpm_run = None
        ddpm = _ddpm_root(study)
        ready = bool(study.ddpm.get("run")) or is_finished(ddpm)
        if needs_ddpm(study) and (pretrain or ready):
            trains = info.main and not ready
            if trains:
                log_event(out, f"set-up: {'resume' if ddpm.exists() else 'pretrain'} the DDPM -> {ddpm}")
            ddpm_run = pretrain_study_ddpm(study, cache)
            if trains:
                log_event(out, "set-up: the DDPM is pretrained")
        barrier(info)
    return StudySetup(cache.root, ddpm_run, tuple(overlay_slices(cache, cache.ids("test"), study.overlays, study.dims)))


# -- one run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`attempt` did with a run: trained, done (found finished), failed or busy."""

    run: RunKey
    status: str
    failure: Failure | None = None
    seconds: float = 0.0


def _where() -> str:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"threads={torch.get_num_threads()}" + (f" CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else "")


def attempt(study: Study, setup: StudySetup, run: RunKey, wait: bool = False, since: float | None = None,
            raise_errors: bool = False) -> RunOutcome:
    """Train and test ``run`` under its lock unless it is done. Without ``wait``, return ``busy``
    at once if another process holds it. A failure recorded at or after ``since`` (by another
    process of the same sweep) is not retried; older ones are. A failure is recorded and returned
    (or re-raised with ``raise_errors``)."""
    from semiseg.runs.record import CONFIG
    from semiseg.training.checkpoint import latest_step

    out = Path(study.out)
    with holding(out, run.name, wait=wait, waiting=f"waiting for another process to finish {run}") as got:
        if not got:
            return RunOutcome(run, BUSY)
        if is_done(out, run):
            return RunOutcome(run, DONE)
        previous = failure_file(out, run)
        if previous.exists() and since is not None and previous.stat().st_mtime >= since:
            return RunOutcome(run, FAILED, read_failure(out, run))
        previous.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            folder = run.folder(out)
            step = latest_step(folder) if (folder / CONFIG).exists() else None
            log_event(out, f"{'start' if step is None else f'resume from step {step}'} {run} ({_where()})")
            run_one(study, Cache(setup.cache), run.method, run.budget, run.seed, setup.ddpm_run, [tuple(k) for k in setup.keep])
        except Exception as exc:
            failure = record_failure(out, run, exc)
            log_event(out, f"failed {run}: {failure.error}")
            if raise_errors:
                raise
            return RunOutcome(run, FAILED, failure, time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        log_event(out, f"done {run} in {seconds:.1f} s")
        return RunOutcome(run, TRAINED, None, seconds)


class RunFailedError(RuntimeError):
    """A run failed in a worker process (a bug, not bad input); the message has its traceback."""


def failure_error(failure: Failure) -> Exception:
    """The exception that stops a sweep without ``keep_going`` for a run that failed elsewhere."""
    if failure.user_error:
        return SemisegInputError(None, f"{failure.run} failed: {failure.error}")
    return RunFailedError(f"{failure.run} failed on {failure.host} (pid {failure.pid}):\n{failure.traceback}")


# -- guided selection and external methods -------------------------------------------------------


def guided_runs(study: Study) -> list[RunKey]:
    """The rounds of the study's guided selection chains, chain by chain in round order (none
    without a selection block)."""
    from semiseg.studies.active import guided_chains

    return [run for chain in guided_chains(study) for run in chain_rounds(study, chain)]


def chain_lock(label: str, seed: int) -> str:
    """The lock a guided chain (method label, seed) holds while any of its rounds trains."""
    return f"selection-{label}-s{seed}"


def chain_rounds(study: Study, chain: Any) -> list[RunKey]:
    """The runs of one guided chain (:class:`semiseg.studies.active.Chain`), in round order."""
    from semiseg.studies.active import SelectionPlan

    return [RunKey(chain.label, budget, chain.seed) for budget in SelectionPlan.from_study(study.selection).rounds]


def unfinished_chains(study: Study) -> list[Any]:
    """The study's guided chains with a round not done (none without a selection block)."""
    from semiseg.studies.active import guided_chains

    out = Path(study.out)
    return [c for c in guided_chains(study) if not all(is_done(out, r) for r in chain_rounds(study, c))]


def run_chain_locked(study: Study, setup: StudySetup, chain: Any, wait: bool = False) -> str:
    """Run (or finish) one guided chain under its lock: ``done``, or ``busy`` (without ``wait``) if
    another process holds it; a failure is recorded as that of the chain's first unfinished round
    and raised."""
    from semiseg.studies.active import run_chain

    out = Path(study.out)
    rounds = chain_rounds(study, chain)
    with holding(out, chain_lock(chain.label, chain.seed), wait=wait,
                 waiting=f"waiting for another process running the guided chain {chain.label} seed {chain.seed}") as got:
        if not got:
            return BUSY
        todo = [run for run in rounds if not is_done(out, run)]
        if not todo:
            return DONE
        log_event(out, f"guided chain {chain.label} seed {chain.seed}: {len(todo)} rounds to run ({_where()})")
        started: dict[int, float] = {}

        def on_round(budget: int, finished: bool) -> None:  # each round in the log, as a run of the grid
            run = RunKey(chain.label, budget, chain.seed)
            if finished:
                log_event(out, f"done {run} in {time.perf_counter() - started[budget]:.1f} s")
            else:
                started[budget] = time.perf_counter()
                log_event(out, f"start {run} ({_where()})")

        try:
            run_chain(study, Cache(setup.cache), setup.ddpm_run, [tuple(k) for k in setup.keep], chain, on_round)
        except Exception as exc:
            run = next((r for r in todo if not is_done(out, r)), todo[0])
            failure = record_failure(out, run, exc)
            log_event(out, f"failed {run}: {failure.error}")
            raise
        for run in todo:
            failure_file(out, run).unlink(missing_ok=True)
        log_event(out, f"guided chain {chain.label} seed {chain.seed}: done")
        return TRAINED


def run_selection(study: Study, setup: StudySetup, workers: int = 1, gpus: Sequence[str] | None = None,
                  threads: int | None = None, chains: list[Any] | None = None) -> None:
    """Run (or finish) the guided selection chains (default: every unfinished one): here one after
    another, or side by side in a pool of ``workers`` processes (a chain's rounds depend on each
    other, chains do not). Chains other processes hold are waited for; the first failure is raised
    once every chain has ended."""
    chains = unfinished_chains(study) if chains is None else chains
    if not chains:
        return
    errors: list[BaseException] = []
    if workers == 1 and not gpus:
        busy = []
        for chain in chains:
            try:
                if run_chain_locked(study, setup, chain) == BUSY:
                    busy.append(chain)
            except Exception as exc:
                errors.append(exc)
        for chain in busy:
            try:
                run_chain_locked(study, setup, chain, wait=True)
            except Exception as exc:
                errors.append(exc)
    else:
        workers = min(workers, len(chains))
        with make_pool(workers, gpus, threads or max(1, available_cores() // workers)) as pool:
            pending = {pool.submit(run_chain_locked, study, setup, chain): chain for chain in chains}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    chain = pending.pop(fut)
                    try:
                        if fut.result() == BUSY:
                            pending[pool.submit(run_chain_locked, study, setup, chain, True)] = chain
                    except BrokenProcessPool:
                        raise SemisegInputError(None, f"a worker process died while running the guided chain {chain.label} seed "
                                                      f"{chain.seed} (killed, or out of memory?); start the sweep again to resume") from None
                    except Exception as exc:
                        errors.append(exc)
    if errors:
        raise errors[0]


def shard_runs(runs: Sequence[RunKey], shard: tuple[int, int] | None) -> list[RunKey]:
    """Shard i of n takes every n-th run of the job order, starting with the i-th."""
    if shard is None:
        return list(runs)
    i, n = shard
    return list(runs[i - 1::n])


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _exit_with(parent: int) -> None:
    """End this process once ``parent`` is gone. A killed sweep (``kill PID``, SIGKILL) cannot stop
    its pool, whose workers would go on training unseen; the run a worker leaves is resumable,
    as after any kill."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(slots, threads: int) -> None:
    """Pin a pool worker before it touches CUDA: its own GPU (if any) and its share of the cores."""
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    set_enabled(False)  # one progress bar, the parent's


def make_pool(workers: int, gpus: Sequence[str] | None, threads: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` fresh (spawned) processes, worker i pinned to ``gpus[i % len(gpus)]``
    and to ``threads`` torch threads."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or OpenMP state
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads))


@dataclass
class SweepOutcome:
    """The state of a study after a sweep: its report (None while runs are unfinished elsewhere),
    the failed runs and the runs still to do or running in other processes."""

    report: Path | None
    failures: list[Failure]
    unfinished: list[RunKey]


def sweep_study(study: Study, **options: Any) -> SweepOutcome:
    """:func:`run_study` on a checked output folder; a failed first sweep leaves only what a rerun
    continues from (a prepared cache, runs with checkpoints), not a half-written study folder."""
    from semiseg.runs.train import has_progress

    out = Path(study.out)
    check_output(out, "folder")
    with removed_on_failure(out, keep=has_progress):
        return run_study(study, **options)


def run_study(study: Study, *, workers: int | None = None, gpus: Sequence[str] | None = None, threads: int | None = None,
              keep_going: bool = False, shard: tuple[int, int] | None = None) -> SweepOutcome:
    """Set up the study and run its runs (shard ``i/n`` of them): here one after another, or in a
    pool of ``workers`` processes, pinned to ``gpus`` (one each, round robin) and to ``threads``
    torch threads (default: the cores shared out). Runs other processes hold are waited for. Then,
    if no run is unfinished, write results, summary, figures and report."""
    gpus = list(gpus) if gpus else None
    if workers is None:
        workers = len(gpus) if gpus else 1
    if workers < 1:
        raise SemisegInputError(None, f"--workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise SemisegInputError(None, f"--threads must be at least 1, got {threads}")
    if gpus and study.device and study.device.startswith("cuda:"):
        raise SemisegInputError(None, f"--gpus pins each worker to one GPU; leave the device unset instead of {study.device!r}")
    out = Path(study.out)
    check_output(out, "folder")
    check_external_early(study)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    write_json(out / "study.json", asdict(study))
    clock = WallClock(out / TIMING_FILE, "sweep")
    if threads:  # the set-up too: the DDPM's weights, and so the diffusion methods' results, depend on it on a CPU
        torch.set_num_threads(threads)
    since = time.time()
    # a pool pretrains the DDPM in a worker, beside the runs that need none, where that costs it
    # nothing: with a GPU per worker, or with --threads (which the set-up would use anyway); else
    # on a CPU the set-up takes every core first, as the DDPM is often the longest job
    beside = bool(gpus) or (workers > 1 and threads is not None)
    setup = setup_study(study, pretrain=not beside)
    clock.tick()
    runs = shard_runs(study_runs(study, Cache(setup.cache)), shard)
    with progress_bar() as bar:
        task = bar.add_task("sweep", total=len(runs), info="", unit="run", every=1)

        def advance(outcome: RunOutcome) -> None:
            clock.tick()
            bar.update(task, advance=1, info=f"{outcome.run}: {outcome.status}")

        if workers == 1 and not gpus:
            _run_here(study, setup, runs, keep_going, since, advance)
        else:
            setup = _run_pool(study, setup, runs, workers, gpus, threads or max(1, available_cores() // workers), keep_going, since, advance)
    if needs_ddpm(study) and setup.ddpm_run is None:  # no diffusion run in this shard: the DDPM for the rounds and report
        setup = setup_study(study)
    if study.selection:
        try:
            run_selection(study, setup, workers, gpus, threads)
        except Exception:
            if not keep_going:
                raise
    outcome = finish_study(study, setup)
    clock.tick()
    return outcome


def _run_here(study: Study, setup: StudySetup, runs: list[RunKey], keep_going: bool, since: float, advance) -> None:
    busy = []
    for run in runs:
        outcome = attempt(study, setup, run, wait=False, since=since, raise_errors=not keep_going)
        if outcome.status == BUSY:
            busy.append(run)
        else:
            advance(outcome)
    for run in busy:  # held by other processes: wait for each, then run it if they did not finish it
        advance(attempt(study, setup, run, wait=True, since=since, raise_errors=not keep_going))


def _run_pool(study: Study, setup: StudySetup, runs: list[RunKey], workers: int, gpus: list[str] | None, threads: int,
              keep_going: bool, since: float, advance) -> StudySetup:
    """Run ``runs`` in a pool of worker processes, handing each free worker the next run; returns
    the complete set-up. If the DDPM still has to be pretrained (``setup.ddpm_run`` None), a worker
    pretrains it while the others train the runs that need none; the diffusion runs then go first
    (they are the longest: left for last, they would keep one worker busy while the others idle)."""
    log_event(study.out, f"worker pool: {workers} processes x {threads} threads" + (f", GPUs {','.join(gpus)}" if gpus else ""))
    stop: Failure | BaseException | None = None
    later = [run for run in runs if get_method(run.method).needs_ddpm] if needs_ddpm(study) and setup.ddpm_run is None else []
    queue = [(run, False) for run in runs if run not in later]  # (run, wait for another process holding it)
    with make_pool(workers, gpus, threads) as pool:
        pending: dict[Future, RunKey | None] = {pool.submit(setup_study, study): None} if later else {}

        def fill() -> None:
            while queue and len(pending) < workers and stop is None:
                run, wait_for = queue.pop(0)
                pending[pool.submit(attempt, study, setup, run, wait_for, since)] = run

        fill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = pending.pop(fut)
                try:
                    if run is None:  # the DDPM is ready: the diffusion runs can start
                        setup = fut.result()
                        queue[:0] = [(r, False) for r in later]
                        continue
                    outcome = fut.result()
                except BrokenProcessPool:
                    raise SemisegInputError(None, f"a worker process died while running {run or 'the DDPM pretraining'} or another "
                                                  "run (killed, or out of memory?); start the sweep again to resume the unfinished runs") from None
                except Exception as exc:  # the pretraining failed (or a worker could not run a run): hand out no more
                    stop = exc
                    continue
                if outcome.status == BUSY:  # another process holds it: waited for after the others
                    queue.append((run, True))
                    continue
                advance(outcome)
                if outcome.status == FAILED and not keep_going and stop is None:
                    stop = outcome.failure
            fill()
    if isinstance(stop, BaseException):
        raise stop
    if stop is not None:
        raise failure_error(stop)
    return setup


def study_states(study: Study, cache: Cache | None) -> dict[RunKey, str]:
    """Every run of the study and its state: the grid, the upper-bound runs (given the prepared
    cache, which sets their budget), the guided rounds (running while their chain's lock is held)."""
    out = Path(study.out)
    states = {run: run_state(out, run) for run in study_runs(study, cache)}
    states.update({run: run_state(out, run, chain_lock(run.method, run.seed)) for run in guided_runs(study) if run not in states})
    return states


def finish_study(study: Study, setup: StudySetup | None = None) -> SweepOutcome:
    """Write results, summary, figures and report from the finished runs if no run is unfinished
    (done or failed is final; to do or running is not), under the report lock."""
    out = Path(study.out)
    setup = setup or existing_setup(study, complete=False)
    states = study_states(study, Cache(setup.cache) if setup else None)
    runs = list(states)
    failures = [f for run in runs if states[run] == FAILED and (f := read_failure(out, run)) is not None]
    unfinished = [run for run in runs if states[run] in (TODO, RUNNING)]
    if unfinished:
        log(f"{len(unfinished)} of {len(runs)} runs are not finished (other shards or processes); the last to finish "
            "writes the report (or: semiseg sweep STUDY --report-only)")
        return SweepOutcome(None, failures, unfinished)
    return SweepOutcome(write_report_now(study, setup), failures, [])


def write_report_now(study: Study, setup: StudySetup | None = None) -> Path:
    """results.csv, summary.csv, figures and report.html from whatever has finished, naming the
    runs that have not (with their errors), under the report lock."""
    out = Path(study.out)
    setup = setup or existing_setup(study, complete=False)
    if setup is None:
        raise SemisegInputError(out, "has no prepared data yet, so there is nothing to report (run the sweep first)")
    cache = Cache(setup.cache)
    states = study_states(study, cache)
    missing, done = [], {run for run, state in states.items() if state == DONE}
    for run, state in states.items():
        if state == DONE:
            continue
        if state == FAILED:
            failure = read_failure(out, run)
            missing.append((str(run), f"failed: {failure.error if failure else '?'}"))
        else:
            missing.append((str(run), "running" if state == RUNNING else "not run yet"))
    keep = [tuple(k) for k in setup.keep]
    with holding(out, "report", waiting="waiting for another process writing the report"):
        # the order of results.csv: the grid, external methods, guided rounds; then the upper bound
        jobs = [(r.method, r.budget, r.seed) for r in study_runs(study) if r in done]
        for ext in study.external_methods():  # scored afresh: the predictions may have been remade
            for b in study.budgets:
                for s in study.seeds:
                    score_external(study, cache, ext, b, s, keep)
                    jobs.append((ext.name, b, s))
        jobs += [(r.method, r.budget, r.seed) for r in guided_runs(study) if r in done]
        upper = [job for job in upper_bound_jobs(study, cache) if RunKey(*job) in done]
        return write_study_outputs(study, cache, jobs, upper, keep, setup.ddpm_run, missing)


@dataclass(frozen=True)
class RunStatus:
    """One line of ``semiseg sweep --list``."""

    run: RunKey
    state: str
    detail: str = ""


def study_status(study: Study) -> tuple[str, list[RunStatus]]:
    """The set-up's state and every run's (with a failed run's error)."""
    out = Path(study.out)
    if existing_setup(study) is not None:
        setup = DONE
    else:
        setup = RUNNING if is_locked(out, "setup") else TODO
    found = existing_setup(study, complete=False)
    rows = []
    for run, state in study_states(study, Cache(found.cache) if found else None).items():
        detail = ""
        if state == FAILED and (failure := read_failure(out, run)) is not None:
            detail = f"{failure.error.splitlines()[0] if failure.error else ''} ({failure.host}, {failure.time})"
        rows.append(RunStatus(run, state, detail))
    return setup, rows
