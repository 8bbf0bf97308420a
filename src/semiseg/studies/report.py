"""The study report: figures, ``summary.tex`` and a self-contained HTML page (a jinja2 template;
images embedded as data URIs, no scripts, no external resources) that opens offline in any browser.

Every number in the report's tables comes from ``summary.csv``, ``per_patient.csv`` or
``provenance.json``; each such cell names its source in ``data-src``/``data-row``/``data-col``
attributes, so a test can check the page against those files.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from semiseg.files import write_text
from semiseg.preprocess.cache import Cache
from semiseg.studies import figures
from semiseg.studies.stats import ALPHA, BASELINE, UPPER_BOUND, PatientValue, higher_is_better

REGION_ORDER = ("WT", "TC", "ET")
TEMPLATES = Path(__file__).parent / "templates"
#: how the overlay slices are picked (:func:`semiseg.studies.sweep.overlay_slices`)
OVERLAY_CAPTION = ("Slices picked among all tumour-bearing test slices at evenly spaced quantiles (20 % to 95 %) of tumour area, "
                   "so small, medium and large lesions are shown, from different patients where possible")


def ordered_regions(summary: list[dict]) -> list[str]:
    """The regions of summary rows, BraTS's WT, TC, ET first."""
    found = {r["region"] for r in summary}
    return [r for r in REGION_ORDER if r in found] + sorted(found - set(REGION_ORDER))


def ordered_methods(summary: list[dict]) -> list[str]:
    """The compared methods of summary rows (the upper bound left out), the supervised baseline first."""
    return sorted({r["method"] for r in summary if r["method"] != UPPER_BOUND}, key=lambda m: (m != BASELINE, m))


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ---- number formats (one place, shared with summary.tex) ------------------------------------------
def decimals(metric: str) -> int:
    """HD95 in mm to 0.1; Dice, IoU and shares to 0.001."""
    return 1 if metric.startswith("hd") else 3


def fmt(value: float | None, metric: str) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{decimals(metric)}f}"


def fmt_mean_sd(row: dict, metric: str, pm: str = " ± ") -> str:
    """``mean ± sd`` over seeds; the mean alone with one seed."""
    text = fmt(row["mean"], metric)
    if int(row["n_seeds"]) > 1 and row["std"] is not None and math.isfinite(row["std"]):
        text += pm + fmt(row["std"], metric)
    return text


def fmt_diff(value: float | None, metric: str) -> str:
    """A signed difference; one that rounds to zero is shown unsigned."""
    text = fmt(value, metric)
    if text == "—" or float(text) == 0:
        return text.lstrip("-")
    return ("+" if value > 0 else "") + text


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low: float | None, high: float | None, metric: str) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "—"
    return f"[{fmt(low, metric)}, {fmt(high, metric)}]"


# ---- the tables' view model ------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    src: str = ""  # summary | patient | provenance: where the number comes from
    row: str = ""
    col: str = ""
    cls: str = ""
    rowspan: int = 1
    colspan: int = 1
    header: bool = False


@dataclass
class Table:
    head: list[list[Cell]]
    rows: list[list[Cell]] = field(default_factory=list)
    cls: str = "numbers"


def _key(r: dict) -> str:
    return "|".join(str(r[k]) for k in ("method", "budget", "protocol", "region", "metric"))


def _cell(r: dict | None, col: str, text: str, cls: str = "") -> Cell:
    return Cell("—") if r is None else Cell(text, "summary", _key(r), col, cls)


def _index(summary: list[dict]) -> dict[tuple, dict]:
    return {(r["method"], r["budget"], r["protocol"], r["region"], r["metric"]): r for r in summary}


def _budget_rows(rows: list[list[Cell]], budget_cells: list[tuple[int, list[list[Cell]]]]) -> None:
    for b, group in budget_cells:
        for i, cells in enumerate(group):
            rows.append(([Cell(str(b), rowspan=len(group), header=True)] if i == 0 else []) + cells)


