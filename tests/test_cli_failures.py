"""Users' mistakes, tampered run files and damaged data, each run through the command group users
run: exit code 2, exactly one line on stderr naming the file or setting and the problem, no
traceback, and no new or changed file under the output location.

Each row of ``FAILURES`` sets up one failure and returns the command and the folder to watch.
The OS-level failures (permissions, a read-only or full file system) are in test_cli_os.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cli_battery import changes, invoke, judge, snapshot
from helpers import TINY, TINY_NET, write_brats_case, write_image


@dataclass
class Env:
    """What the failures are made from: a fresh folder, and the session's cache, runs and data."""

    tmp: Path
    cache: Path
    run: Path
    ddpm: Path

    @property
    def data(self) -> Path:
        return self.cache.parent / "data"

    def copy(self, src: Path, name: str = "copy") -> Path:
        dst = self.tmp / name
        shutil.copytree(src, dst)
        return dst

    def file(self, name: str = "afile") -> Path:
        path = self.tmp / name
        path.write_text("not a folder\n")
        return path

    def study(self, spec: dict | list | str, name: str = "study.yaml") -> Path:
        path = self.tmp / name
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        return path

    def evaluate(self) -> list:
        """`evaluate --pred --gt` on a flat folder of one ground-truth label map and a prediction of it."""
        preds, gt = self.preds_and_gt()
        return ["evaluate", "--pred", preds, "--gt", gt]

    def preds_and_gt(self) -> tuple[Path, Path]:
        """A flat folder of one ground-truth label map and a prediction of it."""
        case = write_brats_case(self.tmp / "cases", "p1", seed=2)
        gt, preds = self.tmp / "gt", self.tmp / "preds"
        gt.mkdir()
        preds.mkdir()
        shutil.copy(case / "p1_seg.nii.gz", gt / "p1.nii.gz")
        shutil.copy(case / "p1_seg.nii.gz", preds / "p1.nii.gz")
        return preds, gt


@pytest.fixture
def env(tmp_path: Path, tiny_cache: Path, tiny_run: Path, tiny_ddpm: Path) -> Env:
    (tmp_path / "out").mkdir()
    return Env(tmp_path, tiny_cache, tiny_run, tiny_ddpm)


def sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def train_args(env: Env, *extra: str, method: str = "supervised", n: str = "2", out: Path | None = None, cache: Path | None = None) -> list:
    return ["train", cache or env.cache, "-M", method, "--labelled", n, "-p", "small", "--out", out or env.tmp / "out" / "run",
            *sets(TINY + TINY_NET), *extra]


def resume_args(run: Path, method: str = "supervised") -> list:
    return ["train", "unused-cache", "-M", method, "--out", run, "--resume"]


# ---- tampering helpers ---------------------------------------------------------------------------
def ckpt(run: Path) -> Path:
    return run / json.loads((run / "latest.json").read_text())["checkpoint"]


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Change a JSON object in place (``edit`` mutates it)."""
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def edit_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)


def nan_weights(tensors: dict) -> None:
    for v in tensors.values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def wrong_optimizer_shape(tensors: dict) -> None:
    name = next(k for k in tensors if k.startswith("optim.") and tensors[k].dim() > 1)
    tensors[name] = torch.zeros(3, 3)


def tampered_run(env: Env, damage: Callable[[Path], None], run: Path | None = None) -> Path:
    copy = env.copy(run or env.run, "run")
    damage(copy)
    return copy


def tampered_cache(env: Env, damage: Callable[[Path], None]) -> Path:
    copy = env.copy(env.cache, "cache")
    damage(copy)
    return copy


def no_test_patients(cache: Path) -> None:
    """Give the cache's test patients to training, as a cache prepared with --test-fraction 0."""
    edit_json(cache / "index.json", lambda o: [c.update(role="train") for c in o["cases"] if c["role"] == "test"])


