"""Wall time over sessions: every process that works on a run (or a study) keeps its own session in
timing.json, a killed one up to its last tick; a damaged file is one clear error."""

import multiprocessing
from pathlib import Path

import pytest

from semiseg.errors import SemisegInputError
from semiseg.training.log import WallClock, read_timing, sessions_seconds, total_seconds


def test_sessions_of_several_processes_are_all_kept(tmp_path: Path):
    path = tmp_path / "timing.json"
    first = WallClock(path, "train", device="cpu", first_step=0)
    second = WallClock(path, "test", device="cpu")  # e.g. another process, started meanwhile
    first.tick(last_step=10)
    second.tick()
    sessions = read_timing(path)
    assert [s["stage"] for s in sessions] == ["train", "test"] and sessions[0]["last_step"] == 10
    assert all(s["host"] and s["started"] for s in sessions)
    assert total_seconds(path) == pytest.approx(sum(s["seconds"] for s in sessions))
    assert total_seconds(path, "train") == sessions[0]["seconds"]
    assert read_timing(tmp_path / "absent.json") == [] and total_seconds(tmp_path / "absent.json") == 0.0
    assert sessions_seconds(sessions, "sweep") is None and total_seconds(path, "sweep") == 0.0  # a stage never run


def _tick_often(path: Path) -> None:
    clock = WallClock(path, "train")
    for step in range(20):
        clock.tick(last_step=step)


def test_processes_ticking_at_once_lose_no_session(tmp_path: Path):
    # sweeps with --workers or several processes on one study all tick the study's timing.json
    path = tmp_path / "timing.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tick_often, args=(path,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    sessions = read_timing(path)
    assert len(sessions) == 4 and all(s["last_step"] == 19 for s in sessions)


@pytest.mark.parametrize("text", ["{not json", '{"sessions": [{"stage": "train"}]}', '{"sessions": 3}'])
def test_damaged_timing_file_is_one_clear_error(tmp_path: Path, text: str):
    path = tmp_path / "timing.json"
    path.write_text(text)
    with pytest.raises(SemisegInputError, match="timing"):
        WallClock(path, "train")


def test_timing_lock_that_cannot_be_made_is_one_clear_error(tmp_path: Path, monkeypatch):
    """The lock file is the first write of a tick: a read-only or full folder must fail there as
    one line naming timing.json, not a traceback from the lock library."""
    from filelock import FileLock

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FileLock, "acquire", refuse)
    with pytest.raises(SemisegInputError, match="timing.json.*permission denied"):
        WallClock(tmp_path / "timing.json", "train")
    assert not (tmp_path / "timing.json").exists()
