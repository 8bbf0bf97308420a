"""Progress display shared by every long-running command.

Library functions report progress through :func:`progress_bar`. On a terminal it is a rich bar
on stderr. When stdout is not a terminal (a Slurm job, ``nohup``, ``semiseg pretrain ... > log.txt``)
a live bar would only be printed once, at the end, so plain lines go to stdout instead, flushed as
they are written: one per ``every`` units of a task (the training loop passes its ``log_every``), each
with the count, the task's latest ``info`` (loss, images/s), the elapsed time and an ETA. Nothing is
drawn when the process is not the main one of a distributed job or progress is switched off
(``SEMISEG_PROGRESS=0``, tests).

Tasks take two optional fields besides rich's: ``unit`` (the word printed before the count, e.g.
"step") and ``every`` (print a plain line every this many units; default about 20 lines per task;
0 prints none, for sub-tasks whose parent already reports).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
_enabled = [os.environ.get("SEMISEG_PROGRESS", "1") != "0"]
#: plain lines per task when the caller does not choose ``every``
LINES_PER_TASK = 20


def set_enabled(flag: bool) -> None:
    """Switch progress display on or off for this process."""
    _enabled[0] = flag


class _Silent:
    """Stands in for a rich Progress when nothing should be drawn."""

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def advance(self, *args: object, **kwargs: object) -> None:
        pass


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    info: str
    every: int
    unit: str
    started: float
    start_completed: float
    printed: float


class PlainProgress:
    """The rich Progress calls the project uses (add_task, update, advance), printed as plain
    lines to ``stream``; see the module docstring for when a line is printed."""

    def __init__(self, stream: TextIO, clock=time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.tasks: list[_Task] = []

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, info: str = "", every: int | None = None, unit: str = "", **_: object
    ) -> int:
        if every is None:
            every = max(1, math.ceil(total / LINES_PER_TASK)) if total else 1
        self.tasks.append(_Task(description.strip(), total, completed, info, int(every), unit, self.clock(), completed, completed))
        return len(self.tasks) - 1

    def update(
        self, task_id: int, *, completed: float | None = None, advance: float | None = None, info: str | None = None,
        total: float | None = None, description: str | None = None, **_: object,
    ) -> None:
        task = self.tasks[task_id]
        if info is not None:
            task.info = info
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description.strip()
        if advance is not None:
            completed = task.completed + advance
        if completed is not None and completed != task.completed:
            task.completed = completed
            if self._due(task):
                self._print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _due(self, task: _Task) -> bool:
        if task.every <= 0 or task.completed <= task.printed:
            return False
        finished = task.total is not None and task.completed >= task.total
        return finished or task.completed // task.every > task.printed // task.every

    def _print(self, task: _Task) -> None:
        task.printed = task.completed
        elapsed = self.clock() - task.started
        done = task.completed - task.start_completed
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        parts = [f"{task.description}: {task.unit + ' ' if task.unit else ''}{count}"]
        if task.info:
            parts.append(task.info)
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if task.total is not None:
            eta = (task.total - task.completed) * elapsed / done if done > 0 else math.inf
            parts.append(f"eta {format_seconds(eta)}")
        print(", ".join(parts), file=self.stream, flush=True)


def _plain_stream() -> TextIO | None:
    """Where plain lines go, or None when rich can draw a live bar: stdout when it is not a terminal
    (the job's log), stderr when only stderr is redirected."""
    if console.is_jupyter:
        return None
    stdout = sys.stdout
    if stdout is not None and not stdout.isatty():
        return stdout
    return None if console.is_terminal else sys.stderr


@contextlib.contextmanager
def progress_bar(show: bool = True) -> Iterator[Progress | PlainProgress | _Silent]:
    """A rich Progress (bar, count, elapsed, remaining time, a free ``info`` field), or its plain
    line form when the output is not a terminal."""
    if not (show and _enabled[0]):
        yield _Silent()
        return
    stream = _plain_stream()
    if stream is not None:
        yield PlainProgress(stream)
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with progress:
        yield progress


def log(message: str) -> None:
    """Print a status line to stderr (kept apart from stdout, which carries results)."""
    if _enabled[0]:
        console.print(message)
