"""``semiseg suggest``: which slices (2D) or cases (3D) to annotate next.

With a trained segmentation run, the not-yet-labelled items of the training patients are ranked by
a strategy of :mod:`semiseg.selection` (uncertainty, diversity, both, or random as the control);
before any run (the first batch), by a diversity-only pick on a DDPM run's features or on the
images' intensities. Writes, into OUT:

* ``suggestions.csv``: every candidate in rank order with its score and the score's parts,
* ``suggestions.png``: the top items with the run's prediction and uncertainty map,
* ``labelled_items.txt``: the ``--labelled-items`` value for the next ``semiseg train``: the items
  labelled so far plus the suggested ones.

Nothing is written before every number is computed, and each file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from semiseg.errors import SemisegInputError
from semiseg.files import atomic_path, check_output, removed_on_failure, write_csv, write_error, write_text
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log, progress_bar
from semiseg.runs.record import RunRecord
from semiseg.selection import COLD_START, SUGGESTION_FIELDS, Choice, choose_next
from semiseg.selection.scoring import item_maps
from semiseg.selection.strategies import check_strategy
from semiseg.studies import figures

#: the strategy used when none is given: with a trained run, and for a first batch
DEFAULT_STRATEGY = {"run": "hybrid", "first": "representative"}
#: items shown in the preview figure
PREVIEW_ITEMS = 8


@dataclass(frozen=True)
class Suggestions:
    """What ``semiseg suggest`` wrote: the ``choice``, the ``cache`` its items refer to, and the files."""

    choice: Choice
    cache: Path
    csv: Path
    figure: Path
    items_file: Path

    @property
    def labelled_items(self) -> str:
        """The one-line ``--labelled-items`` value to train on next."""
        return ",".join(self.choice.next_items)


def resolve_cache(data: Path | None, record: RunRecord | None, out: Path) -> Cache:
    """The cache the items refer to: DATA if it is a cache; the run's cache if DATA is omitted or
    is the dataset that cache was prepared from; else DATA prepared into OUT/cache (with the run's
    slice size and its cache's patient split, so the test patients stay the same)."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import INDEX, build_cache

    if data is None:
        if record is None:
            raise SemisegInputError(None, "give DATA (a cache or dataset folder) when there is no run")
        return Cache(record.cache)
    if (data / INDEX).exists():
        return Cache(data)
    if not data.is_dir():
        raise SemisegInputError(data, "not found (expected a cache from `semiseg prepare` or a dataset folder)")
    run_cache = Cache(record.cache) if record is not None and Path(record.cache).is_dir() else None
    if run_cache is not None and Path(run_cache.index["source"]).resolve() == data.resolve():
        return run_cache
    target = out / "cache"
    if (target / INDEX).exists():
        return Cache(target)
    split = run_cache.index["split"] if run_cache is not None else {"test_fraction": 0.2, "seed": 0}
    size = record.data.slice_size if record is not None else 128
    log(f"[bold]prepare[/] {data} -> {target}")
    return build_cache(discover(data, list(record.data.modalities) if record else None), target, slice_size=size,
                       test_fraction=split["test_fraction"], split_seed=split["seed"])


def _check_fits(cache: Cache, record: RunRecord, run: Path) -> None:
    if list(cache.modalities) != list(record.data.modalities) or cache.slice_size != record.data.slice_size:
        raise SemisegInputError(
            cache.root, f"has channels {', '.join(cache.modalities)} at {cache.slice_size} px but the run {run} was trained on "
            f"{', '.join(record.data.modalities)} at {record.data.slice_size} px")
    missing = [c for c in record.plan.labelled_cases() if c not in cache.cases]
    if missing:
        raise SemisegInputError(cache.root, f"has no case {missing[0]!r}, which the run {run} was trained on; give the run's own cache")


def suggest(
    run: str | PathLike | None,
    data: str | PathLike | None,
    count: int,
    out: str | PathLike,
    *,
    strategy: str | None = None,
    seed: int = 0,
    passes: int = 8,
    candidates: str | None = None,
    dims: int | None = None,
    device: str | None = None,
) -> Suggestions:
    """Suggest ``count`` items to label next and write the files listed in the module docstring.

    Args:
        run: a trained segmentation run, a DDPM run (first batch on its features), or None (first
            batch on intensity features).
        data: a cache, or the dataset folder a cache is prepared from; default the run's cache.
        strategy: see :mod:`semiseg.selection.strategies`; default hybrid with a segmentation run,
            representative for a first batch.
        seed: random draws, k-means and MC dropout.
        passes: Monte Carlo dropout passes for the uncertainty.
        candidates: 2D: ``all`` slices of the training patients that show anatomy, the ``central``
            half of them (the default), or the paper's ``pool``.
        dims: 2 (slices) or 3 (cases) for a first batch; a run's own otherwise.
    """
    from semiseg.runs import load_trained, read_run_record
    from semiseg.training.distributed import pick_device

    out = Path(out)
    check_output(out, "folder")
    record = read_run_record(run) if run is not None else None
    segmentation = record is not None and get_method(record.method).segments
    strategy = check_strategy(strategy or DEFAULT_STRATEGY["run" if segmentation else "first"])
    if not segmentation and strategy not in COLD_START:
        what = "a DDPM run" if record is not None else "no run"
        raise SemisegInputError(None, f"strategy {strategy!r} needs a trained segmentation run, but this is {what}; use one of {', '.join(COLD_START)}")
    cache = resolve_cache(Path(data) if data is not None else None, record, out)
    if segmentation:
        _check_fits(cache, record, Path(run))
        if dims is not None and dims != record.plan.dims:
            raise SemisegInputError(None, f"--dims {dims} does not match the run, which is {record.plan.dims}D")
        dims, labelled, negatives = record.plan.dims, list(record.plan.labelled), list(record.plan.negatives)
    else:
        dims = dims or (2 if "2d" in cache.dims else 3)
        labelled, negatives = [], []
    dims = cache.check_dims(dims, "--dims")
    device = pick_device(0, device)
    method = load_trained(run, device)[0] if segmentation else None
    ddpm_run = Path(run) if record is not None and not segmentation else None
    n_cases = len(cache.ids("train"))
    with progress_bar() as bar:
        task = bar.add_task("score", total=n_cases, info="")
        choice = choose_next(cache, dims, labelled, count, strategy, method=method, ddpm_run=ddpm_run, seed=seed, passes=passes,
                             candidates=candidates, device=device, on_case=lambda: bar.advance(task), negatives=negatives)
    shown = choice.suggested[:PREVIEW_ITEMS]
    maps = item_maps(method, cache, shown, dims, choice.scores.items, passes, seed)
    rows = choice.rows(cache)
    csv_path, figure, items_file = out / "suggestions.csv", out / "suggestions.png", out / "labelled_items.txt"
    with removed_on_failure(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(out, exc) from None
        # all three or none: each goes to a temporary sibling, renamed only when all are written
        with atomic_path(csv_path) as tmp_csv, atomic_path(figure) as tmp_png, atomic_path(items_file) as tmp_txt:
            write_csv(tmp_csv, rows, SUGGESTION_FIELDS)
            preview(shown, maps, rows, tmp_png, f"{strategy}: {choice.scores.features}")
            write_text(tmp_txt, ",".join(choice.next_items) + "\n")
    return Suggestions(choice, cache.root, csv_path, figure, items_file)


def preview(items: list[str], maps: list, rows: list[dict], out: Path, title: str) -> Path:
    """One row per suggested item: the image, the prediction on it and the uncertainty map (the
    last two only with a trained run)."""
    import matplotlib.pyplot as plt

    by_item = {r["item"]: r for r in rows}
    with_run = any(m.prediction is not None for m in maps)
    cols = 3 if with_run else 1
    fig, axes = plt.subplots(len(items), cols, figsize=(2.2 * cols, 2.2 * len(items)), squeeze=False)
    for i, (item, m) in enumerate(zip(items, maps)):
        r = by_item[item]
        where = f"slice {r['input_slice']}" if r["input_slice"] != "" else f"z {m.z}"
        figures.show_image(axes[i, 0], m.image, "image" if i == 0 else "")
        axes[i, 0].text(0.02, 0.98, f"#{r['rank']} {r['case']} {where}", transform=axes[i, 0].transAxes, fontsize=6, color="w", va="top")
        if with_run:
            figures.show_image(axes[i, 1], m.image, "prediction" if i == 0 else "")
            figures.show_labels(axes[i, 1], m.prediction)
            ax = axes[i, 2]
            shown = ax.imshow(np.rot90(m.uncertainty), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title("uncertainty" if i == 0 else "", fontsize=8)
            ax.text(0.02, 0.98, f"score {r['score']}", transform=ax.transAxes, fontsize=6, color="w", va="top")
            if i == 0:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return figures.save(fig, out)
