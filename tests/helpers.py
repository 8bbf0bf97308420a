"""Test helpers: tiny NIfTI datasets written on the fly (no data is committed) and the real-data
folder beside the project."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BRATS21 = ("t1", "t1ce", "t2", "flair")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (only present on the development machines)")
    return path


def write_image(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def blob_case(shape: tuple[int, int, int] = (24, 24, 16), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A head-like ellipsoid with a tumour: (4, *shape) float32 images and int16 BraTS 2021 labels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (grid**2).sum(0) < 0.8
    centre = rng.uniform(-0.2, 0.2, 3).reshape(3, 1, 1, 1)
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.zeros(shape, np.int16)
    label[(r < 0.45) & head] = 2
    label[r < 0.3] = 4
    label[r < 0.15] = 1
    images = np.stack([head * (100 + 20 * c) + (label > 0) * 50 * (c + 1) + rng.normal(0, 3, shape) * head for c in range(4)])
    return images.astype(np.float32), label


def write_brats_case(
    root: Path,
    case_id: str,
    year: int = 2021,
    modalities: tuple[str, ...] = BRATS21,
    label: bool = True,
    shape: tuple[int, int, int] = (24, 24, 16),
    seed: int = 0,
    affine: np.ndarray | None = None,
) -> Path:
    """Write one BraTS case folder; returns it."""
    images, lab = blob_case(shape, seed)
    folder = root / case_id
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    sep = "_" if year == 2021 else "-"
    for c, m in enumerate(BRATS21):
        if m in modalities:
            write_image(folder / f"{case_id}{sep}{m if year == 2021 else names[m]}.nii.gz", images[c], affine)
    if label:
        if year == 2023:
            lab = np.where(lab == 4, 3, lab).astype(np.int16)
        write_image(folder / f"{case_id}{sep}seg.nii.gz", lab, affine)
    return folder



def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the real ``semiseg`` entry point in this process: (exit code, stdout, stderr)."""
    import sys

    from semiseg.cli import main

    argv, sys.argv = sys.argv, ["semiseg", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def tiny_cache_at(root: Path, modalities: list[str] | None = None) -> Path:
    """Write eight small labelled cases and one unlabelled one under root/data and prepare them
    into root/cache (32 px slices, 2D and 3D, a quarter of the patients for testing); returns the cache."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache

    for i in range(8):
        write_brats_case(root / "data", f"case{i:02d}", shape=(36, 36, 24), seed=i)
    write_brats_case(root / "data", "case99", label=False, shape=(36, 36, 24), seed=99)
    build_cache(discover(root / "data", modalities), root / "cache", slice_size=32, test_fraction=0.25)
    return root / "cache"


#: settings that make every method train in about a second on the tiny_cache fixture
TINY = ["train.steps=4", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2", "predict.batch_size=4"]
TINY_NET = ["network.features=[8,8,16,16,16,8]", "patch_size=[32,32,32]"]
TINY_DDPM = ["train.steps=4", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2",
             "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[16]"]
#: the DDPM's speed settings switched off: the plain path the fast one is checked against
PLAIN_UNET = ["model.fast_attention=false", "model.channels_last=false"]


def ddpm_block(overrides: list[str] | None = None) -> dict:
    """The ``ddpm`` block a diffusion method gets from its DDPM run: the tiny model of TINY_DDPM."""
    from semiseg.config import load_config

    cfg = load_config(["ddpm"], "small", overrides=[s for s in TINY_DDPM if s.startswith("model.")] + (overrides or []))
    return {"run": "-", "model": cfg["model"], "diffusion": cfg["diffusion"]}


def data_info(modalities: tuple[str, ...] = ("t1",), scheme=None, slice_size: int = 32):
    """A DataInfo for building a method without a cache (MRI channels, binary labels by default)."""
    from semiseg.data.labels import BINARY
    from semiseg.preprocess.cache import DataInfo
    from semiseg.preprocess.normalise import Normaliser

    return DataInfo(tuple(modalities), {m: "MRI" for m in modalities}, scheme or BINARY, Normaliser(["MRI"] * len(modalities)), slice_size, "nnunet")


def small_study(folder: Path, data: Path, out: str, methods: tuple[str, ...] = ("supervised", "ddpm-finetune"),
                seeds: tuple[int, ...] = (0, 1), settings: dict | None = None, extras: bool = True) -> Path:
    """Write ``folder/<out>.yaml``: a study of ``data`` (prepared into its own cache, a DDPM pretrained
    for it) cheap enough for several sweeps per test session; supervised runs are long enough (30
    steps, a checkpoint every 5) to be interrupted midway. With ``extras`` every kind of run a study
    can have: the upper bound, a guided selection chain (supervised, random picks in rounds of 1 and
    2 labels) and an external method (the ground truth as its predictions, in ``folder/external``).
    Returns the YAML's path."""
    import shutil

    import yaml

    spec = {
        "out": out, "data": str(data), "slice_size": 32, "test_fraction": 0.25, "methods": list(methods), "budgets": [2],
        "seeds": list(seeds), "preset": "small", "ddpm": {"preset": "small", "set": TINY_DDPM},
        "settings": settings or {
            "all": ["train.steps=6", "train.batch_size=2", "train.log_every=3", "train.checkpoint_every=3"],
            "supervised": ["network.features=[8,8,16,16,16,8]", "train.steps=30", "train.log_every=5", "train.checkpoint_every=5"],
        },
        "test_slices_per_case": 4, "overlays": 2,
    }
    if extras:
        for seed in seeds:
            preds = folder / "external" / f"n2-s{seed}"
            preds.mkdir(parents=True, exist_ok=True)
            for label in data.glob("*/*_seg.nii.gz"):
                shutil.copy(label, preds / f"{label.parent.name}.nii.gz")
        spec |= {"upper_bound": True, "selection": {"strategy": "random", "rounds": [1, 2], "methods": ["supervised"]},
                 "external": {"truth": {"predictions": str(folder / "external" / "n{budget}-s{seed}"), "space": "original"}}}
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def worker_placement(barrier) -> tuple[str | None, int]:
    """In a pool worker, once every worker has reached ``barrier``: its CUDA_VISIBLE_DEVICES and torch threads."""
    import os

    import torch

    barrier.wait(timeout=120)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.get_num_threads()
