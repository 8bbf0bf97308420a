"""``semiseg suggest`` as a user runs it: a trained run in, a ranked CSV, a preview figure and a
``--labelled-items`` value out that ``semiseg train`` accepts; first batches without a run; users'
mistakes as one line and nothing written."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY, TINY_NET, run_main

pytestmark = pytest.mark.slow

ENV = {**os.environ, "SEMISEG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def semiseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semiseg", *args], capture_output=True, text=True, env=ENV, timeout=600)


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_items(cache_dir: Path, items: list[str], labelled: list[str], dims: int) -> None:
    """Suggested items are training patients' and not labelled yet."""
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import parse_slice

    cache = Cache(cache_dir)
    assert not set(items) & set(labelled)
    for item in items:
        case = parse_slice(item)[0] if dims == 2 else item
        assert cache.cases[case].role == "train", item


@pytest.fixture(scope="module")
def run2d(tiny_cache: Path, tmp_path_factory) -> Path:
    from semiseg.runs import train

    out = tmp_path_factory.mktemp("suggest") / "sup2d"
    return train(tiny_cache, "supervised", out, preset="small", overrides=TINY + TINY_NET, n_labelled=3, seed=1)


def test_suggest_then_train_as_a_user_would(run2d: Path, tiny_cache: Path, tmp_path: Path):
    out = tmp_path / "next"
    result = semiseg("suggest", str(run2d), "--count", "4", "--out", str(out), "--passes", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    value = result.stdout.strip().splitlines()[-1].removeprefix("--labelled-items ")
    labelled = json.loads((run2d / "config.json").read_text())["plan"]["labelled"]

    rows = read(out / "suggestions.csv")
    suggested = [r["item"] for r in rows if r["suggested"] == "yes"]
    assert len(suggested) == 4 and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert value.split(",") == labelled + suggested == (out / "labelled_items.txt").read_text().strip().split(",")
    check_items(tiny_cache, [r["item"] for r in rows], labelled, 2)
    # candidates are the central half of each training patient's slices that show anatomy, the pool's and others
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import CENTRAL_FRACTION, central_slices, format_slice, labelled_pool

    cache = Cache(tiny_cache)
    central = {format_slice(c, z) for c in cache.ids("train") for z in central_slices(cache, c, CENTRAL_FRACTION)}
    assert {r["item"] for r in rows} == central - set(labelled)
    assert {r["item"] for r in rows} - set(labelled_pool(cache, 2))
    # the default (hybrid) score is uncertainty x distance, both in the CSV
    for r in rows[:4]:
        assert float(r["score"]) == pytest.approx(float(r["uncertainty"]) * float(r["distance"]), rel=1e-4)
        assert r["input_slice"] != ""
    assert (out / "suggestions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    trained = semiseg("train", str(tiny_cache), "--method", "supervised", "--labelled-items", value, "--out", str(tmp_path / "round2"),
                      "--preset", "small", *[a for s in TINY + TINY_NET for a in ("--set", s)])
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "round2" / "config.json").read_text())["plan"]["labelled"] == value.split(",")


def test_3d_run_suggests_cases_and_pool_restricts_2d_candidates(run2d: Path, tiny_cache: Path, tmp_path: Path):
    from semiseg.runs import train
    from semiseg.studies.suggest import suggest

    run3d = train(tiny_cache, "supervised", tmp_path / "sup3d", preset="small", overrides=TINY + TINY_NET + ["dims=3"], n_labelled=2)
    res = suggest(run3d, None, 2, tmp_path / "s3", strategy="uncertainty", passes=2)
    labelled = json.loads((run3d / "config.json").read_text())["plan"]["labelled"]
    rows = read(res.csv)
    assert len(rows) == 6 - 2 and all(":" not in r["item"] for r in rows)
    check_items(tiny_cache, res.choice.suggested, labelled, 3)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)

    pool = suggest(run2d, tiny_cache, 2, tmp_path / "s2", strategy="diversity", candidates="pool", passes=1)
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import labelled_pool

    in_pool = set(labelled_pool(Cache(tiny_cache), 2))
    assert {r["item"] for r in read(pool.csv)} <= in_pool


def test_first_batch_without_a_run(tiny_cache: Path, tiny_ddpm: Path, tmp_path: Path, capsys):
    code, out, err = run_main(capsys, "suggest", "none", str(tiny_cache), "--count", "3", "--out", str(tmp_path / "a"))
    assert code == 0, err
    rows = read(tmp_path / "a" / "suggestions.csv")
    assert sum(r["suggested"] == "yes" for r in rows) == 3 and "representative" in out
    check_items(tiny_cache, [r["item"] for r in rows], [], 2)
    # a first batch in 2D ranks the central half of each training patient's anatomy; --candidates all widens it
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import CENTRAL_FRACTION, central_slices, format_slice

    cache = Cache(tiny_cache)
    central = {format_slice(c, z) for c in cache.ids("train") for z in central_slices(cache, c, CENTRAL_FRACTION)}
    assert {r["item"] for r in rows} == central
    code, _, err = run_main(capsys, "suggest", "none", str(tiny_cache), "--count", "3", "--candidates", "all", "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert {r["item"] for r in read(tmp_path / "c" / "suggestions.csv")} > central

    from semiseg.studies.suggest import suggest

    res = suggest(tiny_ddpm, None, 2, tmp_path / "b", strategy="diversity")
    assert "DDPM" in res.choice.scores.features and len(res.choice.suggested) == 2
    assert res.labelled_items.count(",") == 1


BAD = {
    "too many": (["--count", "100000"], "only", "unlabelled slices"),
    "needs a run": (["--strategy", "uncertainty"], "needs a trained segmentation run"),
    "unknown strategy": (["--strategy", "entropy"], "unknown selection strategy 'entropy'"),
    "bad candidates": (["--candidates", "some"], "candidates must be one of all, central, pool"),
}


@pytest.mark.parametrize("case", BAD)
def test_mistakes_are_one_line_and_write_nothing(case, tiny_cache: Path, tmp_path: Path, capsys):
    extra, *fragments = BAD[case]
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "suggest", "none", str(tiny_cache), "--out", str(out), *extra)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not out.exists()


def test_not_a_run_and_out_is_a_file(tiny_cache: Path, tmp_path: Path, capsys):
    code, _, err = run_main(capsys, "suggest", str(tmp_path), str(tiny_cache), "--out", str(tmp_path / "o"))
    assert code == 2 and "is not a semiseg run folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    code, _, err = run_main(capsys, "suggest", "none", str(tiny_cache), "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err and (tmp_path / "file").read_text() == "x"
