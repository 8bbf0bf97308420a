"""Strategies that choose which items to label next, on plain arrays.

Every strategy ranks candidates from per-candidate numbers computed elsewhere
(:mod:`semiseg.selection.scoring`): an ``uncertainty`` score (higher: the model is less sure of the
item) and an ``embedding`` (similar items lie close together), plus the embeddings of the items
already labelled. They return a :class:`Selection`: the first ``count`` picks, then the remaining
candidates in the order the strategy would continue, with the parts of each item's score.

* ``random``: uniform draw, the control every guided strategy must beat.
* ``uncertainty``: the most uncertain items first (uncertainty sampling; for segmentation the mean
  predictive entropy, with Monte Carlo dropout as in Gal, Islam & Ghahramani, "Deep Bayesian active
  learning with image data", ICML 2017).
* ``diversity``: k-center greedy on the embeddings, the core-set approach of Sener & Savarese,
  "Active learning for convolutional neural networks: a core-set approach", ICLR 2018: each pick is
  the item farthest from everything labelled or picked so far, so the labelled set covers the data.
* ``hybrid``: uncertainty-weighted k-center: each pick maximises uncertainty x distance to the
  nearest labelled or picked item, so a pick is both uncertain and unlike what is labelled. This is
  the trade-off BADGE makes implicitly (Ash et al., "Deep batch active learning by diverse, uncertain
  gradient lower bounds", ICLR 2020: its gradient embeddings grow with uncertainty, and its
  k-means++ seeding favours far-away points), and what Yang et al. combine for biomedical
  segmentation ("Suggestive annotation", MICCAI 2017) in two stages.
* ``representative``: k-means on the embeddings and, per cluster without a labelled item, the item
  nearest the centroid: Zheng et al., "Biomedical image segmentation via representative
  annotation", AAAI 2019, which picks the first images to annotate this way. With very few labels,
  typical items teach more than the outliers k-center favours (Hacohen, Dekel & Weinshall, "Active
  learning on a budget", ICML 2022), so this is the default first batch, when no model exists yet.
  Its score is 1 / (1 + distance to the nearest centroid): 1 for an item at a centroid.

Neither PyTorch nor SciPy ships k-center greedy and the active-learning packages that do pull in
a second ML stack (scikit-learn), so the greedy loop is written here; k-means is SciPy's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import cdist

from semiseg.errors import SemisegInputError

#: strategy -> what it needs: "uncertainty" (a trained segmentation run), "embedding", or nothing
STRATEGIES: dict[str, tuple[str, ...]] = {
    "random": (),
    "uncertainty": ("uncertainty",),
    "diversity": ("embedding",),
    "hybrid": ("uncertainty", "embedding"),
    "representative": ("embedding",),
}
#: strategies that work without a trained segmentation run (the first batch)
COLD_START = tuple(name for name, needs in STRATEGIES.items() if "uncertainty" not in needs)


@dataclass(frozen=True)
class Selection:
    """A strategy's ranking of ``n`` candidates.

    ``order``: candidate indices, the ``count`` picks first (in pick order), then the rest as the
    strategy would continue. Per candidate (indexed like the inputs): ``score`` (what the strategy
    maximised when it ranked the item), ``uncertainty`` and ``distance`` (to the nearest labelled or
    earlier-picked item in embedding space, at the time the item was ranked); NaN where unused.
    """

    strategy: str
    count: int
    order: np.ndarray
    score: np.ndarray
    uncertainty: np.ndarray
    distance: np.ndarray

    @property
    def picks(self) -> list[int]:
        return [int(i) for i in self.order[: self.count]]


def check_strategy(strategy: str, cold: bool = False) -> str:
    """``strategy`` if known (and usable without a trained run when ``cold``); else a one-line error."""
    if strategy not in STRATEGIES:
        raise SemisegInputError(None, f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if cold and strategy not in COLD_START:
        raise SemisegInputError(
            None, f"strategy {strategy!r} needs a trained segmentation run's uncertainty; for a first batch use {', '.join(COLD_START)}"
        )
    return strategy


def standardise(features: np.ndarray) -> np.ndarray:
    """Centre each feature and scale it to unit variance over the candidates (constant features
    become 0), so no feature dominates distances by its units alone."""
    features = np.asarray(features, np.float64)
    std = features.std(0)
    return (features - features.mean(0)) / np.where(std > 1e-8, std, np.inf)


def _greedy(weight: np.ndarray, emb: np.ndarray, centres: np.ndarray, count: int, first: int | None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy picks maximising weight x distance to the nearest centre; returns (picks, distance of
    each candidate when ranked, final distance). ``first`` is picked first when there is no centre."""
    n = len(emb)
    nearest = cdist(emb, centres).min(1) if len(centres) else np.full(n, np.inf)
    at_pick = np.full(n, np.nan)
    picks: list[int] = []
    taken = np.zeros(n, bool)
    for _ in range(count):
        if not np.isfinite(nearest).any():
            i = int(first if first is not None else 0)
        else:
            gain = np.where(taken, -np.inf, weight * np.where(np.isfinite(nearest), nearest, 0.0))
            i = int(np.argmax(gain))
        at_pick[i] = nearest[i] if np.isfinite(nearest[i]) else np.nan
        picks.append(i)
        taken[i] = True
        nearest = np.minimum(nearest, np.linalg.norm(emb - emb[i], axis=1))
    return picks, at_pick, nearest