def hold_lock(run: Path) -> subprocess.Popen:
    """A second process that holds a run folder's lock, as a `semiseg train` on it would."""
    code = "import sys, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def bad_case(damage: Callable[[Path], None], *extra: str) -> Callable[[Env], tuple[list, Path]]:
    """prepare on a two-case dataset whose second case is damaged."""
    def setup(env: Env) -> tuple[list, Path]:
        root = env.tmp / "data"
        for i in range(2):
            write_brats_case(root, f"c{i}", seed=i)
        damage(root / "c1")
        return ["prepare", root, "--out", env.tmp / "out" / "cache", *extra], env.tmp / "out"
    return setup


def truncate(folder: Path) -> None:
    p = folder / "c1_flair.nii.gz"
    p.write_bytes(p.read_bytes()[:200])


def nan_voxel(folder: Path) -> None:
    img = np.ones((24, 24, 16), np.float32)
    img[3, 3, 3] = np.nan
    write_image(folder / "c1_t1.nii.gz", img)


def empty_label_case(env: Env) -> Path:
    case = write_brats_case(env.tmp / "cases", "e1", shape=(36, 36, 24), seed=1)
    write_image(case / "e1_seg.nii.gz", np.zeros((36, 36, 24), np.int16))
    return case


def patient_args(env: Env, case: Path | None = None, *extra: str) -> list:
    case = case or write_brats_case(env.tmp / "cases", "p2", shape=(36, 36, 24), seed=2)
    return ["patient", case, "--out", env.tmp / "out" / "patient", "-M", "supervised", "--slice-size", "32", "-p", "small",
            *sets(TINY + TINY_NET), *extra]


def sweep_study(env: Env, **changes) -> Path:
    spec = {"out": str(env.tmp / "out" / "study"), "cache": str(env.cache), "methods": ["supervised"], "budgets": [2], "preset": "small",
            "settings": {"supervised": TINY + TINY_NET}}
    spec.update(changes)
    return env.study(spec)


def train_cases(cache: Path) -> list[str]:
    return [c["id"] for c in json.loads((cache / "index.json").read_text())["cases"] if c["role"] == "train"]


