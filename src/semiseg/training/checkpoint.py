"""Checkpoints as safetensors + JSON: loading one never unpickles anything.

A checkpoint is a folder ``RUN/checkpoints/step-00001000/`` holding

* ``weights.safetensors``: the model's parameters and buffers,
* ``ema.safetensors``: the EMA copy, when the method keeps one,
* ``state.safetensors``: optimizer tensors and RNG states,
* ``checkpoint.json``: step, optimizer hyper-parameters, scheduler state, free metadata.

The folder is built under a temporary name and renamed when complete; then ``RUN/latest.json``
is replaced atomically to point at it, and older checkpoints are removed. A process killed at any
moment (even SIGKILL) therefore leaves ``latest.json`` pointing at a complete checkpoint (or no
``latest.json`` yet, and then the newest complete folder is the checkpoint).

Reading one validates it before anything is loaded: the step that ``latest.json``, the folder
name, ``checkpoint.json``, the metadata of every safetensors file and the scheduler record must
agree; weights and optimizer tensors must be finite and fit the model; the RNG state must be
whole. Every problem is a one-line SemisegInputError naming the file.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from semiseg.config import is_count
from semiseg.errors import SemisegInputError
from semiseg.files import atomic_dir, os_problem, read_json, remove_temporaries, write_json
from semiseg.progress import log

LATEST = "latest.json"
CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
EMA = "ema.safetensors"
STATE = "state.safetensors"
META = "checkpoint.json"
EMA_PREFIX = "ema."
RNG = "rng.torch"
STEP_FOLDER = re.compile(r"^step-(\d{8})$")


def step_folder(run_dir: str | PathLike, step: int) -> Path:
    """The checkpoint folder of ``step`` in a run folder."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


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


