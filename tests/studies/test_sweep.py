"""The sweep: outputs that agree with each other, a report that renders in a real browser, and a
kill-and-restart that redoes nothing and ends with an uninterrupted sweep's results."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

SETTINGS = {
    "all": ["train.steps=6", "train.batch_size=2", "train.log_every=3", "train.checkpoint_every=3",
            "network.features=[8,8,16,16,16,8]"],
    "ddpm-finetune": ["train.steps=6", "train.batch_size=2", "train.log_every=3", "train.checkpoint_every=3"],
}


def study_file(tmp: Path, cache: Path, out: str, methods: list[str]) -> Path:
    settings = {"all": [], "supervised": SETTINGS["all"], "mean-teacher": SETTINGS["all"], "ddpm-finetune": SETTINGS["ddpm-finetune"]}
    spec = {
        "out": out, "cache": str(cache), "methods": methods, "budgets": [2, 4], "seeds": [0, 1], "preset": "small",
        "ddpm": {"preset": "small", "set": ["train.steps=4", "train.batch_size=2", "model.base_channels=16", "model.norm_groups=8",
                                            "model.channel_mult=[1,2]", "model.attention_resolutions=[16]"]},
        "settings": settings, "test_slices_per_case": 4, "overlays": 2, "upper_bound": True,
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(study: Path) -> subprocess.Popen:
    env = {**os.environ, "SEMISEG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "semiseg", "sweep", str(study)], env=env, cwd=study.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def finished(tiny_cache: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    proc = sweep(study_file(tmp, tiny_cache, "straight", ["supervised", "mean-teacher", "ddpm-finetune"]))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"report: {tmp / 'straight' / 'report.html'}"
    return tmp / "straight"


def test_outputs_agree(finished: Path, tiny_cache: Path):
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import labelled_pool

    for name in ("results.csv", "summary.csv", "label_efficiency.png", "report.html", "overlays_n2.png", "overlays_n4.png", "ddpm_samples.png"):
        assert (finished / name).exists(), name
    results, summary = read(finished / "results.csv"), read(finished / "summary.csv")
    assert {r["method"] for r in results} == {"supervised", "mean-teacher", "ddpm-finetune", "supervised-all"}
    # the upper bound: supervised on the whole labelled pool (the central slices of the training patients)
    pool = str(len(labelled_pool(Cache(tiny_cache), 2)))
    assert {(r["budget"], r["seed"]) for r in results if r["method"] == "supervised-all"} == {(pool, "0"), (pool, "1")}
    results = [r for r in results if r["method"] != "supervised-all"]
    assert {(r["budget"], r["seed"]) for r in results} == {("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")}
    # per run: two test patients x 4 central slices x 3 regions x 3 metrics, and per patient x region
    # 3 metrics for each whole-volume protocol, raw and post-processed
    count = Counter(r["protocol"] for r in results)
    assert count["central_slices"] == 3 * 4 * (2 * 4) * 3 * 3
    for protocol in ("all_slices", "all_slices+lcc", "volume", "volume+lcc"):
        assert count[protocol] == 3 * 4 * 2 * 3 * 3, protocol
    assert {r["metric"] for r in results if r["protocol"] == "all_slices"} == {"dice", "iou", "fp_slices"}
    fields = ("method", "budget", "protocol", "region", "metric")
    for s in (s for s in summary if s["method"] != "supervised-all"):
        per_seed = []
        for seed in ("0", "1"):
            key = tuple(s[f] for f in fields) + (seed,)
            vals = [float(r["value"]) for r in results if tuple(r[f] for f in fields) + (r["seed"],) == key]
            vals = [v for v in vals if not np.isnan(v)]
            if vals:
                per_seed.append(np.mean(vals))
        assert float(s["mean"]) == pytest.approx(np.mean(per_seed), rel=1e-9)
        assert int(s["n_seeds"]) == len(per_seed)
    html = (finished / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "<script" not in html
    assert "http://" not in html and "https://" not in html
    for png in finished.glob("*.png"):  # every figure also as PDF and SVG, with its text as text
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF") and "<svg" in png.with_suffix(".svg").read_text()
    assert "mean-teacher" in (finished / "label_efficiency.svg").read_text() and "necrotic core" in (finished / "overlays_n2.svg").read_text()


class Cells(HTMLParser):
    """Every table cell of a page: its attributes and text, and whether it sits in a numbers table."""

    def __init__(self) -> None:
        super().__init__()
        self.cells, self.tables, self.current = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(dict(attrs).get("class", ""))
        elif tag in ("td", "th") and self.tables:
            self.current = {"tag": tag, "table": self.tables[-1], "text": "", **dict(attrs)}

    def handle_endtag(self, tag):
        if tag == "table":
            self.tables.pop()
        elif tag in ("td", "th") and self.current is not None:
            self.cells.append(self.current)
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data


def close(text: str, value: float, metric: str = "dice") -> bool:
    """A number shown with the report's rounding equals ``value``."""
    if text.startswith("<"):
        return value < float(text[1:])
    return abs(float(text) - value) <= 0.5 * 10 ** -(1 if metric.startswith("hd") else 3) + 1e-9


