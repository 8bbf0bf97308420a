"""Start, resume or skip a training run, and load a trained method from its run folder.

A run folder holds ``config.json`` (:class:`~semiseg.runs.record.RunRecord`), ``latest.json`` +
``checkpoints/`` (see :mod:`semiseg.training.checkpoint`), ``train_log.csv``, ``loss_curve.png``,
method-specific extras and ``.lock``, which the process training the run holds.

Everything a run needs (method, settings, data, optimizer, schedule, device, the DDPM it builds
on) is built and checked before its folder is created; a new run that fails before its first
checkpoint is removed again, and a resumed run is checked before anything in its folder changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import torch

import semiseg
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.files import TEMPORARY, check_output, file_lock, remove_temporaries, removed_on_failure, write_error
from semiseg.methods.base import Method, get_method
from semiseg.models.unet import SegUNet
from semiseg.preprocess.cache import INDEX, Cache
from semiseg.progress import log
from semiseg.runs.record import CONFIG, RunRecord, read_run_record
from semiseg.training.checkpoint import CHECKPOINTS, META, fit_state_dict, latest, load_model_state, weights_digest
from semiseg.training.context import TrainContext
from semiseg.training.distributed import DistInfo, barrier, init_distributed, pick_device
from semiseg.training.loop import check_train_settings, fit
from semiseg.training.plan import make_plan

LOCK = ".lock"


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
    if latest(ddpm_run) is None:
        raise SemisegInputError(ddpm_run, "has no checkpoint yet; let `semiseg pretrain` write one")
    return record


def ddpm_block(ddpm_run: Path, cache: Cache) -> dict[str, Any]:
    """What a run records of the DDPM it builds on: the run, its settings, and which weights (the
    checkpoint and the sha256 of the weights file used), so a resume can refuse a changed DDPM."""
    record = check_ddpm_run(ddpm_run, cache)
    ckpt = latest(ddpm_run)
    assert ckpt is not None
    load_model_state(ckpt.folder)  # refuses non-finite weights before the run starts
    return {
        "run": str(ddpm_run.resolve()),
        "model": record.config["model"],
        "diffusion": record.config["diffusion"],
        "checkpoint": ckpt.folder.name,
        "sha256": weights_digest(ckpt.folder),
    }


def check_same_ddpm(record: RunRecord, run_dir: Path) -> None:
    """Refuse to continue a run whose DDPM is no longer the one it was started from."""
    if record.ddpm_run is None or not record.ddpm_sha256:
        return
    ckpt = latest(record.ddpm_run)
    now = None if ckpt is None else weights_digest(ckpt.folder)
    if now != record.ddpm_sha256:
        found = "no checkpoint" if ckpt is None else f"{ckpt.folder.name} with weights sha256 {now[:12]}…"
        raise SemisegInputError(
            record.ddpm_run,
            f"the DDPM changed since {run_dir} was started from it (then {record.config['ddpm'].get('checkpoint')} with "
            f"sha256 {record.ddpm_sha256[:12]}…, now {found}); resume needs the DDPM the run was built on",
        )


def _only_leftovers(folder: Path) -> bool:
    """True if ``folder`` holds nothing but its lock and the temporaries of interrupted writes."""
    return all(p.name == LOCK or TEMPORARY.match(p.name) for p in folder.iterdir())


def has_progress(folder: str | PathLike, caches: bool = True) -> bool:
    """True if ``folder`` holds finished work that a later command continues from: a checkpoint of
    a run, or (with ``caches``) a prepared cache. Failed commands keep such folders instead of
    removing them."""
    folder = Path(folder)
    return any(folder.rglob(f"{CHECKPOINTS}/step-*/{META}")) or (caches and any(folder.rglob(INDEX)))


@contextlib.contextmanager
def run_lock(run_dir: Path, info: DistInfo) -> Iterator[None]:
    """Hold the run folder's lock (main process only): a second process training the same folder
    is refused with one line instead of corrupting it."""
    if not info.main:
        yield
        return
    with file_lock(run_dir / LOCK, wait=False) as got:
        if not got:
            raise SemisegInputError(run_dir, f"is in use by another semiseg process (it holds {LOCK}); wait for it to finish")
        yield


def build_method(cls: type[Method], record: RunRecord, source: str | PathLike | None) -> Method:
    """The method a record describes, with fresh weights seeded by the record's seed; settings
    that build no model are a one-line error naming ``source``."""
    torch.manual_seed(record.seed)  # same seed, same initial weights (on every rank too)
    try:
        method = cls(record.config, record.data)
    except (KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SemisegInputError(source, f"the settings do not build a {cls.name} model ({type(exc).__name__}: {text})") from None
    size = record.config.get("patch_size") if method.dims == 3 else [record.data.slice_size] * 2
    for module in method.modules():
        if isinstance(module, SegUNet):
            SegUNet.check_input_size(size, "patch_size" if method.dims == 3 else "the cache's slice size")
            break
    return method


def _new_record(
    cls: type[Method], cache: Cache, *, preset: str, config_file: str | PathLike | None, overrides: list[str] | None,
    n_labelled: int | None, labelled_items: list[str] | None, seed: int, ddpm_run: str | PathLike | None, transductive: bool,
    negatives: int,
) -> RunRecord:
    """The record of a new run, every setting checked."""
    config = load_config(cls.config_files, preset, config_file, overrides)
    if cls.needs_ddpm:
        if ddpm_run is None:
            raise SemisegInputError(None, f"method {cls.name!r} needs a pretrained DDPM: pass --ddpm RUN")
        config["ddpm"] = ddpm_block(Path(ddpm_run), cache)
    dims = cache.check_dims(config.get("dims", 2))
    plan = make_plan(cache, dims, n_labelled, seed, labelled_items, unlabelled_only=not cls.segments,
                     transductive=transductive and (cls.semi_supervised or not cls.segments),
                     negatives=negatives if cls.segments else 0)
    cache.check_arrays(plan.labelled_cases() + list(plan.unlabelled_cases), dims)
    return RunRecord(
        method=cls.name, preset=preset, seed=seed, cache=str(cache.root.resolve()), data=cache.data_info(),
        plan=plan, config=config, semiseg_version=semiseg.__version__,
    )


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
    ``negatives``: 2D, this many lesion-free slices of the labelled patients labelled as such. A
    folder holding only the leftovers of a run killed before its record was written is started afresh, with or without
    ``resume``.
    """
    info = init_distributed()
    out = Path(out)
    cls = get_method(method_name)
    torch_device = pick_device(info.local_rank, device)
    check_output(out, "folder")
    if resume and not (out / CONFIG).exists():
        if not out.is_dir() or not _only_leftovers(out):
            raise SemisegInputError(out, f"cannot resume: not a run folder (no {CONFIG})")
        log(f"note: {out} holds no {CONFIG} (its start was interrupted); starting it afresh")
        resume = False
    if not resume and out.is_dir() and not _only_leftovers(out):
        raise SemisegInputError(out, "already exists and is not empty (use --resume to continue it, or another --out)")
    barrier(info)  # every rank looks at the folder before rank 0 writes into it (else rank 1 may find it "not empty")

    if resume:
        with run_lock(out, info):
            record = read_run_record(out)
            if record.method != method_name:
                raise SemisegInputError(out, f"is a {record.method!r} run; cannot resume it as {method_name!r}")
            check_same_ddpm(record, out)
            cache = Cache(record.cache)
            method = build_method(cls, record, out / CONFIG)
            check_train_settings(method.config["train"])
            _fit(method, record, cache, out, info, torch_device, resume=True)
        return out

    cache = Cache(cache_dir)
    record = _new_record(
        cls, cache, preset=preset, config_file=config_file, overrides=overrides, n_labelled=n_labelled,
        labelled_items=labelled_items, seed=seed, ddpm_run=ddpm_run, transductive=transductive, negatives=negatives,
    )
    method = build_method(cls, record, None)
    check_train_settings(method.config["train"])
    created = False
    guard = removed_on_failure(out, keep=lambda p: not created or has_progress(p)) if info.main else contextlib.nullcontext()
    with guard:
        if info.main:
            try:
                out.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass  # an empty folder, or one left by an interrupted start (checked above)
            except OSError as exc:
                raise write_error(out, exc) from None
        barrier(info)
        with run_lock(out, info):
            if info.main:
                if (out / CONFIG).exists():  # another process started this run meanwhile
                    raise SemisegInputError(out, "already exists and is not empty (use --resume to continue it, or another --out)")
                remove_temporaries(out)
                record.write(out)
            barrier(info)
            _fit(method, record, cache, out, info, torch_device, resume=False)
    return out


