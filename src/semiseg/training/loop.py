"""The one training loop every method runs on.

It owns the device, DDP wrapping, the precision (``train.precision``: bf16 or fp16 autocast, the
latter with a gradient scaler, or fp32), the batches (built by DataLoader worker processes,
``train.workers``, with pinned memory and prefetching), the optimiser and learning-rate schedule,
gradient clipping, checkpoints every K steps (atomic), exact resume, the progress bar (loss,
images/s, ETA), ``train_log.csv`` (with the share of the time spent waiting for data) and the
loss curve and the run's wall time (``timing.json``). Per-step randomness is re-seeded from (seed, step, rank), so a resumed run continues
as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from semiseg.config import is_count
from semiseg.errors import SemisegInputError
from semiseg.progress import log as log_line
from semiseg.progress import progress_bar
from semiseg.training.batches import resolve_workers, step_loader
from semiseg.training.checkpoint import (
    apply_training_state,
    check_state_dict,
    fit_state_dict,
    latest,
    load_model_state,
    read_training_state,
    remove_stale,
    save_checkpoint,
)
from semiseg.training.context import Trainable, TrainContext
from semiseg.training.distributed import all_reduce_mean, barrier
from semiseg.training.log import TIMING_FILE, CsvLog, WallClock, plot_loss_curve

LOG_FILE = "train_log.csv"
CURVE_FILE = "loss_curve.png"
#: devices PyTorch's fused Adam/AdamW kernels run on
FUSED_DEVICES = ("cpu", "cuda")


#: train settings that count steps or items: (name, smallest allowed value)
COUNTS = (("steps", 1), ("batch_size", 1), ("log_every", 1), ("checkpoint_every", 1), ("warmup_steps", 0))
#: train.optimizer values build_optimizer knows (any case)
OPTIMIZERS = ("adamw", "adam", "sgd")
#: train.schedule values build_lr_schedule knows
SCHEDULES = ("constant", "cosine", "poly")


def check_train_settings(cfg: dict[str, Any]) -> None:
    """One-line errors for ``train`` settings no run can use, so a bad value is refused before a
    run folder is created: step counts below 1, a learning rate that is not a positive number, a
    negative weight decay or gradient clip, an unknown optimizer, lr schedule, precision, workers
    or prefetch count."""
    for key, least in COUNTS:
        value = cfg.get(key, least)
        if value is None and key == "warmup_steps":
            continue
        if not is_count(value, least):
            raise SemisegInputError(None, f"train.{key} must be an integer of at least {least}, got {value!r}")
    try:
        lr = float(cfg["lr"])
    except (KeyError, TypeError, ValueError):
        raise SemisegInputError(None, f"train.lr must be a positive number, got {cfg.get('lr')!r}") from None
    if not (math.isfinite(lr) and lr > 0):
        raise SemisegInputError(None, f"train.lr must be a positive number, got {cfg['lr']!r}")
    for key in ("weight_decay", "grad_clip"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise SemisegInputError(None, f"train.{key} must be a number of at least 0 (or null), got {value!r}")
    optimizer = cfg.get("optimizer", "adamw")
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise SemisegInputError(None, f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if cfg.get("schedule", "constant") not in SCHEDULES:
        raise SemisegInputError(None, f"train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.get('schedule')!r}")
    autocast_for(cfg.get("precision", "auto"), torch.device("cpu"))
    resolve_workers(cfg.get("workers", "auto"), torch.device("cpu"))
    if not is_count(cfg.get("prefetch", 2), 1):
        raise SemisegInputError(None, f"train.prefetch must be a positive number of batches, got {cfg.get('prefetch')!r}")


def build_optimization(method: Trainable, total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Check ``method``'s train settings and build its optimizer and learning-rate schedule."""
    cfg = method.config["train"]
    check_train_settings(cfg)
    optimizer = build_optimizer(cfg, method.trainable_parameters())
    return optimizer, build_lr_schedule(cfg, optimizer, total)


