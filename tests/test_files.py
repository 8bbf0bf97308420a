"""files.py: atomic writes leave the old file or the new one, never a half-written one or folders
made for a failed write; output checks and the failure guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from semiseg.errors import SemisegInputError
from semiseg.files import TEMPORARY, atomic_dir, atomic_path, check_output, remove_temporaries, removed_on_failure, write_text


def test_failed_write_leaves_the_old_file_and_no_new_folders(tmp_path: Path):
    target = tmp_path / "a" / "b" / "f.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not (tmp_path / "a").exists()
    write_text(tmp_path / "g.txt", "old")
    with pytest.raises(SemisegInputError, match=r"g\.txt: cannot be written: no space left on device"), atomic_path(tmp_path / "g.txt"):
        raise OSError(28, "No space left on device")
    assert (tmp_path / "g.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["g.txt"]


def test_failed_folder_leaves_nothing(tmp_path: Path):
    with pytest.raises(SemisegInputError, match="cannot be written: permission denied"), atomic_dir(tmp_path / "x" / "cache") as tmp:
        (tmp / "part.npy").write_bytes(b"1")
        raise PermissionError(13, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_check_output(tmp_path: Path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SemisegInputError, match="is a file; expected a folder"):
        check_output(tmp_path / "f", "folder")
    with pytest.raises(SemisegInputError, match=r"cannot be created: .*f is a file, not a folder"):
        check_output(tmp_path / "f" / "x" / "y", "folder")
    with pytest.raises(SemisegInputError, match="is a folder; expected a file name"):
        check_output(tmp_path, "file")
    check_output(tmp_path / "new" / "deeper", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_removed_on_failure_keeps_what_existed_or_is_worth_keeping(tmp_path: Path):
    out = tmp_path / "p" / "out"
    with pytest.raises(ValueError), removed_on_failure(out):
        (out / "sub").mkdir(parents=True)
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError), removed_on_failure(out, keep=lambda p: (p / "done").exists()):
        out.mkdir(parents=True)
        (out / "done").write_text("")
        raise ValueError
    assert (out / "done").exists()
    with pytest.raises(ValueError), removed_on_failure(out):
        (out / "more").write_text("")
        raise ValueError
    assert (out / "more").exists()  # existed before: left to the atomic writes inside


def test_temporaries_are_recognised_and_removed(tmp_path: Path):
    names = [".config.k2j4.tmp.json", ".p1.a8.tmp.nii.gz", ".step-00000004.x1.partial", ".step-00000004.old", ".staging.q.partial"]
    for name in names:
        (tmp_path / name).mkdir() if "partial" in name or name.endswith(".old") else (tmp_path / name).write_text("")
    for keep in ("config.json", ".lock", ".pixel_features", "a.tmp.json"):
        (tmp_path / keep).write_text("")
    assert sorted(p.name for p in remove_temporaries(tmp_path)) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == [".lock", ".pixel_features", "a.tmp.json", "config.json"]
    assert not TEMPORARY.match("config.json")


def test_file_lock_waits_or_reports_busy_and_names_the_guarded_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import errno

    import filelock

    from semiseg.files import file_lock

    lock = tmp_path / ".x.lock"
    with file_lock(lock) as got:
        assert got
        with file_lock(lock, wait=False) as again:  # another holder (a second lock object) is refused at once
            assert again is False
    with file_lock(lock, wait=False) as got:  # released when the block ended
        assert got

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only)
    with pytest.raises(SemisegInputError, match=r"timing\.json: cannot be written: read-only file system"):
        with file_lock(tmp_path / ".timing.json.lock", guards=tmp_path / "timing.json"):
            pass