def _fit(method: Method, record: RunRecord, cache: Cache, out: Path, info: DistInfo, device: torch.device, resume: bool) -> None:
    ctx = TrainContext(
        cache=cache,
        plan=record.plan,
        seed=record.seed,
        info=info,
        device=device,
        run_dir=out,
        total_steps=record.total_steps,
        ddpm_run=record.ddpm_run,
    )
    if info.main:
        n_lab = len(record.plan.labelled)
        neg = f" + {len(record.plan.negatives)} lesion-free" if record.plan.negatives else ""
        what = f"{n_lab}{neg} labelled {'slices' if record.plan.dims == 2 else 'cases'}, " if method.segments else ""
        log(
            f"[bold]{record.method}[/]: {what}{len(record.plan.unlabelled_cases)} "
            f"{'unlabelled ' if method.segments else ''}cases{' (test patients included: transductive)' if record.plan.transductive else ''}, "
            f"{ctx.total_steps} steps on {ctx.device}"
            + (f" x {info.world} processes" if info.distributed else "")
        )
    fit(method, ctx, resume=resume)


def is_finished(run_dir: str | PathLike) -> bool:
    """True if the run folder holds a checkpoint at its last training step."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        return False
    ckpt = latest(run_dir)
    return ckpt is not None and ckpt.step >= read_run_record(run_dir).total_steps


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
    """Build a run's method and load its latest weights; returns (method in eval mode, record).

    The checkpoint is validated first (its records agree on its step, its weights are finite and
    fit the network)."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    cls = get_method(record.method)
    ckpt = latest(run_dir)
    if ckpt is None:
        steps = f"; {run_dir / CHECKPOINTS} holds only partial folders" if any((run_dir / CHECKPOINTS).glob(".*")) else ""
        raise SemisegInputError(run_dir, f"has no checkpoint yet (training has not reached its first checkpoint{steps})")
    method = build_method(cls, record, run_dir / CONFIG)
    fit_state_dict(method, load_model_state(ckpt.folder), ckpt.folder)
    method.to(device)
    method.eval()
    return method, record

