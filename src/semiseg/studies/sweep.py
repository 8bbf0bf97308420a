"""The label-efficiency sweep: one dataset, several methods, several label budgets and seeds,
one fixed test split by patient, one shared DDPM pretraining; resumable.

Layout of a study folder::

    OUT/study.json            the resolved study
    OUT/cache/                the prepared data (unless the study names an existing cache)
    OUT/ddpm/                 the shared DDPM pretraining run (diffusion methods)
    OUT/runs/<method>/n<budget>-s<seed>/   one run folder each, with test_metrics.csv when finished
                              (external methods: just their scores, recomputed on every sweep)
    OUT/results.csv           one row per test slice (or case) x region x metric x method x budget x seed
    OUT/summary.csv           mean and standard deviation over seeds per method x budget x region x metric
    OUT/label_efficiency.png, OUT/overlays.png, OUT/report.html

A run counts as finished once its ``test_metrics.csv`` exists (written atomically after training
and testing); an interrupted run is resumed from its last checkpoint, which continues exactly, so
a restarted sweep redoes nothing and ends with the results an uninterrupted one would have.

``external`` methods (predictions made by another tool, e.g. nnU-Net trained on ``semiseg
export-nnunet``'s datasets; see :mod:`semiseg.studies.external`) are scored by the same
evaluation and appear in the same tables, plots and report. Their folders are checked before any
training starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.config import read_yaml_file
from semiseg.errors import SemisegInputError
from semiseg.files import read_csv, write_csv, write_json
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log

RESULT_FIELDS = ["method", "budget", "seed", "case", "slice", "protocol", "region", "metric", "value"]
SUMMARY_FIELDS = ["method", "budget", "protocol", "region", "metric", "mean", "std", "n_seeds", "n_values"]
TEST_FIELDS = ["case", "slice", "protocol", "region", "metric", "value"]
TEST_METRICS = "test_metrics.csv"
OVERLAY_PREDICTIONS = "test_overlays.npz"


@dataclass
class Study:
    """A sweep's definition (the keys of a study YAML file)."""

    out: str
    methods: list[str]
    budgets: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    data: str | None = None
    cache: str | None = None
    modalities: list[str] | None = None
    slice_size: int = 128
    test_fraction: float = 0.2
    split_seed: int = 0
    dims: int = 2
    preset: str = "default"
    ddpm: dict[str, Any] = field(default_factory=lambda: {"preset": "paper", "set": [], "run": None})
    settings: dict[str, list[str]] = field(default_factory=dict)
    test_slices_per_case: int | None = 7
    whole_volume: bool = True
    #: the test patients' images may be used unlabelled by every method that uses unlabelled data
    #: (the DDPM included), as in the diffusion paper; false: no test image is ever trained on
    transductive: bool = True
    postprocess: str | None = "largest_component"
    overlays: int = 4
    device: str | None = None
    #: predictions made outside semiseg: name -> {predictions: folder template, space: export|original}
    external: dict[str, dict[str, str]] = field(default_factory=dict)

    def method_overrides(self, method: str) -> list[str]:
        return list(self.settings.get("all", [])) + list(self.settings.get(method, []))

    def external_methods(self) -> list[Any]:
        from semiseg.studies.external import ExternalMethod

        return [ExternalMethod(name, spec["predictions"], spec.get("space", "export")) for name, spec in self.external.items()]

    def method_names(self) -> list[str]:
        """Every method the study reports: its own, then the external ones."""
        return list(self.methods) + list(self.external)