def write_object_array(cache: Path) -> None:
    for cid in train_cases(cache):
        np.save(cache / "cases" / f"{cid}.slices.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def wrong_shape_array(cache: Path) -> None:
    for cid in train_cases(cache):
        np.save(cache / "cases" / f"{cid}.slices.npy", np.zeros((2, 4, 32, 32), np.float16))


def foreign_folder(env: Env) -> Path:
    (env.tmp / "out" / "notes.txt").write_text("mine")
    return env.tmp / "out"


def nnunet_json(env: Env, text: str) -> Path:
    root = env.tmp / "out" / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(text)
    return root


# ---- the table -------------------------------------------------------------------------------------
W = Callable[[Env], tuple[list, Path]]
FAILURES: dict[str, tuple[W, list[str]]] = {
    # wrong values
    "--set train.steps=abc": (lambda e: (train_args(e, "--set", "train.steps=abc"), e.tmp / "out"), ["--set", "'train.steps'", "an integer", "'abc'"]),
    "--set train.lr=fast": (lambda e: (train_args(e, "--set", "train.lr=fast"), e.tmp / "out"), ["--set", "'train.lr'", "a number", "'fast'"]),
    "--set train=5": (lambda e: (train_args(e, "--set", "train=5"), e.tmp / "out"), ["--set", "'train' must be a mapping"]),
    "--set train.steps=-5": (lambda e: (train_args(e, "--set", "train.steps=-5"), e.tmp / "out"), ["train.steps must be an integer of at least 1, got -5"]),
    "--set train.batch_size=0": (lambda e: (train_args(e, "--set", "train.batch_size=0"), e.tmp / "out"), ["train.batch_size", "at least 1"]),
    "--set predict.batch_size=0": (lambda e: (train_args(e, "--set", "predict.batch_size=0"), e.tmp / "out"),
                                   ["predict.batch_size must be an integer of at least 1 or auto, got 0"]),
    "--set predict.batch_size=many": (lambda e: (train_args(e, "--set", "predict.batch_size=many"), e.tmp / "out"),
                                      ["predict.batch_size must be an integer of at least 1 or auto, got 'many'"]),
    "--set predict.overlap=1": (lambda e: (train_args(e, "--set", "predict.overlap=1"), e.tmp / "out"), ["predict.overlap", "got 1"]),
    "--set optimizer unknown": (lambda e: (train_args(e, "--set", "train.optimizer=adamx"), e.tmp / "out"),
                                ["train.optimizer must be one of adamw, adam, sgd, got 'adamx'"]),
    "--set schedule unknown": (lambda e: (train_args(e, "--set", "train.schedule=linear"), e.tmp / "out"),
                               ["train.schedule must be one of constant, cosine, poly, got 'linear'"]),
    "--set contrast.dim=0": (lambda e: (train_args(e, "--set", "contrast.weight=0.1", "--set", "contrast.dim=0", method="embedmatch"), e.tmp / "out"),
                             ["contrast.dim must be an integer of at least 1, got 0"]),
    "--set unlabelled_ratio=0": (lambda e: (train_args(e, "--set", "unlabelled_ratio=0", method="mean-teacher"), e.tmp / "out"),
                                 ["unlabelled_ratio must be a number above 0 or auto, got 0"]),
    "--set unlabelled.slices=middle": (lambda e: (train_args(e, "--set", "unlabelled.slices=middle", method="embedmatch"), e.tmp / "out"),
                                       ["unlabelled.slices must be one of all, anatomy, central, got 'middle'"]),
    "--set unlabelled_batch_size=-1": (lambda e: (train_args(e, "--set", "unlabelled_batch_size=-1", method="embedmatch"), e.tmp / "out"),
                                       ["unlabelled_batch_size must be an integer of at least 1 or null, got -1"]),
    "--set network that builds nothing": (lambda e: (train_args(e, "--set", "network.features=[8,8]"), e.tmp / "out"),
                                          ["the settings do not build a supervised model"]),
    "--set unknown key": (lambda e: (train_args(e, "--set", "train.stepz=3"), e.tmp / "out"), ["--set: unknown setting 'train.stepz'"]),
    "--set without =": (lambda e: (train_args(e, "--set", "train.steps"), e.tmp / "out"), ["--set 'train.steps': expected key=value"]),
    "unknown method": (lambda e: (train_args(e, method="nope"), e.tmp / "out"), ["unknown method 'nope'"]),
    "too many labelled": (lambda e: (train_args(e, n="99"), e.tmp / "out"), ["asked for 99 labelled slices"]),
    "--labelled abc": (lambda e: (train_args(e, n="abc"), e.tmp / "out"), ["Invalid value for '--labelled'", "semiseg train --help"]),
    "--device tpu": (lambda e: (train_args(e, "--device", "tpu"), e.tmp / "out"), ["--device 'tpu'"]),
    "3D patch_size too small": (lambda e: (train_args(e, "--set", "dims=3", "--set", "patch_size=[16,16,16]"), e.tmp / "out"),
                                ["patch_size [16, 16, 16] is too small", "poolings"]),
    "dims 4": (lambda e: (train_args(e, "--set", "dims=4"), e.tmp / "out"), ["dims must be 2 or 3, got 4"]),
    "--ddpm is no DDPM run": (lambda e: (train_args(e, "--ddpm", e.run, method="ddpm-finetune"), e.tmp / "out"), ["is a 'supervised' run, not a DDPM"]),
    "missing option": (lambda e: (["train", e.cache, "-M", "supervised"], e.tmp / "out"), ["Missing option '--out'"]),
    "unknown command": (lambda e: (["trian", e.cache], e.tmp / "out"), ["No such command 'trian'"]),
    "sweep --budgets 2,x": (lambda e: (["sweep", "--cache", e.cache, "--out", e.tmp / "out" / "s", "--methods", "supervised", "--budgets", "2,x"],
                                       e.tmp / "out"), ["--budgets '2,x': 'x' is not an integer"]),
    "sweep --seeds a": (lambda e: (["sweep", "--cache", e.cache, "--out", e.tmp / "out" / "s", "--methods", "supervised", "--budgets", "2",
                                    "--seeds", "a"], e.tmp / "out"), ["--seeds 'a': 'a' is not an integer"]),
    "study budgets a string": (lambda e: (["sweep", sweep_study(e, budgets="2,5")], e.tmp / "out"),
                               ["study.yaml", "'budgets' must be a list of integers, got '2,5'"]),
    "study is a list": (lambda e: (["sweep", e.study(["supervised"])], e.tmp / "out"), ["study.yaml", "must hold a mapping of study settings"]),
    "study settings typo": (lambda e: (["sweep", sweep_study(e, settings={"supervised": ["train.stepz=3"]})], e.tmp / "out"),
                            ["study.yaml, settings of supervised: unknown setting 'train.stepz'"]),
    "study settings of a missing method": (lambda e: (["sweep", sweep_study(e, settings={"supervized": []})], e.tmp / "out"),
                                           ["study.yaml", "settings for 'supervized', which is no method"]),
    "study negative steps": (lambda e: (["sweep", sweep_study(e, settings={"all": ["train.steps=-1"]})], e.tmp / "out"),
                             ["study.yaml, settings of supervised", "train.steps must be an integer of at least 1"]),
    # refused while the study is checked, not when each of its runs builds its optimizer
    "study unknown optimizer": (lambda e: (["sweep", sweep_study(e, settings={"all": ["train.optimizer=adamx"]})], e.tmp / "out"),
                                ["study.yaml, settings of supervised", "train.optimizer must be one of adamw, adam, sgd, got 'adamx'"]),
    "study unknown schedule": (lambda e: (["sweep", sweep_study(e, settings={"all": ["train.schedule=linear"]})], e.tmp / "out"),
                               ["study.yaml, settings of supervised", "train.schedule must be one of constant, cosine, poly"]),
    "study cache without test patients": (lambda e: (["sweep", sweep_study(e, cache=str(tampered_cache(e, no_test_patients)))], e.tmp / "out"),
                                          ["cache", "has no test patients; prepare it with --test-fraction above 0"]),
    "study YAML syntax": (lambda e: (["sweep", e.study("out: [\nmethods: x\n")], e.tmp / "out"), ["study.yaml", "is not valid YAML"]),
    "study device tpu": (lambda e: (["sweep", sweep_study(e, device="tpu")], e.tmp / "out"), ["--device 'tpu'"]),
    "patient --label-count 0": (lambda e: (patient_args(e, None, "--label-count", "0"), e.tmp / "out"), ["--label-count must be at least 1, got 0"]),
    "patient --label-count -2": (lambda e: (patient_args(e, None, "--label-count", "-2"), e.tmp / "out"), ["--label-count must be at least 1, got -2"]),
    "patient --label-slices a,b": (lambda e: (patient_args(e, None, "--label-slices", "a,b"), e.tmp / "out"),
                                   ["--label-slices 'a,b': 'a' is not an integer"]),
    "patient empty label map": (lambda e: (patient_args(e, empty_label_case(e), "--label-count", "1"), e.tmp / "out"),
                                ["the case has 0 annotated slices; cannot pick 1"]),
    "patient --label-slices outside": (lambda e: (patient_args(e, None, "--label-slices", "500"), e.tmp / "out"), ["slice 500 is outside"]),
    "patient --set typo": (lambda e: (patient_args(e, None, "--label-count", "2", "--set", "train.stepz=1"), e.tmp / "out"),
                           ["--set: unknown setting 'train.stepz'"]),
    "sample --steps 5000": (lambda e: (["sample", e.ddpm, "--out", e.tmp / "out" / "s.png", "--steps", "5000", "--count", "1"], e.tmp / "out"),
                            ["--steps 5000 is more than the 1000 timesteps"]),
    "sample --count 0": (lambda e: (["sample", e.ddpm, "--out", e.tmp / "out" / "s.png", "--count", "0"], e.tmp / "out"),
                         ["--count and --steps must be at least 1"]),
    "sample --out a folder": (lambda e: (["sample", e.ddpm, "--out", e.tmp / "out", "--count", "1", "--steps", "2"], e.tmp / "out"),
                              ["is a folder; expected a file name"]),
    "sample a segmentation run": (lambda e: (["sample", e.run, "--out", e.tmp / "out" / "s.png"], e.tmp / "out"), ["is a 'supervised' run"]),
    "predict with a DDPM run": (lambda e: (["predict", e.ddpm, e.data / "case00", "--out", e.tmp / "out" / "p"], e.tmp / "out"),
                                ["DDPM pretraining run"]),
    "predict --image without =": (lambda e: (["predict", e.run, "--image", "flair", "--out", e.tmp / "out" / "p"], e.tmp / "out"),
                                  ["--image 'flair': expected modality=path"]),
    "synth --shape bad": (lambda e: (["synth", e.tmp / "out" / "x", "--shape", "8,8"], e.tmp / "out"), ["--shape '8,8'"]),
    # --out that is a file, or sits under one
    **{f"{cmd} --out is a file": (setup, ["is a file; expected a folder"]) for cmd, setup in {
        "prepare": lambda e: (["prepare", e.data, "--out", e.file()], e.tmp),
        "train": lambda e: (train_args(e, out=e.file()), e.tmp),
        "predict": lambda e: (["predict", e.run, e.data / "case00", "--out", e.file()], e.tmp),
        "evaluate": lambda e: ([*e.evaluate(), "--out", e.file()], e.tmp),
        "patient": lambda e: (["patient", e.data / "case00", "--out", e.file(), "--label-count", "1"], e.tmp),
        "sweep": lambda e: (["sweep", "--cache", e.cache, "--out", e.file(), "--methods", "supervised", "--budgets", "2"], e.tmp),
        "synth": lambda e: (["synth", e.file()], e.tmp),
        "demo": lambda e: (["demo", "--out", e.file()], e.tmp),
    }.items()},
    **{f"{cmd} --out under a file": (setup, ["cannot be created", "afile is a file, not a folder"]) for cmd, setup in {
        "prepare": lambda e: (["prepare", e.data, "--out", e.file() / "cache"], e.tmp),
        "pretrain": lambda e: (["pretrain", e.cache, "--out", e.file() / "run", "-p", "small"], e.tmp),
        "train": lambda e: (["train", e.cache, "-M", "supervised", "--labelled", "2", "--out", e.file() / "run"], e.tmp),
        "predict": lambda e: (["predict", e.run, e.data / "case00", "--out", e.file() / "p"], e.tmp),
        "evaluate": lambda e: ([*e.evaluate(), "--out", e.file() / "ev"], e.tmp),
        "sample": lambda e: (["sample", e.ddpm, "--out", e.file() / "s.png", "--count", "1", "--steps", "2"], e.tmp),
        "sweep": lambda e: (["sweep", "--cache", e.cache, "--out", e.file() / "s", "--methods", "supervised", "--budgets", "2"], e.tmp),
        "patient": lambda e: (["patient", e.data / "case00", "--out", e.file() / "p", "--label-count", "1"], e.tmp),
        "synth": lambda e: (["synth", e.file() / "x"], e.tmp),
        "demo": lambda e: (["demo", "--out", e.file() / "d"], e.tmp),
    }.items()},
    # damaged input data (as tests/test_cli.py had them, now in process)
    "prepare: missing modality file": (bad_case(lambda f: (f / "c1_t2.nii.gz").unlink(), "-m", "t1,t2,flair"), ["c1", "modality t2 not found"]),
    "prepare: truncated gzip": (bad_case(truncate), ["c1_flair.nii.gz"]),
    "prepare: NaN voxel": (bad_case(nan_voxel), ["c1_t1.nii.gz", "NaN/Inf"]),
    "prepare: 2D image": (bad_case(lambda f: write_image(f / "c1_t1ce.nii.gz", np.zeros((24, 24), np.float32))), ["c1_t1ce.nii.gz", "expected a 3D image"]),
    "prepare: 4D image": (bad_case(lambda f: write_image(f / "c1_t1ce.nii.gz", np.zeros((24, 24, 16, 2), np.float32))),
                          ["c1_t1ce.nii.gz", "expected a 3D image"]),
    "prepare: shape mismatch": (bad_case(lambda f: write_image(f / "c1_t2.nii.gz", np.zeros((24, 24, 15), np.float32))), ["c1_t2.nii.gz", "shape"]),
    "prepare: affine mismatch": (bad_case(lambda f: write_image(f / "c1_t2.nii.gz", np.zeros((24, 24, 16), np.float32), np.diag([2.0, 1, 1, 1]))),
                                 ["c1_t2.nii.gz", "affine"]),
    "prepare: wrong label values": (bad_case(lambda f: write_image(f / "c1_seg.nii.gz", np.full((24, 24, 16), 3, np.int16))), ["c1_seg.nii.gz", "[3]"]),
    "prepare: empty folder": (lambda e: (["prepare", e.tmp / "out", "--out", e.tmp / "out" / "c"], e.tmp / "out"), ["no cases found"]),
    "prepare: dataset.json not an object": (lambda e: (["prepare", nnunet_json(e, "[1]"), "--out", e.tmp / "out" / "c"], e.tmp / "out"),
                                            ["dataset.json", "must hold a JSON object"]),
    "prepare: dataset.json without labels": (lambda e: (["prepare", nnunet_json(e, '{"channel_names": {"0": "CT"}}'), "--out", e.tmp / "out" / "c"],
                                                        e.tmp / "out"), ["dataset.json", "has no 'labels' entry"]),
    # damaged caches
    "cache .npy holding Python objects": (lambda e: (train_args(e, cache=tampered_cache(e, write_object_array)), e.tmp / "out"),
                                          [".slices.npy", "is not a cache array"]),
    "cache .npy of the wrong shape": (lambda e: (train_args(e, cache=tampered_cache(e, wrong_shape_array)), e.tmp / "out"),
                                      [".slices.npy", "holds float16 of shape (2, 4, 32, 32)"]),
    "cache index without cases": (lambda e: (train_args(e, cache=tampered_cache(e, lambda c: edit_json(c / "index.json", lambda o: o.pop("cases")))),
                                             e.tmp / "out"), ["index.json", "cache index lacks 'cases'"]),
    "DDPM with the wrong channels": (lambda e: (train_args(e, "--ddpm", tampered_run(e, lambda r: edit_json(
        r / "config.json", lambda o: o["data"].update(modalities=["t1", "t2"])), e.ddpm), method="ddpm-finetune"), e.tmp / "out"),
        ["DDPM was trained on 2 channels (t1, t2) but the cache has 4 channels"]),
    "DDPM with NaN weights": (lambda e: (train_args(e, "--ddpm", tampered_run(e, lambda r: edit_tensors(ckpt(r) / "ema.safetensors", nan_weights),
                                                                               e.ddpm), method="ddpm-finetune"), e.tmp / "out"),
                              ["ema.safetensors", "holds NaN or Inf values"]),
    # tampered or damaged run files
    "checkpoint.json not JSON": (lambda e: (["predict", tampered_run(e, lambda r: (ckpt(r) / "checkpoint.json").write_text("{step")),
                                             e.data / "case00", "--out", e.tmp / "out" / "p"], e.tmp), ["checkpoint.json", "not valid JSON"]),
    "checkpoint.json without step": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(ckpt(r) / "checkpoint.json", lambda o: o.pop("step")))),
                                                e.tmp), ["checkpoint.json", "no valid 'step'"]),
    "checkpoint.json step edited": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(ckpt(r) / "checkpoint.json",
                                                                                              lambda o: o.update(step=2)))), e.tmp),
                                    ["records disagree on its step", "checkpoint.json says 2", "latest.json says 4"]),
    "checkpoint.json optimizer groups": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(
        ckpt(r) / "checkpoint.json", lambda o: o["optimizer"]["param_groups"].append(o["optimizer"]["param_groups"][0])))), e.tmp),
        ["optimizer state has", "2 groups"]),
    "latest.json a list": (lambda e: (["predict", tampered_run(e, lambda r: (r / "latest.json").write_text("[1, 2]")), e.data / "case00",
                                       "--out", e.tmp / "out" / "p"], e.tmp), ["latest.json", "must hold a JSON object (found: array)"]),
    "latest.json step edited": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(r / "latest.json", lambda o: o.update(step=2)))), e.tmp),
                                ["latest.json", "not the folder of step 2"]),
    "latest.json to a missing folder": (lambda e: (["predict", tampered_run(e, lambda r: shutil.rmtree(ckpt(r))), e.data / "case00",
                                                    "--out", e.tmp / "out" / "p"], e.tmp), ["incomplete or missing"]),
    "weights metadata step edited": (lambda e: (resume_args(tampered_run(e, lambda r: save_file(
        load_file(str(ckpt(r) / "weights.safetensors")), str(ckpt(r) / "weights.safetensors"), metadata={"step": "3"}))), e.tmp),
        ["weights.safetensors says 3"]),
    "config.json not JSON": (lambda e: (["predict", tampered_run(e, lambda r: (r / "config.json").write_text("{")), e.data / "case00",
                                         "--out", e.tmp / "out" / "p"], e.tmp), ["config.json", "not valid JSON"]),
    "config.json without network": (lambda e: (["predict", tampered_run(e, lambda r: edit_json(r / "config.json", lambda o: o["config"].pop("network"))),
                                                e.data / "case00", "--out", e.tmp / "out" / "p"], e.tmp), ["config.json", "lacks the setting 'network'"]),
    "config.json without seed": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(r / "config.json", lambda o: o.pop("seed")))), e.tmp),
                                 ["config.json", "lacks 'seed'"]),
    "config.json steps a word": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(r / "config.json", lambda o: o["config"]["train"].update(
        steps="ten")))), e.tmp), ["config.json", "'train.steps' must be an integer"]),
    "config.json bad labelled item": (lambda e: (resume_args(tampered_run(e, lambda r: edit_json(r / "config.json", lambda o: o["plan"].update(
        labelled=["case01"])))), e.tmp), ["config.json", "labelled item 'case01'"]),
    "state: optimizer tensor of the wrong shape": (lambda e: (resume_args(tampered_run(e, lambda r: edit_tensors(
        ckpt(r) / "state.safetensors", wrong_optimizer_shape))), e.tmp), ["state.safetensors", "has shape (3, 3) but its parameter has"]),
    "state: RNG state missing": (lambda e: (resume_args(tampered_run(e, lambda r: edit_tensors(ckpt(r) / "state.safetensors",
                                                                                               lambda t: t.pop("rng.torch")))), e.tmp),
                                 ["state.safetensors", "RNG state rng.torch is missing"]),
    "state: RNG state short": (lambda e: (resume_args(tampered_run(e, lambda r: edit_tensors(ckpt(r) / "state.safetensors",
                                                                                             lambda t: t.update({"rng.torch": t["rng.torch"][:100]})))), e.tmp),
                               ["rng.torch is torch.uint8 of shape (100,)"]),
    "weights all NaN: predict": (lambda e: (["predict", tampered_run(e, lambda r: edit_tensors(ckpt(r) / "weights.safetensors", nan_weights)),
                                             e.data / "case00", "--out", e.tmp / "out" / "p"], e.tmp), ["weights.safetensors", "holds NaN or Inf"]),
    "weights all NaN: resume": (lambda e: (resume_args(tampered_run(e, lambda r: edit_tensors(ckpt(r) / "weights.safetensors", nan_weights))), e.tmp),
                                ["weights.safetensors", "holds NaN or Inf"]),
    "weights not safetensors": (lambda e: (["predict", tampered_run(e, lambda r: (ckpt(r) / "weights.safetensors").write_bytes(b"\x80\x04junk")),
                                            e.data / "case00", "--out", e.tmp / "out" / "p"], e.tmp), ["weights.safetensors", "cannot be read as safetensors"]),
    "weights of another network": (lambda e: (["sample", tampered_run(e, lambda r: edit_json(r / "config.json", lambda o: o["config"]["model"].update(
        base_channels=8)), e.ddpm), "--out", e.tmp / "out" / "s.png", "--count", "1", "--steps", "2"], e.tmp), ["checkpoint does not fit", "has shape"]),
    "resume as another method": (lambda e: (resume_args(e.copy(e.run, "run"), "mean-teacher"), e.tmp), ["is a 'supervised' run"]),
    "resume a folder that is no run": (lambda e: (resume_args(foreign_folder(e)), e.tmp),
                                       ["cannot resume: not a run folder"]),
    "train into a finished run": (lambda e: (train_args(e, out=e.copy(e.run, "run")), e.tmp), ["already exists and is not empty"]),
    "DDPM changed since the run started": (lambda e: (resume_args(changed_ddpm_run(e), "ddpm-finetune"), e.tmp), ["the DDPM changed since"]),
    "second process on the run": (lambda e: (resume_args(locked_run(e)), e.tmp), ["is in use by another semiseg process"]),
    "evaluate: no predictions": (lambda e: (["evaluate", "--pred", e.tmp / "out", "--gt", e.preds_and_gt()[1]], e.tmp), ["contains no predictions"]),
}


