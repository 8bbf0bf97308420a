"""The training log: ``train_log.csv`` (one row per logging interval), its loss-curve PNG, and
``timing.json``, the run's wall time summed over every session that worked on it."""

from __future__ import annotations

import csv
import datetime
import io
import math
import platform
import time
import uuid
from os import PathLike
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegInputError
from semiseg.files import atomic_path, file_lock, os_problem, read_json, write_error, write_json, write_text

TIMING_FILE = "timing.json"


def _step(row: dict[str, str | None]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return math.nan


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped so the log
    stays continuous (a killed run may have logged past its last checkpoint, and the last row of a
    process killed while appending it may be cut short: rows with a missing value go too)."""

    def __init__(self, path: str | PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.exists():
            try:
                with open(self.path, newline="") as fh:
                    reader = csv.DictReader(fh)
                    self.fields = list(reader.fieldnames or [])
                    rows = [r for r in reader if _step(r) <= resume_step and all(r.get(f) is not None for f in self.fields)]
            except OSError as exc:
                raise SemisegInputError(self.path, f"training log cannot be read: {os_problem(exc)}") from None
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SemisegInputError(self.path, f"training log cannot be read ({exc})") from None
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
            write_text(self.path, buf.getvalue())
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: dict[str, float]) -> None:
        """Append ``row``; a key not seen before widens the header (the file is rewritten once)."""
        if self.fields is not None and any(k not in self.fields for k in row):
            old = read_log(self.path) if self.path.exists() else []
            self.fields += [k for k in row if k not in self.fields]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(old)
            write_text(self.path, buf.getvalue())
        new = self.fields is None
        if new:
            self.fields = list(row)
        try:
            with open(self.path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields)
                if new:
                    writer.writeheader()
                writer.writerow(row)
                fh.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None


def read_log(path: str | PathLike) -> list[dict[str, float]]:
    """Rows of a CSV log as floats (empty cells become NaN)."""
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(fh)]


def plot_loss_curve(log_path: str | PathLike, out: str | PathLike, title: str = "") -> None:
    """Plot every ``loss*`` column of a training log against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for key in rows[0]:
        if key.startswith("loss"):
            ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


class WallClock:
    """Wall time of a run (or study) over all the sessions that worked on it.

    Each process adds one session (``stage``: "train", "test", "sweep"; when it started, on which
    host, and ``details`` such as the device and the first step) and rewrites it at every
    :meth:`tick` (atomically, re-reading the file under a file lock so that sessions of other
    processes working on the same study are kept), so a session killed midway keeps its time up to its last tick and a resumed
    run's time is the sum of its interrupted and resumed parts (:func:`total_seconds`).
    """

    def __init__(self, path: str | PathLike, stage: str, **details: Any) -> None:
        self.path = Path(path)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.session: dict[str, Any] = {"id": uuid.uuid4().hex[:12], "stage": stage, "started": started, "host": platform.node(),
                                        "seconds": 0.0, **details}
        self.t0 = time.perf_counter()
        self.tick()

    def tick(self, **updates: Any) -> None:
        """Record the time so far (and ``updates``, e.g. the last step reached)."""
        self.session["seconds"] = round(time.perf_counter() - self.t0, 3)
        self.session.update(updates)
        # read-modify-write: without the lock two processes that read at once each drop the other's session
        with file_lock(self.path.with_name(f".{self.path.name}.lock"), guards=self.path):
            sessions = read_timing(self.path)
            ids = [s.get("id") for s in sessions]
            if self.session["id"] in ids:
                sessions[ids.index(self.session["id"])] = self.session
            else:
                sessions.append(self.session)
            write_json(self.path, {"sessions": sessions})


def read_timing(path: str | PathLike) -> list[dict[str, Any]]:
    """The sessions of a ``timing.json`` (none if the file does not exist); a damaged file is a
    one-line error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    sessions = read_json(path, "timing record").get("sessions", [])
    if not isinstance(sessions, list) or not all(isinstance(s, dict) and isinstance(s.get("seconds"), (int, float)) for s in sessions):
        raise SemisegInputError(path, "timing record's 'sessions' must be a list of objects with 'seconds'")
    return sessions


def sessions_seconds(sessions: list[dict[str, Any]], stage: str | None = None) -> float | None:
    """Wall time summed over ``sessions`` (of one ``stage`` if given); None if there are none, so
    that a stage never run is told apart from one that took no time."""
    parts = [s["seconds"] for s in sessions if stage is None or s.get("stage") == stage]
    return float(sum(parts)) if parts else None


def total_seconds(path: str | PathLike, stage: str | None = None) -> float:
    """Wall time summed over the sessions in ``path`` (of one ``stage`` if given); 0 if there are none."""
    return sessions_seconds(read_timing(path), stage) or 0.0
