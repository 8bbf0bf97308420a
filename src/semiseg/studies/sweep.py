"""The label-efficiency sweep: one dataset, several methods, several label budgets and seeds,
one fixed test split by patient, one shared DDPM pretraining; resumable.

Layout of a study folder::

    OUT/study.json            the resolved study
    OUT/cache/                the prepared data (unless the study names an existing cache)
    OUT/ddpm/                 the shared DDPM pretraining run (diffusion methods)
    OUT/runs/<method>/n<budget>-s<seed>/   one run folder each, with test_metrics.csv when finished
                              (external methods: just their scores, recomputed on every sweep)
    OUT/results.csv           one row per test slice (or case) x region x metric x method x budget x seed
    OUT/summary.csv           per method x budget x protocol x region x metric: mean and standard deviation
                              over seeds, what was scored, paired comparisons (semiseg.studies.stats)
    OUT/per_patient.csv       each test patient's value per method x budget x protocol x region x metric
    OUT/summary.tex           the main Dice table for LaTeX
    OUT/provenance.json       versions, configurations, item IDs and wall times of every run
    OUT/timing.json           wall time of the sweep sessions (each run has its own timing.json)
    OUT/*.png|pdf|svg, OUT/report.html
    OUT/locks/, OUT/failures/, OUT/sweep.log   who runs what, what failed (:mod:`semiseg.studies.execution`)
    OUT/slurm/                submitit's jobs, when the study runs on Slurm (:mod:`semiseg.studies.slurm`)

A run counts as finished once its ``test_metrics.csv`` exists (written atomically after training
and testing); an interrupted run is resumed from its last checkpoint, which continues exactly, so
a restarted sweep redoes nothing and ends with the results an uninterrupted one would have. How the
runs are executed (here, in a worker pool, by several processes at once, on Slurm) is
:mod:`semiseg.studies.execution`'s and :mod:`semiseg.studies.slurm`'s.

``external`` methods (predictions made by another tool, e.g. nnU-Net trained on ``semiseg
export-nnunet``'s datasets; see :mod:`semiseg.studies.external`) are scored by the same
evaluation and appear in the same tables, plots and report. Their folders are checked before any
training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.config import read_yaml_file
from semiseg.errors import SemisegInputError
from semiseg.files import atomic_path, read_csv, write_csv, write_json
from semiseg.methods.base import METHODS, get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log, progress_bar

RESULT_FIELDS = ["method", "budget", "seed", "case", "slice", "protocol", "region", "metric", "value", "gt_voxels", "pred_voxels"]
#: the comparison columns of summary.csv, once against the supervised baseline and once against the
#: best other method of the cell (see semiseg.studies.stats)
COMPARISON_FIELDS = ["n", "diff", "ci_low", "ci_high", "p", "p_holm"]
SUMMARY_FIELDS = (
    ["method", "budget", "protocol", "region", "metric", "mean", "std", "n_seeds", "n_values", "median", "n_patients", "n_empty", "n_misses"]
    + [f"vs_supervised_{f}" for f in COMPARISON_FIELDS] + ["best_other"] + [f"vs_best_other_{f}" for f in COMPARISON_FIELDS]
    + ["significantly_best"]
)
PATIENT_FIELDS = ["method", "budget", "protocol", "region", "metric", "case", "value", "n_seeds", "n_scored", "n_empty", "n_misses"]
TEST_FIELDS = ["case", "slice", "protocol", "region", "metric", "value", "gt_voxels", "pred_voxels"]
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
    #: 2D: lesion-free slices of the labelled patients labelled as such, per run, beside the budget
    negatives: int = 0
    postprocess: str | None = "largest_component"
    overlays: int = 4
    device: str | None = None
    #: guided label selection beside the random draws (:mod:`semiseg.studies.active`), e.g.
    #: {strategy: hybrid, rounds: [2, 5, 10]}
    selection: dict[str, Any] | None = None
    upper_bound: bool = False
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


#: what each study setting must be: (kinds of value, "of what" for lists); None allowed where listed
STUDY_KINDS: dict[str, tuple[tuple[type, ...], type | None]] = {
    "out": ((str,), None), "methods": ((list,), str), "budgets": ((list,), int), "seeds": ((list,), int),
    "data": ((str, type(None)), None), "cache": ((str, type(None)), None), "modalities": ((list, type(None)), str),
    "slice_size": ((int,), None), "test_fraction": ((float, int), None), "split_seed": ((int,), None), "dims": ((int,), None),
    "preset": ((str,), None), "ddpm": ((dict, type(None)), None), "settings": ((dict, type(None)), None),
    "test_slices_per_case": ((int, type(None)), None), "overlays": ((int,), None), "device": ((str, type(None)), None),
    "whole_volume": ((bool,), None), "transductive": ((bool,), None), "negatives": ((int,), None),
    "postprocess": ((str, type(None)), None), "selection": ((dict, type(None)), None), "upper_bound": ((bool,), None),
    "external": ((dict, type(None)), None),
}
KIND_WORDS = {str: "a text", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a mapping", type(None): "null"}


def _check_kinds(raw: dict[str, Any], source: str | PathLike | None) -> None:
    """Every study setting has the kind of value it needs (budgets a list of integers, ...)."""
    for key, (kinds, item) in STUDY_KINDS.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if ok and item is not None and isinstance(value, list):
            ok = all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            wanted = " or ".join(KIND_WORDS[k] for k in kinds) + (f" of {KIND_WORDS[item].split(' ', 1)[1]}s" if item else "")
            raise SemisegInputError(source, f"study setting {key!r} must be {wanted}, got {value!r:.60}")


def _check_study(study: Study, source: str | PathLike | None) -> None:
    """Values a study cannot run with, and every method's settings, checked before anything is written."""
    from semiseg.config import load_config
    from semiseg.training.distributed import pick_device
    from semiseg.training.loop import check_train_settings

    if not study.methods:
        raise SemisegInputError(source, "the study needs at least one method")
    if not study.budgets or min(study.budgets) < 1:
        raise SemisegInputError(source, f"budgets must be positive integers, got {study.budgets}")
    if not study.seeds or min(study.seeds) < 0:
        raise SemisegInputError(source, f"seeds must be non-negative integers, got {study.seeds}")
    if study.dims not in (2, 3):
        raise SemisegInputError(source, f"dims must be 2 or 3, got {study.dims}")
    if not 0 < study.test_fraction < 1:
        raise SemisegInputError(source, f"test_fraction must be between 0 and 1, got {study.test_fraction}")
    if study.overlays < 0 or (study.test_slices_per_case is not None and study.test_slices_per_case < 0):
        raise SemisegInputError(source, "overlays and test_slices_per_case must not be negative")
    unknown = sorted(set(study.ddpm) - {"preset", "set", "run"})
    if unknown:
        raise SemisegInputError(source, f"unknown setting ddpm.{unknown[0]}; known: preset, set, run")
    if not isinstance(study.ddpm["preset"], str) or not isinstance(study.ddpm["set"] or [], list):
        raise SemisegInputError(source, "ddpm.preset must be a text and ddpm.set a list of key=value texts")
    for name, items in study.settings.items():
        if name != "all" and name not in METHODS:
            raise SemisegInputError(source, f"settings for {name!r}, which is no method; the methods are {', '.join(sorted(METHODS))}")
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise SemisegInputError(source, f"settings.{name} must be a list of key=value texts, e.g. [train.steps=200]")
    where = f"{source}, " if source else ""
    layers = [(get_method(m).config_files, study.preset, study.method_overrides(m) + [f"dims={study.dims}"], f"{where}settings of {m}")
              for m in study.methods]
    if any(get_method(m).needs_ddpm for m in study.methods) and not study.ddpm.get("run"):
        layers.append((["ddpm"], study.ddpm["preset"], list(study.ddpm["set"] or []), f"{where}ddpm.set"))
    for files, preset, overrides, origin in layers:
        config = load_config(files, preset, None, overrides, overrides_source=origin)
        try:
            check_train_settings(config["train"])
        except SemisegInputError as exc:
            raise SemisegInputError(origin, exc.problem) from None
    if study.device:
        pick_device(0, study.device)


