"""Checkpoints as safetensors + JSON: loading one never unpickles anything.

A checkpoint is a folder ``RUN/checkpoints/step-00001000/`` holding

* ``weights.safetensors``: the model's parameters and buffers,
* ``ema.safetensors``: the EMA copy, when the method keeps one,
* ``state.safetensors``: optimizer tensors and RNG states,
* ``checkpoint.json``: step, optimizer hyper-parameters, scheduler state, free metadata.

The folder is built under a temporary name and renamed when complete; then ``RUN/latest.json``
is replaced atomically to point at it, and older checkpoints are removed. A process killed at any
moment (even SIGKILL) therefore leaves ``latest.json`` pointing at a complete checkpoint.
"""

from __future__ import annotations

import shutil
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.files import atomic_dir, read_json, write_json

LATEST = "latest.json"
WEIGHTS = "weights.safetensors"
EMA = "ema.safetensors"
STATE = "state.safetensors"
META = "checkpoint.json"
EMA_PREFIX = "ema."


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (views, tied weights): store independent copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: str | PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``model`` (and optimizer/scheduler) at ``step``; return its folder."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints" / f"step-{step:08d}"
    state_dict = model.state_dict()
    weights = {k: v for k, v in state_dict.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)}
    info: dict[str, Any] = {"step": step, **(meta or {})}
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(_cpu(weights), str(tmp / WEIGHTS), metadata={"step": str(step)})
        if ema:
            save_file(_cpu(ema), str(tmp / EMA), metadata={"step": str(step)})
        state: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                state[f"rng.cuda.{i}"] = s
        if optimizer is not None:
            opt_tensors, opt_meta = _optimizer_to_tensors(optimizer)
            state.update(opt_tensors)
            info["optimizer"] = opt_meta
        if scheduler is not None:
            info["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        save_file(_cpu(state), str(tmp / STATE), metadata={"step": str(step)})
        write_json(tmp / META, info)
    write_json(run_dir / LATEST, {"checkpoint": str(folder.relative_to(run_dir)), "step": step})
    for old in (run_dir / "checkpoints").glob("step-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: str | PathLike) -> Path | None:
    """The folder ``latest.json`` points at, or None if the run has no checkpoint yet."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.exists():
        return None
    latest = read_json(pointer, "checkpoint pointer")
    if not isinstance(latest.get("checkpoint"), str):
        raise SemisegInputError(pointer, "checkpoint pointer has no 'checkpoint' entry")
    folder = run_dir / latest["checkpoint"]
    if not (folder / META).exists():
        raise SemisegInputError(folder, "checkpoint folder is incomplete or missing")
    return folder


def latest_step(run_dir: str | PathLike) -> int | None:
    """The training step of a run's latest checkpoint, or None if it has none yet."""
    folder = latest_checkpoint(run_dir)
    return None if folder is None else checkpoint_step(folder)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder was written at (from its ``checkpoint.json``)."""
    step = read_checkpoint_meta(folder).get("step")
    if not isinstance(step, int) or step < 0:
        raise SemisegInputError(folder / META, f"has no valid 'step' (got {step!r})")
    return step


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SemisegInputError(path, f"cannot be read as safetensors ({exc})") from None


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    return read_json(folder / META, "checkpoint metadata")


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (EMA entries prefixed ``ema.``) from a checkpoint folder."""
    tensors = _load(folder / WEIGHTS)
    if (folder / EMA).exists():
        tensors.update({EMA_PREFIX + k: v for k, v in _load(folder / EMA).items()})
    return tensors


def fit_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | PathLike, hint: str = "") -> None:
    """Load ``tensors`` into ``module`` strictly; a mismatch is a one-line SemisegInputError.

    The message names the first differing tensor and its shapes, e.g. a DDPM trained on 4
    channels loaded for 2-channel data.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    for key, value in expected.items():
        if key in tensors and tuple(tensors[key].shape) != tuple(value.shape):
            raise SemisegInputError(
                source,
                f"checkpoint does not fit: {key} has shape {tuple(tensors[key].shape)} in the checkpoint "
                f"but {tuple(value.shape)} in the model{hint}",
            )
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unknown tensor {unexpected[0]}"
        raise SemisegInputError(
            source,
            f"checkpoint does not fit: it {what} ({len(missing)} missing, {len(unexpected)} unexpected){hint}",
        )
    module.load_state_dict(tensors, strict=True)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout.
    Safetensors stores them contiguous; a channels-last parameter paired with a contiguous moment
    makes the fused Adam kernels, which walk both as flat buffers, update the wrong elements."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_training_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> int:
    """Restore optimizer, scheduler and RNG state from a checkpoint folder; return its step."""
    meta = read_checkpoint_meta(folder)
    state = _load(folder / STATE)
    if "optimizer" in meta:
        optimizer.load_state_dict(_optimizer_from_tensors(state, meta["optimizer"]))
        _match_layouts(optimizer)
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(state["rng.torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return checkpoint_step(folder)
