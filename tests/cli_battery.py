"""Run ``semiseg`` commands as users call them, in this process, and judge their failures.

``invoke`` runs the real command group (``semiseg.cli.app``, the console script's) under typer's
CliRunner; ``snapshot`` fingerprints a folder tree so a test can check a failed command left
nothing new or changed. Run as a script (``python cli_battery.py SPEC RESULTS``) it runs a list of
commands in one process and writes their outcomes and snapshots as JSON: the OS-level tests start
it inside a user or mount namespace (read-only or full file systems, permissions that bind root)
so one interpreter start-up serves many commands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from typer.testing import CliRunner


@dataclass
class Outcome:
    """What a command did: exit code, its stdout and stderr, and the traceback of an exception
    that escaped the command (empty when none did)."""

    code: int
    stdout: str
    stderr: str
    error: str = ""

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def invoke(*args: str | os.PathLike) -> Outcome:
    """Run ``semiseg ARGS`` through the command group the console script runs."""
    from semiseg.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    error = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        error = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, error)


def snapshot(root: str | os.PathLike) -> dict[str, str]:
    """Every file (sha256 of its content) and folder under ``root``, by relative path."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
            except OSError as exc:  # a file the test made unreadable
                out[os.path.relpath(path, root)] = f"unreadable ({exc.strerror})"
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two snapshots: new, changed and removed entries."""
    new = [f"new {k}" for k in after if k not in before]
    changed = [f"changed {k}" for k in after if k in before and after[k] != before[k]]
    gone = [f"removed {k}" for k in before if k not in after]
    return new + changed + gone


def judge(outcome: Outcome, fragments: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What breaks the promise for users' mistakes: exit code 2, exactly one line on stderr that
    contains every fragment, no traceback. Returns the problems (empty when kept)."""
    problems = []
    if outcome.code != 2:
        problems.append(f"exit code {outcome.code}, not 2")
    if outcome.error or "Traceback" in outcome.stderr:
        problems.append(f"traceback: {(outcome.error or outcome.stderr).strip().splitlines()[-1]}")
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr: {outcome.stderr!r:.300}")
    else:
        problems += [f"stderr lacks {f!r}: {lines[0]}" for f in fragments if f not in lines[0]]
    return problems


def _fill(filler: Path, free: int) -> None:
    """Leave about ``free`` bytes on the file system of ``filler`` by growing or shrinking it."""
    filler.unlink(missing_ok=True)
    stat = os.statvfs(filler.parent)
    size = max(stat.f_bavail * stat.f_frsize - free, 0)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * size)


@contextlib.contextmanager
def file_size_limit(limit: int | None) -> Iterator[None]:
    """Files may grow to ``limit`` bytes while the block runs (RLIMIT_FSIZE; Python ignores the
    SIGXFSZ that comes with it, so writes beyond fail with EFBIG)."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def run_spec(spec: list[dict]) -> list[dict]:
    """Run each ``{"name", "args", "watch", ["free", "filler" or "fsize"]}``: leave ``free`` bytes
    (on the file system of ``filler``, or as a file-size limit), snapshot ``watch``, run the
    command, snapshot again."""
    results = []
    for case in spec:
        if case.get("filler"):
            _fill(Path(case["filler"]), int(case.get("free", 0)))
        before = snapshot(case["watch"])
        with file_size_limit(int(case.get("free", 0)) if case.get("fsize") else None):
            outcome = invoke(*case["args"])
        results.append({"name": case["name"], **asdict(outcome), "changes": changes(before, snapshot(case["watch"]))})
    return results


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(run_spec(json.loads(Path(sys.argv[1]).read_text()))))
