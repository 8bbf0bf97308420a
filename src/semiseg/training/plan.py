"""Which data a training run uses: its labelled items (slices ``"case:z"`` in 2D, case ids in 3D)
and its unlabelled cases, chosen from the cache's training patients only."""

from __future__ import annotations

from typing import Any

from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.preprocess.splits import choose_subset, slice_pool
from semiseg.training.batches import parse_slice_item


def labelled_pool(cache: Cache, dims: int) -> list[str]:
    """Candidates for labelling: the paper's central-slice pool of every training patient (2D),
    or the training patients themselves (3D)."""
    train = cache.ids("train")
    if dims == 3:
        return train
    return [f"{cid}:{z}" for cid in train for z in slice_pool(cache.cases[cid].n_slices)]


def _check_items(cache: Cache, items: list[str], dims: int) -> list[str]:
    out = []
    for item in items:
        case_id, z = parse_slice_item(item) if dims == 2 else (item, None)
        if case_id not in cache.cases:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: no case {case_id!r} in the cache")
        entry = cache.cases[case_id]
        if not entry.labelled:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: case {case_id!r} has no annotation")
        if entry.role == "test":
            raise SemisegInputError(cache.root, f"labelled item {item!r}: case {case_id!r} is in the test split")
        if z is not None and not 0 <= z < entry.n_slices:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: slice {z} outside 0..{entry.n_slices - 1}")
        out.append(item if dims == 2 else case_id)
    return out


def make_plan(
    cache: Cache,
    dims: int,
    labeled: int | None = None,
    seed: int = 0,
    labeled_items: list[str] | None = None,
    all_cases: bool = False,
) -> dict[str, Any]:
    """Choose a run's data.

    Args:
        cache: the prepared data.
        dims: 2 (slices) or 3 (patches).
        labeled: number of labelled items drawn from :func:`labelled_pool` with ``seed``.
        labeled_items: explicit items instead (``"case:z"`` cached slice numbers in 2D, case ids in 3D).
        all_cases: DDPM pretraining: every case is "unlabelled" data, test patients included.

    Returns:
        ``{"dims", "labelled", "unlabelled_cases", "test"}``.
    """
    test = cache.ids("test")
    if all_cases:
        return {"dims": dims, "labelled": [], "unlabelled_cases": cache.ids(), "test": test}
    if labeled_items:
        labelled = _check_items(cache, labeled_items, dims)
    else:
        if labeled is None:
            raise SemisegInputError(None, "give the number of labelled items (--labeled N) or an explicit list")
        pool = labelled_pool(cache, dims)
        labelled = choose_subset(pool, labeled, seed, "labelled slices" if dims == 2 else "labelled cases")
    train_and_unlabelled = cache.ids("train") + cache.ids("unlabelled")
    if dims == 3:
        unlabelled = [c for c in train_and_unlabelled if c not in set(labelled)]
    else:
        unlabelled = train_and_unlabelled
    return {"dims": dims, "labelled": labelled, "unlabelled_cases": unlabelled, "test": test}
