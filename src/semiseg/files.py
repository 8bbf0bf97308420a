"""The one owner of semiseg's file conventions.

Writes are atomic: write to a temporary sibling, then rename over the target, so a reader (or a
process killed with SIGKILL mid-write) only ever sees the old file or the complete new one. Reads
of JSON and CSV files turn every way they can fail into one :class:`SemisegInputError` naming the
file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png`` ...) so that libraries
    that infer the format from the name write the right one. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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
    replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists() and overwrite:
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Write ``rows`` (dicts; keys outside ``fields`` ignored) as CSV to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; a missing or unreadable file is a one-line error."""
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SemisegInputError(path, f"cannot be read as CSV ({getattr(exc, 'strerror', None) or exc})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", kind: type = dict) -> Any:
    """Parse a JSON file that must hold a ``kind`` (dict by default).

    Missing, unreadable, malformed or wrongly shaped files raise one SemisegInputError that names
    the file and says which of these it is; ``what`` names the file's role in that message.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SemisegInputError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SemisegInputError(path, f"{what} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SemisegInputError(path, f"{what} is not valid JSON ({exc})") from None
    if not isinstance(data, kind):
        raise SemisegInputError(path, f"{what} must hold a JSON {_json_kind(kind)} (found: {_json_kind(type(data))})")
    return data


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(kind, "null")