def _save(tensors: dict[str, torch.Tensor], path: Path, target: Path, step: int) -> None:
    """Write tensors as safetensors; an OS error (safetensors reports it as a SafetensorError) is a
    one-line error naming ``target``, the checkpoint being written."""
    try:
        save_file(_cpu(tensors), str(path), metadata={"step": str(step)})
    except SafetensorError as exc:
        found = re.search(r"I/O error: (.+?)(?: \(os error \d+\))?$", str(exc))
        problem = found.group(1) if found else str(exc)
        raise SemisegInputError(target, f"cannot be written: {problem[:1].lower()}{problem[1:]}") from None


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
    folder = step_folder(run_dir, step)
    state_dict = model.state_dict()
    weights = {k: v for k, v in state_dict.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)}
    info: dict[str, Any] = {"step": step, **(meta or {})}
    with atomic_dir(folder, overwrite=True) as tmp:
        _save(weights, tmp / WEIGHTS, folder, step)
        if ema:
            _save(ema, tmp / EMA, folder, step)
        state: dict[str, torch.Tensor] = {RNG: torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                state[f"rng.cuda.{i}"] = s
        if optimizer is not None:
            opt_tensors, opt_meta = _optimizer_to_tensors(optimizer)
            state.update(opt_tensors)
            info["optimizer"] = opt_meta
        if scheduler is not None:
            info["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        _save(state, tmp / STATE, folder, step)
        write_json(tmp / META, info)
    write_json(run_dir / LATEST, {"checkpoint": str(folder.relative_to(run_dir)), "step": step})
    for old in (run_dir / CHECKPOINTS).glob("step-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder whose records agree on its ``step``; ``meta`` is its checkpoint.json."""

    folder: Path
    step: int
    meta: dict[str, Any]


def _metadata_step(path: Path) -> int | None:
    """The step a safetensors file was written at (from its header; no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise SemisegInputError(path, f"cannot be read as safetensors ({exc})") from None
    step = meta.get("step")
    return int(step) if isinstance(step, str) and step.isdigit() else None


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    if not is_count(meta.get("step")):
        raise SemisegInputError(path, f"checkpoint metadata has no valid 'step' (got {meta.get('step')!r:.40})")
    opt = meta.get("optimizer")
    if opt is not None:
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if (
            not isinstance(groups, list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            or not isinstance(opt.get("scalars"), dict)
        ):
            raise SemisegInputError(path, "checkpoint metadata's 'optimizer' must hold 'param_groups' (each with 'params') and 'scalars'")
    sched = meta.get("scheduler")
    if sched is not None and (not isinstance(sched, dict) or not is_count(sched.get("last_epoch"))):
        raise SemisegInputError(path, "checkpoint metadata's 'scheduler' must be an object with an integer 'last_epoch'")


def read_checkpoint(folder: str | PathLike, pointer_step: int | None = None) -> Checkpoint:
    """Validate a checkpoint folder's records and return it.

    ``pointer_step`` is the step ``latest.json`` gives. Every record of the step (that, the folder
    name, checkpoint.json, the scheduler's count and each safetensors file's metadata) must agree:
    a checkpoint whose records disagree was edited or damaged, and which one is right is unknown.
    """
    folder = Path(folder)
    for name in (META, WEIGHTS, STATE):
        if not (folder / name).is_file():
            raise SemisegInputError(folder, f"checkpoint is incomplete: it lacks {name}")
    meta = read_json(folder / META, "checkpoint metadata")
    _check_meta(meta, folder / META)
    steps: dict[str, int | None] = {META: meta["step"]}
    match = STEP_FOLDER.match(folder.name)
    if match:
        steps["the folder name"] = int(match.group(1))
    if pointer_step is not None:
        steps[LATEST] = pointer_step
    if "scheduler" in meta:
        steps["the lr schedule"] = meta["scheduler"]["last_epoch"]
    for name in (WEIGHTS, EMA, STATE):
        if (folder / name).exists():
            steps[name] = _metadata_step(folder / name)
    if len(set(steps.values())) > 1:
        said = ", ".join(f"{k} says {v}" for k, v in steps.items())
        raise SemisegInputError(folder, f"checkpoint records disagree on its step ({said}); it was edited or damaged")
    return Checkpoint(folder, meta["step"], meta)


def complete_checkpoints(run_dir: str | PathLike) -> list[Path]:
    """The run's checkpoint folders that were renamed into place (so complete), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_FOLDER.match(p.name) and (p / META).is_file())


def latest(run_dir: str | PathLike) -> Checkpoint | None:
    """The checkpoint ``latest.json`` points at (validated), or None if the run has none yet.

    Without ``latest.json`` (a run killed between renaming its first checkpoint into place and
    writing the pointer, or a pointer deleted by hand) the newest complete checkpoint folder is it.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.exists():
        folders = complete_checkpoints(run_dir)
        if not folders:
            return None
        log(f"note: {run_dir} has no {LATEST}; using its newest complete checkpoint, {folders[-1].name}")
        return read_checkpoint(folders[-1])
    for attempt in range(3):
        obj = read_json(pointer, "checkpoint pointer")
        rel, step = obj.get("checkpoint"), obj.get("step")
        if not isinstance(rel, str) or not is_count(step):
            raise SemisegInputError(pointer, "checkpoint pointer must hold 'checkpoint' (a folder) and 'step' (an integer)")
        folder = run_dir / rel
        if folder != step_folder(run_dir, step):
            raise SemisegInputError(pointer, f"checkpoint pointer names {rel!r}, which is not the folder of step {step}")
        try:
            if not (folder / META).exists():
                raise SemisegInputError(folder, "checkpoint folder is incomplete or missing")
            return read_checkpoint(folder, step)
        except SemisegInputError:
            # a run still training may have replaced this checkpoint while it was read: read the new one
            if attempt == 2 or read_json(pointer, "checkpoint pointer") == obj:
                raise
    raise AssertionError("unreachable")


def latest_checkpoint(run_dir: str | PathLike) -> Path | None:
    """The folder of the run's latest checkpoint (validated), or None if it has none yet."""
    ckpt = latest(run_dir)
    return None if ckpt is None else ckpt.folder


def latest_step(run_dir: str | PathLike) -> int | None:
    """The training step of a run's latest checkpoint, or None if it has none yet."""
    ckpt = latest(run_dir)
    return None if ckpt is None else ckpt.step


def remove_stale(run_dir: str | PathLike) -> list[Path]:
    """Remove what interrupted writes left in a run folder: temporary files, partial checkpoint
    folders, and checkpoints other than the latest. Only for a run this process holds the lock of."""
    run_dir = Path(run_dir)
    keep = latest_checkpoint(run_dir)
    removed = remove_temporaries(run_dir)
    if (run_dir / CHECKPOINTS).is_dir():
        removed += remove_temporaries(run_dir / CHECKPOINTS)
        for old in complete_checkpoints(run_dir):
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
    return removed


def weights_digest(folder: str | PathLike) -> str:
    """sha256 of the weights a run built on this checkpoint uses: the EMA copy when kept, else the weights."""
    folder = Path(folder)
    path = folder / EMA if (folder / EMA).exists() else folder / WEIGHTS
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as exc:
        raise SemisegInputError(path, f"cannot be read: {os_problem(exc)}") from None
    return digest.hexdigest()


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SemisegInputError(path, f"cannot be read as safetensors ({exc})") from None


def _check_finite(tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SemisegInputError(path, f"{what} {key} holds NaN or Inf values; the checkpoint is damaged or its training diverged")


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (EMA entries prefixed ``ema.``) from a checkpoint folder;
    non-finite weights are refused."""
    tensors = _load(folder / WEIGHTS)
    _check_finite(tensors, folder / WEIGHTS, "weight")
    if (folder / EMA).exists():
        ema = _load(folder / EMA)
        _check_finite(ema, folder / EMA, "weight")
        tensors.update({EMA_PREFIX + k: v for k, v in ema.items()})
    return tensors


def check_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | PathLike, hint: str = "") -> None:
    """Raise a one-line SemisegInputError unless ``tensors`` fit ``module`` exactly.

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


def fit_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | PathLike, hint: str = "") -> None:
    """Load ``tensors`` into ``module`` strictly; a mismatch is a one-line SemisegInputError."""
    check_state_dict(module, tensors, source, hint)
    module.load_state_dict(tensors, strict=True)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout.
    Safetensors stores them contiguous; a channels-last parameter paired with a contiguous moment
    makes the fused Adam kernels, which walk both as flat buffers, update the wrong elements."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


@dataclass
class TrainingState:
    """A checkpoint's optimizer, scheduler, RNG and (fp16 runs) gradient-scaler state, checked
    against the run's optimizer."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: torch.Tensor
    cuda_rng: list[torch.Tensor]
    grad_scaler: dict[str, Any] | None = None


def _grad_scaler_state(meta: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The gradient scaler's state in checkpoint.json (None for runs without one): a scale that is
    not a finite positive number would turn every later loss into Inf or 0, and a missing entry
    would fail only once the scaler loads it."""
    state = meta.get("grad_scaler")
    if state is None:
        return None
    scale = state.get("scale") if isinstance(state, dict) else None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise SemisegInputError(path, "checkpoint metadata's 'grad_scaler' must be an object with a finite positive 'scale'; the checkpoint is damaged")
    missing = [k for k in torch.amp.GradScaler("cpu").state_dict() if not isinstance(state.get(k), (int, float))]
    if missing:
        raise SemisegInputError(path, f"checkpoint metadata's 'grad_scaler' lacks the number {missing[0]!r}; the checkpoint is damaged")
    return state


def read_training_state(
    ckpt: Checkpoint, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None
) -> TrainingState:
    """Read and check a checkpoint's training state before anything is loaded: every optimizer
    tensor belongs to a parameter of the run's optimizer and has its shape and finite values, the
    parameter groups match, the RNG state is whole, a gradient scaler's scale is usable."""
    path = ckpt.folder / STATE
    state = _load(path)
    rng = state.get(RNG)
    reference = torch.get_rng_state()
    if rng is None or rng.dtype != reference.dtype or rng.shape != reference.shape:
        found = "missing" if rng is None else f"{rng.dtype} of shape {tuple(rng.shape)}"
        raise SemisegInputError(path, f"RNG state {RNG} is {found}, not {reference.dtype} of shape {tuple(reference.shape)}")
    opt_meta = ckpt.meta.get("optimizer")
    if opt_meta is None:
        raise SemisegInputError(ckpt.folder / META, "checkpoint has no optimizer state to resume from")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = opt_meta["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise SemisegInputError(
            ckpt.folder / META, f"optimizer state has {sum(len(g['params']) for g in groups)} parameters in {len(groups)} groups; "
            f"the model has {len(params)} in {len(optimizer.param_groups)}"
        )
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in state.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = (name.split(".", 2) + ["", ""])[:3]
        if not pid.isdigit() or int(pid) >= len(params) or not key:
            raise SemisegInputError(path, f"optimizer tensor {name} belongs to no parameter of the model")
        param = params[int(pid)]
        if value.dim() > 0 and value.shape != param.shape:
            raise SemisegInputError(
                path, f"optimizer tensor {name} has shape {tuple(value.shape)} but its parameter has {tuple(param.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SemisegInputError(path, f"optimizer tensor {name} holds NaN or Inf values")
        per_param.setdefault(int(pid), {})[key] = value
    for name, value in opt_meta["scalars"].items():
        pid, _, key = str(name).partition(".")
        if not pid.isdigit() or int(pid) >= len(params) or not key:
            raise SemisegInputError(ckpt.folder / META, f"optimizer value {name!r} belongs to no parameter of the model")
        per_param.setdefault(int(pid), {})[key] = value
    sched = ckpt.meta.get("scheduler")
    if scheduler is not None and sched is None:
        raise SemisegInputError(ckpt.folder / META, "checkpoint has no lr schedule state to resume from")
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("rng.cuda."))]
    scaler = _grad_scaler_state(ckpt.meta, ckpt.folder / META)
    return TrainingState(ckpt.step, {"state": per_param, "param_groups": groups}, sched, rng, cuda, scaler)


def apply_training_state(
    training: TrainingState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    source: Path,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Load a checked training state into the optimizer, scheduler, RNG and (when given and the
    checkpoint has its state) gradient scaler; return its step."""
    try:
        optimizer.load_state_dict(training.optimizer)
        _match_layouts(optimizer)
        if scheduler is not None and training.scheduler is not None:
            scheduler.load_state_dict({**scheduler.state_dict(), **training.scheduler})
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SemisegInputError(source, f"optimizer state does not fit the run's optimizer ({str(exc).splitlines()[0]})") from None
    if scaler is not None and training.grad_scaler is not None:
        scaler.load_state_dict(training.grad_scaler)
    torch.set_rng_state(training.rng)
    if torch.cuda.is_available() and len(training.cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(training.cuda_rng)
    return training.step
