"""The method interface: a method is configuration plus a few hooks on the shared loop.

A method is a :class:`~semiseg.training.context.Trainable` (an ``nn.Module`` holding its
networks). The loop (:mod:`semiseg.training.loop`) owns devices, DDP, mixed precision, optimiser,
checkpoints, resume, progress and logs; a method owns its mathematics:

* ``__init__(config, data)`` builds the networks (so a checkpoint loads into a fresh instance),
* ``setup(ctx)`` prepares training (data sources from ``ctx.plan``, pretrained weights),
* ``next_batch(step)`` -> the batch of a step,
* ``forward(batch, step)`` -> ``(loss, logs)``: the training step, run through DDP,
* ``after_optimizer_step(step)``: EMA updates and the like,
* ``predict(x)`` -> ``(probabilities, uncertainty or None)`` for a batch of slices or patches.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from semiseg.config import is_count
from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import DataInfo
from semiseg.training.context import Trainable

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    import semiseg.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise SemisegInputError(None, f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``module`` (PyTorch's AveragedModel), without gradients."""
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


#: slices per forward when predicting 2D with ``predict.batch_size: auto`` (README: Performance)
CPU_PREDICT_BATCH = 2
GPU_PREDICT_BATCH = 16


def check_predict_settings(cfg: Mapping[str, Any]) -> None:
    """One-line errors for ``predict`` settings no prediction can use, raised when a method is built,
    so a bad value stops ``semiseg train`` before it trains, not its evaluation after."""
    batch = cfg.get("batch_size", "auto")
    if batch != "auto" and not is_count(batch, 1):
        raise SemisegInputError(None, f"predict.batch_size must be an integer of at least 1 or auto, got {batch!r}")
    windows = cfg.get("windows", 1)
    if not is_count(windows, 1):
        raise SemisegInputError(None, f"predict.windows must be an integer of at least 1, got {windows!r}")
    overlap = cfg.get("overlap", 0.5)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise SemisegInputError(None, f"predict.overlap must be a number from 0 up to (not including) 1, got {overlap!r}")


class Method(Trainable):
    """Base class of every method; see the module docstring for the hooks."""

    #: shipped preset files layered for this method's configuration
    config_files: ClassVar[list[str]] = []
    #: True if training uses unlabelled data
    semi_supervised: ClassVar[bool] = False
    #: True if the method builds on a pretrained DDPM run (``--ddpm RUN``)
    needs_ddpm: ClassVar[bool] = False
    #: False for DDPM pretraining, which trains no segmenter
    segments: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any], data: DataInfo | Mapping[str, Any]) -> None:
        super().__init__(config)
        self.data = data = DataInfo.of(data)
        self.scheme = data.scheme
        self.channels = data.channels
        self.num_classes = self.scheme.num_classes
        self.dims = int(config.get("dims", 2))
        check_predict_settings(config.get("predict") or {})

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities (B, C, *S) and an optional uncertainty map (B, *S) for images x."""
        raise NotImplementedError

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel features (B, D, *S) the method reads its classes from, for label selection
        (:mod:`semiseg.selection`): similar images have similar features."""
        raise NotImplementedError(f"{self.name} has no embedding")

    def predict_batch_size(self) -> int:
        """Slices per forward when predicting 2D (``predict.batch_size``; ``auto``: few on a CPU,
        whose caches a small batch's activations fit, :data:`GPU_PREDICT_BATCH` on a GPU)."""
        value = self.config.get("predict", {}).get("batch_size", "auto")
        if value == "auto":
            on_cpu = next(self.parameters()).device.type == "cpu"
            return CPU_PREDICT_BATCH if on_cpu else GPU_PREDICT_BATCH
        return int(value)

    def predict_windows(self) -> int:
        """Sliding-window patches per forward when predicting 3D (memory grows with it)."""
        return int(self.config.get("predict", {}).get("windows", 2))

    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.config["patch_size"])
