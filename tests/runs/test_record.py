"""The run record (config.json): typed, round-trips, and a damaged one is a one-line error."""

import json
from pathlib import Path

import pytest

from helpers import data_info
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.runs.record import CONFIG, RunRecord, read_run_record
from semiseg.training.plan import DataPlan


def record() -> RunRecord:
    plan = DataPlan(2, ("a:3",), ("a", "b"), ("c",))
    config = load_config(["segmentation", "supervised"], "small", overrides=["train.steps=4"])
    return RunRecord("supervised", "small", 1, "/cache", data_info(), plan, config, "0.1.0")


def test_record_round_trips(tmp_path: Path):
    rec = record()
    rec.write(tmp_path)
    back = read_run_record(tmp_path)
    assert back == rec and back.total_steps == 4 and back.ddpm_run is None


@pytest.mark.parametrize("edit,message", [
    (lambda o: o.pop("plan"), "lacks 'plan'"),
    (lambda o: o.update(seed="one"), "'seed' must be a int"),
    (lambda o: o["config"].pop("network"), "lacks the setting 'network'"),
    (lambda o: o["config"]["train"].update(steps="ten"), "'train.steps' must be an integer, got 'ten'"),
    (lambda o: o["plan"].update(labelled=["a"]), "plan: labelled item 'a'"),
    (lambda o: o.update(method="nope"), "unknown method 'nope'"),
    (lambda o: o["data"].pop("scheme"), "'data' is malformed"),
])
def test_damaged_record_is_one_line_error(tmp_path: Path, edit, message):
    obj = record().to_json()
    edit(obj)
    (tmp_path / CONFIG).write_text(json.dumps(obj))
    with pytest.raises(SemisegInputError, match=message):
        read_run_record(tmp_path)


def test_record_that_is_not_an_object(tmp_path: Path):
    (tmp_path / CONFIG).write_text("[1, 2]")
    with pytest.raises(SemisegInputError, match=r"must hold a JSON object \(found: array\)"):
        read_run_record(tmp_path)


def test_record_of_an_earlier_version_loads_with_what_the_code_did_then(tmp_path: Path):
    """A run written before a speed setting existed (train.fused) loads with the value that
    reproduces the code of then (unfused Adam), not today's default."""
    obj = record().to_json()
    del obj["config"]["train"]["fused"]
    (tmp_path / CONFIG).write_text(json.dumps(obj))
    assert read_run_record(tmp_path).config["train"]["fused"] is False


def test_embedmatch_record_from_before_the_contrastive_head_loads_without_it(tmp_path: Path):
    config = load_config(["segmentation", "embedmatch"], "small", overrides=["train.steps=4", "contrast.weight=0.5"])
    obj = RunRecord("embedmatch", "small", 1, "/cache", data_info(), DataPlan(2, ("a:3",), ("a", "b"), ("c",)), config, "0.1.0").to_json()
    assert read_run_record_from(tmp_path, obj).config["contrast"]["weight"] == 0.5
    del obj["config"]["contrast"]
    assert read_run_record_from(tmp_path, obj).config["contrast"]["weight"] == 0.0  # what the code did then


def test_a_record_from_before_unlabelled_slices_loads_with_every_slice(tmp_path: Path):
    config = load_config(["segmentation", "mean_teacher"], "small", overrides=["unlabelled.slices=central"])
    obj = RunRecord("mean-teacher", "small", 1, "/cache", data_info(), DataPlan(2, ("a:3",), ("a", "b"), ("c",)), config, "0.1.0").to_json()
    assert read_run_record_from(tmp_path, obj).config["unlabelled"]["slices"] == "central"
    del obj["config"]["unlabelled"]["slices"]
    assert read_run_record_from(tmp_path, obj).config["unlabelled"]["slices"] == "all"  # what the code did then


def read_run_record_from(folder: Path, obj: dict) -> RunRecord:
    (folder / CONFIG).write_text(json.dumps(obj))
    return read_run_record(folder)


@pytest.mark.parametrize("drop", [("train", "lr"), ("unlabelled",), ("augment", "gamma")])
def test_record_lacking_a_setting_that_changes_results_is_refused(tmp_path: Path, drop: tuple[str, ...]):
    """Filling such a setting with today's default would silently change a resumed run."""
    obj = record().to_json()
    block = obj["config"]
    for key in drop[:-1]:
        block = block[key]
    del block[drop[-1]]
    (tmp_path / CONFIG).write_text(json.dumps(obj))
    with pytest.raises(SemisegInputError, match=f"lacks the setting '{'.'.join(drop)}'"):
        read_run_record(tmp_path)