def metric_table(summary: list[dict], protocol: str, metric: str, budgets: list[int], methods: list[str], regions: list[str], unit: str) -> Table:
    """Methods x budgets, one column per region: mean (± sd over seeds), bold where significantly
    best; HD95 adds the median and the misses per region. The upper bound closes the table."""
    index = _index(summary)
    hd = metric.startswith("hd")
    if hd:
        head = [[Cell("labels", rowspan=2, header=True), Cell("method", rowspan=2, header=True)]
                + [Cell(reg, colspan=3, header=True) for reg in regions],
                [c for _ in regions for c in (Cell("mean", header=True), Cell("median", header=True), Cell("misses", header=True))]]
    else:
        head = [[Cell("labels", header=True), Cell("method", header=True)] + [Cell(reg, header=True) for reg in regions]]

    def cells(m: str, b: int) -> list[Cell]:
        out = [Cell(m, header=True)]
        for reg in regions:
            r = index.get((m, b, protocol, reg, metric))
            out.append(_cell(r, "mean_std", fmt_mean_sd(r, metric) if r else "", "best" if r and r["significantly_best"] else ""))
            if hd:
                out.append(_cell(r, "median", fmt(r["median"], metric) if r else ""))
                miss = r and r["n_misses"] is not None
                out.append(_cell(r if miss else None, "misses", f"{r['n_misses']} of {r['n_values']}" if miss else ""))
        return out

    table = Table(head)
    _budget_rows(table.rows, [(b, [cells(m, b) for m in methods if any((m, b, protocol, reg, metric) in index for reg in regions)]) for b in budgets])
    for b in sorted({k[1] for k in index if k[0] == UPPER_BOUND}):
        row = cells(UPPER_BOUND, b)
        row[0] = Cell(f"{BASELINE}, all {b} {unit} (upper bound)", header=True)
        table.rows.append([Cell("all", header=True)] + row)
    return table


COMPARISON_COLUMNS = (("n", "patients"), ("diff", "Δ"), ("ci", "95 % CI"), ("p", "p"), ("p_holm", "Holm p"))


def comparison_table(summary: list[dict], protocol: str, metric: str, budgets: list[int], methods: list[str], regions: list[str]) -> Table:
    """Per budget, method and region: the paired difference to the supervised baseline and to the
    best other method, with bootstrap CI, Wilcoxon p and Holm-corrected p."""
    index = _index(summary)
    n = len(COMPARISON_COLUMNS)
    head = [[Cell("labels", rowspan=2, header=True), Cell("method", rowspan=2, header=True), Cell("region", rowspan=2, header=True),
             Cell(f"vs {BASELINE}", colspan=n, header=True), Cell("vs the best other method", colspan=n + 1, header=True)],
            [Cell(t, header=True) for _, t in COMPARISON_COLUMNS] + [Cell("method", header=True)] + [Cell(t, header=True) for _, t in COMPARISON_COLUMNS]]

    def side(r: dict, prefix: str) -> list[Cell]:
        if r.get(prefix + "diff") is None:
            return [Cell("—") for _ in COMPARISON_COLUMNS]
        out = []
        for col, _ in COMPARISON_COLUMNS:
            if col == "n":
                out.append(_cell(r, prefix + "n", str(r[prefix + "n"])))
            elif col == "diff":
                out.append(_cell(r, prefix + "diff", fmt_diff(r[prefix + "diff"], metric)))
            elif col == "ci":
                out.append(_cell(r, prefix + "ci", fmt_ci(r[prefix + "ci_low"], r[prefix + "ci_high"], metric)))
            else:
                p = r[prefix + col]
                out.append(_cell(r, prefix + col, fmt_p(p), "sig" if col == "p_holm" and p is not None and p < ALPHA else ""))
        return out

    table = Table(head)
    groups = []
    for b in budgets:
        group = []
        for m in methods:
            for reg in regions:
                r = index.get((m, b, protocol, reg, metric))
                if r is None:
                    continue
                group.append([Cell(m, header=True), Cell(reg, header=True)] + side(r, "vs_supervised_")
                             + [Cell(r.get("best_other") or "—", cls="text")] + side(r, "vs_best_other_"))
        groups.append((b, group))
    _budget_rows(table.rows, groups)
    return table


