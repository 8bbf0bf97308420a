"""Batches come from a DataLoader whose worker processes build exactly the batches the training
process would, so workers change speed, never results; precision is a setting."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, TINY_NET
from semiseg.config import load_config
from semiseg.errors import SemisegInputError
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import Cache
from semiseg.runs import train
from semiseg.training.batches import resolve_workers, step_loader
from semiseg.training.checkpoint import latest_checkpoint, load_model_state, read_checkpoint
from semiseg.training.context import TrainContext
from semiseg.training.distributed import DistInfo
from semiseg.training.log import read_log
from semiseg.training.plan import make_plan


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


@pytest.mark.parametrize("method,dims", [("mean-teacher", 2), ("supervised", 3), ("ddpm", 2)])
def test_workers_build_the_batches_of_the_training_process(method: str, dims: int, tiny_cache: Path, tmp_path: Path):
    cache = Cache(tiny_cache)
    cls = get_method(method)
    extra = [] if method == "ddpm" else TINY_NET + [f"dims={dims}"]
    model = cls(load_config(cls.config_files, "small", overrides=extra), cache.data_info())
    plan = make_plan(cache, dims, None if method == "ddpm" else 3, 1, unlabelled_only=method == "ddpm")
    model.setup(TrainContext(cache, plan, 1, DistInfo(), torch.device("cpu"), tmp_path, 8))
    reference = [model.next_batch(step) for step in range(3, 8)]
    for workers in (0, 2):
        got = list(step_loader(model.batch_maker(), 3, 8, workers=workers, prefetch=2))
        assert len(got) == 5 and all(equal(a, b) for a, b in zip(reference, got)), workers


def _fail_at_step_two(step: int) -> dict:
    if step == 2:
        raise SemisegInputError("cache/cases/x.slices.npy", "is missing from the cache")
    return {"x": torch.zeros(1)}


def test_a_users_mistake_in_a_worker_stays_one_line():
    with pytest.raises(SemisegInputError, match=r"^cache/cases/x\.slices\.npy: is missing from the cache$"):
        list(step_loader(_fail_at_step_two, 0, 4, workers=1))


def test_workers_setting():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_workers("auto", cpu) == 0 and resolve_workers(3, cpu) == 3
    assert resolve_workers("auto", gpu) >= 0
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(SemisegInputError, match="train.workers must be auto or a number"):
            resolve_workers(bad, cpu)


def test_training_with_workers_and_half_precision(tiny_cache: Path, tmp_path: Path):
    """A 3D run (random patches, augmentation) ends with the same weights with 2 workers as
    without; fp16 trains with a gradient scaler whose state is checkpointed; a bad precision is named."""
    settings = TINY + TINY_NET + ["dims=3"]
    runs = {}
    for name, extra in (("w0", ["train.workers=0"]), ("w2", ["train.workers=2"]), ("fp16", ["train.precision=fp16"])):
        runs[name] = tmp_path / name
        train(tiny_cache, "supervised", runs[name], preset="small", n_labelled=2, seed=3, overrides=settings + extra)
    a, b = (load_model_state(latest_checkpoint(runs[n])) for n in ("w0", "w2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scaler = read_checkpoint(latest_checkpoint(runs["fp16"])).meta["grad_scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    train(tiny_cache, "supervised", runs["fp16"], resume=True)  # restores the scaler's state
    meta_file = latest_checkpoint(runs["fp16"]) / "checkpoint.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "grad_scaler": {**scaler, "scale": 0.0}}))
    with pytest.raises(SemisegInputError, match="checkpoint.json: checkpoint metadata's 'grad_scaler' must be an object with a finite positive 'scale'"):
        train(tiny_cache, "supervised", runs["fp16"], resume=True)
    rows = read_log(runs["fp16"] / "train_log.csv")
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["data_wait_share"] <= 1.0 for r in rows)
    with pytest.raises(SemisegInputError, match="train.precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        train(tiny_cache, "supervised", tmp_path / "bad", preset="small", n_labelled=2, overrides=settings + ["train.precision=fp8"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method,dims,settings,expected", [
    ("mean-teacher", 2, ["train.batch_size=2"], 2),                                # the small preset's auto: 1 in 2D
    ("mean-teacher", 3, ["train.batch_size=2"], 8),                                # and 4 in 3D
    ("mean-teacher", 3, ["train.batch_size=2", "unlabelled_ratio=1"], 2),
    ("embedmatch", 2, ["train.batch_size=2", "unlabelled_ratio=2"], 4),            # FixMatch's mu
    ("embedmatch", 3, ["train.batch_size=2", "unlabelled_ratio=1.5"], 3),
    ("mean-teacher", 2, ["train.batch_size=2", "unlabelled_ratio=2", "unlabelled_batch_size=1"], 1),  # a fixed size wins
    ("embedmatch", 2, ["train.batch_size=2", "unlabelled_ratio=auto"], 2),
    ("embedmatch", 3, ["train.batch_size=2", "unlabelled_ratio=auto"], 8),
])
def test_the_unlabelled_batch_is_the_ratio_times_the_labelled_one(method, dims, settings, expected, tiny_cache: Path, tmp_path: Path):
    cache = Cache(tiny_cache)
    cls = get_method(method)
    model = cls(load_config(cls.config_files, "small", overrides=TINY_NET + [f"dims={dims}"] + settings), cache.data_info())
    model.setup(TrainContext(cache, make_plan(cache, dims, 2, 1), 1, DistInfo(), torch.device("cpu"), tmp_path, 8))
    batch = model.next_batch(0)
    assert batch["labelled"]["image"].shape[0] == 2 and batch["unlabelled"]["image"].shape[0] == expected
    assert model.images_per_step() == 2 + expected


def test_the_unlabelled_slices_setting_reaches_the_batches(tiny_cache: Path, tmp_path: Path):
    cache = Cache(tiny_cache)
    plan = make_plan(cache, 2, 2, 1)
    cls = get_method("embedmatch")
    sizes = {}
    for which in ("all", "central"):
        model = cls(load_config(cls.config_files, "small", overrides=TINY_NET + ["dims=2", f"unlabelled.slices={which}"]), cache.data_info())
        model.setup(TrainContext(cache, plan, 1, DistInfo(), torch.device("cpu"), tmp_path, 8))
        sizes[which] = len(model.unlabelled)
    assert sizes == {"all": len(plan.unlabelled_items(cache)), "central": len(plan.unlabelled_items(cache, "central"))}
    assert sizes["central"] < sizes["all"]