def check_numbers_agree(finished: Path) -> Counter:
    """summary.csv and per_patient.csv recomputed from results.csv; every number of the report's
    tables (and of summary.tex) checked against them, and the run table against provenance.json.
    Returns how many numbers of each kind were checked. (Also run on `semiseg demo --quick`'s study.)"""
    from scipy import stats

    from semiseg.studies.stats import holm

    results, summary = read(finished / "results.csv"), read(finished / "summary.csv")
    fields = ("method", "budget", "protocol", "region", "metric")
    groups = {}
    for r in results:
        groups.setdefault(tuple(r[f] for f in fields), []).append(r)
    # each patient's value: mean over its scored slices per seed, then over seeds
    patient = {}
    for key, rows in groups.items():
        per = {}
        for r in rows:
            if not np.isnan(float(r["value"])):
                per.setdefault(r["case"], {}).setdefault(r["seed"], []).append(float(r["value"]))
        patient[key] = {c: np.mean([np.mean(v) for v in seeds.values()]) for c, seeds in per.items()}
    for row in read(finished / "per_patient.csv"):
        key = tuple(row[f] for f in fields)
        if row["value"] != "nan":
            assert float(row["value"]) == pytest.approx(patient[key][row["case"]], rel=1e-9)
        else:
            assert row["case"] not in patient[key]
    index = {tuple(s[f] for f in fields): s for s in summary}
    assert set(index) == set(groups)
    for key, s in index.items():
        rows = groups[key]
        values = np.array([float(r["value"]) for r in rows])
        scored = values[~np.isnan(values)]
        misses = sum((r["gt_voxels"] == "0") != (r["pred_voxels"] == "0") for r in rows)
        counts = (int(s["n_values"]), int(s["n_empty"]), int(s["n_misses"]), int(s["n_patients"]))
        assert counts == (len(scored), len(values) - len(scored), misses, len(patient[key]))
        assert float(s["median"]) == pytest.approx(np.median(scored))
        for prefix, other in (("vs_supervised_", "supervised"), ("vs_best_other_", s["best_other"])):
            if not s[prefix + "diff"]:
                continue
            theirs = patient[(other,) + key[1:]]
            d = np.array([patient[key][c] - theirs[c] for c in sorted(set(patient[key]) & set(theirs))])
            assert int(s[prefix + "n"]) == len(d) and float(s[prefix + "diff"]) == pytest.approx(d.mean(), abs=1e-12)
            low, high = float(s[prefix + "ci_low"]), float(s[prefix + "ci_high"])
            assert d.min() - 1e-12 <= low <= d.mean() + 1e-12 and d.mean() - 1e-12 <= high <= d.max() + 1e-12
            nonzero = d[d != 0]
            assert float(s[prefix + "p"]) == pytest.approx(stats.wilcoxon(nonzero).pvalue if len(nonzero) else 1.0)
    # Holm over each table's comparisons (a protocol and a metric)
    family = {}
    for s in summary:
        for prefix, other in (("vs_supervised_", "supervised"), ("vs_best_other_", s["best_other"])):
            if s[prefix + "p"] and s[prefix + "p"] != "nan":
                pair = (s["protocol"], s["metric"], s["budget"], s["region"], frozenset((s["method"], other)))
                family.setdefault(pair[:2], {})[pair] = (float(s[prefix + "p"]), float(s[prefix + "p_holm"]))
    for pairs in family.values():
        ps = list(pairs.values())
        assert [h for _, h in ps] == pytest.approx(holm(p for p, _ in ps))
    # the report: every number in a numbers table names its source, and agrees with it
    parser = Cells()
    parser.feed((finished / "report.html").read_text())
    numbers = [c for c in parser.cells if c["table"] == "numbers" and c["tag"] == "td" and any(ch.isdigit() for ch in c["text"])]
    assert numbers and all("data-src" in c for c in numbers), [c for c in numbers if "data-src" not in c][:3]
    provenance = json.loads((finished / "provenance.json").read_text())
    per_patient = {tuple(r[f] for f in fields + ("case",)): r for r in read(finished / "per_patient.csv")}
    checked = Counter()
    for c in numbers:
        text, col = c["text"].strip(), c["data-col"]
        if c["data-src"] == "summary":
            s = index[tuple(c["data-row"].split("|"))]
            metric = s["metric"]
            if col == "mean_std":
                mean, _, std = text.partition(" ± ")
                assert close(mean, float(s["mean"]), metric) and (std == "") == (s["n_seeds"] == "1")
                assert not std or close(std, float(s["std"]), metric)
                assert ("best" in c.get("class", "")) == (s["significantly_best"] == "True")
            elif col == "misses":
                assert text == f"{s['n_misses']} of {s['n_values']}"
            elif col.startswith("n_") or col.endswith("_n"):
                assert text == s[col]
            elif col.endswith("_ci"):
                low, high = text.strip("[]").split(", ")
                assert close(low, float(s[col + "_low"]), metric) and close(high, float(s[col + "_high"]), metric)
            else:
                assert close(text, float(s[col]), metric if not col.endswith(("_p", "_p_holm")) else "dice"), (col, text, s[col])
        elif c["data-src"] == "diagnostics":  # a pseudo-labelling run's diagnostics.csv: over the run or its last row
            rows = read(finished / c["data-row"] / "diagnostics.csv")
            how, key = col.split(":")
            vals = [float(r[key]) for r in rows if r[key] not in ("", "nan")]
            expected = vals[-1] if how == "last" else float(np.mean(vals))
            assert text == ("never" if expected < 0 else str(int(expected))) if key == "pseudo_from" else close(text, expected)
        elif c["data-src"] == "patient":
            assert close(text, float(per_patient[tuple(c["data-row"].split("|"))]["value"]), c["data-row"].split("|")[4])
        else:
            run = provenance["runs"][int(c["data-row"])]
            expected = {"n_labelled": len(run["labelled"]), "seed": run["seed"], "steps": run["steps"], "sessions": run["time"]["sessions"],
                        "train_seconds": run["time"]["train_seconds"], "test_seconds": run["time"]["test_seconds"],
                        "seconds": run["time"]["train_seconds"] + run["time"]["test_seconds"]}[col]
            assert text == str(expected) if isinstance(expected, int) else abs(float(text) - expected) <= 0.05 + 1e-9
        checked[c["data-src"], col] += 1
    # summary.tex: the main Dice table, the same numbers
    tex = (finished / "summary.tex").read_text()
    primary = "central_slices" if any(s["protocol"] == "central_slices" for s in summary) else "volume"
    for s in summary:
        if s["protocol"] == primary and s["metric"] == "dice":
            cell = f"{float(s['mean']):.3f}" + (f" $\\pm$ {float(s['std']):.3f}" if s["n_seeds"] != "1" else "")
            assert (f"\\textbf{{{cell}}}" if s["significantly_best"] == "True" else cell) + " " in tex  # then " &" or a line end
            checked["tex", "mean_std"] += 1
    return checked


