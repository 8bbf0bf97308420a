"""Start, resume or skip a training run, and load a trained method from its run folder.

A run folder holds ``config.json`` (:class:`~semiseg.runs.record.RunRecord`), ``latest.json`` +
``checkpoints/`` (see :mod:`semiseg.training.checkpoint`), ``train_log.csv``, ``loss_curve.png``
and method-specific extras.
"""

from __future__ import annotations

import shutil
from os import PathLike
from pathlib import Path

import torch

import semiseg
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.methods.base import Method, get_method
from semiseg.preprocess.cache import Cache
from semiseg.progress import log
from semiseg.runs.record import CONFIG, RunRecord, read_run_record
from semiseg.training.checkpoint import fit_state_dict, latest_checkpoint, latest_step, load_model_state
from semiseg.training.context import TrainContext
from semiseg.training.distributed import barrier, init_distributed, pick_device
from semiseg.training.loop import check_loop_settings, fit
from semiseg.training.plan import make_plan


def describe_channels(modalities: list[str] | tuple[str, ...]) -> str:
    return f"{len(modalities)} channel{'s' if len(modalities) != 1 else ''} ({', '.join(modalities)})"


def check_ddpm_run(ddpm_run: Path, cache: Cache) -> RunRecord:
    """Check a DDPM run fits the cache's data; return its record."""
    record = read_run_record(ddpm_run)
    if record.method != "ddpm":
        raise SemisegInputError(ddpm_run, f"is a {record.method!r} run, not a DDPM pretraining run")
    theirs, ours = list(record.data.modalities), list(cache.modalities)
    if theirs != ours:
        raise SemisegInputError(
            ddpm_run,
            f"DDPM was trained on {describe_channels(theirs)} but the cache has {describe_channels(ours)}",
        )
    if record.data.slice_size != cache.slice_size:
        raise SemisegInputError(
            ddpm_run, f"DDPM was trained on {record.data.slice_size}px slices but the cache has {cache.slice_size}px"
        )
    if latest_checkpoint(ddpm_run) is None:
        raise SemisegInputError(ddpm_run, "has no checkpoint yet; let `semiseg pretrain` write one")
    return record


def _is_empty(folder: Path) -> bool:
    """True if ``folder`` holds nothing but hidden leftovers of interrupted atomic writes."""
    return all(p.name.startswith(".") and (".tmp" in p.name or p.name.endswith(".partial")) for p in folder.iterdir())