def build_optimizer(cfg: dict[str, Any], params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD from a ``train`` config block that passed :func:`check_train_settings`.

    Adam and AdamW run PyTorch's fused implementation (one kernel over all parameters, on CPU and
    GPU alike; 3x less optimiser time than the per-tensor loop for the paper DDPM on CPU), which
    updates the same numbers up to float rounding (tests/training/test_loop.py);
    ``train.fused: false`` selects PyTorch's default implementation.
    """
    name = cfg.get("optimizer", "adamw").lower()
    lr = float(cfg["lr"])
    wd = float(cfg.get("weight_decay", 0.0) or 0.0)
    fused = True if cfg.get("fused", True) and all(p.device.type in FUSED_DEVICES for p in params) else None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, amsgrad=bool(cfg.get("amsgrad", False)), fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, amsgrad=bool(cfg.get("amsgrad", False)), fused=fused)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.99, nesterov=True)


def build_lr_schedule(cfg: dict[str, Any], optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant, cosine or nnU-Net's poly (0.9) decay (``train.schedule``,
    checked by :func:`check_train_settings`)."""
    kind = cfg.get("schedule", "constant")
    warmup = int(cfg.get("warmup_steps", 0) or 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "poly":
            return (1 - progress) ** 0.9
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_for(precision: Any, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None]:
    """The autocast context and gradient scaler of ``train.precision``: ``auto`` is bf16 on CUDA
    and fp32 elsewhere; ``fp16`` scales the loss so that small gradients survive half precision."""
    if precision not in PRECISIONS:
        raise SemisegInputError(None, f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global generator (dropout, noise) from (seed, step, rank)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = _to_device(v, device)
        elif torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


def _non_finite(batch: dict[str, Any]) -> bool:
    return any(
        _non_finite(v) if isinstance(v, dict) else (torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()))
        for v in batch.values()
    )


def divergence(method: Trainable, batch: dict[str, Any], loss: float, step: int) -> str:
    """Why the loss of ``step`` is not finite, as far as can be told: the data, or the optimisation.
    (Weights read from a checkpoint or a pretrained run are refused when not finite, so NaN weights
    here were made by this training.)"""
    if _non_finite(batch):
        return f"the training batch of step {step} holds NaN or Inf values (loss {loss}): the cache is damaged; prepare it again"
    bad = next((name for name, p in method.named_parameters() if not bool(torch.isfinite(p).all())), None)
    where = f" (weights such as {bad} became NaN/Inf)" if bad else ""
    return f"training diverged: loss is {loss} at step {step}{where}; lower train.lr or set train.grad_clip"


def fit(method: Trainable, ctx: TrainContext, resume: bool = False) -> int:
    """Train ``method`` for ``ctx.total_steps`` steps in ``ctx.run_dir``; returns the last step.

    With ``resume``, weights, optimiser, schedule and step come from the run's latest checkpoint.
    """
    cfg = method.config["train"]
    info, device, total = ctx.info, ctx.device, ctx.total_steps
    method.to(device)
    optimizer, scheduler = build_optimization(method, total)
    params = method.trainable_parameters()
    autocast, scaler = autocast_for(cfg.get("precision", "auto"), device)
    restored = None
    if resume:
        # everything is checked before the run folder changes: a damaged checkpoint leaves it as it was
        ckpt = latest(ctx.run_dir)
        if ckpt is not None:
            weights = load_model_state(ckpt.folder)
            check_state_dict(method, weights, ckpt.folder)
            restored = (ckpt, weights, read_training_state(ckpt, optimizer, scheduler))
        if info.main:
            for stale in remove_stale(ctx.run_dir):
                log_line(f"removed {stale.name}, left by an interrupted write")
    clock = None
    if info.main:  # before the set-up: a method's set-up (e.g. feature extraction) is part of its cost
        cuda = torch.version.cuda if device.type == "cuda" else None
        clock = WallClock(ctx.run_dir / TIMING_FILE, "train", device=str(device), processes=info.world, torch=torch.__version__, cuda=cuda)
    method.setup(ctx)
    start = 0
    if restored is not None:
        ckpt, weights, training = restored
        fit_state_dict(method, {k: v.to(device) for k, v in weights.items()}, ckpt.folder)
        start = apply_training_state(training, optimizer, scheduler, ckpt.folder, scaler)
    ctx.start_step, ctx.resumed = start, resume
    if clock is not None:
        clock.tick(first_step=start, last_step=start)
    model: torch.nn.Module = method
    if info.distributed:
        model = DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(method, "find_unused_parameters", False)),
        )
    maker = method.batch_maker()
    workers = resolve_workers(cfg.get("workers", "auto"), device) if maker is not None else 0
    batches = step_loader(
        maker or method.next_batch, start, total, workers, int(cfg.get("prefetch", 2)), pin_memory=device.type == "cuda"
    )
    log_every = int(cfg.get("log_every", 50))
    ckpt_every = int(cfg.get("checkpoint_every", 500))
    clip = cfg.get("grad_clip")
    log = CsvLog(ctx.run_dir / LOG_FILE, resume_step=start if resume else None) if info.main else None
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    images = 0
    waited = 0.0  # seconds this logging window spent waiting for batches
    t_window = time.perf_counter()

    with progress_bar(info.main) as bar:
        task = bar.add_task(method.name, total=total, completed=start, info="", unit="step", every=log_every)
        for step in range(start, total):
            seed_step(ctx.seed, step, info.rank)
            method.train()
            t_wait = time.perf_counter()
            batch = _to_device(next(batches), device)
            waited += time.perf_counter() - t_wait
            with autocast:
                loss, logs = model(batch, step)
            if not torch.isfinite(loss):
                raise SemisegInputError(ctx.run_dir, divergence(method, batch, float(loss.detach()), step))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients
            else:
                loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, float(clip))
            if scaler is not None:
                scaler.step(optimizer)  # skipped when the scaled gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            method.after_optimizer_step(step)

            images += method.images_per_step() * info.world
            # a step may report NaN for a value it cannot define (e.g. an accuracy without ground
            # truth): each value is averaged over the steps that defined it
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                sums.setdefault(k, 0.0)
                counts.setdefault(k, 0)
                if not math.isnan(float(v)):
                    sums[k] += float(v)
                    counts[k] += 1
            done = step + 1
            if done % log_every == 0 or done == total:
                means = {k: (sums[k] / counts[k] if counts[k] else math.nan) for k in sums}
                means = all_reduce_mean(info, means, device)
                elapsed = time.perf_counter() - t_window
                rate = images / max(elapsed, 1e-9)
                wait_share = waited / max(elapsed, 1e-9)
                if log is not None:
                    log.write({"step": done, "lr": scheduler.get_last_lr()[0], "images_per_s": round(rate, 3),
                               "data_wait_share": round(wait_share, 4), **means})
                shown = ", ".join(f"{k} {v:.4g}" for k, v in list(means.items())[:4])
                bar.update(task, info=f"{shown}, {rate:.1f} img/s, {100 * wait_share:.0f}% waiting for data")
                if clock is not None:
                    clock.tick(last_step=done)
                sums, counts, images, waited, t_window = {}, {}, 0, 0.0, time.perf_counter()
            bar.update(task, completed=done)
            if done % ckpt_every == 0 or done == total:
                if info.main:
                    meta = {"grad_scaler": scaler.state_dict()} if scaler is not None else None
                    save_checkpoint(ctx.run_dir, done, method, optimizer, scheduler, meta)
                barrier(info)
    method.finish()
    if info.main and (ctx.run_dir / LOG_FILE).exists():
        plot_loss_curve(ctx.run_dir / LOG_FILE, ctx.run_dir / CURVE_FILE, title=method.name)
    if clock is not None:
        clock.tick(last_step=total)
    return total
