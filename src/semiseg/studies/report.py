"""The study report: plots and a self-contained HTML page (images embedded as data URIs, no
scripts, no external resources) that opens offline in any browser."""

from __future__ import annotations

import base64
import datetime
import html
import platform
from pathlib import Path
from typing import Any

import numpy as np

import semiseg
from semiseg.files import write_text
from semiseg.preprocess.cache import Cache
from semiseg.studies import figures

REGION_ORDER = ("WT", "TC", "ET")


def _regions(summary: list[dict]) -> list[str]:
    found = {r["region"] for r in summary}
    return [r for r in REGION_ORDER if r in found] + sorted(found - set(REGION_ORDER))


def _methods(summary: list[dict]) -> list[str]:
    return sorted({r["method"] for r in summary}, key=lambda m: (m != "supervised", m))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(summary: list[dict], metric: str, better: str) -> str:
    regions, methods = _regions(summary), _methods(summary)
    budgets = sorted({r["budget"] for r in summary})
    index = {(r["method"], r["budget"], r["region"], r["metric"]): r for r in summary}
    head = "".join(f"<th>{html.escape(r)}</th>" for r in regions)
    body = []
    for b in budgets:
        best = {}
        for reg in regions:
            vals = [(index[(m, b, reg, metric)]["mean"], m) for m in methods if (m, b, reg, metric) in index]
            vals = [v for v in vals if np.isfinite(v[0])]
            if vals:
                best[reg] = (max if better == "high" else min)(vals)[1]
        for i, m in enumerate(methods):
            cells = []
            for reg in regions:
                r = index.get((m, b, reg, metric))
                if r is None:
                    cells.append("<td>—</td>")
                    continue
                text = f"{r['mean']:.3f} ± {r['std']:.3f}" if metric != "hd95" else f"{r['mean']:.1f} ± {r['std']:.1f}"
                cls = ' class="best"' if best.get(reg) == m else ""
                cells.append(f"<td{cls}>{text}</td>")
            first = f'<td rowspan="{len(methods)}">{b}</td>' if i == 0 else ""
            body.append(f"<tr>{first}<td>{html.escape(m)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>labels</th><th>method</th>{head}</tr>{''.join(body)}</table>"


WHOLE_VOLUME = [
    ("all_slices", "dice", "high", "Dice per slice over every slice of each test patient (mean per patient)"),
    ("all_slices", "fp_slices", "low", "Share of region-free slices with a false-positive prediction"),
    ("volume", "dice", "high", "Volumetric Dice per test patient"),
    ("volume", "hd95", "low", "Volumetric HD95 in mm per test patient"),
]


def _whole_volume_sections(summary: list[dict], primary: str) -> list[str]:
    """Tables of the whole-volume protocols, raw and post-processed (``+lcc``), where present."""
    found = {r["protocol"] for r in summary}
    parts = []
    for base, metric, better, title in WHOLE_VOLUME:
        for protocol in (base, base + "+lcc"):
            rows = [r for r in summary if r["protocol"] == protocol]
            if protocol == primary or not any(r["metric"] == metric for r in rows):
                continue
            suffix = ", after keeping the largest connected component" if protocol.endswith("+lcc") else ""
            parts.append(f"<h3>{html.escape(title + suffix)} ({'higher' if better == 'high' else 'lower'} is better)</h3>"
                         f"{_table(rows, metric, better)}")
    if parts:
        lcc = ", raw and with the largest connected component kept (for every method alike)" if any(p.endswith("+lcc") for p in found) else ""
        parts.insert(0, f"<h2>Whole volumes</h2><p class='note'>Users segment whole scans: every test patient's volume, tumour-free slices included{lcc}.</p>")
    return parts


def _overlays(study: Any, cache: Cache, keep: list[tuple[str, int]], budget: int, out: Path) -> Path | None:
    """Overlay figure for ``budget`` (first seed): image, ground truth, each method."""
    if not keep:
        return None
    seed = study.seeds[0]
    preds = {}
    for m in study.method_names():
        f = Path(study.out) / "runs" / m / f"n{budget}-s{seed}" / "test_overlays.npz"
        if f.exists():
            with np.load(f, allow_pickle=False) as z:
                preds[m] = {k.replace("@", ":"): z[k] for k in z.files}
    channel = cache.modalities.index("flair") if "flair" in cache.modalities else 0
    rows = []
    for cid, z in keep:
        key = f"{cid}:{z}"
        if study.dims == 2:
            image = np.asarray(cache.slices(cid)[z, channel], np.float32)
            gt = np.asarray(cache.slice_labels(cid)[z])
            title = f"{cid} slice {cache.cases[cid].geometry.input_slice(z)}"
        else:
            image = np.asarray(cache.volume(cid)[channel, :, :, z], np.float32)
            gt = np.asarray(cache.volume_label(cid)[:, :, z])
            title = f"{cid} z {z}"
        row = {"image": image, "title": title, "ground truth": gt}
        for m in study.method_names():
            if key in preds.get(m, {}):
                row[m] = preds[m][key]
        rows.append(row)
    columns = ["ground truth"] + [m for m in study.method_names() if all(m in r for r in rows)]
    return figures.overlay_grid(rows, columns, out)


def write_report(study: Any, cache: Cache, summary: list[dict], keep: list[tuple[str, int]], ddpm_run: Path | None) -> Path:
    """Write label_efficiency.png, overlays_n*.png, ddpm_samples.png and report.html into the
    study folder; returns the report's path."""
    from semiseg.studies.holdout import primary_protocol
    from semiseg.studies.sweep import for_protocol

    out = Path(study.out)
    primary = primary_protocol(study.dims, study.test_slices_per_case)
    everything, summary = summary, for_protocol(summary, primary)
    regions = _regions(summary)
    unit = "labelled slices" if study.dims == 2 else "labelled cases"
    curve = figures.label_efficiency_plot(summary, regions, ["dice", "hd95"], out / "label_efficiency.png", unit)
    budgets = sorted(study.budgets)
    overlay_files = []
    for b in sorted({budgets[0], budgets[-1]}):
        f = _overlays(study, cache, keep, b, out / f"overlays_n{b}.png")
        if f is not None:
            overlay_files.append((b, f))
    samples = None
    if ddpm_run is not None:
        samples = figures.sample_grid(ddpm_run, out / "ddpm_samples.png", n=4, steps=25, seed=0, device=study.device)

    n_test_items = "every slice" if not study.test_slices_per_case else f"{study.test_slices_per_case} central slices"
    setup = [
        ("data", study.data or study.cache),
        ("format, label scheme", f"{cache.index['format']}, {cache.scheme.name} (regions {', '.join(regions)})"),
        ("channels", ", ".join(cache.modalities)),
        ("patients", f"{len(cache.ids('train'))} train, {len(cache.ids('test'))} test (held out by patient), {len(cache.ids('unlabelled'))} unlabelled"),
        ("evaluated", (f"{n_test_items} of each test patient" if primary == "central_slices" else "each test patient's volume")
         + (", and every test patient's whole volume (below)" if any(r["protocol"] != primary for r in everything) else "")),
        ("slice size" if study.dims == 2 else "dimensions", f"{cache.slice_size} px" if study.dims == 2 else "3D patches"),
        ("methods", ", ".join(study.method_names())),
        ("unlabelled data", "training patients' and test patients' images (transductive, as in the diffusion paper)" if study.transductive
         else "training patients' images only (inductive: no test image is used in training)"),
        (unit, ", ".join(str(b) for b in budgets)),
        ("seeds", ", ".join(str(s) for s in study.seeds)),
        ("preset", study.preset + (f"; DDPM preset {study.ddpm.get('preset')}" if ddpm_run else "")),
        ("settings", "; ".join(f"{k}: {' '.join(v)}" for k, v in study.settings.items()) or "presets unchanged"),
        ("machine", f"{platform.platform()}, Python {platform.python_version()}, semiseg {semiseg.__version__}"),
    ]
    setup_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in setup)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>semiseg label-efficiency study</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "td.best{font-weight:bold;background:#eef7ee}img{max-width:100%;margin:0.5em 0}h2{margin-top:1.6em}"
        ".note{color:#555;font-size:13px}</style></head><body>",
        "<h1>Label-efficiency study</h1>",
        f"<p class='note'>Written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by semiseg {semiseg.__version__}. "
        "Scores per test slice (2D) or case (3D), averaged per seed; ± is the standard deviation over seeds. "
        "Regions where prediction and ground truth are both empty are left out of the means.</p>",
        f"<h2>Set-up</h2><table>{setup_html}</table>",
        f"<h2>Dice (higher is better)</h2>{_table(summary, 'dice', 'high')}",
        f"<h2>HD95 in mm (lower is better)</h2>{_table(summary, 'hd95', 'low')}",
        "<p class='note'>HD95 of a region missed entirely, or predicted where there is none, is the image diagonal (worst case).</p>",
        f"<h2>Label efficiency</h2>{_img(curve, 'Dice and HD95 against the number of labels')}",
    ]
    parts += _whole_volume_sections(everything, primary)
    for b, f in overlay_files:
        parts.append(f"<h2>Typical test slices, {b} {unit}</h2>"
                     "<p class='note'>red: necrotic core, green: oedema, yellow: enhancing tumour (class colours for other schemes).</p>"
                     f"{_img(f, f'overlays with {b} labels')}")
    if samples is not None:
        parts.append("<h2>What the DDPM learned</h2><p class='note'>DDIM samples of the shared DDPM, one column per channel.</p>"
                     + _img(samples, "DDPM samples"))
    parts.append("<h2>Files</h2><p><a href='results.csv'>results.csv</a> (every score), "
                 "<a href='summary.csv'>summary.csv</a>, runs/ (one run folder per method, budget and seed).</p></body></html>")
    report = out / "report.html"
    write_text(report, "\n".join(parts))
    return report
