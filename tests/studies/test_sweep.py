"""The sweep: outputs that agree with each other, a report that renders in a real browser, and a
kill-and-restart that redoes nothing and ends with an uninterrupted sweep's results."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
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
        "settings": settings, "test_slices_per_case": 4, "overlays": 2,
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
    assert "report:" in out
    return tmp / "straight"


def test_outputs_agree(finished: Path):
    for name in ("results.csv", "summary.csv", "label_efficiency.png", "report.html", "overlays_n2.png", "overlays_n4.png", "ddpm_samples.png"):
        assert (finished / name).exists(), name
    results, summary = read(finished / "results.csv"), read(finished / "summary.csv")
    assert {r["method"] for r in results} == {"supervised", "mean-teacher", "ddpm-finetune"}
    assert {(r["budget"], r["seed"]) for r in results} == {("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")}
    # per run: two test patients x 4 central slices x 3 regions x 3 metrics, and per patient x region
    # 3 metrics for each whole-volume protocol, raw and post-processed
    count = Counter(r["protocol"] for r in results)
    assert count["central_slices"] == 3 * 4 * (2 * 4) * 3 * 3
    for protocol in ("all_slices", "all_slices+lcc", "volume", "volume+lcc"):
        assert count[protocol] == 3 * 4 * 2 * 3 * 3, protocol
    assert {r["metric"] for r in results if r["protocol"] == "all_slices"} == {"dice", "iou", "fp_slices"}
    fields = ("method", "budget", "protocol", "region", "metric")
    for s in summary:
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
    assert html.count("data:image/png;base64,") >= 4 and "<script" not in html
    assert "http://" not in html and "https://" not in html


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
    assert 3 <= len(done_before) < 12, "the sweep was not interrupted midway"
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
