"""Statistics of a study: "is method A better than B at N labels?".

The unit of every comparison is the test patient. A patient's value in a cell (method, budget,
protocol, region, metric) is the mean over the patient's scored slices (``central_slices``) or the
patient's one row (whole-volume protocols), averaged over the seeds that scored it. Two methods of a
cell are compared on the patients both scored:

* the mean paired difference (A - B, in the metric's units) and its 95 % bootstrap confidence
  interval, resampling patients (``scipy.stats.bootstrap``, percentile method, a fixed seed so a
  study's summary is the same every time it is written);
* a two-sided paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``);
* Holm's correction over the comparisons of one table (one protocol and metric: every method x
  budget x region against the supervised baseline and against the best other method of its cell).

A method is *significantly best* in a cell when it has the best mean and is better than every other
method of the cell with a Holm-corrected p below :data:`ALPHA`. With few test patients no test can
get there (with 3 patients the smallest two-sided Wilcoxon p is 0.25); then nothing is marked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

BASELINE = "supervised"
#: results label of the supervised method trained on every labelled training item (a reference
#: line, never compared)
UPPER_BOUND = "supervised-all"
ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
#: the direction in which each metric is better
HIGHER_IS_BETTER = {"dice": True, "iou": True, "hd95": False, "fp_slices": False}

Cell = tuple[int, str, str, str]  # budget, protocol, region, metric
Key = tuple[str, int, str, str, str]  # method, budget, protocol, region, metric


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric, True)


@dataclass(frozen=True)
class PatientValue:
    """One test patient's value in a cell: ``value`` averaged over the ``n_seeds`` seeds that scored
    the patient; ``n_scored``, ``n_empty`` and ``n_misses`` count its rows over all seeds (scored,
    both-empty and left out, region predicted where there is none or missed entirely)."""

    value: float
    n_seeds: int
    n_scored: int
    n_empty: int
    n_misses: int | None


def is_miss(row: dict) -> bool | None:
    """True if exactly one of prediction and ground truth holds the row's region, None when the
    row carries no voxel counts (results of an older semiseg)."""
    try:
        gt, pred = int(row["gt_voxels"]), int(row["pred_voxels"])
    except (KeyError, TypeError, ValueError):
        return None
    return (gt == 0) != (pred == 0)


def patient_values(results: Iterable[dict]) -> dict[Key, dict[str, PatientValue]]:
    """Per cell key, each test patient's :class:`PatientValue` (see the module docstring)."""
    per_seed: dict[tuple, list[float]] = {}
    counts: dict[tuple, list[int]] = {}
    for r in results:
        key = (r["method"], int(r["budget"]), r.get("protocol") or "", r["region"], r["metric"], r["case"])
        v = float(r["value"])
        per_seed.setdefault(key + (int(r["seed"]),), []).append(v)
        c = counts.setdefault(key, [0, 0, 0, 0])  # scored, empty, misses, rows with voxel counts
        c[0 if math.isfinite(v) else 1] += 1
        miss = is_miss(r)
        if miss is not None:
            c[2] += miss
            c[3] += 1
    seeds: dict[tuple, list[float]] = {}
    for (*key, _seed), vals in per_seed.items():
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            seeds.setdefault(tuple(key), []).append(float(np.mean(finite)))
    out: dict[Key, dict[str, PatientValue]] = {}
    for key, c in counts.items():
        vals = seeds.get(key, [])
        value = float(np.mean(vals)) if vals else math.nan
        out.setdefault(key[:5], {})[key[5]] = PatientValue(value, len(vals), c[0], c[1], c[2] if c[3] else None)
    return out


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``other`` on the patients both scored: mean difference (method - other),
    its bootstrap CI, Wilcoxon p and Holm-corrected p (NaN where there are fewer than 2 pairs)."""

    method: str
    other: str
    n_pairs: int
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = math.nan

    def flipped(self) -> "Comparison":
        """The same comparison seen from ``other``."""
        return Comparison(self.other, self.method, self.n_pairs, 0.0 - self.diff, 0.0 - self.ci_high, 0.0 - self.ci_low, self.p, self.p_holm)  # no -0.0


def paired_differences(a: dict[str, PatientValue], b: dict[str, PatientValue]) -> np.ndarray:
    """Differences a - b over the patients both define, in patient order."""
    cases = sorted(c for c in a.keys() & b.keys() if math.isfinite(a[c].value) and math.isfinite(b[c].value))
    return np.array([a[c].value - b[c].value for c in cases], dtype=np.float64)


def bootstrap_ci(d: np.ndarray) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean of ``d``, resampling its entries (patients).

    The percentile interval rather than scipy's default BCa: BCa's acceleration is undefined when
    all differences are equal (common with few patients, e.g. every method missing a tiny region)."""
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = stats.bootstrap((d,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                          vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p of differences ``d`` (zero differences dropped, as
    Wilcoxon's original test does); 1 when every difference is zero, NaN for fewer than 2 pairs.

    The zeros are dropped here rather than by scipy: scipy would then build the null distribution
    by permuting all 2**n signs, zeros included (seconds per comparison at n = 10, for the same p);
    without zeros it uses the exact distribution, or with tied differences a complete permutation
    test up to 13 pairs and the normal approximation above, all deterministic."""
    if len(d) < 2:
        return math.nan
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)


def compare(method: str, a: dict[str, PatientValue], other: str, b: dict[str, PatientValue]) -> Comparison:
    """The paired comparison of two methods' patient values in one cell (Holm's p left NaN)."""
    d = paired_differences(a, b)
    low, high = bootstrap_ci(d)
    return Comparison(method, other, len(d), float(d.mean()) if len(d) else math.nan, low, high, wilcoxon_p(d))


def holm(pvalues: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted).

    A few lines of numpy instead of statsmodels' ``multipletests(method="holm")``, which would pull
    in statsmodels and pandas for one function."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if len(idx):
        order = idx[np.argsort(p[idx], kind="stable")]
        m = len(order)
        adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
        out[order] = adjusted
    return [float(x) for x in out]


@dataclass
class CellStatistics:
    """One row's statistics: against the baseline, against the best other method of its cell, and
    whether it is significantly best there."""

    vs_baseline: Comparison | None = None
    best_other: str | None = None
    vs_best_other: Comparison | None = None
    significantly_best: bool = False


def best_method(means: dict[str, float], metric: str) -> str | None:
    """The method with the best mean, or None on a tie for best (or no finite mean)."""
    finite = {m: v for m, v in means.items() if math.isfinite(v)}
    if not finite:
        return None
    sign = 1.0 if higher_is_better(metric) else -1.0
    ranked = sorted(finite, key=lambda m: (-sign * finite[m], m))
    if len(ranked) > 1 and math.isclose(finite[ranked[0]], finite[ranked[1]], rel_tol=0, abs_tol=1e-12):
        return None
    return ranked[0]


def best_other(means: dict[str, float], method: str, metric: str) -> str | None:
    """The method with the best mean among the others of the cell (ties broken by name)."""
    others = {m: v for m, v in means.items() if m != method and math.isfinite(v)}
    if not others:
        return None
    sign = 1.0 if higher_is_better(metric) else -1.0
    return sorted(others, key=lambda m: (-sign * others[m], m))[0]


def study_statistics(means: dict[Key, float], patients: dict[Key, dict[str, PatientValue]]) -> dict[Key, CellStatistics]:
    """Comparisons, Holm correction and significantly-best flags for every row key of ``means``
    (the summary's mean per method, budget, protocol, region, metric). The upper bound is left out."""
    cells: dict[Cell, dict[str, float]] = {}
    for (m, b, proto, reg, met), mean in means.items():
        if m != UPPER_BOUND:
            cells.setdefault((b, proto, reg, met), {})[m] = mean
    pairs: dict[tuple[Cell, frozenset], Comparison] = {}
    for cell, cell_means in cells.items():
        b, proto, reg, met = cell
        for m in cell_means:
            for other in (BASELINE if m != BASELINE and BASELINE in cell_means else None, best_other(cell_means, m, met)):
                if other is None or (cell, frozenset((m, other))) in pairs:
                    continue
                pairs[(cell, frozenset((m, other)))] = compare(m, patients.get((m, b, proto, reg, met), {}),
                                                               other, patients.get((other, b, proto, reg, met), {}))
    # one family per table: a protocol and a metric
    families: dict[tuple[str, str], list[tuple[Cell, frozenset]]] = {}
    for key in pairs:
        families.setdefault((key[0][1], key[0][3]), []).append(key)
    for keys in families.values():
        for key, p in zip(keys, holm(pairs[k].p for k in keys)):
            c = pairs[key]
            pairs[key] = Comparison(c.method, c.other, c.n_pairs, c.diff, c.ci_low, c.ci_high, c.p, p)

    def get(cell: Cell, m: str, other: str) -> Comparison | None:
        c = pairs.get((cell, frozenset((m, other))))
        return None if c is None else (c if c.method == m else c.flipped())

    out: dict[Key, CellStatistics] = {}
    for cell, cell_means in cells.items():
        b, proto, reg, met = cell
        best = best_method(cell_means, met)
        for m in cell_means:
            s = CellStatistics()
            if m != BASELINE and BASELINE in cell_means:
                s.vs_baseline = get(cell, m, BASELINE)
            s.best_other = best_other(cell_means, m, met)
            if s.best_other is not None:
                s.vs_best_other = get(cell, m, s.best_other)
            if m == best:
                s.significantly_best = significantly_better(m, [o for o in cell_means if o != m], cell, get, met)
            out[(m, b, proto, reg, met)] = s
    return out


def significantly_better(method: str, others: list[str], cell: Cell, get, metric: str) -> bool:
    """True if ``method`` beats every one of ``others`` with a Holm-corrected p below ALPHA."""
    if not others:
        return False
    sign = 1.0 if higher_is_better(metric) else -1.0
    for other in others:
        c = get(cell, method, other)
        if c is None or not (c.p_holm < ALPHA and sign * c.diff > 0):
            return False
    return True