def _rest(picks: list[int], key: np.ndarray, tie: np.ndarray | None = None) -> list[int]:
    """Indices not picked, by ``key`` descending, ties by ``tie`` (default: index)."""
    chosen = set(picks)
    rest = [i for i in range(len(key)) if i not in chosen]
    tie = np.arange(len(key)) if tie is None else tie
    return sorted(rest, key=lambda i: (-np.nan_to_num(key[i], nan=-np.inf), tie[i]))


def select(
    strategy: str,
    count: int,
    *,
    size: int | None = None,
    uncertainty: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
    seed: int = 0,
) -> Selection:
    """Rank candidates with ``strategy`` and pick ``count`` of them.

    Args:
        strategy: one of :data:`STRATEGIES`.
        count: how many to pick (at most the number of candidates).
        size: the number of candidates (else the length of ``uncertainty`` or ``embeddings``).
        uncertainty: (n,) per-candidate uncertainty scores (uncertainty, hybrid).
        embeddings: (n, d) candidate embeddings (diversity, hybrid, representative).
        labelled: (m, d) embeddings of the items already labelled (may be empty).
        seed: random draws (random) and k-means initialisation (representative).
    """
    check_strategy(strategy)
    needs = STRATEGIES[strategy]
    if "uncertainty" in needs and uncertainty is None:
        raise ValueError(f"strategy {strategy!r} needs uncertainty scores")
    if "embedding" in needs and embeddings is None:
        raise ValueError(f"strategy {strategy!r} needs embeddings")
    n = size if size is not None else len(uncertainty) if uncertainty is not None else len(embeddings) if embeddings is not None else None
    if n is None:
        raise ValueError("give the number of candidates, uncertainty scores or embeddings")
    if not 1 <= count <= n:
        raise SemisegInputError(None, f"cannot pick {count} items from {n} candidates")
    unc = np.full(n, np.nan) if uncertainty is None else np.asarray(uncertainty, np.float64)
    dist = np.full(n, np.nan)
    score = np.full(n, np.nan)

    if "embedding" in needs:
        d = embeddings.shape[1]
        known = np.zeros((0, d)) if labelled is None else np.asarray(labelled).reshape(-1, d)
        both = standardise(np.concatenate([np.asarray(embeddings).reshape(n, d), known]))
        emb, centres = both[:n], both[n:]

    if strategy == "random":
        order = np.random.default_rng(seed).permutation(n)
    elif strategy == "uncertainty":
        score = unc.copy()
        # ties (typically the many items with no predicted foreground, all 0) in seeded random order
        order = np.array(_rest([], score, np.random.default_rng(seed).permutation(n)))
    elif strategy in ("diversity", "hybrid"):
        # hybrid: a tiny floor keeps the ranking by distance among items the model is certain of
        # (when it predicts no foreground anywhere, every uncertainty is 0)
        weight = np.ones(n) if strategy == "diversity" else np.clip(np.nan_to_num(unc), 0.0, None) + 1e-6
        # with nothing labelled, start from the most typical item (nearest the mean), not an outlier
        typical = int(np.argmin(np.linalg.norm(emb, axis=1) / np.maximum(weight, 1e-12))) if not len(centres) else None
        picks, at_pick, final = _greedy(weight, emb, centres, count, typical)
        dist = final.copy()
        dist[picks] = at_pick[picks]  # NaN for a first pick made with nothing labelled
        score = dist * weight
        order = np.array(picks + _rest(picks, score))
    else:  # representative
        picks, centroids = _representatives(emb, centres, count, seed)
        # distance to the nearest k-means centroid: small for typical items, which rank first
        dist = cdist(emb, centroids).min(1)
        score = 1.0 / (1.0 + dist)
        order = np.array(picks + _rest(picks, score))
    return Selection(strategy, count, order.astype(int), score, unc, dist)


def _representatives(emb: np.ndarray, centres: np.ndarray, count: int, seed: int) -> tuple[list[int], np.ndarray]:
    """k-means with ``count`` + labelled clusters (SciPy, k-means++ initialisation); in each
    cluster that holds no labelled item, the candidate nearest its centroid, largest clusters first.
    Returns (picks, centroids)."""
    k = min(count + len(centres), len(emb) + len(centres))
    data = np.concatenate([emb, centres]) if len(centres) else emb
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster only means fewer useful centroids
        centroids, assign = kmeans2(data, k, minit="++", seed=seed)
    covered = set(assign[len(emb):].tolist())
    sizes = np.bincount(assign[: len(emb)], minlength=k)
    picks: list[int] = []
    for c in sorted(range(k), key=lambda c: (-sizes[c], c)):
        if c in covered or sizes[c] == 0:
            continue
        members = np.flatnonzero(assign[: len(emb)] == c)
        picks.append(int(members[np.argmin(np.linalg.norm(emb[members] - centroids[c], axis=1))]))
        if len(picks) == count:
            return picks, centroids
    # fewer useful clusters than picks (duplicates, or clusters shared with labelled items): fill
    # by k-center greedy from everything chosen so far
    more, _, _ = _greedy(np.ones(len(emb)), emb, np.concatenate([centres, emb[picks]]) if picks else centres, count - len(picks), 0)
    picks += [i for i in dict.fromkeys(more) if i not in picks]
    picks += [i for i in range(len(emb)) if i not in picks]  # identical embeddings: any order will do
    return picks[:count], centroids