def load_study(path: str | PathLike | None = None, **values: Any) -> Study:
    """Read a study YAML (relative paths are relative to the file) and/or keyword values."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SemisegInputError(path, "study file not found")
        raw = read_yaml_file(path, "study file") or {}
        if not isinstance(raw, dict):
            raise SemisegInputError(path, "a study file must hold a mapping of settings (out, data, methods, budgets, ...)")
        base = path.parent
    raw.update({k: v for k, v in values.items() if v is not None})
    known = set(Study.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SemisegInputError(path, f"unknown study setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    for key in ("out", "methods", "budgets"):
        if key not in raw:
            raise SemisegInputError(path, f"the study needs {key!r}")
    for key in ("out", "data", "cache"):
        if raw.get(key) is not None and not Path(raw[key]).is_absolute():
            raw[key] = str(base / raw[key])
    if (raw.get("data") is None) == (raw.get("cache") is None):
        raise SemisegInputError(path, "the study needs exactly one of 'data' (a dataset folder) or 'cache'")
    ddpm = {"preset": "paper", "set": [], "run": None, **(raw.get("ddpm") or {})}
    if ddpm.get("run") and not Path(ddpm["run"]).is_absolute():
        ddpm["run"] = str(base / ddpm["run"])
    raw["ddpm"] = ddpm
    from semiseg.studies.external import ExternalMethod

    external = raw.get("external") or {}
    if not isinstance(external, dict):
        raise SemisegInputError(path, f"external must map method names to prediction folders, got {external!r}")
    for name, spec in list(external.items()):
        if name in (raw.get("methods") or []):
            raise SemisegInputError(path, f"external method {name!r} has the name of one of the study's methods")
        ext = ExternalMethod.parse(str(name), spec, base, path)
        external[name] = {"predictions": ext.predictions, "space": ext.space}
    raw["external"] = external
    study = Study(**raw)
    for m in study.methods:
        get_method(m)
    if not study.budgets or min(study.budgets) < 1:
        raise SemisegInputError(path, f"budgets must be positive integers, got {study.budgets}")
    return study


def prepare_study_cache(study: Study) -> Cache:
    """The study's cache: the given one, or the dataset prepared into OUT/cache (reused if present)."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache

    if study.cache:
        return Cache(study.cache)
    target = Path(study.out) / "cache"
    if (target / "index.json").exists():
        return Cache(target)
    log(f"[bold]prepare[/] {study.data} -> {target}")
    dataset = discover(study.data, study.modalities)
    return build_cache(dataset, target, slice_size=study.slice_size, test_fraction=study.test_fraction, split_seed=study.split_seed)


def pretrain_study_ddpm(study: Study, cache: Cache) -> Path:
    """The DDPM shared by the study's diffusion methods: the given run, or OUT/ddpm (resumed)."""
    from semiseg.runs import read_run_record
    from semiseg.runs.train import ensure_trained, is_finished

    if study.ddpm.get("run"):
        run = Path(study.ddpm["run"])
        if read_run_record(run).plan.transductive and not study.transductive:
            raise SemisegInputError(run, "this DDPM was trained on the test patients' images too, but the study is inductive (transductive: false)")
        return run
    run = Path(study.out) / "ddpm"
    if not is_finished(run):
        log(f"[bold]pretrain[/] DDPM ({study.ddpm['preset']} preset) -> {run}")
    return ensure_trained(
        run, cache.root, "ddpm", preset=study.ddpm["preset"], overrides=study.ddpm.get("set") or [], device=study.device,
        transductive=study.transductive,
    )


def overlay_slices(cache: Cache, test: list[str], count: int, dims: int) -> list[tuple[str, int]]:
    """Typical test slices for overlay figures: tumour-bearing slices at evenly spaced quantiles
    of tumour area (so small, medium and large lesions are all shown), from different patients
    where possible."""
    candidates = []
    for cid in test:
        voxels = cache.cases[cid].slice_label_voxels
        if dims == 3 and "3d" in cache.dims:
            voxels = [int(v) for v in (np.asarray(cache.volume_label(cid)) > 0).sum(axis=(0, 1))]
        candidates += [(v, cid, z) for z, v in enumerate(voxels) if v > 0]
    if not candidates or count < 1:
        return []
    candidates.sort()
    picks = []
    for q in np.linspace(0.2, 0.95, count):
        v, cid, z = candidates[int(q * (len(candidates) - 1))]
        if (cid, z) not in picks:
            picks.append((cid, z))
    return picks