def test_every_number_in_the_report_agrees_with_results_and_summary(finished: Path, tiny_cache: Path):
    from semiseg.preprocess.cache import Cache
    from semiseg.training.plan import labelled_pool

    checked = check_numbers_agree(finished)
    # every kind of number was seen: the main tables, HD95 median and misses, comparisons, what was scored, patients, runs
    for kind in [("summary", "mean_std"), ("summary", "median"), ("summary", "misses"), ("summary", "vs_supervised_ci"),
                 ("summary", "vs_best_other_p_holm"), ("summary", "n_patients"), ("summary", "n_empty"), ("summary", "n_misses"),
                 ("patient", "value"), ("provenance", "seconds"), ("tex", "mean_std")]:
        assert checked[kind] > 0, kind
    # the upper bound: supervised on the whole labelled pool
    pool = labelled_pool(Cache(tiny_cache), 2)
    config = json.loads((finished / "runs" / "supervised" / f"n{len(pool)}-s0" / "config.json").read_text())
    assert sorted(config["plan"]["labelled"]) == sorted(pool)
    provenance = json.loads((finished / "provenance.json").read_text())
    # provenance: items, configurations, times, software
    assert len(provenance["runs"]) == 14 and {r["method"] for r in provenance["runs"]} == {"supervised", "mean-teacher", "ddpm-finetune", "supervised-all"}
    for run in provenance["runs"]:
        record = json.loads((finished / run["folder"] / "config.json").read_text())
        assert run["labelled"] == record["plan"]["labelled"] and run["test"] == Cache(tiny_cache).ids("test")
        timing = json.loads((finished / run["folder"] / "timing.json").read_text())["sessions"]
        assert run["time"]["train_seconds"] == pytest.approx(sum(s["seconds"] for s in timing if s["stage"] == "train"))
        # a transductive study (the default): the semi-supervised method and the shared DDPM use the
        # test patients' images unlabelled, the supervised runs do not
        assert run["unlabelled_test_images"] == (run["method"] in ("ddpm-finetune", "mean-teacher"))
    assert provenance["ddpm"]["steps"] == provenance["ddpm"]["steps_trained"] == 4 and provenance["ddpm"]["config"]["train"]["steps"] == 4
    assert provenance["methods"]["mean-teacher"]["config"]["train"]["steps"] == 6 and provenance["study_seconds"] > 0
    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance["software"]["git_commit"] == (commit or None) and provenance["software"]["torch"]
    tex = (finished / "summary.tex").read_text()  # 3 methods x 2 budgets and the upper bound, under a header
    assert tex.count(r"\\") == 1 + 3 * 2 + 1 and all(line.count("&") == 4 for line in tex.splitlines() if line.endswith(r"\\"))


