"""The semi-supervised building blocks: batched MC dropout, the strong view, the boundary-weighted
bank, the class-count-independent reliability split, the votes, and exact resume of embedmatch
with weak/strong views."""

from pathlib import Path

import pytest
import torch

from helpers import TINY, TINY_NET, data_info
from semiseg.config import load_config
from semiseg.data.labels import BINARY, BRATS2021
from semiseg.methods.embedmatch import EmbedMatch
from semiseg.models.unet import SegUNet
from semiseg.training.augment import StrongAugmenter
from semiseg.training.losses import IGNORE


def test_mc_predict_equals_separate_passes_without_dropout_and_varies_with_it():
    torch.manual_seed(0)
    net = SegUNet(3, 1, 3, (4, 4, 4, 4, 4, 4), dropout=0.0).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    mean, emb = net.mc_predict(x, 4)
    logits, emb2 = net.forward_features(x)
    assert torch.allclose(mean, torch.softmax(logits, 1), atol=1e-6) and torch.allclose(emb, emb2)
    net = SegUNet(3, 1, 3, (4, 4, 4, 4, 4, 4), dropout=0.5, dropout_at=("bottleneck", "up", "head")).eval()
    one, _ = net.mc_predict(x, 1)
    many, _ = net.mc_predict(x, 8)
    assert torch.allclose(one, torch.softmax(net(x), 1), atol=1e-6)  # 1 pass: deterministic
    assert not torch.allclose(one, many)
    assert not any(m.training for m in net.modules())  # dropout switched off again
    with pytest.raises(ValueError):
        SegUNet(3, 1, 3, (4, 4, 4, 4, 4, 4), dropout_at=("encoder",))


def test_strong_view_is_seeded_intensity_only():
    aug = StrongAugmenter({"prob": 1.0, "gamma": [0.5, 2.0], "scale": 0.2, "noise_std": 0.1, "cutout": 1, "cutout_size": 4, "cutout_prob": 1.0}, 3)
    x = torch.rand(2, 1, 12, 12, 12)
    a, b, c = aug(x, 3), aug(x, 3), aug(x, 4)
    assert type(a) is torch.Tensor and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not StrongAugmenter({"prob": 0.0}, 3).enabled


def _method(scheme=BINARY, extra=()):
    cfg = load_config(EmbedMatch.config_files, "small", overrides=["network.features=[8,8,8,8,8,4]", "dims=2", *extra])
    return EmbedMatch(cfg, data_info(scheme=scheme, slice_size=16))


def test_boundary_mask_and_boundary_share_of_the_bank():
    m = _method(extra=["matching.bank_per_class=64", "matching.boundary_fraction=1.0"])
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[0, 2:6, 2:6] = 1
    edge = m.boundary_mask(lab)
    assert edge[0, 2, 2] and edge[0, 1, 2] and not edge[0, 4, 4] and not edge[0, 0, 7]
    emb = torch.zeros(64, 4)
    emb[:, 0] = edge.reshape(-1).float()  # boundary voxels are marked in the first channel
    m.enqueue(emb, lab.reshape(-1), edge.reshape(-1))
    assert m.bank_filled.tolist() == [8, 8]
    assert bool((m.bank[:, :8, 0] == 1).all())  # every pick came from the boundary
    assert m.class_counts.tolist() == [48, 16]


def test_votes_prior_and_fused():
    m = _method(extra=["matching.bank_per_class=8", "matching.k=4"])
    a, b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    m.enqueue(torch.stack([a] * 9 + [b]), torch.tensor([0] * 9 + [1]))  # prior 0.9 / 0.1
    q = torch.nn.functional.normalize(torch.stack([a + b]), dim=1)  # equally close to both classes
    # bank holds one reference per class: the top-4 draws the same similarity from each
    votes, _ = m.match(q, torch.tensor([[0.2, 0.8]]))
    assert votes["prior"].tolist() == [0]
    assert votes["fused"].tolist() == [1]


