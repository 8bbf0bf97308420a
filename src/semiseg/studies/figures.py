"""Figures: DDPM sample grids, label-efficiency curves, per-slice Dice along a volume, overlays.

All figures are written atomically as PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semiseg.files import atomic_path  # noqa: E402

#: overlay colours per class index (background transparent): red, green, yellow, then cycling
CLASS_COLOURS = np.array([[0, 0, 0, 0], [0.90, 0.20, 0.20, 0.55], [0.20, 0.80, 0.30, 0.45], [1.00, 0.85, 0.10, 0.65],
                          [0.20, 0.50, 1.00, 0.55], [0.80, 0.30, 0.90, 0.55]])


def save(fig: plt.Figure, out: str | PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG at ``out`` atomically and close it."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(out)


def show_image(ax: plt.Axes, image: np.ndarray, title: str = "") -> None:
    """Grey image with robust (1-99 percentile) windowing, axes hidden, radiological orientation."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def show_labels(ax: plt.Axes, classes: np.ndarray) -> None:
    """Overlay a class-index map with CLASS_COLOURS."""
    ax.imshow(np.rot90(CLASS_COLOURS[np.asarray(classes) % len(CLASS_COLOURS)]), interpolation="nearest")


def sample_grid(run: str | PathLike, out: str | PathLike, n: int = 16, steps: int = 50, seed: int = 0, device: str | None = None) -> Path:
    """Generate ``n`` slices from a DDPM run and save a grid: one row per sample, one column per modality."""
    from semiseg.errors import SemisegInputError
    from semiseg.runs import load_trained
    from semiseg.training.distributed import pick_device

    if n < 1 or steps < 1:
        raise SemisegInputError(None, f"--n and --steps must be at least 1, got {n} and {steps}")
    method, record = load_trained(run, pick_device(0, device))
    if record.method != "ddpm":
        raise SemisegInputError(run, f"is a {record.method!r} run; sampling needs a DDPM run from `semiseg pretrain`")
    samples = method.sample(n, steps=steps, seed=seed)
    mods = record.data.modalities
    fig, axes = plt.subplots(n, len(mods), figsize=(1.6 * len(mods), 1.6 * n), squeeze=False)
    for i in range(n):
        for c, m in enumerate(mods):
            show_image(axes[i, c], samples[i, c], m if i == 0 else "")
    fig.suptitle(f"{n} DDIM samples ({steps} steps), step {_run_step(run)}", fontsize=9)
    return save(fig, out)


def _run_step(run: str | PathLike) -> int:
    from semiseg.training.checkpoint import latest_step

    return latest_step(run) or 0


def label_efficiency_plot(
    summary: Sequence[dict], regions: Sequence[str], metrics: Sequence[str], out: str | PathLike, unit: str = "labelled slices"
) -> Path:
    """Mean metric against label budget, one panel per (metric, region), one line per method,
    a band of +-1 standard deviation over seeds. ``summary`` rows: method, budget, region, metric, mean, std."""
    methods = sorted({r["method"] for r in summary}, key=lambda m: (m != "supervised", m))
    fig, axes = plt.subplots(len(metrics), len(regions), figsize=(3.6 * len(regions), 3.0 * len(metrics)), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, region in enumerate(regions):
            ax = axes[i, j]
            for k, method in enumerate(methods):
                rows = sorted((r for r in summary if r["method"] == method and r["region"] == region and r["metric"] == metric), key=lambda r: r["budget"])
                if not rows:
                    continue
                x = np.array([r["budget"] for r in rows], float)
                y = np.array([r["mean"] for r in rows], float)
                s = np.nan_to_num(np.array([r["std"] for r in rows], float))
                colour = plt.cm.tab10(k % 10)
                ax.plot(x, y, "o-", color=colour, label=method, lw=1.6, ms=4)
                ax.fill_between(x, y - s, y + s, color=colour, alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_xticks(sorted({r["budget"] for r in summary}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{region}", fontsize=10)
            ax.set_xlabel(unit)
            ax.set_ylabel({"dice": "Dice", "hd95": "HD95 (mm)", "iou": "IoU"}.get(metric, metric))
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, out)


def slice_dice_plot(
    slices: Sequence[int], dice: dict[str, Sequence[float]], annotated: Sequence[int], out: str | PathLike, title: str = ""
) -> Path:
    """Per-slice Dice along a volume, one line per region, annotated slices marked."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for region, values in dice.items():
        ax.plot(slices, values, ".-", label=region, lw=1.2, ms=3)
    for i, z in enumerate(annotated):
        ax.axvline(z, color="k", ls="--", lw=0.8, label="annotated slice" if i == 0 else None)
    ax.set_xlabel("axial slice index (input volume)")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, out)


def overlay_grid(rows: Sequence[dict], columns: Sequence[str], out: str | PathLike) -> Path:
    """Rows of (image, ground truth, each method's prediction) overlays. Each row dict holds
    ``image`` (2D), ``title`` and one class map per column name."""
    fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(1.9 * (len(columns) + 1), 1.9 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        show_image(axes[i, 0], row["image"], "image" if i == 0 else "")
        axes[i, 0].text(0.02, 0.98, row.get("title", ""), transform=axes[i, 0].transAxes, fontsize=6, color="w", va="top")
        for j, col in enumerate(columns):
            ax = axes[i, j + 1]
            show_image(ax, row["image"], col if i == 0 else "")
            show_labels(ax, row[col])
    fig.tight_layout()
    return save(fig, out)
