"""Semi-supervised segmentation via embedding matching (Xie et al., MIDL 2024).

A teacher, trained on the labelled data, looks at unlabelled images with Monte Carlo dropout:

* voxels whose teacher is confident are *reliable*: the teacher's label is their pseudo-label.
  Confidence is the maximum of the mean softmax over T dropout passes; by default the most
  confident share of each predicted class's voxels (2D) or of the batch's voxels (3D) is reliable
  (``uncertainty.measure``; a fixed threshold on it or on predictive entropy in units of ln 2 are
  the alternatives, each meaning the same whatever the number of classes);
* the other voxels are labelled by *embedding matching*: their L2-normalised decoder embedding
  (the teacher's last feature map before the head) is compared by cosine similarity with a
  bounded, class-balanced bank of reference embeddings from labelled voxels; the k nearest
  references vote (``matching.vote``: similarity-weighted ``knn``, ``prior``-corrected by the
  labelled class frequencies, or ``fused`` with the teacher's own probabilities), and the mean
  similarity can weight the voxel's loss. With ``contrast.weight`` > 0 the embeddings pass through a
  projection head that a supervised contrastive loss on labelled voxels trains (off by default:
  measured, it did not make matching beat the teacher).

The student learns from the labelled loss, the pseudo-label loss (cross-entropy, optionally plus a
soft Dice: ``loss.pseudo_dice``) and an entropy-minimisation term on its unlabelled predictions.
Pseudo-labelling starts after the warm-up once the teacher fits the labelled images
(``teacher.start_dice``), not at a fixed step: an unfit teacher labels nearly all background.
With a strong view configured (``unlabelled.strong``) the teacher labels the weak view and the
student learns on the strong one (FixMatch). The paper publishes no
code; every choice it leaves open is a setting in ``embedmatch.yaml`` with our default. The
reference bank is a FIFO queue per class filled from each labelled batch (optionally favouring
voxels on class boundaries), and matching runs in chunks, so memory is fixed whatever the image
size. Diagnostics (share of reliable and matched voxels and, where the "unlabelled" data has
ground truth, each kind of pseudo-label's accuracy, including the teacher's own accuracy on the
matched voxels and the pure nearest-neighbour vote's) go to ``diagnostics.csv`` once per pass over
the unlabelled data and into the training log.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.methods.base import make_ema, register
from semiseg.methods.mean_teacher import noisy
from semiseg.methods.segmentation import SegmentationMethod
from semiseg.models.unet import build_unet
from semiseg.preprocess.cache import DataInfo
from semiseg.training.distributed import all_reduce_mean
from semiseg.training.log import CsvLog
from semiseg.training.losses import IGNORE, entropy, sigmoid_rampup

DIAGNOSTICS_FILE = "diagnostics.csv"
VOTES = ("knn", "prior", "fused")
DIAGNOSTIC_KEYS = ("reliable", "matched", "acc_reliable", "acc_matched", "acc_teacher_on_matched", "acc_teacher", "fg_matched", "dice_teacher") + tuple(
    f"acc_{v}_on_matched" for v in VOTES
)
MEASURES = ("auto", "confidence", "quantile", "class_quantile", "entropy")


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of ``values`` from at most ~100,000 of them (torch.quantile's input limit)."""
    flat = values.reshape(-1)
    return torch.quantile(flat[:: max(flat.numel() // 100_000, 1)], q)


def flat_voxels(t: torch.Tensor) -> torch.Tensor:
    """(B, D, *S) -> (B * prod(S), D)."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def projection_head(dims: int, channels: int, dim: int) -> nn.Module:
    """SupCon's projection MLP applied per voxel: 1x1 convolution, ReLU, 1x1 convolution."""
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return nn.Sequential(conv(channels, channels, 1), nn.ReLU(inplace=True), conv(channels, dim, 1))


@register
class EmbedMatch(SegmentationMethod):
    name = "embedmatch"
    config_files = ["segmentation", "embedmatch"]
    semi_supervised = True

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        self.net = build_unet(config, self.dims, self.channels, self.num_classes)
        self.teacher = make_ema(self.net, float(config["teacher"]["ema_decay"]))
        for key, value, allowed in (
            ("teacher.policy", config["teacher"]["policy"], ("fixed", "rounds", "ema")),
            ("uncertainty.measure", config["uncertainty"]["measure"], MEASURES),
            ("matching.vote", config["matching"]["vote"], VOTES),
        ):
            if value not in allowed:
                raise SemisegInputError(None, f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        k = int(config["matching"]["bank_per_class"])
        d = self.net.embedding_channels
        contrast = config["contrast"]
        for key, ok, wanted in (
            ("weight", float(contrast["weight"]) >= 0, "a number of at least 0"),
            ("dim", int(contrast["dim"]) >= 1, "an integer of at least 1"),
            ("temperature", float(contrast["temperature"]) > 0, "a number above 0"),
            ("per_class", int(contrast["per_class"]) >= 1, "an integer of at least 1"),
        ):
            if not ok:
                raise SemisegInputError(None, f"contrast.{key} must be {wanted}, got {contrast[key]!r}")
        self.contrast_weight = float(contrast["weight"])
        self.proj: nn.Module | None = None
        if self.contrast_weight > 0:
            # the teacher matches in the projection space the student's contrastive loss shapes; its
            # projection head is an EMA of the student's, updated with the teacher's network
            d = int(contrast["dim"])
            self.proj = projection_head(self.dims, self.net.embedding_channels, d)
            self.teacher_proj = make_ema(self.proj, float(config["teacher"]["ema_decay"]))
            # imported here: pytorch-metric-learning takes seconds to import, and only this option needs it
            from pytorch_metric_learning.losses import SupConLoss

            self.supcon = SupConLoss(temperature=float(contrast["temperature"]))
        self.register_buffer("bank", torch.zeros(self.num_classes, k, d))
        self.register_buffer("bank_filled", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros(self.num_classes, dtype=torch.long))
        # labelled voxels seen per class (the prior of matching.vote=prior)
        self.register_buffer("class_counts", torch.zeros(self.num_classes, dtype=torch.float64))
        # the teacher's running foreground Dice on labelled batches, and the step pseudo-labelling began (-1: not yet)
        self.register_buffer("teacher_fit", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("pseudo_from", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("fit_updates", torch.tensor(0, dtype=torch.long))
        self._epoch_sums: dict[str, list[float]] = {}
        self._diagnostics: CsvLog | None = None
        # over the whole batch: many unlabelled slices hold no structure, and a per-image Dice would
        # punish every false-positive voxel on them as hard as a missed structure
        self.pseudo_dice = DiceLoss(include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ---- schedule --------------------------------------------------------------------------
    def warmup_steps(self) -> int:
        total = self.ctx.total_steps if self.ctx else 0
        return int(float(self.config["teacher"]["warmup"]) * total)

    def fit(self) -> float:
        """The teacher's running foreground Dice on labelled batches, corrected for its start at 0."""
        n = int(self.fit_updates)
        return float(self.teacher_fit) / (1.0 - 0.9**n) if n else 0.0

    @torch.no_grad()
    def gate(self, teacher_logits: torch.Tensor, labels: torch.Tensor, step: int) -> bool:
        """Whether pseudo-labelling runs at ``step``. It starts, for good, once the teacher's
        foreground Dice on the labelled batches (a running mean) reaches ``teacher.start_dice``:
        a teacher that does not yet fit the labelled images labels nearly everything background,
        and its pseudo-labels would pull the student there (a fixed warm-up cannot know when)."""
        if int(self.pseudo_from) >= 0:
            return True
        dice = self.foreground_dice(teacher_logits.argmax(1), labels)
        seen = {"dice": 0.0 if math.isnan(dice) else dice, "valid": 0.0 if math.isnan(dice) else 1.0}
        if self.ctx is not None:  # every rank must decide alike: the student's graph depends on it
            seen = all_reduce_mean(self.ctx.info, seen, teacher_logits.device)
        if seen["valid"] > 0:  # batches without any structure leave the running mean as it is
            self.fit_updates += 1
            self.teacher_fit.mul_(0.9).add_(0.1 * seen["dice"] / seen["valid"])
        if self.fit() >= float(self.config["teacher"]["start_dice"]):
            self.pseudo_from.fill_(step)
            return True
        return False

    def pseudo_loss(self, logits: torch.Tensor, pseudo: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy on the pseudo-labels plus ``loss.pseudo_dice`` x a soft Dice over the
        batch (foreground classes, voxels without a pseudo-label left out). Cross-entropy alone is
        dominated by background voxels, so a small structure the teacher under-segments shrinks further;
        the Dice term weighs every class alike, as the supervised loss does."""
        ce = F.cross_entropy(logits, pseudo, ignore_index=IGNORE, reduction="none")
        loss = (ce * weights).sum() / weights.sum().clamp_min(1.0)
        dice_weight = float(self.config["loss"]["pseudo_dice"])
        if dice_weight > 0:
            known = (pseudo != IGNORE).unsqueeze(1).float()
            target = F.one_hot(pseudo.clamp(max=self.num_classes - 1), self.num_classes).movedim(-1, 1).float()
            w = known * weights.unsqueeze(1)
            loss = loss + dice_weight * self.pseudo_dice(torch.softmax(logits, 1) * w, target * w)
        return loss

    def after_optimizer_step(self, step: int) -> None:
        done, warm = step + 1, self.warmup_steps()
        policy = self.config["teacher"]["policy"]
        pairs = [(self.teacher, self.net)] + ([(self.teacher_proj, self.proj)] if self.proj is not None else [])
        for teacher, student in pairs:
            if done == warm or (done > warm and policy == "rounds" and (done - warm) % int(self.config["teacher"]["round_steps"]) == 0):
                teacher.module.load_state_dict(student.state_dict())
            elif done > warm and policy == "ema":
                teacher.update_parameters(student)
        self._maybe_write_diagnostics(done)

    def teacher_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        """The unit-norm embedding matching compares: the teacher's decoder features (B, D, *S), through
        its projection head when the contrastive loss is on."""
        if self.proj is not None:
            emb = self.teacher_proj.module(emb)
        return F.normalize(emb.float(), dim=1)

    # ---- reference bank --------------------------------------------------------------------
    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor, boundary: torch.Tensor | None = None) -> None:
        """Add labelled voxels' embeddings (N, D) with class labels (N,) to the per-class FIFO bank,
        at most an eighth of a class's capacity per call so the bank mixes many images. With a
        ``boundary`` mask (N,) a ``matching.boundary_fraction`` of each class's picks come from
        voxels on a class boundary, where the unreliable voxels are."""
        k = self.bank.shape[1]
        self.class_counts += torch.bincount(labels[labels != IGNORE], minlength=self.num_classes)[: self.num_classes].double()
        for c, idx in enumerate(self.balanced_sample(labels, max(k // 8, 1), boundary)):
            if idx.numel() == 0:
                continue
            pos = (self.bank_next[c] + torch.arange(idx.numel(), device=idx.device)) % k
            self.bank[c, pos] = embeddings[idx]
            self.bank_next[c] = (self.bank_next[c] + idx.numel()) % k
            self.bank_filled[c] = torch.clamp(self.bank_filled[c] + idx.numel(), max=k)

    def balanced_sample(self, labels: torch.Tensor, per_class: int, boundary: torch.Tensor | None) -> list[torch.Tensor]:
        """For each class, the indices of at most ``per_class`` random voxels of ``labels`` (N,); with a
        ``boundary`` mask (N,) a ``matching.boundary_fraction`` of them lie on a class boundary."""
        frac = float(self.config["matching"]["boundary_fraction"])
        picks = []
        for c in range(self.num_classes):
            is_c = labels == c
            idx = torch.nonzero(is_c).squeeze(1)
            idx = idx[torch.randperm(idx.numel(), device=idx.device)[:per_class]]
            if boundary is not None and frac > 0 and idx.numel():
                edge = torch.nonzero(is_c & boundary).squeeze(1)
                edge = edge[torch.randperm(edge.numel(), device=edge.device)[: int(round(frac * per_class))]]
                idx = torch.cat([edge, idx[: max(per_class - edge.numel(), 0)]])
            picks.append(idx)
        return picks

    def contrastive_loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Supervised contrastive loss (Khosla et al., NeurIPS 2020) on the student's projected
        embeddings (B, D, *S) of labelled voxels (B, *S): ``contrast.per_class`` voxels of each class,
        boundary voxels favoured as in the bank, so embeddings of one class cluster where the
        teacher is unsure and nearest-reference matching can label them."""
        flat = labels.reshape(-1)
        idx = torch.cat(self.balanced_sample(flat, int(self.config["contrast"]["per_class"]), self.sampling_edges(labels)))
        if flat[idx].unique().numel() < 2:  # one class only: no negatives to contrast with
            return emb.sum() * 0.0
        z = flat_voxels(self.proj(emb))[idx].float()
        return self.supcon(z, flat[idx])

    def sampling_edges(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The flat boundary mask :meth:`balanced_sample` favours for (B, *S) labels; None when
        ``matching.boundary_fraction`` is 0 (no boundary preference, nothing to compute)."""
        return self.boundary_mask(labels).reshape(-1) if self.config["matching"]["boundary_fraction"] else None

    def boundary_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, *S) labels -> (B, *S) True where the 3x3(x3) neighbourhood holds another class."""
        onehot = F.one_hot(labels.clamp(max=self.num_classes - 1), self.num_classes).movedim(-1, 1).float()
        pool = F.max_pool3d if labels.dim() == 4 else F.max_pool2d
        present = pool(onehot, 3, stride=1, padding=1).sum(1)
        return present > 1

    @torch.no_grad()
    def match(self, queries: torch.Tensor, teacher_probs: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Label unit-norm embeddings (N, D) by their k nearest references (cosine similarity).

        The similarity-weighted vote of the k nearest references, normalised per class by the
        references the bank holds, is a class distribution. Returns the label (N,) of every vote
        in :data:`VOTES` (``knn``: that distribution's argmax; ``prior``: times the labelled voxels'
        class frequencies; ``fused``: times ``teacher_probs`` (N, C), the teacher's own mean
        probabilities, when given) and the mean top-k similarity (N,)."""
        c, k_bank, d = self.bank.shape
        valid = (torch.arange(k_bank, device=queries.device)[None, :] < self.bank_filled[:, None]).reshape(-1)
        refs = self.bank.reshape(-1, d)[valid]
        ref_labels = torch.arange(c, device=queries.device).repeat_interleave(k_bank)[valid]
        k = min(int(self.config["matching"]["k"]), refs.shape[0])
        share = self.bank_filled.float().clamp_min(1) / self.bank_filled.sum().clamp_min(1)
        prior = (self.class_counts / self.class_counts.sum().clamp_min(1)).float()
        labels = {v: torch.empty(queries.shape[0], dtype=torch.long, device=queries.device) for v in VOTES}
        sims = torch.empty(queries.shape[0], device=queries.device)
        chunk = int(self.config["matching"]["chunk"])
        for s in range(0, queries.shape[0], chunk):
            sim = queries[s : s + chunk] @ refs.T  # bounded: chunk x bank size
            top, idx = sim.topk(k, dim=1)
            votes = torch.zeros(top.shape[0], c, device=queries.device)
            votes.scatter_add_(1, ref_labels[idx], top.clamp_min(0))
            dist = votes / share  # as if every class filled the bank equally
            dist = dist / dist.sum(1, keepdim=True).clamp_min(1e-12)
            labels["knn"][s : s + chunk] = dist.argmax(1)
            labels["prior"][s : s + chunk] = (dist * prior).argmax(1)
            fused = (dist + 1e-3) * teacher_probs[s : s + chunk] if teacher_probs is not None else dist
            labels["fused"][s : s + chunk] = fused.argmax(1)
            sims[s : s + chunk] = top.mean(1)
        return labels, sims

    # ---- training step ---------------------------------------------------------------------
    def reliable(self, mean: torch.Tensor) -> torch.Tensor:
        """Which voxels' teacher label is a pseudo-label: (B, C, *S) mean probabilities -> (B, *S)."""
        cfg_u = self.config["uncertainty"]
        measure = cfg_u["measure"]
        if measure == "auto":  # what measured best for each (embedmatch.yaml)
            measure = "class_quantile" if self.dims == 2 else "quantile"
        teacher_label = mean.argmax(1)
        confidence = mean.max(1).values
        if measure == "confidence":  # max probability: its meaning does not depend on the class count
            reliable = confidence >= float(cfg_u["threshold"])
        elif measure == "quantile":  # the `threshold` most confident share of the batch's voxels
            reliable = confidence >= _quantile(confidence, 1.0 - float(cfg_u["threshold"]))
        elif measure == "class_quantile":
            # the same share within each predicted class: a batch-wide share is mostly background where
            # the structure is small, so the structure's voxels would fall to matching disproportionately
            reliable = torch.zeros_like(teacher_label, dtype=torch.bool)
            for c in teacher_label.unique():
                is_c = teacher_label == c
                reliable |= is_c & (confidence >= _quantile(confidence[is_c], 1.0 - float(cfg_u["threshold"])))
        else:  # predictive entropy in units of ln 2 (1 = a 50/50 voxel, whatever the class count)
            reliable = entropy(mean, normalise=False) / math.log(2) < float(cfg_u["threshold"])
        return reliable

    @torch.no_grad()
    def pseudo_labels(self, u: torch.Tensor, gt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Pseudo-labels (B, *S) and per-voxel loss weights (B, *S) for unlabelled images ``u``."""
        teacher = self.teacher.module
        cfg_u, cfg_m = self.config["uncertainty"], self.config["matching"]
        teacher.eval()
        mean, emb = teacher.mc_predict(u, int(cfg_u["passes"]))
        teacher_label = mean.argmax(1)
        reliable = self.reliable(mean)
        pseudo = torch.where(reliable, teacher_label, torch.full_like(teacher_label, IGNORE))
        weights = reliable.float()
        matched = torch.zeros_like(reliable)
        by_vote = {v: torch.full_like(teacher_label, IGNORE) for v in VOTES}
        if cfg_m["enabled"] and (~reliable).any() and int(self.bank_filled.sum()) > 0:
            emb = self.teacher_embedding(emb)
            where = torch.nonzero(~reliable.reshape(-1)).squeeze(1)
            cap = int(cfg_m["max_queries"] or 0)
            if cap and where.numel() > cap:  # bounded cost: a random subset is matched, the rest is left out
                where = where[torch.randperm(where.numel(), device=where.device)[:cap]]
            labels, sims = self.match(flat_voxels(emb)[where], flat_voxels(mean)[where])
            for v in VOTES:
                by_vote[v].reshape(-1)[where] = labels[v]
            flat_pseudo, flat_w, flat_m = pseudo.reshape(-1), weights.reshape(-1), matched.reshape(-1)
            flat_pseudo[where] = labels[cfg_m["vote"]]
            flat_w[where] = sims.clamp(0, 1) if cfg_m["weight_by_similarity"] else 1.0
            flat_m[where] = True
        diag = {"reliable": float(reliable.float().mean()), "matched": float(matched.float().mean())}
        if gt is not None:
            known = gt != IGNORE
            kinds = [
                ("acc_reliable", reliable, teacher_label),
                ("acc_matched", matched, pseudo),
                ("acc_teacher_on_matched", matched, teacher_label),
                ("acc_teacher", torch.ones_like(reliable), teacher_label),
            ] + [(f"acc_{v}_on_matched", matched, by_vote[v]) for v in VOTES]
            for key, mask, lab in kinds:
                sel = mask & known
                diag[key] = float((lab[sel] == gt[sel]).float().mean()) if sel.any() else math.nan
            # foreground share of the matched voxels (ground truth), to read the accuracies against
            sel = matched & known
            diag["fg_matched"] = float((gt[sel] > 0).float().mean()) if sel.any() else math.nan
            # the teacher's mean foreground Dice on the unlabelled batch: accuracy is dominated by background
            diag["dice_teacher"] = self.foreground_dice(teacher_label, gt)
        return pseudo, weights, diag

    def labelled_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss plus, when on, ``contrast.weight`` x the contrastive loss, from one forward."""
        if self.proj is None:
            sup = self.supervised_loss(batch)
            return sup, {"loss_sup": sup.item()}
        lab = batch["labelled"]
        logits, emb = self.net.forward_features(lab["image"])
        sup = self.loss_fn(logits, lab["label"])
        con = self.contrastive_loss(emb, lab["label"])
        return sup + self.contrast_weight * con, {"loss_sup": sup.item(), "loss_contrast": con.item()}

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        sup, logs = self.labelled_losses(batch)
        if step < self.warmup_steps() or "unlabelled" not in batch:
            return sup, logs
        lab, unl = batch["labelled"], batch["unlabelled"]
        with torch.no_grad():
            self.teacher.module.eval()
            teacher_logits, emb = self.teacher.module.forward_features(lab["image"])
            self.enqueue(flat_voxels(self.teacher_embedding(emb)), lab["label"].reshape(-1), self.sampling_edges(lab["label"]))
            if not self.gate(teacher_logits, lab["label"], step):
                return sup, {**logs, "teacher_fit": self.fit()}
        pseudo, weights, diag = self.pseudo_labels(unl["image"], unl.get("gt"))
        cfg = self.config["loss"]
        view = self.student_view(unl)
        box = self.cutmix_mask(view)
        pseudo, weights = self.mix(box, pseudo), self.mix(box, weights)
        logits = self.net(noisy(self.mix(box, view), float(cfg["noise_std"]))).float()
        pseudo_loss = self.pseudo_loss(logits, pseudo, weights)
        ent = entropy(torch.softmax(logits, 1)).mean()
        total = self.ctx.total_steps if self.ctx else 1
        ramp = sigmoid_rampup((step - int(self.pseudo_from)) / max(float(cfg["rampup"]) * total, 1.0))
        loss = sup + ramp * (float(cfg["pseudo_weight"]) * pseudo_loss + float(cfg["entropy_weight"]) * ent)
        for k, v in diag.items():
            self._epoch_sums.setdefault(k, []).append(v)
        return loss, {**logs, "loss_pseudo": pseudo_loss.item(), "loss_entropy": ent.item(), "teacher_fit": self.fit(), **diag}

    # ---- diagnostics -----------------------------------------------------------------------
    def _maybe_write_diagnostics(self, done: int) -> None:
        ctx = self.ctx
        if ctx is None or not ctx.info.main or self.unlabelled is None:
            return
        per_epoch = max(self.unlabelled_stream.per_epoch // self.unlabelled_stream.batch_size, 1)
        if done % per_epoch and done != ctx.total_steps:
            return
        if not self._epoch_sums and not (done == ctx.total_steps and int(self.pseudo_from) < 0):
            return  # a run whose teacher never fitted still gets its one row, saying so (pseudo_from -1)
        row = {"step": done, "epoch": done / per_epoch, "pseudo_from": int(self.pseudo_from), "teacher_fit": self.fit()}
        for key in DIAGNOSTIC_KEYS:
            vals = [v for v in self._epoch_sums.get(key, []) if not math.isnan(v)]
            row[key] = sum(vals) / len(vals) if vals else math.nan
        if self._diagnostics is None:
            self._diagnostics = CsvLog(ctx.run_dir / DIAGNOSTICS_FILE, ctx.start_step if ctx.resumed else None)
        self._diagnostics.write(row)
        self._epoch_sums = {}

