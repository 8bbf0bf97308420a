"""The selection strategies on constructed inputs, where the right answer is known."""

import math

import numpy as np
import pytest
import torch

from semiseg.errors import SemisegInputError
from semiseg.selection.scoring import foreground_mean
from semiseg.selection.strategies import select
from semiseg.training.losses import entropy


def clusters(sizes=(10, 10, 10), centres=((0, 0), (10, 0), (0, 10)), spread=0.3, seed=0):
    """Points in tight clusters; returns (points, cluster of each point)."""
    rng = np.random.default_rng(seed)
    pts = np.concatenate([np.asarray(c, float) + rng.normal(0, spread, (n, 2)) for n, c in zip(sizes, centres)])
    return pts, np.repeat(np.arange(len(sizes)), sizes)


def test_kcenter_picks_the_far_apart_embeddings():
    pts, cluster = clusters()
    labelled = np.array([[0.0, 0.0]])  # cluster 0 is covered already
    sel = select("diversity", 2, embeddings=pts, labelled=labelled)
    assert sorted(cluster[sel.picks]) == [1, 2]
    # the distance recorded for each pick (to the nearest labelled or earlier pick) is large; what is
    # left after the picks is close to one of them
    rest_max = np.max(sel.distance[sel.order[2:]])
    assert min(sel.distance[sel.picks]) > 5 * rest_max
    # and the rest rank by their remaining distance, which is now small everywhere
    rest = sel.order[2:]
    assert np.all(np.diff(sel.score[rest]) <= 1e-12)


def test_kcenter_without_labels_starts_from_the_most_typical_item():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.4], [9.0, 9.0]])
    sel = select("diversity", 2, embeddings=pts)
    # the item nearest the (standardised) mean first, then the outlier farthest from it
    assert sel.picks[1] == 4
    assert math.isnan(sel.distance[sel.picks[0]])


def hand_made_item(fg_prob: float, fg_pixels: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Binary probabilities (2, S, S): ``fg_pixels`` pixels with P(foreground) = fg_prob, the rest
    certain background; and their normalised entropy map."""
    p_fg = np.zeros((size, size))
    p_fg.flat[:fg_pixels] = fg_prob
    probs = np.stack([1 - p_fg, p_fg]).astype(np.float32)
    return probs, entropy(torch.from_numpy(probs)[None])[0].numpy()


def test_uncertainty_ranking_follows_a_hand_made_entropy_map():
    # P(fg) 0.55 is nearly a coin flip, 0.95 is confident, 0.0 predicts nothing
    items = [hand_made_item(0.95, 20), hand_made_item(0.55, 5), hand_made_item(0.0, 0), hand_made_item(0.75, 12)]
    scores = np.array([foreground_mean(p, u) for p, u in items])
    expected = [-(q * math.log(q) + (1 - q) * math.log(1 - q)) / math.log(2) for q in (0.95, 0.55)]
    assert scores[0] == pytest.approx(expected[0], rel=1e-5) and scores[1] == pytest.approx(expected[1], rel=1e-5)
    assert scores[2] == 0.0  # nothing predicted: nothing to be unsure about
    sel = select("uncertainty", 2, uncertainty=scores)
    assert sel.picks == [1, 3] and list(sel.order) == [1, 3, 0, 2]


def test_foreground_is_any_foreground_class_together():
    # three classes: background 0.4 and two tumour classes 0.3 each: argmax is background, but the
    # voxel is foreground with probability 0.6, so it counts
    probs = np.array([[[0.4]], [[0.3]], [[0.3]]], np.float32)
    unc = np.array([[0.9]], np.float32)
    assert foreground_mean(probs, unc) == pytest.approx(0.9)


def test_hybrid_trades_uncertainty_against_redundancy():
    pts = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.001, 5.0], [-5.0, 5.0]])
    unc = np.array([0.9, 0.9, 0.5, 0.5, 0.0])
    labelled = np.array([[0.05, 0.0]])
    sel = select("hybrid", 2, uncertainty=unc, embeddings=pts, labelled=labelled)
    # the most uncertain items sit next to a labelled one, so the far, fairly uncertain pair comes
    # first; but only one of it (its twin is redundant after the first); the certain outlier never
    assert sel.picks[0] in (2, 3) and sel.picks[1] in (0, 1)
    assert list(sel.order).index(4) == 4
    for i in sel.picks:
        assert sel.score[i] == pytest.approx(sel.uncertainty[i] * sel.distance[i], rel=1e-4)


def test_representative_takes_the_centre_of_each_uncovered_cluster():
    pts, cluster = clusters(sizes=(30, 12, 8))
    sel = select("representative", 3, embeddings=pts, seed=0)
    assert sorted(cluster[sel.picks]) == [0, 1, 2]
    assert list(cluster[sel.picks]) == [0, 1, 2]  # largest group first
    for i in sel.picks:
        members = np.flatnonzero(cluster == cluster[i])
        centre = pts[members].mean(0)
        assert np.linalg.norm(pts[i] - centre) <= np.sort(np.linalg.norm(pts[members] - centre, axis=1))[2]
    covered = select("representative", 2, embeddings=pts, labelled=pts[:1] + 0.01, seed=0)
    assert sorted(cluster[covered.picks]) == [1, 2]  # the largest group already has a label


def test_random_is_seeded_and_distinct():
    a, b = select("random", 5, size=40, seed=3), select("random", 5, size=40, seed=3)
    assert a.picks == b.picks and len(set(a.picks)) == 5
    assert select("random", 5, size=40, seed=4).picks != a.picks


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "entropy", "count": 1, "size": 3}, "unknown selection strategy 'entropy'"),
    ({"strategy": "random", "count": 4, "size": 3}, "cannot pick 4 items from 3 candidates"),
])
def test_bad_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(SemisegInputError, match=message):
        select(**kwargs)
