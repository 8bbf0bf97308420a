"""Wall time over sessions: every process that works on a run (or a study) keeps its own session in
timing.json, a killed one up to its last tick; a damaged file is one clear error."""

from pathlib import Path

import pytest

from semiseg.errors import SemisegInputError
from semiseg.training.log import WallClock, read_timing, total_seconds


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


@pytest.mark.parametrize("text", ["{not json", '{"sessions": [{"stage": "train"}]}', '{"sessions": 3}'])
def test_damaged_timing_file_is_one_clear_error(tmp_path: Path, text: str):
    path = tmp_path / "timing.json"
    path.write_text(text)
    with pytest.raises(SemisegInputError, match="timing"):
        WallClock(path, "train")
