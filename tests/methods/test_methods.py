"""Every method trains a few steps on the tiny cache, in 2D and (where it applies) 3D, with its
batches built by DataLoader worker processes, and its predictions are probability maps of the
right shape."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, TINY_NET, data_info
from semiseg.inference.predict import predict_slices, predict_volume
from semiseg.preprocess.cache import Cache
from semiseg.runs import load_trained, train
from semiseg.training.log import read_log

CASES = [
    ("supervised", 2, TINY_NET),
    ("supervised", 3, TINY_NET),
    ("mean-teacher", 2, TINY_NET),
    ("embedmatch", 2, TINY_NET + ["teacher.warmup=0.25", "teacher.start_dice=0", "train.batch_size=2"]),
    ("embedmatch", 3, TINY_NET + ["teacher.warmup=0.25", "teacher.start_dice=0", "uncertainty.passes=2"]),
    ("ddpm-finetune", 2, []),
    ("ddpm-pixel", 2, ["ensemble=2", "blocks=[0,1]", "pixels_per_step=256"]),
]


@pytest.mark.parametrize("method,dims,extra", CASES, ids=[f"{m}-{d}d" for m, d, _ in CASES])
def test_method_trains_and_predicts(method, dims, extra, tiny_cache: Path, tiny_ddpm: Path, tmp_path: Path):
    run = tmp_path / "run"
    labeled = 2 if dims == 3 else 3
    train(tiny_cache, method, run, preset="small", n_labelled=labeled, seed=1, ddpm_run=tiny_ddpm,
          overrides=TINY + extra + [f"dims={dims}", "train.workers=2"])  # batches from DataLoader workers
    rows = read_log(run / "train_log.csv")
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert (run / "loss_curve.png").exists()
    model, record = load_trained(run)
    assert record.plan.dims == dims and len(record.plan.labelled) == labeled
    cache = Cache(tiny_cache)
    cid = cache.ids("test")[0]
    if dims == 2:
        probs, unc = predict_slices(model, np.asarray(cache.slices(cid)))
        assert probs.shape == (cache.cases[cid].n_slices, 4, 32, 32)
    else:
        probs, unc = predict_volume(model, np.asarray(cache.volume(cid)))
        assert probs.shape == (4, *cache.volume(cid).shape[1:])
    assert np.allclose(probs.sum(axis=1 if dims == 2 else 0), 1.0, atol=1e-4)
    assert unc.min() >= 0 and unc.max() <= 1.0 + 1e-5


def test_embedmatch_diagnostics_measured_against_ground_truth(tiny_cache: Path, tmp_path: Path):
    run = tmp_path / "em"
    train(tiny_cache, "embedmatch", run, preset="small", n_labelled=3, seed=0,
          overrides=TINY + TINY_NET + ["dims=2", "train.steps=6", "teacher.warmup=0.34", "teacher.start_dice=0", "uncertainty.threshold=0.3"])
    rows = read_log(run / "diagnostics.csv")
    assert rows, "diagnostics.csv has no rows"
    last = rows[-1]
    assert 0.0 <= last["reliable"] <= 1.0 and 0.0 <= last["matched"] <= 1.0
    assert abs(last["reliable"] + last["matched"] - 1.0) < 1e-6  # the bank is full, so every voxel gets a label
    # the unlabelled slices come from annotated training patients: accuracies are measured, not NaN
    assert np.isfinite(last["acc_teacher"])
    assert last["pseudo_from"] == 2  # start_dice 0: right after the 2-step warm-up


def test_embedmatch_says_when_its_teacher_never_fitted(tiny_cache: Path, tmp_path: Path):
    run = tmp_path / "em"
    train(tiny_cache, "embedmatch", run, preset="small", n_labelled=3, seed=0,
          overrides=TINY + TINY_NET + ["dims=2", "teacher.warmup=0.25", "teacher.start_dice=1.01"])
    rows = read_log(run / "diagnostics.csv")
    assert len(rows) == 1 and rows[0]["step"] == 4 and rows[0]["pseudo_from"] == -1 and np.isnan(rows[0]["reliable"])
    assert 0.0 <= rows[0]["teacher_fit"] <= 1.0


def test_bank_matching_picks_nearest_class():
    from semiseg.config import load_config
    from semiseg.methods.embedmatch import EmbedMatch

    tiny = ["network.features=[8,8,8,8,8,4]", "matching.bank_per_class=8", "matching.k=3", "matching.chunk=2"]
    cfg = load_config(EmbedMatch.config_files, "small", overrides=tiny)
    m = EmbedMatch(cfg, data_info())
    a, b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    for _ in range(4):  # at most an eighth of the bank per class per call: 1 here
        m.enqueue(torch.stack([a] * 4 + [b] * 4), torch.tensor([0] * 4 + [1] * 4))
    assert m.bank_filled.tolist() == [4, 4]
    votes, sims = m.match(torch.nn.functional.normalize(torch.stack([a + 0.1 * b, b + 0.2 * a, b]), dim=1))
    labels = votes["knn"]
    assert labels.tolist() == [0, 1, 1]
    assert sims[2] == pytest.approx(1.0) and sims[0] < 1.0


def test_pseudo_label_accuracies_follow_the_ground_truth():
    """The diagnostics compare pseudo-labels with the ground truth given: the teacher's own labels
    score 1, labels shifted by one class score 0, unknown voxels are left out."""
    from semiseg.config import load_config
    from semiseg.data.labels import BRATS2021
    from semiseg.methods.embedmatch import EmbedMatch
    from semiseg.training.losses import IGNORE

    cfg = load_config(EmbedMatch.config_files, "small", overrides=["network.features=[8,8,8,8,8,4]", "network.dropout=0.0", "dims=2", "uncertainty.passes=2"])
    m = EmbedMatch(cfg, data_info(scheme=BRATS2021))
    torch.manual_seed(0)
    u = torch.randn(2, 1, 32, 32)
    lab = torch.randint(0, 4, (2, 32, 32))
    m.enqueue(torch.nn.functional.normalize(torch.randn(lab.numel(), m.bank.shape[-1]), dim=1), lab.reshape(-1))  # a filled bank: every voxel gets a label
    _, _, probe = m.pseudo_labels(u, None)
    assert "acc_teacher" not in probe  # no ground truth, no accuracy
    m.teacher.module.eval()
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m.teacher.module(u), 1)]).mean(0)
    own = mean.argmax(1)
    pseudo, _, right = m.pseudo_labels(u, own)
    _, _, wrong = m.pseudo_labels(u, (own + 1) % 4)
    assert right["acc_teacher"] == pytest.approx(1.0) and wrong["acc_teacher"] == 0.0
    if right["reliable"] > 0:
        assert right["acc_reliable"] == pytest.approx(1.0) and wrong["acc_reliable"] == 0.0
    gt = own.clone()
    gt[0] = IGNORE  # unknown voxels do not count
    _, _, half = m.pseudo_labels(u, gt)
    assert half["acc_teacher"] == pytest.approx(1.0)
    matched = pseudo[pseudo != IGNORE]
    assert matched.numel() == pseudo.numel()