def test_report_renders_in_headless_chromium(finished: Path, tmp_path: Path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get((finished / "report.html").resolve().as_uri())
        deadline = time.time() + 20
        while browser.execute_script("return document.readyState") != "complete" and time.time() < deadline:
            time.sleep(0.1)
        images = browser.execute_script("return document.images.length")
        broken = browser.execute_script("return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        assert images >= 4 and broken == 0
        assert "Label-efficiency study" in browser.title or "semiseg" in browser.title
    finally:
        browser.quit()


def test_killed_sweep_resumes_without_redoing_runs(finished: Path, tiny_cache: Path, tmp_path: Path):
    study = study_file(tmp_path, tiny_cache, "killed", ["supervised", "mean-teacher", "ddpm-finetune"])
    out = tmp_path / "killed"
    proc = sweep(study)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.glob("runs/*/*/test_metrics.csv"))) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.parent: p.stat().st_mtime_ns for p in out.glob("runs/*/*/test_metrics.csv")}
    assert 3 <= len(done_before) < 14, "the sweep was not interrupted midway"
    proc = sweep(study)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    for run, mtime in done_before.items():
        assert (run / "test_metrics.csv").stat().st_mtime_ns == mtime, f"{run.name} was redone"
    assert read(out / "results.csv") == read(finished / "results.csv")
    assert read(out / "summary.csv") == read(finished / "summary.csv")


@pytest.mark.parametrize("name", ["phantom_2d_study.yaml", "phantom_3d_study.yaml"])
def test_example_studies_load(name: str):
    from helpers import ROOT
    from semiseg.studies.sweep import load_study

    study = load_study(ROOT / "examples" / name)
    assert study.seeds == [0, 1, 2] and Path(study.out).parent.resolve() == ROOT


