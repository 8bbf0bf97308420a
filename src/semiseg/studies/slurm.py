"""Run a study on a Slurm cluster through submitit (``pip install 'semiseg[slurm]'``).

One ``semiseg sweep STUDY --executor slurm`` call submits, from a login node:

1. the set-up stage (prepare + shared DDPM) as one job, if it is not done yet; with several GPUs
   it runs one task per GPU and the DDPM trains with DDP across them;
2. the unfinished runs as one job array that starts when the set-up job has succeeded, at most
   ``array_parallelism`` tasks at a time; a guided selection chain (its rounds depend on each
   other) is one task of the array that trains its rounds one after another;
3. a report job that starts when every array task has ended (finished, failed or cancelled), runs
   what cannot be an array task (the upper-bound runs when the data were not prepared at
   submission, so their budget was unknown) and writes results, summary, figures and report from
   the finished runs, naming the others.

Every job is checkpointable (submitit's ``checkpoint`` + requeue): a job that Slurm preempts or
that reaches its time limit gets the USR2 signal first, is requeued and, when it starts again,
resumes its run from the run's latest checkpoint, which continues exactly. Runs are trained under
the same per-run locks as local sweeps (:mod:`semiseg.studies.execution`), so local sweeps, other
submissions and requeued tasks never train the same run twice at once.

``OUT/slurm/`` is submitit's folder (job scripts, logs, pickled tasks); ``OUT/slurm/jobs.json``
records every submission's job IDs, from which ``semiseg sweep STUDY --list`` shows each run's job
and its state (sacct, through submitit's job objects), and from which the next call resubmits only
runs that are neither finished nor queued or running.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import FailedJobError
from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from semiseg.errors import SemisegInputError
from semiseg.files import read_json, write_error, write_json
from semiseg.preprocess.cache import Cache
from semiseg.progress import set_enabled
from semiseg.studies.execution import (
    DONE,
    RUNNING,
    TODO,
    attempt,
    chain_lock,
    chain_rounds,
    check_external_early,
    existing_setup,
    holding,
    run_chain_locked,
    run_selection,
    run_state,
    setup_study,
    slurm_job_id,
    unfinished_chains,
    write_report_now,
)
from semiseg.studies.sweep import RunKey, Study, study_runs
from semiseg.training.log import TIMING_FILE, WallClock

SLURM = "slurm"
JOBS = "jobs.json"
#: Slurm states in which a job may still run (sacct's names; UNKNOWN: not in accounting yet)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "UNKNOWN"}


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of the jobs: ``gpus_per_run`` for each array task and the report job,
    ``setup_gpus`` (default: as many) for the set-up job, one task per GPU; ``extra`` are more
    ``#SBATCH`` options (``account``, ``qos``, ``mem``, ``constraint`` ...)."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    setup_gpus: int | None = None
    array_parallelism: int | None = None
    threads: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """A Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in
    whole minutes, rounded up (submitit needs minutes to tell a time-out from a preemption)."""
    m = _TIME.match(text.strip())
    if not m:
        raise SemisegInputError(None, f"--time {text!r}: expected a Slurm time such as 4:00:00, 90 or 1-12:00:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    else:  # MM or MM:SS
        seconds = a * 60 + (b or 0)
    if seconds <= 0:
        raise SemisegInputError(None, f"--time {text!r}: must be longer than zero")
    return -(-seconds // 60)


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``--slurm-option key=value`` pairs (sbatch's long option names, e.g. ``mem=32G``)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SemisegInputError(None, f"--slurm-option {pair!r}: expected key=value, e.g. account=radiology")
        options[key.strip().removeprefix("--")] = value.strip()
    return options


def slurm_options(partition: str | None = None, gpus_per_run: int | None = None, cpus_per_run: int | None = None,
                  time: str | None = None, array_parallelism: int | None = None, setup_gpus: int | None = None,
                  slurm_option: list[str] | None = None, threads: int | None = None) -> SlurmOptions:
    """SlurmOptions from the ``sweep`` command's values (None: the default), checked."""
    for name, value, least in (("gpus-per-run", gpus_per_run, 0), ("setup-gpus", setup_gpus, 0), ("cpus-per-run", cpus_per_run, 1),
                               ("array-parallelism", array_parallelism, 1), ("threads", threads, 1)):
        if value is not None and value < least:
            raise SemisegInputError(None, f"--{name} must be at least {least}, got {value}")
    return SlurmOptions(partition, parse_time(time or "4:00:00"), gpus_per_run or 0, cpus_per_run, setup_gpus, array_parallelism,
                        threads, parse_options(slurm_option))


@dataclass(frozen=True)
class Submission:
    """One ``--executor slurm`` call's jobs: set-up (None if it was done or already queued), the
    runs' array, the report job, and each run's array task."""

    time: str
    setup: str | None
    array: str | None
    report: str
    runs: dict[str, str]


