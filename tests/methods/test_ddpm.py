"""DDPM pretraining sees brains as they occur at test time: its flip mirrors left and right (RAS x),
never front and back. Checked on an asymmetric phantom whose marker sits left, front."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from helpers import TINY_DDPM
from semiseg.config import load_config
from semiseg.data.cases import discover
from semiseg.methods.ddpm import DDPM
from semiseg.preprocess.cache import build_cache
from semiseg.training.context import TrainContext
from semiseg.training.distributed import DistInfo
from semiseg.training.plan import make_plan


def asymmetric_dataset(root: Path) -> Path:
    """One-channel nnU-Net dataset, RAS affine: a head with a bright marker at low x (patient's
    left in RAS voxel order) and high y (anterior)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        img = np.zeros((32, 32, 8), np.float32)
        img[4:28, 4:28] = 100.0
        img[5:10, 20:27] = 400.0  # left (low x), anterior (high y)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"c{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image((img > 300).astype(np.uint8), np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "marker": 1},
                                                   "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_ddpm_flips_left_right(tmp_path: Path):
    cache = build_cache(discover(asymmetric_dataset(tmp_path / "data")), tmp_path / "cache", slice_size=32, test_fraction=0.0)
    original = np.asarray(cache.slices(cache.ids()[0])[4, 0], np.float32)
    # the cached slice keeps RAS order: the marker is at low x (axis 0 here, -2 in a batch), high y
    xs, ys = np.nonzero(original > original.max() * 0.8)
    assert xs.mean() < 16 < ys.mean()

    cfg = load_config(["ddpm"], "small", overrides=TINY_DDPM + ["train.batch_size=4"])
    ddpm = DDPM(cfg, cache.data_info())
    plan = make_plan(cache, 2, unlabelled_only=True, transductive=True)
    ddpm.setup(TrainContext(cache, plan, 0, DistInfo(), torch.device("cpu"), tmp_path / "run", 4))
    scale = float(cfg["diffusion"]["data_scale"])
    seen_flipped = seen_plain = False
    for step in range(8):
        batch = ddpm.next_batch(step)["image"][:, 0].numpy() * scale
        for img in batch:
            xs, ys = np.nonzero(img > img.max() * 0.8)
            assert ys.mean() > 16, "the DDPM saw a brain mirrored front to back"
            seen_flipped |= bool(xs.mean() > 16)
            seen_plain |= bool(xs.mean() < 16)
    assert seen_flipped and seen_plain


def test_min_snr_weighting_and_v_prediction(tmp_path: Path):
    from helpers import data_info

    x = torch.randn(4, 1, 16, 16)
    base = TINY_DDPM + ["model.attention_resolutions=[]"]
    torch.manual_seed(0)
    plain = DDPM(load_config(["ddpm"], "small", overrides=base + ["diffusion.loss_weighting=uniform"]), data_info(slice_size=16))
    torch.manual_seed(0)
    weighted = DDPM(load_config(["ddpm"], "small", overrides=base + ["diffusion.loss_weighting=min_snr", "diffusion.min_snr_gamma=5"]),
                    data_info(slice_size=16))
    torch.manual_seed(1)
    t = torch.randint(0, 1000, (4,))
    torch.manual_seed(1)
    loss_w, _ = weighted({"image": x}, 0)
    # same draw of t and noise, by hand
    torch.manual_seed(1)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (4,))
    noisy = plain.scheduler.add_noise(original_samples=x, noise=noise, timesteps=t)
    per = ((plain.unet(noisy, t) - noise) ** 2).flatten(1).mean(1)
    a = plain.scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    assert torch.allclose(loss_w, (per * snr.clamp(max=5) / snr).mean(), rtol=1e-5)
    v = DDPM(load_config(["ddpm"], "small", overrides=base + ["diffusion.prediction=v_prediction"]), data_info(slice_size=16))
    loss_v, _ = v({"image": x}, 0)
    assert torch.isfinite(loss_v) and v.scheduler.prediction_type == "v_prediction"
    assert v.sample(1, steps=2).shape == (1, 1, 16, 16)