def changed_ddpm_run(env: Env) -> Path:
    """A ddpm-finetune run whose DDPM got new weights afterwards (a resumed or retrained DDPM)."""
    from semiseg.runs import train

    ddpm = env.copy(env.ddpm, "ddpm")
    run = env.tmp / "ft"
    train(env.cache, "ddpm-finetune", run, preset="small", n_labelled=2, ddpm_run=ddpm, overrides=TINY + ["train.steps=1", "train.checkpoint_every=1"])
    edit_json(run / "config.json", lambda o: o["config"]["train"].update(steps=2))  # so there is something to resume
    edit_tensors(ckpt(ddpm) / "ema.safetensors", lambda t: [v.mul_(1.01) for v in t.values() if v.is_floating_point()])
    return run


LOCK_HOLDERS: list[subprocess.Popen] = []


def locked_run(env: Env) -> Path:
    run = env.copy(env.run, "run")
    LOCK_HOLDERS.append(hold_lock(run))
    return run


@pytest.mark.parametrize("name", FAILURES)
def test_failure_is_one_line_and_leaves_nothing(name: str, env: Env):
    setup, fragments = FAILURES[name]
    args, watch = setup(env)
    before = snapshot(watch)
    try:
        outcome = invoke(*args)
    finally:
        while LOCK_HOLDERS:
            LOCK_HOLDERS.pop().communicate("")
    assert judge(outcome, fragments) == []
    assert changes(before, snapshot(watch)) == []


def test_device_cuda_without_cuda(env: Env):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(env.tmp)
    outcome = invoke(*train_args(env, "--device", "cuda"))
    assert judge(outcome, ["--device cuda: CUDA is not available"]) == []
    assert changes(before, snapshot(env.tmp)) == []