def test_reliability_does_not_depend_on_the_class_count():
    """A 50/50 voxel is unreliable for both measures, with 2 classes and with 4."""
    for scheme in (BINARY, BRATS2021):
        c = scheme.num_classes
        for measure, thr in (("confidence", 0.9), ("entropy", 0.75)):
            m = _method(scheme, [f"uncertainty.measure={measure}", f"uncertainty.threshold={thr}", "network.dropout=0.0"])
            head = m.teacher.module.final_conv
            with torch.no_grad():
                head.weight.zero_()
                head.bias.copy_(torch.tensor([0.0, 0.0] + [-30.0] * (c - 2)))  # every voxel 50/50 between two classes
            _, _, diag = m.pseudo_labels(torch.randn(1, 1, 32, 32), None)
            assert diag["reliable"] == 0.0, (scheme.name, measure)


def test_pseudo_labelling_waits_until_the_teacher_fits_the_labelled_images():
    m = EmbedMatch(load_config(EmbedMatch.config_files, "small", overrides=["network.features=[8,8,8,8,8,4]", "dims=2",
                                                                            "teacher.start_dice=0.5"]), data_info())
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 4:8, 4:8] = 1
    wrong = torch.nn.functional.one_hot(torch.zeros_like(labels), 2).movedim(-1, 1).float()  # all background
    right = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float()
    assert not any(m.gate(wrong, labels, step) for step in range(20))
    assert float(m.teacher_fit) == 0.0 and int(m.pseudo_from) == -1
    opened = [m.gate(right, labels, step) for step in range(20, 40)]
    first = opened.index(True)
    assert 0 < first and all(opened[first:]) and int(m.pseudo_from) == 20 + first  # a running mean: not at once
    assert m.gate(wrong, labels, 40)  # once started, it stays on
    assert EmbedMatch(load_config(EmbedMatch.config_files, "small", overrides=["network.features=[8,8,8,8,8,4]", "dims=2", "teacher.start_dice=0"]),
                      data_info()).gate(wrong, labels, 7)


def test_pseudo_dice_weighs_a_missed_small_class_and_ignores_unlabelled_voxels():
    def method(dice: float) -> EmbedMatch:
        cfg = load_config(EmbedMatch.config_files, "small", overrides=["network.features=[8,8,8,8,8,4]", "dims=2", f"loss.pseudo_dice={dice}"])
        return EmbedMatch(cfg, data_info())

    pseudo = torch.zeros(2, 16, 16, dtype=torch.long)
    pseudo[:, 5:7, 5:7] = 1  # a small structure: 16 of 512 voxels
    pseudo[:, 12:, :] = IGNORE
    weights = (pseudo != IGNORE).float()
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 0] = 4.0  # the student misses the structure
    ce_only, with_dice = method(0.0).pseudo_loss(logits, pseudo, weights), method(1.0).pseudo_loss(logits, pseudo, weights)
    assert ce_only < 0.2 and with_dice - ce_only > 0.9  # cross-entropy barely notices, the Dice term counts it fully
    other = logits.clone()
    other[:, :, 12:, :] = torch.randn(2, 2, 4, 16)  # voxels without a pseudo-label do not count
    assert torch.allclose(method(1.0).pseudo_loss(other, pseudo, weights), with_dice)