SCORED_UNIT = {"central_slices": "slices", "volume": "volumes", "all_slices": "patients"}


def scored_table(summary: list[dict], protocol: str, budgets: list[int], methods: list[str], regions: list[str], unit: str) -> Table:
    """What was scored per cell: test patients, scored slices or volumes (over all seeds), both-empty
    scores left out, and HD95 misses."""
    index = _index(summary)
    what = SCORED_UNIT.get(protocol.split("+")[0], "scores")
    has_hd = any(k[2] == protocol and k[4] == "hd95" for k in index)
    sub = ["patients", f"scored {what} (all seeds)", "both empty (left out)"] + (["HD95 misses"] if has_hd else [])
    head = [[Cell("labels", rowspan=2, header=True), Cell("method", rowspan=2, header=True)] + [Cell(reg, colspan=len(sub), header=True) for reg in regions],
            [Cell(s, header=True) for _ in regions for s in sub]]

    def cells(m: str, b: int) -> list[Cell]:
        out = [Cell(m if m != UPPER_BOUND else f"{BASELINE}, all {b} {unit} (upper bound)", header=True)]
        for reg in regions:
            r = index.get((m, b, protocol, reg, "dice"))
            out += [_cell(r, "n_patients", str(r["n_patients"]) if r else ""), _cell(r, "n_values", str(r["n_values"]) if r else ""),
                    _cell(r, "n_empty", str(r["n_empty"]) if r else "")]
            if has_hd:
                h = index.get((m, b, protocol, reg, "hd95"))
                out.append(_cell(h if h and h["n_misses"] is not None else None, "n_misses", str(h["n_misses"]) if h and h["n_misses"] is not None else ""))
        return out

    table = Table(head)
    _budget_rows(table.rows, [(b, [cells(m, b) for m in methods if (m, b, protocol, regions[0], "dice") in index]) for b in budgets])
    for b in sorted({k[1] for k in index if k[0] == UPPER_BOUND and k[2] == protocol}):
        table.rows.append([Cell("all", header=True)] + cells(UPPER_BOUND, b))
    return table


def patient_table(patients: dict[tuple, dict[str, PatientValue]], protocol: str, metric: str, region: str, budgets: list[int], methods: list[str]) -> Table:
    """One row per test patient, one column per budget and method."""
    cols = [(b, m) for b in budgets for m in methods if (m, b, protocol, region, metric) in patients]
    head = [[Cell("patient", rowspan=2, header=True)] + [Cell(f"{b} labels", colspan=sum(1 for bb, _ in cols if bb == b), header=True)
                                                        for b in budgets if any(bb == b for bb, _ in cols)],
            [Cell(m, header=True) for _, m in cols]]
    cases = sorted({c for b, m in cols for c in patients[(m, b, protocol, region, metric)]})
    table = Table(head)
    for case in cases:
        row = [Cell(case, header=True)]
        for b, m in cols:
            v = patients[(m, b, protocol, region, metric)].get(case)
            row.append(Cell("—") if v is None else Cell(fmt(v.value, metric), "patient", f"{m}|{b}|{protocol}|{region}|{metric}|{case}", "value"))
        table.rows.append(row)
    return table


def runs_table(provenance: dict[str, Any], unit: str) -> Table:
    head = [[Cell(t, header=True) for t in ("method", unit, "seed", "steps", "unlabelled test images", "sessions", "devices",
                                             "train (s)", "test (s)", "wall time (s)")]]
    table = Table(head)
    for i, r in enumerate(provenance["runs"]):
        t = r["time"]

        def sec(v: float | None, col: str, i: int = i) -> Cell:
            return Cell("—") if v is None else Cell(f"{v:.1f}", "provenance", str(i), col)

        total = None if t["train_seconds"] is None and t["test_seconds"] is None else (t["train_seconds"] or 0) + (t["test_seconds"] or 0)
        table.rows.append([Cell(r["method"], header=True), Cell(str(len(r["labelled"])), "provenance", str(i), "n_labelled"),
                           Cell(str(r["seed"]), "provenance", str(i), "seed"),
                           Cell(str(r["steps"]), "provenance", str(i), "steps"),
                           Cell("yes" if r["unlabelled_test_images"] else "no"), Cell(str(t["sessions"]), "provenance", str(i), "sessions"),
                           Cell(", ".join(t["devices"]) or "—"), sec(t["train_seconds"], "train_seconds"), sec(t["test_seconds"], "test_seconds"),
                           sec(total, "seconds")])
    return table