def test_external_method_is_scored_and_reported(finished: Path, tiny_cache: Path, tmp_path: Path):
    """nnU-Net's part simulated: export the study with `export-nnunet`, write "predictions" for
    every exported test stack on its grid (here the ground truth, so the scores are known), add
    them as an external method and sweep again: nothing is retrained, and the external method is
    in results, summary and report like the others."""
    import nibabel as nib

    from semiseg.preprocess.cache import Cache
    from semiseg.studies.export import read_export_info

    out = tmp_path / "straight"
    shutil.copytree(finished, out)
    spec = yaml.safe_load(study_file(tmp_path, tiny_cache, "straight", ["supervised", "mean-teacher", "ddpm-finetune"]).read_text())
    env = {**os.environ, "SEMISEG_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "semiseg", "export-nnunet", str(tmp_path / "straight.yaml"), "--out", str(tmp_path / "raw")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    cache = Cache(tiny_cache)
    for dataset in sorted((tmp_path / "raw").iterdir()):
        budget, seed = dataset.name.split("_n")[1].split("_s")
        preds = tmp_path / "nnunet" / f"n{budget}-s{seed}"
        preds.mkdir(parents=True)
        for case in read_export_info(dataset)["test"]:
            image = nib.load(str(dataset / "imagesTs" / f"{case}_0000.nii.gz"))
            labels = np.moveaxis(np.asarray(cache.slice_labels(case)), 0, -1)  # on the exported (S, S, Z) grid
            nib.save(nib.Nifti1Image(labels, image.affine), str(preds / f"{case}.nii.gz"))
    spec["external"] = {"nnunet": {"predictions": "nnunet/n{budget}-s{seed}", "space": "export"}}
    (tmp_path / "straight.yaml").write_text(yaml.safe_dump(spec))
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/test_metrics.csv")}
    proc = sweep(tmp_path / "straight.yaml")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())  # no run redone
    results, summary = read(out / "results.csv"), read(out / "summary.csv")
    ours = [r for r in results if r["method"] == "nnunet"]
    assert len(ours) == len([r for r in results if r["method"] == "supervised"])
    perfect = [s for s in summary if s["method"] == "nnunet" and s["metric"] == "dice" and s["protocol"] in ("central_slices", "volume")]
    assert perfect and all(float(s["mean"]) == 1.0 for s in perfect)
    assert "nnunet" in (out / "report.html").read_text()
    # a missing prediction folder is found before any training
    spec.update(out="other", external={"nnunet": {"predictions": "nowhere/n{budget}-s{seed}"}})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "semiseg", "sweep", str(tmp_path / "other.yaml")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "prediction folder for budget 2, seed 0 not found" in r.stderr
    assert not (tmp_path / "other").exists()


def test_report_shows_what_the_pseudo_labels_were(tiny_cache: Path, tmp_path: Path):
    """embedmatch's diagnostics reach the report: one row per run, every number as in its diagnostics.csv."""
    tiny = SETTINGS["all"] + ["teacher.warmup=0.34", "teacher.start_dice=0", "uncertainty.passes=2"]
    spec = {"out": "em", "cache": str(tiny_cache), "methods": ["supervised", "embedmatch"], "budgets": [2], "seeds": [0, 1], "preset": "small",
            "settings": {"supervised": SETTINGS["all"], "embedmatch": tiny}, "test_slices_per_case": 4, "overlays": 0}
    study = tmp_path / "em.yaml"
    study.write_text(yaml.safe_dump(spec))
    proc = sweep(study)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    out = tmp_path / "em"
    checked = check_numbers_agree(out)
    assert checked["diagnostics", "mean:reliable"] == 2 and checked["diagnostics", "last:pseudo_from"] == 2
    assert "Pseudo-labels" in (out / "report.html").read_text()


def test_pseudo_label_table_says_when_a_teacher_never_fitted(tmp_path: Path):
    from semiseg.studies.report import pseudo_label_table

    run = tmp_path / "runs" / "embedmatch" / "n2-s0"
    run.mkdir(parents=True)
    (run / "diagnostics.csv").write_text("step,epoch,pseudo_from,teacher_fit,reliable,acc_matched\n40,1.0,-1,0.2,,\n")
    (tmp_path / "runs" / "supervised" / "n2-s0").mkdir(parents=True)
    runs = [{"method": m, "budget": 2, "seed": 0, "folder": f"runs/{m}/n2-s0"} for m in ("supervised", "embedmatch")]
    table = pseudo_label_table(tmp_path, {"runs": runs}, "labelled slices")
    assert len(table.rows) == 1 and [c.text for c in table.rows[0][:5]] == ["embedmatch", "2", "0", "never", "—"]
    assert pseudo_label_table(tmp_path, {"runs": runs[:1]}, "labelled slices") is None
