"""The one owner of semiseg's file conventions.

Writes are atomic: write to a temporary sibling, then rename over the target, so a reader (or a
process killed with SIGKILL mid-write) only ever sees the old file or the complete new one. Reads
of JSON and CSV files turn every way they can fail into one :class:`SemisegInputError` naming the
file; so do the OS errors of writes (permission denied, a full disk, a read-only file system),
after which nothing half-written is left.

Temporary names start with a dot and end in ``.tmp<suffix>`` (files) or ``.partial`` (folders);
:func:`remove_temporaries` removes those a killed process left behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegInputError

#: names of the temporaries of atomic_path and atomic_dir, and of atomic_dir's replaced folder
TEMPORARY = re.compile(r"^\..+\.(tmp(\.[^.]+)*|partial|old)$")


def os_problem(exc: OSError) -> str:
    """The operating system's own words for an error, e.g. "permission denied", "no space left on device"."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def write_error(path: str | os.PathLike, exc: OSError) -> SemisegInputError:
    """The one-line error for an OS error while writing ``path``."""
    return SemisegInputError(path, f"cannot be written: {os_problem(exc)}")


@contextlib.contextmanager
def file_lock(lock: str | os.PathLike, wait: bool = True, before_waiting: Callable[[], None] | None = None,
              guards: str | os.PathLike | None = None) -> Iterator[bool]:
    """Hold the inter-process file lock ``lock`` for the block and yield True; without ``wait``,
    yield False at once when another process holds it (``before_waiting`` runs before blocking).
    Creating the lock file is the first write: an OS error there (a read-only or full folder) is
    the one-line write error of ``guards``, the file the lock protects (default: the lock file)."""
    from filelock import FileLock, Timeout

    held = FileLock(str(lock))
    try:
        try:
            held.acquire(timeout=0)
            got = True
        except Timeout:
            got = False
            if wait:
                if before_waiting:
                    before_waiting()
                held.acquire()
                got = True
    except OSError as exc:
        raise write_error(guards or lock, exc) from None
    if not got:
        yield False
        return
    try:
        yield True
    finally:
        held.release()


def _missing_ancestors(folder: Path) -> tuple[list[Path], Path]:
    """The folders from ``folder`` upwards that do not exist yet (deepest first) and the first
    one that does."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    return missing, folder


def _make_folders(folder: Path, target: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing, existing = _missing_ancestors(folder)
    if not existing.is_dir():
        raise SemisegInputError(target, f"cannot be created: {existing} is a file, not a folder")
    for f in reversed(missing):
        f.mkdir()
    return missing


def _remove_folders(created: list[Path]) -> None:
    """Remove folders created for an output that failed (deepest first), as long as they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def check_output(path: str | os.PathLike, kind: str = "folder") -> None:
    """Check, before anything is written, that ``path`` can be created (or replaced) as a ``kind``
    ("folder" or "file"): one-line errors for a file where a folder is wanted (or the reverse), an
    output that would sit under a file, and a place that is not writable."""
    path = Path(path)
    if path.exists() and kind == "folder" and not path.is_dir():
        raise SemisegInputError(path, "is a file; expected a folder")
    if path.is_dir() and kind == "file":
        raise SemisegInputError(path, "is a folder; expected a file name")
    _, where = _missing_ancestors(path if kind == "folder" and path.is_dir() else path.parent)
    if not where.is_dir():
        raise SemisegInputError(path, f"cannot be created: {where} is a file, not a folder")
    if os.access(where, os.W_OK | os.X_OK):
        return
    problem = "read-only file system" if os.statvfs(where).f_flag & os.ST_RDONLY else "permission denied"
    raise SemisegInputError(path, f"cannot be written: {problem} ({where})")


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Undo the creation of the output ``path`` if the block fails.

    If ``path`` did not exist before the block, it is removed (with the parent folders created for
    it) unless ``keep(path)`` says it holds finished work worth keeping, e.g. a checkpoint a run
    can resume from. An output that existed before is left to the atomic writes inside the block.
    """
    path = Path(path)
    existed = os.path.lexists(path)
    missing, _ = _missing_ancestors(path.parent)
    try:
        yield path
    except BaseException:
        if not existed and os.path.lexists(path) and not (keep is not None and path.is_dir() and keep(path)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            _remove_folders(missing)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png`` ...) so that libraries
    that infer the format from the name write the right one. On error the temporary file (and any
    folder created for it) is removed, and an OS error becomes a one-line SemisegInputError.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    created: list[Path] = []
    tmp_path: Path | None = None
    try:
        created = _make_folders(path.parent, path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        _remove_folders(created)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only when complete.

    ``path`` must not exist unless ``overwrite`` is set, in which case the old directory is
    replaced only after the new one is complete. On error nothing of the new directory remains and
    an OS error becomes a one-line SemisegInputError naming ``path``.
    """
    path = Path(path)
    created: list[Path] = []
    tmp: Path | None = None
    try:
        created = _make_folders(path.parent, path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists() and overwrite:
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_folders(created)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


@contextlib.contextmanager
def staging_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (created if needed) for outputs that are moved into
    ``folder`` once all of them are written; always removed afterwards. OS errors become one-line
    errors naming ``folder``."""
    folder = Path(folder)
    tmp: Path | None = None
    try:
        _make_folders(folder, folder)
        tmp = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".partial", dir=folder))
        yield tmp
    except OSError as exc:
        raise write_error(folder, exc) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what atomic writes killed midway left in ``folder`` (not recursive); return it."""
    removed = []
    for p in Path(folder).iterdir():
        if TEMPORARY.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Write ``rows`` (dicts; keys outside ``fields`` ignored) as CSV to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike, fields: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; a missing or unreadable file, or one without the
    columns ``fields`` (or with rows cut short), is a one-line error."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SemisegInputError(path, f"cannot be read as CSV ({getattr(exc, 'strerror', None) or exc})") from None
    missing = [f for f in fields if f not in columns]
    if missing:
        raise SemisegInputError(path, f"lacks the column {missing[0]!r}")
    for i, row in enumerate(rows):
        if any(row.get(f) is None for f in fields):
            raise SemisegInputError(path, f"row {i + 2} is cut short")
    return rows


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file's content; missing, unreadable or undecodable is a one-line error naming the
    file (``what``: its role in the message)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise SemisegInputError(path, f"{what} not found") from None
    except OSError as exc:
        raise SemisegInputError(path, f"{what} cannot be read: {os_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise SemisegInputError(path, f"{what} cannot be read ({exc})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", kind: type = dict) -> Any:
    """Parse a JSON file that must hold a ``kind`` (dict by default).

    Missing, unreadable, malformed or wrongly shaped files raise one SemisegInputError that names
    the file and says which of these it is; ``what`` names the file's role in that message.
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SemisegInputError(path, f"{what} is not valid JSON ({exc})") from None
    if not isinstance(data, kind):
        raise SemisegInputError(path, f"{what} must hold a JSON {_json_kind(kind)} (found: {_json_kind(type(data))})")
    return data


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(kind, "null")
