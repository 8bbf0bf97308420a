"""What every segmentation method shares: labelled (and unlabelled) batches from the cache,
augmentation, the supervised loss, and prediction as softmax probabilities with their entropy."""

from __future__ import annotations

import math
from typing import Any

import torch

from semiseg.config import is_count
from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method
from semiseg.preprocess.cache import DataInfo
from semiseg.training.augment import Augmenter, StrongAugmenter
from semiseg.training.batches import PatchSource, SegmentationBatches, SliceSource, Stream
from semiseg.training.context import TrainContext
from semiseg.training.losses import IGNORE, SegmentationLoss, entropy
from semiseg.training.plan import check_unlabelled_slices

#: ``unlabelled_ratio: auto`` per number of dimensions: 4 unlabelled patches per labelled one in 3D,
#: 1 slice per slice in 2D (the measurements are in embedmatch.yaml)
AUTO_UNLABELLED_RATIO = {2: 1.0, 3: 4.0}


class SegmentationMethod(Method):
    """Base of the segmentation methods. Subclasses define :meth:`logits` (and, if
    semi-supervised, a ``forward`` that uses ``batch["unlabelled"]``)."""

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        loss = config.get("loss", {})
        self.loss_fn = SegmentationLoss(self.num_classes, loss.get("dice_weight", 1.0), loss.get("class_weights"))
        self.labelled: SliceSource | PatchSource | None = None
        self.unlabelled: SliceSource | PatchSource | None = None
        if self.semi_supervised:
            fixed, ratio = config.get("unlabelled_batch_size"), config.get("unlabelled_ratio", 1.0)
            if fixed is not None and not is_count(fixed, 1):
                raise SemisegInputError(None, f"unlabelled_batch_size must be an integer of at least 1 or null, got {fixed!r}")
            if ratio != "auto" and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < math.inf):
                raise SemisegInputError(None, f"unlabelled_ratio must be a number above 0 or auto, got {ratio!r}")
            check_unlabelled_slices(self.unlabelled_slices())

    # ---- data ------------------------------------------------------------------------------
    def _source(self, ctx: TrainContext, items: list, labelled: bool) -> SliceSource | PatchSource:
        if self.dims == 2:
            return SliceSource(ctx.cache, items, labelled)
        return PatchSource(ctx.cache, items, self.patch_size(), labelled)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        bs = int(self.config["train"]["batch_size"])
        self.labelled = self._source(ctx, ctx.plan.labelled_items(), labelled=True)
        self.labelled_stream = Stream(len(self.labelled), bs, ctx.seed, ctx.info)
        if self.semi_supervised:
            unl = ctx.plan.unlabelled_items(ctx.cache, self.unlabelled_slices())
            if unl:
                self.unlabelled = self._source(ctx, unl, labelled=False)
                self.unlabelled_stream = Stream(len(self.unlabelled), self.unlabelled_batch_size(), ctx.seed + 1, ctx.info)
        views = self.config.get("unlabelled", {}) or {}
        self._batches = SegmentationBatches(
            self.labelled, self.labelled_stream, Augmenter(self.config.get("augment", {}), self.dims, self.data.normaliser.background_value()),
            ctx.seed, ctx.info.rank,
            self.unlabelled, self.unlabelled_stream if self.unlabelled is not None else None,
            weak=bool(views.get("weak", False)), strong=StrongAugmenter(views.get("strong"), self.dims),
        )

    def unlabelled_slices(self) -> str:
        """Which slices of the unlabelled cases a 2D run draws from (``unlabelled.slices``, see
        :data:`~semiseg.training.plan.UNLABELLED_SLICES`)."""
        return (self.config.get("unlabelled", {}) or {}).get("slices", "all")

    def unlabelled_batch_size(self) -> int:
        """Unlabelled images per step and process: ``unlabelled_batch_size`` if set, else
        ``unlabelled_ratio`` (FixMatch's mu; ``auto``: :data:`AUTO_UNLABELLED_RATIO`) times the labelled batch."""
        fixed = self.config.get("unlabelled_batch_size")
        if fixed is not None:
            return int(fixed)
        ratio = self.config.get("unlabelled_ratio", 1.0)
        ratio = AUTO_UNLABELLED_RATIO[self.dims] if ratio == "auto" else float(ratio)
        return max(1, round(ratio * int(self.config["train"]["batch_size"])))

    def images_per_step(self) -> int:
        return super().images_per_step() + (self.unlabelled_batch_size() if self.semi_supervised else 0)

    def batch_maker(self) -> SegmentationBatches:
        return self._batches

    def next_batch(self, step: int) -> dict[str, Any]:
        return self._batches(step)

    @staticmethod
    def student_view(unl: dict[str, Any]) -> torch.Tensor:
        """The unlabelled images the student sees: the strong view if there is one."""
        return unl.get("strong", unl["image"])

    def cutmix_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        """CutMix for the student's unlabelled batch (B, C, *S): a boolean mask (B, *S) holding,
        for each sample drawn with probability ``unlabelled.cutmix``, a random box whose sides are
        ``unlabelled.cutmix_size`` fractions of the patch; inside it the sample takes the next
        sample's voxels (and targets), see :meth:`mix`. None when off or the batch has one image.
        Drawn from torch's generator, which the loop seeds per step."""
        p = float((self.config.get("unlabelled", {}) or {}).get("cutmix", 0.0) or 0.0)
        if p <= 0 or images.shape[0] < 2:
            return None
        lo, hi = (float(v) for v in self.config["unlabelled"].get("cutmix_size", [0.5, 0.8]))
        spatial = images.shape[2:]
        mask = torch.zeros((images.shape[0], *spatial), dtype=torch.bool, device=images.device)
        for i in range(images.shape[0]):
            draw = torch.rand(1 + 2 * len(spatial))
            if float(draw[0]) >= p:
                continue
            box = []
            for d, size in enumerate(spatial):
                side = max(int(round(size * (lo + (hi - lo) * float(draw[1 + d])))), 1)
                start = int(float(draw[1 + len(spatial) + d]) * (size - side + 1))
                box.append(slice(start, start + side))
            mask[(i, *box)] = True
        return mask if bool(mask.any()) else None

    @staticmethod
    def mix(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Inside ``mask`` (B, *S), take the next sample's values of ``x`` (B, *S) or (B, K, *S)."""
        if mask is None:
            return x
        m = mask if x.dim() == mask.dim() else mask.unsqueeze(1)
        return torch.where(m, x.roll(1, 0), x)

    # ---- the mathematics -------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C, *S) for images (B, channels, *S)."""
        raise NotImplementedError

    def supervised_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        lab = batch["labelled"]
        return self.loss_fn(self.logits(lab["image"]), lab["label"])

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.supervised_loss(batch), {}

    @torch.no_grad()
    def foreground_dice(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        """Mean Dice over the foreground classes of class maps ``pred`` vs ``gt`` (IGNORE left out):
        a diagnostic of pseudo-label quality on unlabelled data whose annotation is hidden."""
        known = gt != IGNORE
        dices = []
        for c in range(1, self.num_classes):
            p, g = (pred == c) & known, (gt == c) & known
            if g.any() or p.any():
                dices.append(2 * float((p & g).sum()) / float(p.sum() + g.sum()))
        return sum(dices) / len(dices) if dices else math.nan

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        probs = torch.softmax(self.logits(x).float(), dim=1)
        return probs, entropy(probs)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's last decoder feature map, before the 1x1 head (subclasses with a ``net``)."""
        return self.net.forward_features(x)[1]