def test_embedmatch_resume_with_views_is_exact(tiny_cache: Path, tmp_path: Path, monkeypatch):
    """A run interrupted after its step-2 checkpoint and resumed ends with the weights, bank and
    teacher of an uninterrupted run: all randomness (views, MC dropout, bank picks, query subset)
    comes from the step seed and the state lives in buffers."""
    from semiseg.runs import train
    from semiseg.training.checkpoint import latest_checkpoint, load_model_state

    over = TINY + TINY_NET + ["dims=2", "teacher.warmup=0.25", "teacher.start_dice=0", "teacher.policy=ema", "unlabelled.weak=true",
                              "unlabelled.strong.prob=1.0", "unlabelled.strong.cutout=1", "unlabelled.strong.cutout_prob=1.0",
                              "matching.max_queries=50", "matching.boundary_fraction=0.5", "uncertainty.passes=2"]
    train(tiny_cache, "embedmatch", tmp_path / "straight", preset="small", n_labelled=3, seed=0, overrides=over)

    original = EmbedMatch.after_optimizer_step

    def crash(self, step):
        original(self, step)
        if step == 2:  # after the step-2 checkpoint, before the next one
            raise KeyboardInterrupt

    monkeypatch.setattr(EmbedMatch, "after_optimizer_step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cache, "embedmatch", tmp_path / "split", preset="small", n_labelled=3, seed=0, overrides=over)
    monkeypatch.setattr(EmbedMatch, "after_optimizer_step", original)
    train(tiny_cache, "embedmatch", tmp_path / "split", preset="small", n_labelled=3, seed=0, overrides=over, resume=True)
    a = load_model_state(latest_checkpoint(tmp_path / "straight"))
    b = load_model_state(latest_checkpoint(tmp_path / "split"))
    assert a.keys() == b.keys() and any("bank" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cutmix_boxes_mix_images_and_targets_alike():
    m = _method(extra=["unlabelled.cutmix=1.0"])
    torch.manual_seed(0)
    x = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 16, 16).clone()
    box = m.cutmix_mask(x)
    assert box is not None and 0 < box.float().mean() < 1
    labels = torch.arange(2).reshape(2, 1, 1).expand(2, 16, 16)
    assert torch.equal(m.mix(box, x)[:, 0], m.mix(box, labels).float())  # image and target swap the same voxels
    assert _method(extra=["unlabelled.cutmix=0.0"]).cutmix_mask(x) is None  # off


def test_class_quantile_keeps_the_same_share_of_every_predicted_class():
    """Background confident everywhere, the structure less so: a batch-wide quantile leaves the
    structure to matching, a per-class quantile keeps its most confident voxels reliable too."""
    fg = torch.zeros(1, 20, 20, dtype=torch.bool)
    fg[0, 5:15, 5:15] = True  # 100 of 400 voxels
    p_fg = torch.where(fg, 0.6 + 0.3 * torch.rand(1, 20, 20), 0.01 * torch.rand(1, 20, 20))
    mean = torch.stack([1 - p_fg, p_fg], 1)
    share = {}
    for measure in ("quantile", "class_quantile"):
        rel = _method(extra=[f"uncertainty.measure={measure}", "uncertainty.threshold=0.7"]).reliable(mean)
        share[measure] = float(rel[fg].float().mean()), float(rel[~fg].float().mean())
    assert share["quantile"][0] < 0.1 and share["quantile"][1] > 0.9
    assert share["class_quantile"][0] == pytest.approx(0.7, abs=0.05) and share["class_quantile"][1] == pytest.approx(0.7, abs=0.05)


def test_auto_reliability_is_class_quantile_in_2d_and_quantile_in_3d():
    torch.manual_seed(0)
    p_fg = torch.rand(1, 6, 8, 8) ** 3
    mean = torch.stack([1 - p_fg, p_fg], 1)
    for dims, same_as in ((2, "class_quantile"), (3, "quantile")):
        def reliable(measure: str) -> torch.Tensor:
            return _method(extra=[f"dims={dims}", f"uncertainty.measure={measure}"]).reliable(mean)

        assert torch.equal(reliable("auto"), reliable(same_as)), dims
    assert not torch.equal(_method(extra=["uncertainty.measure=class_quantile"]).reliable(mean), _method(extra=["uncertainty.measure=quantile"]).reliable(mean))


def test_contrastive_head_clusters_labelled_voxels_and_the_teacher_matches_in_its_space():
    torch.manual_seed(0)
    m = _method(extra=["contrast.weight=1.0", "contrast.dim=6", "contrast.per_class=32", "network.dropout=0.0"])
    assert m.bank.shape[-1] == 6 and _method().proj is None  # off by default: the raw embedding is matched
    image = torch.randn(2, 1, 32, 32)
    labels = (image[:, 0] > 0.5).long()  # a class the network can learn from the intensity
    opt = torch.optim.Adam([*m.net.parameters(), *m.proj.parameters()], lr=1e-2)
    first = None
    for _ in range(30):
        loss, logs = m.labelled_losses({"labelled": {"image": image, "label": labels}})
        first = logs["loss_contrast"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss_contrast"] < 0.8 * first  # the gradient reaches the head and the network
    assert not torch.equal(m.teacher_proj.module[0].weight, m.proj[0].weight)
    m.after_optimizer_step(m.warmup_steps() - 1)  # the warm-up ends: the teacher takes the student's head too
    assert torch.equal(m.teacher_proj.module[0].weight, m.proj[0].weight)
    emb = m.teacher_embedding(m.teacher.module.forward_features(image)[1])
    assert emb.shape == (2, 6, 32, 32) and torch.allclose(emb.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)
    one_class = m.contrastive_loss(m.net.forward_features(image)[1], torch.zeros_like(labels))
    assert one_class.item() == 0.0 and one_class.requires_grad  # no negatives: nothing to contrast
