"""What the training loop and what it trains agree on: the context a run hands over, and the
hooks of :class:`Trainable`. The loop imports nothing model- or method-specific; every method
(:mod:`semiseg.methods`) is a Trainable."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from semiseg.preprocess.cache import Cache
from semiseg.training.distributed import DistInfo
from semiseg.training.plan import DataPlan


@dataclass
class TrainContext:
    """What the loop hands a task for training."""

    cache: Cache
    plan: DataPlan
    seed: int
    info: DistInfo
    device: torch.device
    run_dir: Path
    total_steps: int
    ddpm_run: Path | None = None
    #: set by the loop once a checkpoint is restored: the step training continues from
    start_step: int = 0
    resumed: bool = False


class Trainable(nn.Module):
    """Base of everything the loop trains (every method). The loop calls, in this order:
    ``setup`` once, then per step ``next_batch`` (or ``batch_maker()`` in DataLoader workers), ``forward`` (through DDP) and
    ``after_optimizer_step``; ``finish`` after the last step. ``config["train"]`` holds the loop's
    settings (steps, optimizer, lr, schedule, clipping, logging and checkpoint intervals)."""

    name: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.ctx: TrainContext | None = None

    def setup(self, ctx: TrainContext) -> None:
        """Prepare training (data sources, pretrained weights); not called for prediction."""
        self.ctx = ctx

    def next_batch(self, step: int) -> dict[str, Any]:
        """The batch of ``step``: a function of (seed, step, rank) only, so resume is exact."""
        raise NotImplementedError

    def batch_maker(self) -> Callable[[int], dict[str, Any]] | None:
        """A small callable ``step -> batch`` equal to :meth:`next_batch` but holding only data
        sources and settings (no network), which DataLoader workers may run (``train.workers``);
        None (the default): batches are built in the training process by ``next_batch``."""
        return None

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The training step: (loss, scalar logs)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def after_optimizer_step(self, step: int) -> None:
        """EMA updates and the like."""

    def finish(self) -> None:
        """Called once after the last step (e.g. to delete temporary files)."""

    def images_per_step(self) -> int:
        """Images (slices or patches) one step processes on one rank, for the images/s display."""
        return int(self.config["train"]["batch_size"])
