"""Active-learning studies: guided rounds are ordinary, resumable run folders, reported beside the
random draws; the selection block is validated like the rest of a study file."""

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import TINY, TINY_NET, run_main


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def study_yaml(tmp: Path, cache: Path, selection: dict, dims: int = 2) -> Path:
    spec = {
        "out": "study", "cache": str(cache), "methods": ["supervised"], "budgets": [2, 4], "seeds": [0], "preset": "small",
        "dims": dims, "settings": {"supervised": TINY + TINY_NET}, "test_slices_per_case": 3, "overlays": 1,
        "selection": selection,
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_guided_rounds_are_runs_reported_beside_random(dims: int, tiny_cache: Path, tmp_path: Path, monkeypatch):
    from semiseg.preprocess.cache import Cache
    from semiseg.runs import read_run_record
    from semiseg.studies.sweep import load_study, run_sweep

    study = load_study(study_yaml(tmp_path, tiny_cache, {"strategy": "hybrid", "rounds": [2, 4], "passes": 2}, dims))
    report = run_sweep(study)
    out = tmp_path / "study"
    results = read(out / "results.csv")
    assert {r["method"] for r in results} == {"supervised", "supervised+hybrid"}
    assert {(r["method"], r["budget"]) for r in results} == {(m, b) for m in ("supervised", "supervised+hybrid") for b in ("2", "4")}
    summary = read(out / "summary.csv")
    assert any(r["method"] == "supervised+hybrid" and r["budget"] == "4" for r in summary)
    assert "label selection" in report.read_text() and "supervised+hybrid" in report.read_text()

    cache = Cache(tiny_cache)
    first = read_run_record(out / "runs" / "supervised+hybrid" / "n2-s0").plan.labelled
    second = read_run_record(out / "runs" / "supervised+hybrid" / "n4-s0").plan.labelled
    assert len(first) == 2 and len(second) == 4 and list(second[:2]) == list(first)  # the next round keeps what was labelled
    for item in second:
        assert cache.cases[item.split(":")[0] if dims == 2 else item].role == "train"
    picks = read(out / "selection" / "supervised+hybrid" / "n4-s0.csv")
    assert [r["item"] for r in picks if r["suggested"] == "yes"] == list(second[2:])
    assert first[0] not in {r["item"] for r in picks}  # labelled items are no candidates
    if dims == 2:  # every round keeps to the central half of the anatomy
        from semiseg.training.plan import CENTRAL_FRACTION, central_slices, format_slice

        central = {format_slice(c, z) for c in cache.ids("train") for z in central_slices(cache, c, CENTRAL_FRACTION)}
        assert {r["item"] for r in read(out / "selection" / "supervised+hybrid" / "n2-s0.csv")} == central
        assert {r["item"] for r in picks} <= central and first[0] not in {r["item"] for r in picks}

    # a rerun finds every run finished and redoes nothing
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/test_metrics.csv")}
    assert len(finished) == 4
    run_sweep(load_study(tmp_path / "study.yaml"))
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/test_metrics.csv")} == finished
    assert read(out / "results.csv") == results

    # interrupted between a round's suggestion and its training: the saved picks are trained on, not recomputed
    shutil.rmtree(out / "runs" / "supervised+hybrid" / "n4-s0")
    import semiseg.studies.active as active

    def no_selection(*args, **kwargs):
        raise AssertionError("the round's selection ran again")

    monkeypatch.setattr(active, "choose_next", no_selection)
    run_sweep(load_study(tmp_path / "study.yaml"))
    assert read_run_record(out / "runs" / "supervised+hybrid" / "n4-s0").plan.labelled == second


@pytest.mark.parametrize("selection, fragment", [
    ({"strategy": "smart", "rounds": [2, 5]}, "selection.strategy must be one or a list of"),
    ({"strategy": "hybrid", "rounds": [5, 2]}, "selection.rounds must be increasing"),
    ({"strategy": "hybrid", "rounds": [2, 5], "first": "uncertainty"}, "selection.first must be one of"),
    ({"strategy": "hybrid", "rounds": [2], "budget": 3}, "unknown selection setting 'budget'"),
    ("hybrid", "'selection' must be a mapping"),
])
def test_bad_selection_blocks_are_one_line_errors(selection, fragment, tiny_cache: Path, tmp_path: Path, capsys):
    path = study_yaml(tmp_path, tiny_cache, selection)
    code, _, err = run_main(capsys, "sweep", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err and str(path) in err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("name,rounds", [("hippocampus_3d_selection.yaml", [2, 5, 10, 20]), ("phantom_2d_selection.yaml", [2, 5, 10, 20]),
                                         ("hippocampus_2d_selection.yaml", [2, 5, 10])])
def test_selection_example_studies_load(name: str, rounds: list[int]):
    from helpers import ROOT
    from semiseg.studies.active import SelectionPlan
    from semiseg.studies.sweep import load_study

    study = load_study(ROOT / "examples" / name)
    plan = SelectionPlan.from_study(study.selection)
    assert study.seeds == [0, 1, 2] and list(plan.rounds) == study.budgets == rounds
    assert Path(study.out).parent.resolve() == ROOT


def test_the_report_line_names_the_candidates_each_round_ranks():
    from semiseg.studies.active import SelectionPlan

    plan = SelectionPlan.from_study({"strategy": "hybrid", "rounds": [2, 5]})
    assert "candidates: central;" in plan.describe(None, 2)
    assert "candidates: all;" in plan.describe(None, 3)
    assert "candidates: pool;" in SelectionPlan.from_study({"strategy": "hybrid", "rounds": [2], "candidates": "pool"}).describe(None, 2)