def run_path(out: str | PathLike, method: str, n_labelled: int, seed: int) -> Path:
    """The run folder of one method x label budget x seed in a study folder."""
    return Path(out) / "runs" / method / f"n{n_labelled}-s{seed}"


def study_plan(study: Study, cache: Cache, n_labelled: int, seed: int):
    """The data plan a run of the study with ``n_labelled`` labels and ``seed`` trains on."""
    from semiseg.training.plan import make_plan

    return make_plan(cache, study.dims, n_labelled, seed, transductive=study.transductive)


def score_external(study: Study, cache: Cache, method: Any, n_labelled: int, seed: int, keep: list[tuple[str, int]]) -> Path:
    """Score an external method's predictions for one budget and seed into its run folder (as
    ``test_metrics.csv`` and overlays, like a trained run); recomputed on every sweep, since the
    predictions may have been remade."""
    from semiseg.studies.external import class_maps
    from semiseg.studies.holdout import score_class_maps

    run = run_path(study.out, method.name, n_labelled, seed)
    test = cache.ids("test")
    maps = class_maps(method, cache, n_labelled, seed, test, study.dims)
    rows, kept = score_class_maps(
        cache, test, study.dims, lambda cid, zs: maps[cid], study.test_slices_per_case, keep, study.postprocess, study.whole_volume
    )
    run.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run / OVERLAY_PREDICTIONS, **{k.replace(":", "@"): v for k, v in kept.items()})
    write_json(run / "external.json", {"predictions": str(method.folder(n_labelled, seed)), "space": method.space})
    write_csv(run / TEST_METRICS, rows, TEST_FIELDS)
    return run


def run_one(study: Study, cache: Cache, method: str, n_labelled: int, seed: int, ddpm_run: Path | None, keep: list[tuple[str, int]]) -> Path:
    """Train (or resume) one run of the sweep and score it on the test split, unless finished."""
    from semiseg.runs import ensure_trained, load_trained
    from semiseg.studies.holdout import evaluate_on_cache
    from semiseg.training.distributed import pick_device

    run = run_path(study.out, method, n_labelled, seed)
    if (run / TEST_METRICS).exists():
        return run
    cls = get_method(method)
    t0 = time.perf_counter()
    ensure_trained(
        run, cache.root, method, preset=study.preset, overrides=study.method_overrides(method) + [f"dims={study.dims}"],
        n_labelled=n_labelled, seed=seed, ddpm_run=ddpm_run if cls.needs_ddpm else None, device=study.device,
        transductive=study.transductive,
    )
    train_seconds = time.perf_counter() - t0
    model, _ = load_trained(run, pick_device(0, study.device))
    rows, kept = evaluate_on_cache(model, cache, cache.ids("test"), study.test_slices_per_case, keep, study.postprocess, study.whole_volume)
    np.savez_compressed(run / OVERLAY_PREDICTIONS, **{k.replace(":", "@"): v for k, v in kept.items()})
    write_json(run / "timing.json", {"train_seconds_this_session": train_seconds})
    write_csv(run / TEST_METRICS, rows, TEST_FIELDS)
    return run