def train(
    cache_dir: str | PathLike,
    method_name: str,
    out: str | PathLike,
    *,
    preset: str = "default",
    config_file: str | PathLike | None = None,
    overrides: list[str] | None = None,
    n_labelled: int | None = None,
    labelled_items: list[str] | None = None,
    seed: int = 0,
    ddpm_run: str | PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    transductive: bool = False,
    negatives: int = 0,
) -> Path:
    """Train ``method_name`` on a cache into the run folder ``out``; return ``out``.

    Works the same in one process or under ``torchrun`` (every rank calls it; rank 0 writes).
    With ``resume``, the run's stored configuration is used and training continues from its
    latest checkpoint; CLI settings other than the device are ignored. ``transductive``: the cache's
    test patients' images may be used without labels (semi-supervised methods and the DDPM).
    ``negatives``: 2D, this many lesion-free slices of the labelled patients labelled as such.
    """
    info = init_distributed()
    out = Path(out)
    cls = get_method(method_name)
    existing = (out / CONFIG).exists()
    if resume and not existing:
        raise SemisegInputError(out, f"cannot resume: not a run folder (no {CONFIG})")
    if not resume and out.is_dir() and not _is_empty(out):
        raise SemisegInputError(out, "already exists and is not empty (use --resume to continue it, or another --out)")
    barrier(info)  # every rank looks at the folder before rank 0 writes into it (else rank 1 may find it "not empty")

    if resume:
        record = read_run_record(out)
        if record.method != method_name:
            raise SemisegInputError(out, f"is a {record.method!r} run; cannot resume it as {method_name!r}")
        cache = Cache(record.cache)
    else:
        cache = Cache(cache_dir)
        config = load_config(cls.config_files, preset, config_file, overrides)
        check_loop_settings(config["train"])  # before the run folder exists
        if cls.needs_ddpm:
            if ddpm_run is None:
                raise SemisegInputError(None, f"method {method_name!r} needs a pretrained DDPM: pass --ddpm RUN")
            ddpm_record = check_ddpm_run(Path(ddpm_run), cache)
            config["ddpm"] = {
                "run": str(Path(ddpm_run).resolve()),
                "model": ddpm_record.config["model"],
                "diffusion": ddpm_record.config["diffusion"],
            }
        dims = int(config.get("dims", 2))
        if f"{dims}d" not in cache.dims:
            raise SemisegInputError(cache.root, f"was prepared without {dims}D data; prepare it with --dims 2d,3d")
        plan = make_plan(cache, dims, n_labelled, seed, labelled_items, unlabelled_only=not cls.segments,
                         transductive=transductive and (cls.semi_supervised or not cls.segments),
                         negatives=negatives if cls.segments else 0)
        record = RunRecord(
            method=method_name, preset=preset, seed=seed, cache=str(cache.root.resolve()), data=cache.data_info(),
            plan=plan, config=config, semiseg_version=semiseg.__version__,
        )
        if info.main:
            if out.is_dir():
                shutil.rmtree(out)  # only hidden leftovers of an interrupted start (checked above)
            out.mkdir(parents=True)
            record.write(out)
        barrier(info)

    torch.manual_seed(record.seed)  # same seed, same initial weights (on every rank too)
    method = cls(record.config, record.data)
    ctx = TrainContext(
        cache=cache,
        plan=record.plan,
        seed=record.seed,
        info=info,
        device=pick_device(info.local_rank, device),
        run_dir=out,
        total_steps=record.total_steps,
        ddpm_run=record.ddpm_run,
    )
    if info.main:
        n_lab = len(record.plan.labelled)
        neg = f" + {len(record.plan.negatives)} lesion-free" if record.plan.negatives else ""
        what = f"{n_lab}{neg} labelled {'slices' if record.plan.dims == 2 else 'cases'}, " if cls.segments else ""
        log(
            f"[bold]{method_name}[/]: {what}{len(record.plan.unlabelled_cases)} "
            f"{'unlabelled ' if cls.segments else ''}cases{' (test patients included: transductive)' if record.plan.transductive else ''}, "
            f"{ctx.total_steps} steps on {ctx.device}"
            + (f" x {info.world} processes" if info.distributed else "")
        )
    fit(method, ctx, resume=resume)
    return out


def is_finished(run_dir: str | PathLike) -> bool:
    """True if the run folder holds a checkpoint at its last training step."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        return False
    step = latest_step(run_dir)
    return step is not None and step >= read_run_record(run_dir).total_steps


def ensure_trained(out: str | PathLike, cache_dir: str | PathLike, method_name: str, **kwargs) -> Path:
    """Bring the run in ``out`` to its last step: start it, resume it, or leave it if finished.

    For run folders semiseg owns (studies, the patient use case): a folder left by a run killed
    before its record was written is started afresh. ``kwargs`` are :func:`train`'s.
    """
    out = Path(out)
    if is_finished(out):
        return out
    return train(cache_dir, method_name, out, resume=(out / CONFIG).exists(), **kwargs)


def load_trained(run_dir: str | PathLike, device: str | torch.device = "cpu") -> tuple[Method, RunRecord]:
    """Build a run's method and load its latest weights; returns (method in eval mode, record)."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    cls = get_method(record.method)
    folder = latest_checkpoint(run_dir)
    if folder is None:
        raise SemisegInputError(run_dir, "has no checkpoint yet (training has not reached its first checkpoint)")
    method = cls(record.config, record.data)
    fit_state_dict(method, load_model_state(folder), folder)
    method.to(device)
    method.eval()
    return method, record