def load_study(path: str | PathLike | None = None, **values: Any) -> Study:
    """Read a study YAML (relative paths are relative to the file) and/or keyword values; every
    setting is checked (kinds, values, each method's settings) with one-line errors naming the file."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SemisegInputError(path, "study file not found")
        raw = read_yaml_file(path, "study file") or {}
        if not isinstance(raw, dict):
            raise SemisegInputError(path, f"must hold a mapping of study settings (out, data, methods, budgets, ...), not a {type(raw).__name__}")
        base = path.parent
    _check_kinds(raw, path)
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
    raw["settings"] = raw.get("settings") or {}
    study = Study(**raw)
    for m in study.methods:
        get_method(m)
    _check_study(study, path)
    if study.selection is not None:
        from semiseg.studies.active import SelectionPlan

        SelectionPlan.from_study(study.selection, path)
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
    with progress_bar() as bar:
        task = bar.add_task("prepare", total=len(dataset.cases), info="", unit="case")
        return build_cache(
            dataset, target, slice_size=study.slice_size, test_fraction=study.test_fraction, split_seed=study.split_seed,
            progress=lambda i, n: bar.update(task, completed=i),
        )


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


@dataclass(frozen=True, order=True)
class RunKey:
    """One run of a study: a method at a label budget with a seed."""

    method: str
    budget: int
    seed: int

    @property
    def name(self) -> str:
        """A file-name-safe identifier, e.g. ``supervised-n10-s0`` (lock and failure files)."""
        return f"{self.method}-n{self.budget}-s{self.seed}"

    def folder(self, out: str | PathLike) -> Path:
        return run_path(out, self.method, self.budget, self.seed)

    def __str__(self) -> str:
        return f"{self.method} n={self.budget} seed={self.seed}"


def study_runs(study: Study, cache: Cache | None = None) -> list[RunKey]:
    """Every run the sweep trains one by one, in job order (budget, seed, method), the order of
    results.csv; given the cache, then the upper-bound runs (their budget is the cache's labelled
    pool) that are not among them. Guided selection's rounds are chains, run by
    :func:`semiseg.studies.active.run_chain`, one chain at a time."""
    runs = [RunKey(m, b, s) for b in study.budgets for s in study.seeds for m in study.methods]
    if cache is not None:
        runs += [run for run in (RunKey(*job) for job in upper_bound_jobs(study, cache)) if run not in runs]
    return runs


def is_done(out: str | PathLike, run: RunKey) -> bool:
    """A run is finished once its test metrics are written (atomically, after training and testing)."""
    return (run.folder(out) / TEST_METRICS).exists()


def study_plan(study: Study, cache: Cache, n_labelled: int, seed: int):
    """The data plan a run of the study with ``n_labelled`` labels and ``seed`` trains on."""
    from semiseg.training.plan import make_plan

    return make_plan(cache, study.dims, n_labelled, seed, transductive=study.transductive)


def write_test_outputs(run: Path, rows: list[dict], kept: dict[str, np.ndarray]) -> None:
    """Write a scored run's overlay predictions (``kept``, keyed "case:slice", stored with "@"
    for ":") and then its ``test_metrics.csv``: last, because that file marks the run finished."""
    with atomic_path(run / OVERLAY_PREDICTIONS) as tmp:
        np.savez_compressed(tmp, **{k.replace(":", "@"): v for k, v in kept.items()})
    write_csv(run / TEST_METRICS, rows, TEST_FIELDS)


def read_overlay_predictions(run: Path) -> dict[str, np.ndarray] | None:
    """The overlay predictions :func:`write_test_outputs` stored in ``run``, keyed "case:slice"
    (None if the run has none)."""
    path = run / OVERLAY_PREDICTIONS
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k.replace("@", ":"): z[k] for k in z.files}


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
    write_json(run / "external.json", {"predictions": str(method.folder(n_labelled, seed)), "space": method.space})
    write_test_outputs(run, rows, kept)
    return run


def run_one(study: Study, cache: Cache, method: str, n_labelled: int, seed: int, ddpm_run: Path | None, keep: list[tuple[str, int]],
            labelled_items: list[str] | None = None, label: str | None = None) -> Path:
    """Train (or resume) one run of the sweep and score it on the test split, unless finished.
    ``labelled_items``: these items instead of ``n_labelled`` random ones, in the run folder of
    the method name ``label`` (guided selection, :mod:`semiseg.studies.active`)."""
    from semiseg.runs import ensure_trained, load_trained
    from semiseg.studies.holdout import evaluate_on_cache
    from semiseg.training.distributed import pick_device
    from semiseg.training.log import TIMING_FILE, WallClock

    run = run_path(study.out, label or method, n_labelled, seed)
    if (run / TEST_METRICS).exists():
        return run
    cls = get_method(method)
    ensure_trained(
        run, cache.root, method, preset=study.preset, overrides=study.method_overrides(method) + [f"dims={study.dims}"],
        n_labelled=n_labelled, labelled_items=labelled_items, seed=seed, ddpm_run=ddpm_run if cls.needs_ddpm else None, device=study.device,
        transductive=study.transductive, negatives=study.negatives if study.dims == 2 else 0,
    )
    device = pick_device(0, study.device)
    clock = WallClock(run / TIMING_FILE, "test", device=str(device))  # training records its own sessions
    model, _ = load_trained(run, device)
    rows, kept = evaluate_on_cache(model, cache, cache.ids("test"), study.test_slices_per_case, keep, study.postprocess, study.whole_volume)
    clock.tick()  # before test_metrics.csv marks the run finished, so a finished run's test time is recorded
    write_test_outputs(run, rows, kept)
    return run


def summarise_results(results: list[dict], patients: dict | None = None) -> list[dict]:
    """One row per method, budget, protocol, region and metric: mean and standard deviation over
    seeds of the per-seed means (NaN values left out; no standard deviation with one seed), the
    median of every scored value, what was scored (``n_values`` scores over all seeds, ``n_patients``,
    ``n_empty`` both-empty scores left out, ``n_misses`` region predicted where there is none or
    missed entirely), and the paired patient-level comparisons of :mod:`semiseg.studies.stats`.
    ``patients``: :func:`~semiseg.studies.stats.patient_values` of ``results``, if already computed."""
    from semiseg.studies.stats import patient_values, study_statistics

    per_seed: dict[tuple, list[float]] = {}
    pooled: dict[tuple, list[float]] = {}
    for r in results:
        v = float(r["value"])
        if not math.isnan(v):
            key = (r["method"], int(r["budget"]), r.get("protocol") or "", r["region"], r["metric"])
            per_seed.setdefault(key + (int(r["seed"]),), []).append(v)
            pooled.setdefault(key, []).append(v)
    grouped: dict[tuple, list[float]] = {}
    for (*key, _seed), vals in per_seed.items():
        grouped.setdefault(tuple(key), []).append(float(np.mean(vals)))
    patients = patient_values(results) if patients is None else patients
    means = {key: float(np.mean(v)) for key, v in grouped.items()}
    statistics = study_statistics(means, patients)
    rows = []
    for key in sorted(grouped):
        m, b, proto, reg, met = key
        seed_means = np.array(grouped[key])
        cases = patients.get(key, {}).values()
        misses = [c.n_misses for c in cases if c.n_misses is not None]
        row = dict.fromkeys(SUMMARY_FIELDS) | {
            "method": m, "budget": b, "protocol": proto, "region": reg, "metric": met,
            "mean": means[key], "std": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else math.nan,
            "n_seeds": len(seed_means), "n_values": len(pooled[key]), "median": float(np.median(pooled[key])),
            "n_patients": sum(math.isfinite(c.value) for c in cases), "n_empty": sum(c.n_empty for c in cases),
            "n_misses": sum(misses) if misses else None, "significantly_best": False,
        }
        s = statistics.get(key)
        if s is not None:
            row["significantly_best"] = s.significantly_best
            row["best_other"] = s.best_other
            for prefix, c in (("vs_supervised_", s.vs_baseline), ("vs_best_other_", s.vs_best_other)):
                if c is not None:
                    row.update({prefix + "n": c.n_pairs, prefix + "diff": c.diff, prefix + "ci_low": c.ci_low, prefix + "ci_high": c.ci_high,
                                prefix + "p": c.p, prefix + "p_holm": c.p_holm})
        rows.append(row)
    return rows


def patient_rows(patients: dict) -> list[dict]:
    """Rows of per_patient.csv: each test patient's value per method, budget, protocol, region and
    metric (mean over the patient's slices, then over seeds), with what was scored."""
    rows = []
    for (m, b, proto, reg, met), cases in sorted(patients.items()):
        for case, v in sorted(cases.items()):
            rows.append({"method": m, "budget": b, "protocol": proto, "region": reg, "metric": met, "case": case, "value": v.value,
                         "n_seeds": v.n_seeds, "n_scored": v.n_scored, "n_empty": v.n_empty, "n_misses": v.n_misses})
    return rows


def upper_bound_jobs(study: Study, cache: Cache) -> list[tuple[str, int, int]]:
    """The reference runs of ``upper_bound: true``: the supervised method trained on every labelled
    training item (the whole labelled pool in 2D, every training case in 3D), one per seed."""
    from semiseg.studies.stats import BASELINE
    from semiseg.training.plan import labelled_pool

    if not study.upper_bound:
        return []
    return [(BASELINE, len(labelled_pool(cache, study.dims)), s) for s in study.seeds]


def run_sweep(study: Study, **options: Any) -> Path | None:
    """Run (or finish) a study; returns the path of its report (None when runs of other shards or
    processes are still unfinished). ``options`` are those of
    :func:`semiseg.studies.execution.sweep_study` (workers, gpus, threads, keep_going, shard)."""
    from semiseg.studies.execution import sweep_study

    return sweep_study(study, **options).report


def collect_results(out: str | PathLike, jobs: list[tuple[str, int, int]], upper: list[tuple[str, int, int]] = ()) -> list[dict]:
    """Every finished run's test rows, in job order; the upper-bound runs' rows are labelled
    :data:`~semiseg.studies.stats.UPPER_BOUND`."""
    from semiseg.studies.stats import UPPER_BOUND

    results = []
    for runs, label in ((jobs, None), (upper, UPPER_BOUND)):
        for m, b, s in runs:
            path = run_path(out, m, b, s) / TEST_METRICS
            for i, r in enumerate(read_csv(path, TEST_FIELDS)):
                try:
                    float(r["value"])
                except ValueError:
                    raise SemisegInputError(path, f"row {i + 2}: value {r['value']!r} is not a number") from None
                results.append({"method": label or m, "budget": b, "seed": s, **r})
    return results


def check_external(study: Study, cache: Cache) -> None:
    """Every prediction file of the study's external methods exists (before hours of training, not after)."""
    from semiseg.studies.external import prediction_files

    for ext in study.external_methods():
        for b in study.budgets:
            for s in study.seeds:
                prediction_files(ext, b, s, cache.ids("test"))


def write_study_outputs(
    study: Study, cache: Cache, jobs: list[tuple[str, int, int]], upper: list[tuple[str, int, int]], keep: list[tuple[str, int]],
    ddpm_run: Path | None, missing: list[tuple[str, str]] | None = None,
) -> Path:
    """From the finished runs ``jobs`` (and ``upper``): results.csv, summary.csv, per_patient.csv,
    summary.tex, provenance.json, the figures and report.html; ``missing`` lists (run, why) of the
    study's runs not among them, which the report names. Returns the report's path."""
    from semiseg.studies.provenance import study_provenance
    from semiseg.studies.report import write_report, write_summary_tex
    from semiseg.studies.stats import patient_values

    out = Path(study.out)
    results = collect_results(out, jobs, upper)
    if not results:
        raise SemisegInputError(out, "no run of the study has finished yet, so there is nothing to report")
    write_csv(out / "results.csv", results, RESULT_FIELDS)
    patients = patient_values(results)
    summary = summarise_results(results, patients)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    write_csv(out / "per_patient.csv", patient_rows(patients), PATIENT_FIELDS)
    provenance = study_provenance(study, jobs, upper, ddpm_run)
    write_json(out / "provenance.json", provenance.to_json())
    write_summary_tex(study, summary, out / "summary.tex")
    return write_report(study, cache, summary, patients, keep, ddpm_run, provenance, missing)


def for_protocol(summary: list[dict], protocol: str) -> list[dict]:
    """The summary rows of one evaluation protocol (see :mod:`semiseg.studies.holdout`)."""
    return [r for r in summary if r.get("protocol") == protocol]


def summary_table(summary: list[dict], metric: str = "dice", protocol: str | None = None):
    """A rich table: methods x budgets, one column per region, mean (± sd over seeds) of ``metric``
    under ``protocol`` (default: the first of central_slices, volume found), significantly best in
    bold, the upper bound last."""
    from rich.table import Table

    from semiseg.studies.report import fmt_mean_sd, ordered_methods, ordered_regions
    from semiseg.studies.stats import UPPER_BOUND

    if protocol is None:
        found = {r.get("protocol") for r in summary}
        protocol = next((p for p in ("central_slices", "volume") if p in found), None)
    summary = [r for r in (for_protocol(summary, protocol) if protocol else summary) if r["metric"] == metric]
    regions = ordered_regions(summary)
    seeds = max((int(r["n_seeds"]) for r in summary), default=0)
    table = Table(title=f"{metric}, {protocol or 'all protocols'} ({'mean ± sd over seeds' if seeds > 1 else 'one seed'}; bold: significantly best)")
    table.add_column("method")
    table.add_column("labels", justify="right")
    for reg in regions:
        table.add_column(reg, justify="right")
    index = {(r["method"], r["budget"], r["region"]): r for r in summary}
    for m in ordered_methods(summary) + [UPPER_BOUND]:
        for b in sorted({r["budget"] for r in summary if r["method"] == m}):
            cells = []
            for reg in regions:
                r = index.get((m, b, reg))
                text = "—" if r is None else fmt_mean_sd(r, metric)
                cells.append(f"[bold]{text}[/]" if r is not None and r["significantly_best"] else text)
            table.add_row(m, str(b), *cells)
    return table


def read_summary(out: str | PathLike) -> list[dict]:
    """Rows of OUT/summary.csv with numbers parsed (None where a column does not apply)."""
    rows = read_csv(Path(out) / "summary.csv")
    for r in rows:
        for k, v in r.items():
            if k in ("method", "protocol", "region", "metric"):
                continue
            if k == "best_other":
                r[k] = v or None
            elif k == "significantly_best":
                r[k] = v == "True"
            elif v in ("", None):
                r[k] = None
            else:
                r[k] = int(v) if k in ("budget", "n_seeds", "n_values", "n_patients", "n_empty", "n_misses") or k.endswith("_n") else float(v)
    return rows

