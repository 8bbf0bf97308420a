"""Run folders: create one for training, resume it, or load a trained method from it.

A run folder holds ``config.json`` (method, resolved configuration, data description, data plan,
seed), ``latest.json`` + ``checkpoints/`` (see :mod:`semiseg.training.checkpoint`),
``train_log.csv``, ``loss_curve.png`` and method-specific extras.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch

import semiseg
from semiseg.atomic import write_json
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method, TrainContext, get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log
from semiseg.training.checkpoint import fit_state_dict, latest_checkpoint, load_model_state
from semiseg.training.distributed import barrier, init_distributed, pick_device
from semiseg.training.loop import fit
from semiseg.training.plan import make_plan

CONFIG = "config.json"


def read_run_config(run_dir: str | PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run folder; SemisegInputError if it is not one."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise SemisegInputError(run_dir, "run folder not found")
    if not path.exists():
        raise SemisegInputError(run_dir, f"is not a semiseg run folder (no {CONFIG})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SemisegInputError(path, f"is not valid JSON ({exc})") from None


def describe_channels(modalities: list[str]) -> str:
    return f"{len(modalities)} channel{'s' if len(modalities) != 1 else ''} ({', '.join(modalities)})"


def check_ddpm_run(ddpm_run: Path, cache: Cache) -> dict[str, Any]:
    """Check a DDPM run fits the cache's data; return its config."""
    record = read_run_config(ddpm_run)
    if record["method"] != "ddpm":
        raise SemisegInputError(ddpm_run, f"is a {record['method']!r} run, not a DDPM pretraining run")
    theirs, ours = record["data"]["modalities"], list(cache.modalities)
    if theirs != ours:
        raise SemisegInputError(
            ddpm_run,
            f"DDPM was trained on {describe_channels(theirs)} but the cache has {describe_channels(ours)}",
        )
    if record["data"]["slice_size"] != cache.slice_size:
        raise SemisegInputError(
            ddpm_run,
            f"DDPM was trained on {record['data']['slice_size']}px slices but the cache has {cache.slice_size}px",
        )
    if latest_checkpoint(ddpm_run) is None:
        raise SemisegInputError(ddpm_run, "has no checkpoint yet; let `semiseg pretrain` write one")
    return record


def train(
    cache_dir: str | PathLike,
    method_name: str,
    out: str | PathLike,
    *,
    preset: str = "default",
    config_file: str | PathLike | None = None,
    overrides: list[str] | None = None,
    labeled: int | None = None,
    labeled_items: list[str] | None = None,
    seed: int = 0,
    ddpm_run: str | PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
) -> Path:
    """Train ``method_name`` on a cache into the run folder ``out``; return ``out``.

    Works the same in one process or under ``torchrun`` (every rank calls it; rank 0 writes).
    With ``resume``, the run's stored configuration is used and training continues from its
    latest checkpoint; CLI settings other than the device are ignored.
    """
    info = init_distributed()
    out = Path(out)
    cls = get_method(method_name)
    existing = (out / CONFIG).exists()
    if resume and not existing:
        raise SemisegInputError(out, "cannot resume: not a run folder (no config.json)")
    if not resume and out.exists() and any(out.iterdir()):
        raise SemisegInputError(out, "already exists and is not empty (use --resume to continue it, or another --out)")
    barrier(info)  # every rank looks at the folder before rank 0 writes into it (else rank 1 may find it "not empty")

    if resume:
        record = read_run_config(out)
        if record["method"] != method_name:
            raise SemisegInputError(out, f"is a {record['method']!r} run; cannot resume it as {method_name!r}")
        cache = Cache(record["cache"])
    else:
        cache = Cache(cache_dir)
        config = load_config(cls.config_files, preset, config_file, overrides)
        ddpm_record = None
        if cls.needs_ddpm:
            if ddpm_run is None:
                raise SemisegInputError(None, f"method {method_name!r} needs a pretrained DDPM: pass --ddpm RUN")
            ddpm_record = check_ddpm_run(Path(ddpm_run), cache)
            config["ddpm"] = {
                "run": str(Path(ddpm_run).resolve()),
                "model": ddpm_record["config"]["model"],
                "diffusion": ddpm_record["config"]["diffusion"],
            }
        dims = int(config.get("dims", 2))
        if dims == 3 and "3d" not in cache.dims:
            raise SemisegInputError(cache.root, "was prepared without 3D volumes; prepare it with --dims 2d,3d")
        if dims == 2 and "2d" not in cache.dims:
            raise SemisegInputError(cache.root, "was prepared without 2D slices; prepare it with --dims 2d,3d")
        plan = make_plan(cache, dims, labeled, seed, labeled_items, all_cases=not cls.segments)
        if not cls.segments and config["train"].get("exclude_test"):
            plan["unlabelled_cases"] = [c for c in plan["unlabelled_cases"] if c not in set(plan["test"])]
        record = {
            "semiseg_version": semiseg.__version__,
            "method": method_name,
            "preset": preset,
            "seed": seed,
            "cache": str(cache.root.resolve()),
            "data": cache.data_info(),
            "plan": plan,
            "config": config,
        }
        if info.main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / CONFIG, record)
        barrier(info)

    torch.manual_seed(int(record["seed"]))  # same seed, same initial weights (on every rank too)
    method = cls(record["config"], record["data"])
    ctx = TrainContext(
        cache=cache,
        plan=record["plan"],
        seed=int(record["seed"]),
        info=info,
        device=pick_device(info.local_rank, device),
        run_dir=out,
        total_steps=int(record["config"]["train"]["steps"]),
        ddpm_run=Path(record["config"]["ddpm"]["run"]) if "ddpm" in record["config"] else None,
    )
    if info.main:
        n_lab = len(record["plan"]["labelled"])
        what = f"{n_lab} labelled {'slices' if record['plan']['dims'] == 2 else 'cases'}, " if cls.segments else ""
        log(
            f"[bold]{method_name}[/]: {what}{len(record['plan']['unlabelled_cases'])} "
            f"{'unlabelled ' if cls.segments else ''}cases, {ctx.total_steps} steps on {ctx.device}"
            + (f" x {info.world} processes" if info.distributed else "")
        )
    fit(method, ctx, resume=resume)
    return out


def load_trained(run_dir: str | PathLike, device: str | torch.device = "cpu") -> tuple[Method, dict[str, Any]]:
    """Build a run's method and load its latest weights; returns (method in eval mode, config record)."""
    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    cls = get_method(record["method"])
    folder = latest_checkpoint(run_dir)
    if folder is None:
        raise SemisegInputError(run_dir, "has no checkpoint yet (training has not reached its first checkpoint)")
    method = cls(record["config"], record["data"])
    fit_state_dict(method, load_model_state(folder), folder)
    method.to(device)
    method.eval()
    return method, record
