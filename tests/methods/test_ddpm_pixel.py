"""ddpm-pixel's fast feature and prediction paths compute what the plain ones do."""

from __future__ import annotations

import pytest
import torch

from helpers import data_info, ddpm_block
from semiseg.config import load_config
from semiseg.methods.ddpm_pixel import DDPMPixel


def pixel(overrides: list[str]) -> DDPMPixel:
    cfg = load_config(DDPMPixel.config_files, "small", overrides=overrides)
    torch.manual_seed(0)
    model = DDPMPixel({**cfg, "ddpm": ddpm_block()}, data_info(("t1", "t2"), slice_size=32))
    with torch.no_grad():  # BatchNorm statistics of a trained ensemble, not the identity
        for m in model.mlps.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images() -> torch.Tensor:
    return torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(5))


def test_one_forward_for_all_timesteps_gives_each_timesteps_features():
    model = pixel(["blocks=[0,2]", "timesteps=[0.05,0.3]"])
    x = images()
    expected = []
    with torch.no_grad():
        for t in model.timesteps:
            tt = torch.full((3,), t)
            noisy = model.scheduler.add_noise(original_samples=x / model.scale, noise=model.noise.expand_as(x), timesteps=tt)
            expected.append(model.extractor(noisy, tt))
    torch.testing.assert_close(model.pixel_features(x), torch.cat(expected, dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_rows", [4096, 1000])  # one block of rows per member, or several and a partial one
def test_prediction_is_the_ensemble_on_full_resolution_features(monkeypatch, block_rows):
    # blocks 0-1 are at 16 px, 2 at 32 px: both upsampling and no upsampling are exercised
    monkeypatch.setattr("semiseg.methods.ddpm_pixel.MEMBER_ROWS", block_rows)
    model = pixel(["blocks=[1,0,2]", "timesteps=[0.05,0.3]", "ensemble=3"])
    x = images()
    with torch.no_grad():
        feats = model.pixel_features(x)
        plain = model.mlps(feats.permute(0, 2, 3, 1).reshape(-1, model.num_features))  # the training path
        fast = model.member_logits(x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    probs, _ = model.predict(x)
    expected = torch.softmax(plain, -1).mean(0).reshape(3, 32, 32, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(probs.argmax(1), expected.argmax(1))
