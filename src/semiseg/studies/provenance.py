"""What a study needs to be reproduced: software and machine, the resolved configuration of every
method and of the shared DDPM, each run's labelled and test items, whether unlabelled test images
were used (transductive), and wall times that survive resume. Written as ``provenance.json`` and
shown in the report."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import semiseg
from semiseg.files import read_json
from semiseg.methods.base import get_method
from semiseg.runs.record import RunRecord, read_run_record
from semiseg.training.checkpoint import latest_step
from semiseg.training.log import TIMING_FILE, read_timing, sessions_seconds, total_seconds


@dataclass(frozen=True)
class Software:
    """Versions and machine of the process that wrote the study's outputs."""

    semiseg: str
    git_commit: str | None
    git_dirty: bool | None
    python: str
    torch: str
    monai: str
    cuda: str | None
    gpus: tuple[str, ...]
    platform: str
    host: str


@dataclass(frozen=True)
class RunTime:
    """A run's wall time in seconds, summed over the sessions that worked on it (None if it has no
    timing record, e.g. a run of an older semiseg)."""

    train_seconds: float | None
    test_seconds: float | None
    sessions: int
    devices: tuple[str, ...]

    @property
    def seconds(self) -> float | None:
        parts = [s for s in (self.train_seconds, self.test_seconds) if s is not None]
        return sum(parts) if parts else None


@dataclass(frozen=True)
class RunProvenance:
    """One run of the study: ``method`` as results.csv names it (the upper bound is
    ``supervised-all``), the method it trained, its items and its time."""

    method: str
    trained: str
    budget: int
    seed: int
    folder: str
    steps: int
    labelled: tuple[str, ...]
    test: tuple[str, ...]
    unlabelled_test_images: bool
    time: RunTime


@dataclass(frozen=True)
class StudyProvenance:
    software: Software
    device: str
    study: dict[str, Any]
    ddpm: dict[str, Any] | None
    methods: dict[str, dict[str, Any]]
    runs: list[RunProvenance] = field(default_factory=list)
    #: wall time of the sweep sessions (set-up, runs and reports) and the sum over runs and the DDPM
    study_seconds: float = 0.0
    compute_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the git checkout semiseg runs from, or (None, None)
    when it is not run from one (an installed wheel, no git)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    # the package's own file must be tracked, else a site-packages inside some other repository would count
    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def software() -> Software:
    import monai
    import torch

    commit, dirty = git_state(Path(semiseg.__file__).parent)
    gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()
    return Software(semiseg.__version__, commit, dirty, platform.python_version(), torch.__version__, monai.__version__,
                    torch.version.cuda, gpus, platform.platform(), platform.node())


def run_time(run: Path) -> RunTime:
    sessions = read_timing(run / TIMING_FILE)
    devices = tuple(sorted({str(s["device"]) for s in sessions if s.get("device")}))
    return RunTime(sessions_seconds(sessions, "train"), sessions_seconds(sessions, "test"), sum(s.get("stage") == "train" for s in sessions),
                   devices)


def uses_test_images(record: RunRecord) -> bool:
    """True if the run, or the DDPM it builds on, trained on test patients' images without labels."""
    if record.plan.transductive:
        return True
    if get_method(record.method).needs_ddpm and record.ddpm_run is not None and (record.ddpm_run / "config.json").exists():
        return uses_test_images(read_run_record(record.ddpm_run))
    return False


def study_provenance(study: Any, jobs: list[tuple[str, int, int]], upper: list[tuple[str, int, int]], ddpm_run: Path | None) -> StudyProvenance:
    """Gather the study's provenance from its run folders (see the module docstring)."""
    from semiseg.studies.stats import UPPER_BOUND
    from semiseg.studies.sweep import run_path
    from semiseg.training.distributed import pick_device

    out = Path(study.out)
    runs, methods = [], {}
    for label_jobs, label in ((jobs, None), (upper, UPPER_BOUND)):
        for m, b, s in label_jobs:
            folder = run_path(out, m, b, s)
            if (folder / "external.json").exists():  # scored predictions made outside semiseg: no run record
                methods.setdefault(m, {"method": m, "preset": None, "config": read_json(folder / "external.json"), "semi_supervised": False,
                                       "uses_ddpm": False, "unlabelled_test_images": False, "runs_with_other_config": []})
                continue
            record = read_run_record(folder)
            name = label or m
            transductive = uses_test_images(record)
            runs.append(RunProvenance(name, m, b, s, str(folder.relative_to(out)), record.total_steps, record.plan.labelled,
                                      record.plan.test, transductive, run_time(folder)))
            config = {k: v for k, v in record.config.items() if k != "ddpm"}  # the DDPM is described once, below
            method = get_method(record.method)  # m may be a guided label such as embedmatch+hybrid
            entry = methods.setdefault(name, {"method": record.method, "preset": record.preset, "config": config,
                                              "semi_supervised": method.semi_supervised, "uses_ddpm": method.needs_ddpm,
                                              "unlabelled_test_images": False, "runs_with_other_config": []})
            entry["unlabelled_test_images"] |= transductive
            if config != entry["config"]:
                entry["runs_with_other_config"].append(str(folder.relative_to(out)))
    ddpm = None
    if ddpm_run is not None:
        record = read_run_record(ddpm_run)
        t = run_time(Path(ddpm_run))
        ddpm = {"run": str(ddpm_run), "preset": record.preset, "config": record.config, "steps": record.total_steps,
                "steps_trained": latest_step(ddpm_run), "cases": len(record.plan.unlabelled_cases),
                "unlabelled_test_images": uses_test_images(record), "time": asdict(t)}
    compute = sum(r.time.seconds or 0.0 for r in runs) + ((ddpm or {}).get("time", {}).get("train_seconds") or 0.0)
    sweep = total_seconds(out / TIMING_FILE, "sweep")
    return StudyProvenance(software(), str(pick_device(0, study.device)), asdict(study), ddpm, methods, runs, float(sweep), float(compute))
