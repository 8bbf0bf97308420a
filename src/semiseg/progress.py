"""Progress display (rich) shared by every long-running command.

Library functions report progress through :func:`progress_bar`; it draws nothing when the
process is not the main one of a distributed job or when progress is switched off (tests, CI logs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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


def set_enabled(flag: bool) -> None:
    """Switch progress bars on or off for this process."""
    _enabled[0] = flag


class _Silent:
    """Stands in for a rich Progress when nothing should be drawn."""

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def advance(self, *args: object, **kwargs: object) -> None:
        pass


@contextlib.contextmanager
def progress_bar(show: bool = True) -> Iterator[Progress | _Silent]:
    """A rich Progress with bar, count, elapsed and remaining time, and a free ``info`` field."""
    if not (show and _enabled[0]):
        yield _Silent()
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
