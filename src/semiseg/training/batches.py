"""Batches read from the cache: 2D slices and 3D patches, labelled or not, in a resumable,
rank-aware order, delivered by PyTorch's DataLoader.

Every batch is a function of (seed, step, rank): the index order comes from PyTorch's
DistributedSampler (one shuffled permutation per epoch, split across ranks), patch positions and
augmentations from generators seeded by the step. A resumed run therefore continues exactly where
it stopped, without storing sampler state; and a batch is the same whichever process builds it,
so :func:`step_loader` can hand the building to DataLoader worker processes (with pinned memory
and prefetching) without changing a single value: item ``i`` of its dataset is the whole batch of
step ``start + i``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.training.augment import Augmenter, StrongAugmenter
from semiseg.training.distributed import DistInfo
from semiseg.training.losses import IGNORE

#: a function of the step returning that step's batch (a dict of tensors, possibly nested)
BatchFn = Callable[[int], dict[str, Any]]


class Stream:
    """Endless stream of index batches over ``n`` items for this rank."""

    def __init__(self, n: int, batch_size: int, seed: int, info: DistInfo) -> None:
        if n < 1:
            raise ValueError("cannot stream an empty set of items")
        self.batch_size = batch_size
        self.sampler = DistributedSampler(range(n), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed)
        self.per_epoch = len(self.sampler)
        self._epoch = -1
        self._order: list[int] = []

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order, self._epoch = list(self.sampler), epoch
        return self._order

    def indices(self, step: int) -> list[int]:
        """Item indices of batch number ``step``."""
        out: list[int] = []
        pos = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos + len(out), self.per_epoch)
            out += self._epoch_order(epoch)[offset : offset + self.batch_size - len(out)]
        return out


def step_rng(seed: int, step: int, rank: int, stream: int = 0) -> np.random.Generator:
    """A generator determined by (seed, step, rank, stream): the source of all per-step randomness."""
    return np.random.default_rng([seed, step, rank, stream])


class SliceSource:
    """Axial slices of cached cases.

    ``load(indices)`` returns ``{"image": (B, C, S, S) float32, "label": (B, S, S) long}``; the
    label is the annotation when ``labelled``, else all IGNORE, and ``"gt"`` carries the
    annotation wherever the cache has one (for diagnostics only: never for training).
    """

    def __init__(self, cache: Cache, items: Sequence[tuple[str, int]], labelled: bool) -> None:
        self.cache = cache
        self.items = list(items)
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.items)

    def _gt(self, case_id: str, z: int) -> np.ndarray:
        s = self.cache.slice_size
        if self.cache.cases[case_id].labelled:
            return np.asarray(self.cache.slice_labels(case_id)[z], dtype=np.int64)
        return np.full((s, s), IGNORE, dtype=np.int64)

    def load(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        images, gts = [], []
        for i in indices:
            case_id, z = self.items[i]
            images.append(np.asarray(self.cache.slices(case_id)[z], dtype=np.float32))
            gts.append(self._gt(case_id, z))
        gt = torch.from_numpy(np.stack(gts))
        batch = {"image": torch.from_numpy(np.stack(images)), "gt": gt}
        batch["label"] = gt.clone() if self.labelled else torch.full_like(gt, IGNORE)
        return batch


class PatchSource:
    """Random 3D patches of cached volumes.

    With probability ``foreground_prob`` (labelled cases only) a patch is centred on a random
    annotated voxel, nnU-Net's oversampling that keeps small structures in view. Volumes smaller
    than the patch are padded with the background value. Returns the same keys as SliceSource.
    """

    def __init__(
        self,
        cache: Cache,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        labelled: bool,
        foreground_prob: float = 0.33,
    ) -> None:
        self.cache = cache
        self.items = list(case_ids)
        self.patch = tuple(int(p) for p in patch_size)
        self.labelled = labelled
        self.foreground_prob = foreground_prob if labelled else 0.0
        self.pad = cache.normaliser.background_value()
        self._foreground: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _foreground_voxels(self, case_id: str) -> np.ndarray:
        if case_id not in self._foreground:
            coords = np.argwhere(np.asarray(self.cache.volume_label(case_id)) > 0)
            if len(coords) > 10_000:  # a bounded sample is enough to pick centres from
                coords = coords[np.random.default_rng(0).choice(len(coords), 10_000, replace=False)]
            self._foreground[case_id] = coords
        return self._foreground[case_id]

    def crop(self, case_id: str, corner: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Patch at ``corner`` (may be padded): image (C, *patch) float32 and gt (*patch) int64."""
        vol = self.cache.volume(case_id)
        shape = vol.shape[1:]
        img = np.empty((vol.shape[0], *self.patch), dtype=np.float32)
        img[...] = self.pad.reshape(-1, 1, 1, 1)
        gt = np.full(self.patch, IGNORE if not self.cache.cases[case_id].labelled else 0, dtype=np.int64)
        src = tuple(slice(c, min(c + p, s)) for c, p, s in zip(corner, self.patch, shape))
        dst = tuple(slice(0, sl.stop - sl.start) for sl in src)
        img[(slice(None), *dst)] = vol[(slice(None), *src)]
        if self.cache.cases[case_id].labelled:
            gt[dst] = self.cache.volume_label(case_id)[src]
        return img, gt

    def load(self, indices: Sequence[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        images, gts = [], []
        for i in indices:
            case_id = self.items[i]
            shape = self.cache.volume(case_id).shape[1:]
            hi = [max(s - p, 0) for s, p in zip(shape, self.patch)]
            fg = self._foreground_voxels(case_id) if (self.foreground_prob and rng.random() < self.foreground_prob) else None
            if fg is not None and len(fg):
                centre = fg[rng.integers(len(fg))]
                corner = [int(min(max(c - p // 2, 0), h)) for c, p, h in zip(centre, self.patch, hi)]
            else:
                corner = [int(rng.integers(0, h + 1)) for h in hi]
            img, gt = self.crop(case_id, corner)
            images.append(img)
            gts.append(gt)
        gt = torch.from_numpy(np.stack(gts))
        batch = {"image": torch.from_numpy(np.stack(images)), "gt": gt}
        batch["label"] = gt.clone() if self.labelled else torch.full_like(gt, IGNORE)
        return batch


def augment_seed(seed: int, step: int, rank: int, stream: int = 7) -> int:
    """The seed of a step's augmentations (``stream``: 7 the labelled batch, 8 and 9 the
    unlabelled batch's weak and strong views)."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


class SegmentationBatches:
    """The batches of a segmentation method: augmented labelled items, and unlabelled ones for
    semi-supervised methods (``batch["labelled"]``, ``batch["unlabelled"]``), optionally
    as a weak view (the labelled augmentation, for the teacher) and a strong one (``"strong"``,
    intensity-only, for the student). Holds data sources
    and settings only (no network), so it is cheap to send to DataLoader workers."""

    def __init__(
        self,
        labelled: SliceSource | PatchSource,
        labelled_stream: Stream,
        augment: Augmenter,
        seed: int,
        rank: int,
        unlabelled: SliceSource | PatchSource | None = None,
        unlabelled_stream: Stream | None = None,
        weak: bool = False,
        strong: StrongAugmenter | None = None,
    ) -> None:
        self.labelled, self.labelled_stream = labelled, labelled_stream
        self.unlabelled, self.unlabelled_stream = unlabelled, unlabelled_stream
        self.augment, self.seed, self.rank = augment, seed, rank
        self.weak, self.strong = weak, strong

    def _load(self, source: SliceSource | PatchSource, stream: Stream, step: int, stream_id: int) -> dict[str, torch.Tensor]:
        idx = stream.indices(step)
        if isinstance(source, PatchSource):
            return source.load(idx, step_rng(self.seed, step, self.rank, stream_id))
        return source.load(idx)

    def __call__(self, step: int) -> dict[str, Any]:
        lab = self._load(self.labelled, self.labelled_stream, step, 0)
        lab["image"], lab["label"] = self.augment(lab["image"], lab["label"], augment_seed(self.seed, step, self.rank))
        batch: dict[str, Any] = {"labelled": lab}
        if self.unlabelled is not None and self.unlabelled_stream is not None:
            unl = self._load(self.unlabelled, self.unlabelled_stream, step, 1)
            if self.weak:  # the teacher's (weak) view; the hidden ground truth follows it
                unl["image"], unl["gt"] = self.augment(unl["image"], unl["gt"], augment_seed(self.seed, step, self.rank, 8))
            if self.strong is not None and self.strong.enabled:  # the student's (strong) view of the same voxels
                unl["strong"] = self.strong(unl["image"], augment_seed(self.seed, step, self.rank, 9))
            batch["unlabelled"] = unl
        return batch


class DiffusionBatches:
    """The batches of DDPM pretraining: slices divided by ``scale``, half of them mirrored along
    ``flip_axis`` (None: none)."""

    def __init__(self, source: SliceSource, stream: Stream, scale: float, flip_axis: int | None, seed: int, rank: int) -> None:
        self.source, self.stream, self.scale, self.flip_axis, self.seed, self.rank = source, stream, scale, flip_axis, seed, rank

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        x = self.source.load(self.stream.indices(step))["image"] / self.scale
        if self.flip_axis is not None:
            flip = torch.from_numpy(step_rng(self.seed, step, self.rank).random(len(x)) < 0.5)
            x[flip] = torch.flip(x[flip], dims=[self.flip_axis])
        return {"image": x}


class _UserError(dict):
    """A SemisegInputError met in a worker, sent back as data: DataLoader re-raises worker
    exceptions as RuntimeError with a traceback, which would hide the one-line message."""


class StepBatches(Dataset):
    """Item ``i`` is the batch of step ``start + i``."""

    def __init__(self, make: BatchFn, start: int, total: int) -> None:
        self.make, self.start, self.total = make, start, total

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self.make(self.start + i)
        except SemisegInputError as exc:
            return _UserError(path=exc.path, problem=exc.problem)


def resolve_workers(setting: Any, device: torch.device) -> int:
    """``train.workers``: a number, or ``auto``: none on a CPU (the cores train), else up to 4 per
    process, within the CPUs this node's processes share."""
    if setting in (None, "auto"):
        if device.type == "cpu":
            return 0
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(0, min(4, (os.cpu_count() or 1) // max(per_node, 1) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise SemisegInputError(None, f"train.workers must be auto or a number of processes (0 or more), got {setting!r}")
    return setting


def step_loader(make: BatchFn, start: int, total: int, workers: int = 0, prefetch: int = 2, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """The batches of steps ``start .. total - 1`` in order, built by ``workers`` DataLoader
    processes (0: in this process, each when it is asked for) with ``prefetch`` batches ready per
    worker and page-locked memory for fast copies to a GPU when ``pin_memory``."""
    loader = DataLoader(
        StepBatches(make, start, total),
        batch_size=None,  # an item is already a whole batch
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
        # DataLoader draws its workers' base seed from this generator (by default from torch's
        # global one, which would shift the noise a method draws at the first step: no exact resume)
        generator=torch.Generator().manual_seed(0),
    )
    for batch in loader:
        if isinstance(batch, _UserError):
            raise SemisegInputError(batch["path"], batch["problem"])
        yield batch
