"""The sweep's test protocols on hand-made predictions: per-slice averages over whole volumes,
false-positive slices, and the largest-component post-processing."""

from types import SimpleNamespace

import numpy as np
import pytest

from semiseg.data.labels import BINARY
from semiseg.studies.holdout import keep_largest_component, primary_protocol, score_all_slices, score_volume


def test_largest_component_keeps_the_biggest_blob_with_its_classes():
    pred = np.zeros((6, 8, 8), np.uint8)
    pred[1:4, 1:5, 1:5] = 1
    pred[2, 2, 2] = 2  # a second class inside the big blob survives
    pred[5, 7, 7] = 1  # an isolated false positive far away goes
    out = keep_largest_component(pred)
    assert out[5, 7, 7] == 0 and out[2, 2, 2] == 2 and (out[1:4, 1:5, 1:5] > 0).all()
    assert keep_largest_component(np.zeros((3, 3, 3), np.uint8)).sum() == 0


def test_all_slices_means_and_false_positive_share():
    cache = SimpleNamespace(scheme=BINARY)
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0, :2, :2] = 1  # slice 0: 4 voxels
    pred = np.zeros_like(gt)
    pred[0, :2, :1] = 1  # slice 0: 2 of 4 found -> Dice 2*2/(2+4)
    pred[2, 3, 3] = 1  # slice 2: lesion-free slice with a false positive -> Dice 0
    rows = {r["metric"]: r["value"] for r in score_all_slices(pred, gt, cache, (1.0, 1.0), "c", "all_slices")}
    assert rows["dice"] == pytest.approx((2 * 2 / 6 + 0.0) / 2)  # slices 1 and 3: both empty, left out
    assert rows["fp_slices"] == pytest.approx(1 / 3)  # one of three lesion-free slices
    vol = {r["metric"]: r["value"] for r in score_volume(pred, gt, cache, (2.0, 1.0, 1.0), "c", "volume")}
    assert vol["dice"] == pytest.approx(2 * 2 / (3 + 4))


def test_primary_protocol():
    assert primary_protocol(2, 7) == "central_slices"
    assert primary_protocol(2, None) == "volume" and primary_protocol(3, 7) == "volume"
