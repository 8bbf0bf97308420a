"""Figures: DDPM sample grids, label-efficiency curves, per-patient Dice, per-slice Dice along a
volume, overlays.

Every figure is written atomically as PNG (for the report) and as PDF and SVG (vector text for
papers) with matplotlib's Agg backend (no display needed). Colours are the Okabe-Ito palette, which
stays distinguishable with the common colour-vision deficiencies; lines also differ by marker, so a
greyscale print still tells methods apart. Fonts are sized for a figure printed at column or page
width (at least 8 points after scaling).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from semiseg.files import atomic_path, check_output  # noqa: E402

#: Okabe & Ito (2008), "Color universal design": black, orange, sky blue, bluish green, vermillion,
#: blue, reddish purple, yellow
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: overlay colours per class index (background transparent): vermillion, sky blue, yellow, then
#: bluish green, reddish purple, blue (BraTS: necrotic core, oedema, enhancing tumour)
CLASS_COLOURS = np.array([(0, 0, 0, 0)] + [to_rgba(c, 0.6) for c in ("#D55E00", "#56B4E9", "#F0E442", "#009E73", "#CC79A7", "#0072B2")])
FORMATS = ("png", "pdf", "svg")
FONT = 10  # points: titles and labels; ticks one smaller

plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT, "legend.fontsize": FONT - 1,
                     "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "svg.fonttype": "none", "pdf.fonttype": 42})


def save(fig: plt.Figure, out: str | PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG at ``out`` and as PDF and SVG beside it (same name), atomically; close it."""
    out = Path(out)
    for fmt in FORMATS:
        with atomic_path(out if fmt == "png" else out.with_suffix(f".{fmt}")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def method_style(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per method, in the given order."""
    return {m: (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}


def show_image(ax: plt.Axes, image: np.ndarray, title: str = "") -> None:
    """Grey image with robust (1-99 percentile) windowing, axes hidden, radiological orientation."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)


def show_labels(ax: plt.Axes, classes: np.ndarray) -> None:
    """Overlay a class-index map with CLASS_COLOURS."""
    ax.imshow(np.rot90(CLASS_COLOURS[np.asarray(classes) % len(CLASS_COLOURS)]), interpolation="nearest")


def class_legend(names: Sequence[str]) -> list[Patch]:
    """Legend patches for the foreground classes ``names`` (class 1 onwards)."""
    return [Patch(facecolor=CLASS_COLOURS[(i + 1) % len(CLASS_COLOURS)][:3], label=n) for i, n in enumerate(names)]


def sample_grid(run: str | PathLike, out: str | PathLike, n: int = 16, steps: int = 50, seed: int = 0, device: str | None = None) -> Path:
    """Generate ``n`` slices from a DDPM run and save a grid: one row per sample, one column per modality."""
    from semiseg.errors import SemisegInputError
    from semiseg.runs import load_trained
    from semiseg.training.distributed import pick_device

    if n < 1 or steps < 1:
        raise SemisegInputError(None, f"--count and --steps must be at least 1, got {n} and {steps}")
    check_output(out, "file")
    method, record = load_trained(run, pick_device(0, device))
    if record.method != "ddpm":
        raise SemisegInputError(run, f"is a {record.method!r} run; sampling needs a DDPM run from `semiseg pretrain`")
    trained = int(record.config["diffusion"]["timesteps"])
    if steps > trained:
        raise SemisegInputError(None, f"--steps {steps} is more than the {trained} timesteps the DDPM was trained with")
    samples = method.sample(n, steps=steps, seed=seed)
    mods = record.data.modalities
    fig, axes = plt.subplots(n, len(mods), figsize=(1.6 * len(mods), 1.6 * n), squeeze=False)
    for i in range(n):
        for c, m in enumerate(mods):
            show_image(axes[i, c], samples[i, c], m if i == 0 else "")
    fig.suptitle(f"{n} DDIM samples ({steps} steps), step {_run_step(run)}")
    return save(fig, out)


def _run_step(run: str | PathLike) -> int:
    from semiseg.training.checkpoint import latest_step

    return latest_step(run) or 0


METRIC_LABELS = {"dice": "Dice", "hd95": "HD95 (mm)", "iou": "IoU", "fp_slices": "false-positive slices"}


def _budget_axis(ax: plt.Axes, budgets: Sequence[int], unit: str) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sorted(budgets))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(unit)


def label_efficiency_plot(
    summary: Sequence[dict], regions: Sequence[str], metrics: Sequence[str], out: str | PathLike, unit: str = "labelled slices",
    reference: Sequence[dict] = (), reference_label: str = "",
) -> Path:
    """Mean metric against label budget, one panel per (metric, region), one line per method with a
    band of +-1 standard deviation over seeds (none with one seed). ``summary`` rows: method,
    budget, region, metric, mean, std, n_seeds. ``reference`` rows (same keys; e.g. the supervised
    method on all labelled data) are drawn as dashed horizontal lines labelled ``reference_label``."""
    methods = sorted({r["method"] for r in summary}, key=lambda m: (m != "supervised", m))
    style = method_style(methods)
    budgets = sorted({r["budget"] for r in summary})
    fig, axes = plt.subplots(len(metrics), len(regions), figsize=(3.4 * len(regions), 2.9 * len(metrics)), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, region in enumerate(regions):
            ax = axes[i, j]
            for method in methods:
                rows = sorted((r for r in summary if r["method"] == method and r["region"] == region and r["metric"] == metric), key=lambda r: r["budget"])
                if not rows:
                    continue
                x = np.array([r["budget"] for r in rows], float)
                y = np.array([r["mean"] for r in rows], float)
                colour, marker = style[method]
                ax.plot(x, y, marker=marker, color=colour, label=method, lw=1.6, ms=5)
                if all(int(r["n_seeds"]) > 1 for r in rows):
                    s = np.array([r["std"] for r in rows], float)
                    ax.fill_between(x, y - s, y + s, color=colour, alpha=0.15, lw=0)
            for r in reference:
                if r["region"] == region and r["metric"] == metric:
                    ax.axhline(r["mean"], color="#555555", ls="--", lw=1.2, label=reference_label)
            _budget_axis(ax, budgets, unit)
            ax.set_title(region)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return save(fig, out)


def patient_plot(
    values: dict[tuple[str, int, str], list[float]], methods: Sequence[str], budgets: Sequence[int], regions: Sequence[str],
    out: str | PathLike, ylabel: str = "Dice per test patient", unit: str = "labelled slices",
) -> Path:
    """Box plot with every patient's value on top (strip), one panel per region, boxes grouped by
    budget, one colour per method. ``values[(method, budget, region)]``: the patients' values."""
    style = method_style(methods)
    fig, axes = plt.subplots(1, len(regions), figsize=(max(3.4, 0.55 * len(methods) * len(budgets) + 1.2) * len(regions), 3.2), squeeze=False)
    jitter = np.random.default_rng(0)
    width = 0.8 / max(len(methods), 1)
    for j, region in enumerate(regions):
        ax = axes[0, j]
        for bi, b in enumerate(budgets):
            for mi, m in enumerate(methods):
                v = np.asarray([x for x in values.get((m, b, region), []) if np.isfinite(x)], float)
                if not len(v):
                    continue
                pos = bi + (mi - (len(methods) - 1) / 2) * width
                colour, marker = style[m]
                ax.boxplot(v, positions=[pos], widths=width * 0.8, showfliers=False, patch_artist=True,
                           boxprops={"facecolor": to_rgba(colour, 0.25), "edgecolor": colour}, medianprops={"color": colour},
                           whiskerprops={"color": colour}, capprops={"color": colour})
                ax.scatter(pos + jitter.uniform(-width * 0.25, width * 0.25, len(v)), v, s=12, color=colour, marker=marker,
                           edgecolors="none", alpha=0.85, zorder=3, label=m if bi == 0 else None)
        ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
        ax.set_xlim(-0.6, len(budgets) - 0.4)
        ax.set_xlabel(unit)
        ax.set_ylabel(ylabel)
        ax.set_title(region)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False, bbox_to_anchor=(0.5, 1.0), markerscale=2)
    fig.tight_layout()
    return save(fig, out)


def slice_dice_plot(
    slices: Sequence[int], dice: dict[str, Sequence[float]], annotated: Sequence[int], out: str | PathLike, title: str = ""
) -> Path:
    """Per-slice Dice along a volume, one line per region, annotated slices marked."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, (region, values) in enumerate(dice.items()):
        ax.plot(slices, values, marker=MARKERS[k % len(MARKERS)], color=OKABE_ITO[(k + 1) % len(OKABE_ITO)], label=region, lw=1.2, ms=3)
    for i, z in enumerate(annotated):
        ax.axvline(z, color="k", ls="--", lw=0.8, label="annotated slice" if i == 0 else None)
    ax.set_xlabel("axial slice index (input volume)")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, out)


def overlay_grid(rows: Sequence[dict], columns: Sequence[str], out: str | PathLike, class_names: Sequence[str] = (), caption: str = "") -> Path:
    """Rows of (image, ground truth, each method's prediction) overlays. Each row dict holds
    ``image`` (2D), ``title`` (shown left of the row) and one class map per column name;
    ``class_names`` (foreground classes) make a legend, ``caption`` is printed under the grid."""
    size = 1.7
    fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(size * (len(columns) + 1), size * len(rows) + 0.9), squeeze=False)
    for i, row in enumerate(rows):
        show_image(axes[i, 0], row["image"], "image" if i == 0 else "")
        axes[i, 0].set_ylabel(row.get("title", ""), fontsize=FONT)
        for j, col in enumerate(columns):
            ax = axes[i, j + 1]
            show_image(ax, row["image"], col if i == 0 else "")
            show_labels(ax, row[col])
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    if class_names:
        fig.legend(handles=class_legend(class_names), loc="lower center", ncol=len(class_names), frameon=False, bbox_to_anchor=(0.5, 1.0))
    if caption:
        fig.text(0.01, 0.0, caption, fontsize=FONT - 1, va="bottom", ha="left", wrap=True)
    return save(fig, out)