def read_submissions(out: str | Path) -> list[Submission]:
    path = Path(out) / SLURM / JOBS
    if not path.exists():
        return []
    raw = read_json(path, "Slurm job record")
    try:
        return [Submission(**s) for s in raw["submissions"]]
    except (KeyError, TypeError):
        raise SemisegInputError(path, "is not a Slurm job record written by semiseg") from None


def job_states(out: str | Path, job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job (RUNNING, PENDING, COMPLETED, CANCELLED ...) from one sacct call,
    through submitit's job objects; UNKNOWN where sacct does not know the job."""
    folder = Path(out) / SLURM
    jobs = [submitit.SlurmJob(folder=folder, job_id=j) for j in dict.fromkeys(job_ids)]
    watcher = submitit.SlurmJob.watcher
    watcher.clear()  # this call's states, not ones cached by an earlier call in the same process
    watcher.update()
    return {j.job_id: watcher.get_state(j.job_id, mode="cache").split()[0] for j in jobs}


@dataclass(frozen=True)
class SlurmStatus:
    """The latest Slurm jobs of a study and their states."""

    setup: tuple[str, str] | None
    report: tuple[str, str] | None
    runs: dict[str, tuple[str, str]]


def slurm_status(out: str | Path) -> SlurmStatus | None:
    """Each run's latest array task (and the latest set-up and report jobs) with its state; None if
    the study was never submitted to Slurm."""
    submissions = read_submissions(out)
    if not submissions:
        return None
    runs: dict[str, str] = {}
    setup = None
    for s in submissions:
        runs.update(s.runs)
        setup = s.setup or setup
    report = submissions[-1].report
    states = job_states(out, list(runs.values()) + [j for j in (setup, report) if j])
    return SlurmStatus(
        (setup, states[setup]) if setup else None, (report, states[report]), {name: (j, states[j]) for name, j in runs.items()}
    )


def _in_job(study: Study, threads: int | None) -> WallClock:
    """Settings of every job: no progress bars in the logs; torch threads as given, else the job's
    CPUs. Returns the job's session of the study's wall time (OUT/timing.json), like a local sweep's."""
    set_enabled(False)
    torch.set_num_threads(threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    return WallClock(Path(study.out) / TIMING_FILE, "sweep", slurm_job=slurm_job_id())


class SetupTask(Checkpointable):
    """The set-up job: prepare the data and pretrain the DDPM (one process per task, DDP across them)."""

    def __init__(self, study: Study, threads: int | None) -> None:
        self.study = study
        self.threads = threads

    def __call__(self) -> str:
        clock = _in_job(self.study, self.threads)
        if submitit.JobEnvironment().num_tasks > 1:
            TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR ... as torchrun would
        cache = setup_study(self.study).cache
        clock.tick()
        return str(cache)


class RunTask(Checkpointable):
    """One array task: train and test one run under its lock (resuming it if it was started), or
    the rounds of one guided chain (:class:`semiseg.studies.active.Chain`) under the chain's lock."""

    def __init__(self, study: Study, threads: int | None) -> None:
        self.study = study
        self.threads = threads

    def __call__(self, item: RunKey | Any) -> str:
        clock = _in_job(self.study, self.threads)
        setup = _setup_done(self.study)
        if isinstance(item, RunKey):
            status = attempt(self.study, setup, item, wait=True, raise_errors=True).status
        else:
            status = run_chain_locked(self.study, setup, item, wait=True)
        clock.tick()
        return status


def _setup_done(study: Study):
    setup = existing_setup(study)
    if setup is None:
        raise SemisegInputError(study.out, "the set-up stage (prepare + DDPM) has not finished")
    return setup


class ReportTask(Checkpointable):
    """The report job: the runs no array task had (see the module's docstring), then results,
    summary, figures and report from whatever has finished. ``submitted``: the names of the runs
    that have array tasks, of this submission or queued from earlier ones (cancelled or failed ones
    stay so)."""

    def __init__(self, study: Study, threads: int | None, submitted: list[str]) -> None:
        self.study = study
        self.threads = threads
        self.submitted = submitted

    def __call__(self) -> str:
        clock = _in_job(self.study, self.threads)
        setup = _setup_done(self.study)
        out = Path(self.study.out)
        for run in study_runs(self.study, Cache(setup.cache)):
            if run.name not in self.submitted and run_state(out, run) == TODO:
                attempt(self.study, setup, run, wait=True)  # a failure is recorded and reported
        chains = [c for c in unfinished_chains(self.study) if not any(r.name in self.submitted for r in chain_rounds(self.study, c))]
        if chains:  # guided chains without an array task (queued by an earlier submission, since cancelled)
            try:
                run_selection(self.study, setup, chains=chains)
            except Exception:  # recorded as the failure of its round, which the report names
                pass
        report = write_report_now(self.study, setup)
        clock.tick()
        return str(report)


def _executor(out: Path, opts: SlurmOptions, name: str, gpus: int, tasks: int = 1, dependency: str | None = None,
              array: bool = False):
    try:
        executor = submitit.SlurmExecutor(folder=out / SLURM)
    except RuntimeError:
        raise SemisegInputError(None, "--executor slurm: Slurm's srun is not on PATH (submit from a cluster's login node)") from None
    params: dict = {"job_name": name, "time": opts.time_min, "ntasks_per_node": tasks}
    if opts.partition:
        params["partition"] = opts.partition
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.cpus_per_run:
        params["cpus_per_task"] = opts.cpus_per_run
    if array and opts.array_parallelism:
        params["array_parallelism"] = opts.array_parallelism
    extra = dict(opts.extra)
    if dependency:
        extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    params["additional_parameters"] = extra
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise SemisegInputError(None, f"Slurm options: {str(exc).splitlines()[0]}") from None
    return executor


def _submitted(what: str, submit):
    try:
        return submit()
    except FailedJobError as exc:
        message = " ".join(str(exc).split()) or "no message"
        raise SemisegInputError(None, f"sbatch refused the {what}: {message}") from None


def submit_study(study: Study, opts: SlurmOptions) -> Submission | None:
    """Submit the set-up job (if needed), the unfinished runs as a job array and the report job;
    returns the submission, or None when no run needs one (all finished, queued or running)."""
    # the jobs may start in another directory: give them absolute paths
    study = replace(study, **{k: str(Path(v).resolve()) for k in ("out", "data", "cache") if (v := getattr(study, k))},
                    ddpm={**study.ddpm, "run": str(Path(study.ddpm["run"]).resolve()) if study.ddpm.get("run") else None})
    out = Path(study.out)
    check_external_early(study)
    try:
        (out / SLURM).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out / SLURM, exc) from None
    write_json(out / "study.json", asdict(study))
    with holding(out, "submit", waiting="waiting for another submission of this study"):
        status = slurm_status(out)
        queued = {name for name, (_, state) in (status.runs if status else {}).items() if state in ACTIVE}
        prepared = existing_setup(study, complete=False)
        todo: list[Any] = [r for r in study_runs(study, Cache(prepared.cache) if prepared else None)
                           if run_state(out, r) not in (DONE, RUNNING) and r.name not in queued]
        todo += [c for c in unfinished_chains(study)  # a guided chain: one task, its rounds in turn
                 if not any(r.name in queued or run_state(out, r, chain_lock(c.label, c.seed)) == RUNNING for r in chain_rounds(study, c))]
        # what only the report job runs: upper-bound runs whose budget is not known yet
        extra = study.upper_bound and prepared is None
        if not todo and not (extra and not (status and status.report and status.report[1] in ACTIVE)):
            return None
        setup_id, new_setup = None, None
        if existing_setup(study) is None:
            if status and status.setup and status.setup[1] in ACTIVE:
                setup_id = status.setup[0]  # queued or running already: the runs wait for that one
            else:
                gpus = opts.gpus_per_run if opts.setup_gpus is None else opts.setup_gpus
                executor = _executor(out, opts, "semiseg-setup", gpus, tasks=max(1, gpus))
                new_setup = _submitted("set-up job", lambda: executor.submit(SetupTask(study, opts.threads)))
                setup_id = new_setup.job_id
        after_setup = f"afterok:{setup_id}" if setup_id else None
        # each run's name and its array task (a chain's task runs each of its rounds)
        names = [[item.name] if isinstance(item, RunKey) else [r.name for r in chain_rounds(study, item)] for item in todo]
        jobs, array_id = [], None
        try:
            if todo:
                executor = _executor(out, opts, "semiseg-runs", opts.gpus_per_run, dependency=after_setup, array=True)
                jobs = _submitted("job array", lambda: executor.map_array(RunTask(study, opts.threads), todo))
                array_id = jobs[0].job_id.split("_")[0]
            executor = _executor(out, opts, "semiseg-report", opts.gpus_per_run, dependency=f"afterany:{array_id}" if array_id else after_setup)
            report = _submitted("report job", lambda: executor.submit(ReportTask(study, opts.threads, [n for task in names for n in task] + sorted(queued))))
        except BaseException:
            if new_setup is not None:  # nothing would wait for it
                new_setup.cancel(check=False)
            raise
        submission = Submission(
            datetime.datetime.now().isoformat(timespec="seconds"), setup_id, array_id, report.job_id,
            {name: job.job_id for task, job in zip(names, jobs) for name in task},
        )
        previous = [asdict(s) for s in read_submissions(out)]
        write_json(out / SLURM / JOBS, {"submissions": previous + [asdict(submission)]})
        return submission