def _run_mean(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else math.nan


def pseudo_label_table(out: Path, provenance: dict[str, Any], unit: str) -> Table | None:
    """What each pseudo-labelling run's ``diagnostics.csv`` says (embedmatch): when pseudo-labelling
    began, the reliable share, and whether the matched labels beat the teacher's own on the same
    voxels, over the run and in its last pass over the unlabelled data; None when no run wrote diagnostics."""
    from semiseg.methods.embedmatch import DIAGNOSTICS_FILE
    from semiseg.training.log import read_log

    head = [[Cell(t, header=True) for t in ("method", unit, "seed", "pseudo-labels from step", "reliable share",
                                             "matched labels right (mean of passes)", "teacher right on them (mean of passes)",
                                             "matched right (last pass)", "teacher right (last pass)", "teacher Dice, unlabelled (last pass)")]]
    table = Table(head)
    for r in provenance["runs"]:
        path = out / r["folder"] / DIAGNOSTICS_FILE
        rows = read_log(path) if path.is_file() else []
        if not rows:
            continue
        last = rows[-1]
        start = last.get("pseudo_from", math.nan)
        values = {"mean:reliable": _run_mean(rows, "reliable"), "mean:acc_matched": _run_mean(rows, "acc_matched"),
                  "mean:acc_teacher_on_matched": _run_mean(rows, "acc_teacher_on_matched")}
        values.update({f"last:{k}": last.get(k, math.nan) for k in ("acc_matched", "acc_teacher_on_matched", "dice_teacher")})
        folder = str(r["folder"])
        table.rows.append([Cell(r["method"], header=True), Cell(str(r["budget"]), header=True), Cell(str(r["seed"]), header=True),
                           Cell("—" if math.isnan(start) else "never" if start < 0 else str(int(start)), "diagnostics", folder, "last:pseudo_from")]
                          + [Cell("—") if math.isnan(v) else Cell(f"{v:.3f}", "diagnostics", folder, col) for col, v in values.items()])
    return table if table.rows else None


# ---- figures of the report ---------------------------------------------------------------------
def _overlays(study: Any, cache: Cache, keep: list[tuple[str, int]], budget: int, out: Path) -> Path | None:
    """Overlay figure for ``budget`` (first seed): image, ground truth, each method."""
    if not keep:
        return None
    from semiseg.studies.sweep import read_overlay_predictions, run_path

    seed = study.seeds[0]
    preds = {}
    for m in study.method_names():
        kept = read_overlay_predictions(run_path(study.out, m, budget, seed))
        if kept is not None:
            preds[m] = kept
    channel = cache.modalities.index("flair") if "flair" in cache.modalities else 0
    rows = []
    for cid, z in keep:
        key = f"{cid}:{z}"
        if study.dims == 2:
            image = np.asarray(cache.slices(cid)[z, channel], np.float32)
            gt = np.asarray(cache.slice_labels(cid)[z])
            title = f"{cid}\nslice {cache.cases[cid].geometry.input_slice(z)}"
        else:
            image = np.asarray(cache.volume(cid)[channel, :, :, z], np.float32)
            gt = np.asarray(cache.volume_label(cid)[:, :, z])
            title = f"{cid}\nz {z} (cropped)"
        row = {"image": image, "title": title, "ground truth": gt}
        for m in study.method_names():
            if key in preds.get(m, {}):
                row[m] = preds[m][key]
        rows.append(row)
    columns = ["ground truth"] + [m for m in study.method_names() if all(m in r for r in rows)]
    caption = f"{OVERLAY_CAPTION}; {cache.modalities[channel]} image; predictions of seed {seed} with {budget} labels."
    return figures.overlay_grid(rows, columns, out, cache.scheme.class_names[1:], caption)


def _selection_line(study: Any, ddpm_run: Path | None) -> str:
    from semiseg.studies.active import SelectionPlan

    return SelectionPlan.from_study(study.selection).describe(ddpm_run, study.dims)


def _patient_values(patients: dict, protocol: str, metric: str) -> dict[tuple[str, int, str], list[float]]:
    return {(m, b, reg): [v.value for v in cases.values()] for (m, b, proto, reg, met), cases in patients.items() if proto == protocol and met == metric}


def _figure(path: Path, alt: str) -> dict[str, str]:
    return {"src": _img(path), "alt": alt, "pdf": path.with_suffix(".pdf").name, "svg": path.with_suffix(".svg").name}


WHOLE_VOLUME = [
    ("all_slices", "dice", "Dice per slice over every slice of each test patient (mean per patient)"),
    ("all_slices", "fp_slices", "Share of region-free slices with a false-positive prediction"),
    ("volume", "dice", "Volumetric Dice per test patient"),
    ("volume", "hd95", "Volumetric HD95 in mm per test patient"),
]

PROTOCOL_NAMES = {
    "central_slices": "central slices", "all_slices": "every slice", "volume": "whole volume",
    "all_slices+lcc": "every slice, largest component kept", "volume+lcc": "whole volume, largest component kept",
}


def comparison_pairs(rows: list[dict]) -> set[tuple]:
    """The distinct comparisons (budget, region, pair of methods) with a p-value among summary
    rows of one protocol and metric: the family Holm's correction ran over."""
    pairs = set()
    for r in rows:
        for other, p in ((BASELINE, r.get("vs_supervised_p")), (r.get("best_other"), r.get("vs_best_other_p"))):
            if p is not None and math.isfinite(p):
                pairs.add((r["budget"], r["region"], frozenset((r["method"], other))))
    return pairs


def _min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give with ``n`` pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def write_report(
    study: Any, cache: Cache, summary: list[dict], patients: dict[tuple, dict[str, PatientValue]], keep: list[tuple[str, int]],
    ddpm_run: Path | None, provenance: Any, missing: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the figures (PNG, PDF, SVG) and report.html into the study folder; ``missing`` lists
    (run, why) of the study's runs not in these results (failed, running or not run yet), which
    the report names. Returns the report's path."""
    from semiseg.studies.holdout import primary_protocol
    from semiseg.studies.sweep import for_protocol

    out = Path(study.out)
    prov = provenance.to_json() if hasattr(provenance, "to_json") else provenance
    primary = primary_protocol(study.dims, study.test_slices_per_case)
    main = for_protocol(summary, primary)
    regions, methods = ordered_regions(main), ordered_methods(main)
    budgets = sorted({r["budget"] for r in main if r["method"] != UPPER_BOUND})
    unit = "labelled slices" if study.dims == 2 else "labelled cases"
    seeds_note = "mean ± standard deviation over seeds" if len(study.seeds) > 1 else "one seed, so no standard deviation"

    upper = [r for r in main if r["method"] == UPPER_BOUND]
    curve = figures.label_efficiency_plot([r for r in main if r["method"] != UPPER_BOUND], regions, ["dice", "hd95"], out / "label_efficiency.png", unit,
                                          upper, f"{BASELINE}, all {upper[0]['budget']} {unit}" if upper else "")
    box = figures.patient_plot(_patient_values(patients, primary, "dice"), methods, budgets, regions, out / "patient_dice.png", unit=unit)
    overlay_figures = []
    for b in sorted({budgets[0], budgets[-1]}):
        f = _overlays(study, cache, keep, b, out / f"overlays_n{b}.png")
        if f is not None:
            overlay_figures.append((b, _figure(f, f"overlays with {b} labels")))
    samples = None
    if ddpm_run is not None:
        samples = _figure(figures.sample_grid(ddpm_run, out / "ddpm_samples.png", n=4, steps=25, seed=0, device=study.device), "DDPM samples")

    n_patients = len(cache.ids("test"))
    dice_rows = [r for r in main if r["metric"] == "dice" and r["method"] != UPPER_BOUND]
    n_bold = sum(r["significantly_best"] for r in dice_rows)
    n_comparisons = len(comparison_pairs(dice_rows))
    n_test_items = f"{study.test_slices_per_case} central slices" if study.test_slices_per_case else "every slice"
    found_protocols = sorted({r["protocol"] for r in summary}, key=lambda p: (p != primary, p))
    setup = [
        ("data", study.data or study.cache),
        ("format, label scheme", f"{cache.index['format']}, {cache.scheme.name} (regions {', '.join(regions)})"),
        ("channels", ", ".join(cache.modalities)),
        ("patients", f"{len(cache.ids('train'))} train, {n_patients} test (held out by patient), {len(cache.ids('unlabelled'))} unlabelled"),
        ("evaluated", (f"{n_test_items} of each test patient" if primary == "central_slices" else "each test patient's volume")
         + (", and every test patient's whole volume (below)" if len(found_protocols) > 1 else "")),
        ("slice size" if study.dims == 2 else "dimensions", f"{cache.slice_size} px" if study.dims == 2 else "3D patches"),
        ("methods", ", ".join(study.method_names()) + (f"; upper bound: {BASELINE} on all labelled training data" if study.upper_bound else "")),
        ("unlabelled data", "training patients' and test patients' images (transductive, as in the diffusion paper)" if study.transductive
         else "training patients' images only (inductive: no test image is used in training)"),
        (unit, ", ".join(str(b) for b in budgets)),
        ("seeds", ", ".join(str(s) for s in study.seeds)),
        *([("label selection", _selection_line(study, ddpm_run))] if getattr(study, "selection", None) else []),
        ("preset", study.preset + (f"; DDPM preset {study.ddpm.get('preset')}" if ddpm_run else "")),
        ("settings", "; ".join(f"{k}: {' '.join(v)}" for k, v in study.settings.items() if v) or "presets unchanged"),
    ]
    whole = []
    for base, metric, title in WHOLE_VOLUME:
        for protocol in (base, base + "+lcc"):
            rows = for_protocol(summary, protocol)
            if protocol == primary or not any(r["metric"] == metric for r in rows):
                continue
            suffix = ", after keeping the largest connected component" if protocol.endswith("+lcc") else ""
            whole.append({"title": f"{title}{suffix} ({'higher' if higher_is_better(metric) else 'lower'} is better)",
                          "table": metric_table(summary, protocol, metric, budgets, methods, ordered_regions(rows), unit)})
    scored = [{"name": PROTOCOL_NAMES.get(p, p), "table": scored_table(summary, p, budgets, methods, ordered_regions(for_protocol(summary, p)), unit)}
              for p in found_protocols]
    transductive = sorted(m for m, e in prov["methods"].items() if e["unlabelled_test_images"])
    context = {
        "written": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "prov": prov,
        "setup": setup,
        "primary_name": PROTOCOL_NAMES.get(primary, primary),
        "seeds_note": seeds_note,
        "unit": unit,
        "alpha": ALPHA,
        "n_patients": n_patients,
        "n_comparisons": n_comparisons,
        "n_bold": n_bold,
        "min_p": _min_wilcoxon_p(n_patients),
        "dice": metric_table(summary, primary, "dice", budgets, methods, regions, unit),
        "hd95": metric_table(summary, primary, "hd95", budgets, methods, regions, unit) if any(r["metric"] == "hd95" for r in main) else None,
        "comparisons": comparison_table(summary, primary, "dice", budgets, methods, regions),
        "comparisons_hd95": comparison_table(summary, primary, "hd95", budgets, methods, regions) if any(r["metric"] == "hd95" for r in main) else None,
        "scored": scored,
        "curve": _figure(curve, "Dice and HD95 against the number of labels"),
        "curve_caption": (f"{'Mean' if primary == 'central_slices' else 'Mean per volume'} against the number of labels"
                          + (", with a band of ±1 standard deviation over seeds" if len(study.seeds) > 1 else " (one seed)")
                          + (f"; dashed: {BASELINE} trained on all {upper[0]['budget']} {unit} of the training patients." if upper else ".")),
        "box": _figure(box, "Dice per test patient"),
        "patient_tables": [(reg, patient_table(patients, primary, "dice", reg, budgets, methods)) for reg in regions],
        "whole": whole,
        "lcc": any(p.endswith("+lcc") for p in found_protocols),
        "overlays": overlay_figures,
        "overlay_caption": OVERLAY_CAPTION,
        "class_names": cache.scheme.class_names[1:],
        "samples": samples,
        "runs": runs_table(prov, unit),
        "pseudo": pseudo_label_table(out, prov, unit),
        "transductive": transductive,
        "method_configs": {m: json.dumps(e["config"], indent=1) for m, e in prov["methods"].items()},
        "ddpm_config": json.dumps(prov["ddpm"]["config"], indent=1) if prov.get("ddpm") else None,
        "missing": list(missing or []),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["hms"] = _hms
    report = out / "report.html"
    write_text(report, env.get_template("report.html.j2").render(**context))
    return report


def _hms(seconds: float | None) -> str:
    from semiseg.progress import format_seconds

    return "—" if seconds is None else format_seconds(seconds)


# ---- LaTeX -----------------------------------------------------------------------------------
def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    out = []
    for ch in str(text):
        out.append({"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}.get(ch, ch))
    return "".join(out)


def summary_tex(study: Any, summary: list[dict], metric: str = "dice") -> str:
    """The main table (the study's primary protocol) as a LaTeX ``table`` with booktabs rules:
    methods x budgets, one column per region, significantly best in bold."""
    from semiseg.studies.holdout import primary_protocol
    from semiseg.studies.sweep import for_protocol

    primary = primary_protocol(study.dims, study.test_slices_per_case)
    main = for_protocol(summary, primary)
    regions, methods = ordered_regions(main), ordered_methods(main)
    index = _index(main)
    budgets = sorted({r["budget"] for r in main if r["method"] != UPPER_BOUND})
    unit = "labelled slices" if study.dims == 2 else "labelled cases"

    def cell(r: dict | None) -> str:
        if r is None:
            return "--"
        text = fmt_mean_sd(r, metric, r" $\pm$ ")
        return rf"\textbf{{{text}}}" if r["significantly_best"] else text

    lines = [
        "% semiseg study: the main table; needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex_escape(f"{figures.METRIC_LABELS.get(metric, metric)} on the test patients ({PROTOCOL_NAMES.get(primary, primary)}), "
                                  + ("mean ± standard deviation over seeds" if len(study.seeds) > 1 else "one seed")).replace("±", r"$\pm$")
        + r". Bold: best mean and significantly better than every other method with the same labels (paired Wilcoxon signed-rank test over "
        + rf"test patients, Holm-corrected, $p < {ALPHA}$).}}",
        r"\begin{tabular}{lr" + "c" * len(regions) + "}",
        r"\toprule",
        "Method & Labels & " + " & ".join(tex_escape(r) for r in regions) + r" \\",
    ]
    for b in budgets:
        lines.append(r"\midrule")
        for m in methods:
            if any((m, b, primary, reg, metric) in index for reg in regions):
                lines.append(f"{tex_escape(m)} & {b} & " + " & ".join(cell(index.get((m, b, primary, reg, metric))) for reg in regions) + r" \\")
    for b in sorted({k[1] for k in index if k[0] == UPPER_BOUND}):
        lines.append(r"\midrule")
        lines.append(f"{tex_escape(BASELINE)} (all {tex_escape(unit)}) & {b} & "
                     + " & ".join(cell(index.get((UPPER_BOUND, b, primary, reg, metric))) for reg in regions) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_summary_tex(study: Any, summary: list[dict], out: Path) -> Path:
    write_text(out, summary_tex(study, summary))
    return out
