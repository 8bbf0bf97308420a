"""The method interface: a method is configuration plus a few hooks on the shared loop.

A method is an ``nn.Module`` holding its networks. The loop (:mod:`semiseg.training.loop`) owns
devices, DDP, mixed precision, optimiser, checkpoints, resume, progress and logs; a method owns its
mathematics:

* ``__init__(config, data_info)`` builds the networks (so a checkpoint loads into a fresh instance),
* ``setup(ctx)`` prepares training (data sources, pretrained weights); not called for prediction,
* ``next_batch(step)`` -> the batch of a step,
* ``forward(batch, step)`` -> ``(loss, logs)``: the training step, run through DDP,
* ``after_optimizer_step(step)``: EMA updates and the like,
* ``predict(x)`` -> ``(probabilities, uncertainty or None)`` for a batch of slices or patches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from semiseg.data.labels import LabelScheme
from semiseg.preprocess.cache import Cache
from semiseg.training.distributed import DistInfo

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    import semiseg.methods  # noqa: F401  (registers the built-in methods)
    from semiseg.errors import SemisegInputError

    if name not in METHODS:
        raise SemisegInputError(None, f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass
class TrainContext:
    """What the loop hands a method for training."""

    cache: Cache
    plan: dict[str, Any]
    seed: int
    info: DistInfo
    device: torch.device
    run_dir: Path
    total_steps: int
    ddpm_run: Path | None = None
    #: set by the loop once a checkpoint is restored: the step training continues from
    start_step: int = 0
    resumed: bool = False


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``module`` (PyTorch's AveragedModel), without gradients."""
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


class Method(nn.Module):
    """Base class of every method; see the module docstring for the hooks."""

    name: ClassVar[str] = ""
    #: shipped preset files layered for this method's configuration
    config_files: ClassVar[list[str]] = []
    #: True if training uses unlabelled data
    semi_supervised: ClassVar[bool] = False
    #: True if the method builds on a pretrained DDPM run (``--ddpm RUN``)
    needs_ddpm: ClassVar[bool] = False
    #: False for DDPM pretraining, which trains no segmenter
    segments: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.data_info = data_info
        self.scheme = LabelScheme.from_json(data_info["scheme"])
        self.channels = len(data_info["modalities"])
        self.num_classes = self.scheme.num_classes
        self.dims = int(config.get("dims", 2))
        self.ctx: TrainContext | None = None

    # ---- training hooks -------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    def next_batch(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def after_optimizer_step(self, step: int) -> None:
        pass

    def finish(self) -> None:
        """Called once after the last step (e.g. to delete temporary files)."""

    def images_per_step(self) -> int:
        """Images (slices or patches) one step processes on one rank, for the images/s display."""
        return int(self.config["train"]["batch_size"])

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities (B, C, *S) and an optional uncertainty map (B, *S) for images x."""
        raise NotImplementedError

    def predict_batch_size(self) -> int:
        """Slices per forward when predicting 2D."""
        return int(self.config.get("predict", {}).get("batch_size", 8))

    def predict_windows(self) -> int:
        """Sliding-window patches per forward when predicting 3D (memory grows with it)."""
        return int(self.config.get("predict", {}).get("windows", 2))

    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.config["patch_size"])
