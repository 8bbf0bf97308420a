"""Choose the next items to label: candidates, their scores and a strategy, in one call shared by
``semiseg suggest`` and active-learning studies."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method
from semiseg.preprocess.cache import Cache
from semiseg.selection.scoring import ItemScores, candidate_items, ddpm_features, default_candidates, intensity_features, score_with_run
from semiseg.selection.strategies import STRATEGIES, Selection, check_strategy, select
from semiseg.training.plan import parse_slice

SUGGESTION_FIELDS = ["rank", "item", "case", "input_slice", "suggested", "score", "uncertainty", "distance"]


@dataclass(frozen=True)
class Choice:
    """The outcome of a selection: the ``labelled`` items before it, every candidate's numbers and
    the strategy's ranking of them."""

    strategy: str
    dims: int
    labelled: list[str]
    scores: ItemScores
    selection: Selection

    @property
    def suggested(self) -> list[str]:
        return [self.scores.items[i] for i in self.selection.picks]

    @property
    def next_items(self) -> list[str]:
        """The labelled items to train on next: those labelled so far and the suggested ones."""
        return list(self.labelled) + self.suggested

    def rows(self, cache: Cache) -> list[dict]:
        """One row per candidate in rank order (:data:`SUGGESTION_FIELDS`); ``input_slice`` is the
        slice's index in the patient's original image (what an annotator opens), ``suggested``
        marks the picks."""
        sel = self.selection

        def num(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        out = []
        for rank, i in enumerate(sel.order, start=1):
            item = self.scores.items[i]
            case, z = parse_slice(item) if self.dims == 2 else (item, None)
            out.append({
                "rank": rank, "item": item, "case": case,
                "input_slice": "" if z is None else cache.cases[case].geometry.input_slice(z),
                "suggested": "yes" if rank <= sel.count else "",
                "score": num(sel.score[i]), "uncertainty": num(sel.uncertainty[i]), "distance": num(sel.distance[i]),
            })
        return out


def choose_next(
    cache: Cache,
    dims: int,
    labelled: Sequence[str],
    count: int,
    strategy: str,
    *,
    method: Method | None = None,
    ddpm_run: Path | None = None,
    seed: int = 0,
    passes: int = 8,
    candidates: str | None = None,
    device: str | torch.device = "cpu",
    on_case: Callable[[], None] | None = None,
    negatives: Sequence[str] = (),
) -> Choice:
    """Pick ``count`` new items to label in ``cache``'s training patients.

    With a trained segmentation ``method``, candidates are scored by its uncertainty and
    embeddings; without one (the first batch) only embedding-based or random strategies apply, on
    the decoder features of ``ddpm_run`` when given (2D), else on intensity features.
    ``candidates`` (see :func:`candidate_items`): default ``central`` in 2D, ``all`` in 3D.
    ``negatives``: lesion-free slices labelled as such (no candidates, no part of the next set).
    """
    check_strategy(strategy, cold=method is None)
    if passes < 1:
        raise SemisegInputError(None, f"MC dropout passes must be at least 1, got {passes}")
    items = candidate_items(cache, dims, list(labelled) + list(negatives), candidates or default_candidates(dims))
    if count > len(items):
        what = "slices" if dims == 2 else "cases"
        raise SemisegInputError(cache.root, f"asked for {count} items but only {len(items)} unlabelled {what} of training patients are left")
    if count < 1:
        raise SemisegInputError(None, f"the number of items to suggest must be at least 1, got {count}")
    needs = STRATEGIES[strategy]
    if method is not None and needs:
        if method.dims != dims:
            raise ValueError(f"a {method.dims}D method cannot score {dims}D items")
        scores = score_with_run(method, cache, items, labelled, passes, seed, on_case)
    elif needs:
        if ddpm_run is not None and dims != 2:
            raise SemisegInputError(ddpm_run, "DDPM features are per slice; a 3D first batch uses intensity features (give no DDPM run)")
        if ddpm_run is not None:
            emb, lab = ddpm_features(ddpm_run, cache, items, device), ddpm_features(ddpm_run, cache, labelled, device) if labelled else None
            source = f"DDPM decoder features ({ddpm_run})"
        else:
            emb, lab = intensity_features(cache, items, dims), intensity_features(cache, labelled, dims) if labelled else None
            source = "intensity features"
        scores = ItemScores(items, None, emb, lab if lab is not None else np.zeros((0, emb.shape[1])), source)
    else:
        scores = ItemScores(items, None, None, None, "none (random)")
    selection = select(strategy, count, size=len(items), uncertainty=scores.uncertainty, embeddings=scores.embeddings, labelled=scores.labelled, seed=seed)
    return Choice(strategy, dims, list(labelled), scores, selection)