def summarise_results(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of the per-seed means (NaN values left out), per
    method, budget, protocol, region and metric."""
    per_seed: dict[tuple, list[float]] = {}
    for r in results:
        v = float(r["value"])
        if not math.isnan(v):
            key = (r["method"], int(r["budget"]), r.get("protocol") or "", r["region"], r["metric"], int(r["seed"]))
            per_seed.setdefault(key, []).append(v)
    grouped: dict[tuple, list[tuple[float, int]]] = {}
    for (m, b, proto, reg, met, _seed), vals in per_seed.items():
        grouped.setdefault((m, b, proto, reg, met), []).append((float(np.mean(vals)), len(vals)))
    rows = []
    for (m, b, proto, reg, met), items in sorted(grouped.items()):
        means = np.array([x for x, _ in items])
        rows.append({
            "method": m, "budget": b, "protocol": proto, "region": reg, "metric": met,
            "mean": float(means.mean()), "std": float(means.std(ddof=1)) if len(means) > 1 else 0.0,
            "n_seeds": len(means), "n_values": int(sum(n for _, n in items)),
        })
    return rows


def run_sweep(study: Study) -> Path:
    """Run (or finish) a study; returns the path of its report."""
    from semiseg.progress import progress_bar
    from semiseg.studies.report import write_report

    out = Path(study.out)
    cache = prepare_study_cache(study)
    if len(cache.ids("test")) == 0:
        raise SemisegInputError(cache.root, "has no test patients; prepare it with --test-fraction above 0")
    externals = study.external_methods()
    if externals:
        from semiseg.studies.external import prediction_files

        for ext in externals:  # before hours of training, not after
            for b in study.budgets:
                for s in study.seeds:
                    prediction_files(ext, b, s, cache.ids("test"))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", asdict(study))
    needs_ddpm = any(get_method(m).needs_ddpm for m in study.methods)
    ddpm_run = pretrain_study_ddpm(study, cache) if needs_ddpm else None
    keep = overlay_slices(cache, cache.ids("test"), study.overlays, study.dims)
    jobs = [(m, b, s) for b in study.budgets for s in study.seeds for m in study.methods]
    with progress_bar() as bar:
        task = bar.add_task("sweep", total=len(jobs), info="")
        for i, (m, b, s) in enumerate(jobs):
            bar.update(task, info=f"{m} n={b} seed={s}")
            run_one(study, cache, m, b, s, ddpm_run, keep)
            bar.update(task, completed=i + 1)
    for ext in externals:
        for b in study.budgets:
            for s in study.seeds:
                score_external(study, cache, ext, b, s, keep)
                jobs.append((ext.name, b, s))
    results = []
    for m, b, s in jobs:
        for r in read_csv(run_path(out, m, b, s) / TEST_METRICS):
            results.append({"method": m, "budget": b, "seed": s, **r})
    write_csv(out / "results.csv", results, RESULT_FIELDS)
    summary = summarise_results(results)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    return write_report(study, cache, summary, keep, ddpm_run)


def for_protocol(summary: list[dict], protocol: str) -> list[dict]:
    """The summary rows of one evaluation protocol (see :mod:`semiseg.studies.holdout`)."""
    return [r for r in summary if r.get("protocol") == protocol]


def summary_table(summary: list[dict], metric: str = "dice", protocol: str | None = None):
    """A rich table: methods x budgets, one column group per region, mean +- std of ``metric``
    under ``protocol`` (default: the first of central_slices, volume found)."""
    from rich.table import Table

    if protocol is None:
        found = {r.get("protocol") for r in summary}
        protocol = next((p for p in ("central_slices", "volume") if p in found), None)
    summary = for_protocol(summary, protocol) if protocol else summary
    regions = sorted({r["region"] for r in summary}, key=lambda x: ["WT", "TC", "ET"].index(x) if x in ("WT", "TC", "ET") else 9)
    table = Table(title=f"{metric}, {protocol or 'all protocols'} (mean ± sd over seeds)")
    table.add_column("method")
    table.add_column("labels", justify="right")
    for reg in regions:
        table.add_column(reg, justify="right")
    index = {(r["method"], r["budget"], r["region"], r["metric"]): r for r in summary}
    fmt = ".1f" if metric.startswith("hd") else ".3f"  # millimetres need no more than 0.1
    for m in sorted({r["method"] for r in summary}, key=lambda x: (x != "supervised", x)):
        for b in sorted({r["budget"] for r in summary}):
            cells = []
            for reg in regions:
                r = index.get((m, b, reg, metric))
                cells.append("—" if r is None else f"{r['mean']:{fmt}}" + (f" ± {r['std']:{fmt}}" if int(r["n_seeds"]) > 1 else ""))
            table.add_row(m, str(b), *cells)
    return table


def read_summary(out: str | PathLike) -> list[dict]:
    """Rows of OUT/summary.csv with numbers parsed."""
    rows = read_csv(Path(out) / "summary.csv")
    for r in rows:
        r["budget"] = int(r["budget"])
        for k in ("mean", "std"):
            r[k] = float(r[k])
    return rows

