"""Augmentation keeps images inside what the networks see at test time: rotations pad with the
background value, gamma leaves the background where it is, and the same seed gives the same draw."""

import numpy as np
import torch

from semiseg.training.augment import Augmenter

ROTATE = {"prob": 1.0, "rotate_degrees": 45, "scale": 0.0}


def square(background: float, size: int = 32) -> torch.Tensor:
    img = torch.full((1, 1, size, size), background)
    img[..., 12:20, 12:20] = 1.0
    return img


def test_rotation_pads_with_the_channel_background():
    ct_background = -4.5  # normalised CT air: 0 would be soft tissue
    out, _ = Augmenter(ROTATE, dims=2, background=[ct_background])(square(ct_background), None, seed=3)
    corners = out[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.full((4,), ct_background)), corners


def test_rotation_pads_each_channel_with_its_own_background():
    img = torch.cat([square(-4.5), square(0.0)], dim=1)
    out, _ = Augmenter(ROTATE, dims=2, background=[-4.5, 0.0])(img, None, seed=3)
    assert out[0, 0, 0, 0] == -4.5 and out[0, 1, 0, 0] == 0.0


def test_gamma_leaves_the_background_alone():
    rng = np.random.default_rng(0)
    img = torch.zeros((2, 2, 24, 24))
    img[..., 6:18, 6:18] = torch.from_numpy(rng.normal(0, 1, (2, 2, 12, 12)).astype(np.float32))
    aug = Augmenter({"prob": 1.0, "gamma": [0.5, 0.6]}, dims=2, background=[0.0, 0.0])
    out, _ = aug(img, None, seed=1)
    inside = img[..., 6:18, 6:18]
    assert (out[..., :6, :] == 0).all() and (out[..., 18:, :] == 0).all()
    assert not torch.allclose(out[..., 6:18, 6:18], inside)  # the foreground did change


def test_same_seed_same_augmentation():
    img, lab = square(0.0, 24).repeat(3, 1, 1, 1), torch.zeros((3, 24, 24), dtype=torch.long)
    cfg = {"prob": 0.5, "flip": True, "rotate_degrees": 15, "scale": 0.1, "gamma": [0.7, 1.5]}
    a = Augmenter(cfg, 2)(img, lab, seed=11)
    b = Augmenter(cfg, 2)(img, lab, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_augmented_batches_are_plain_tensors():
    img, lab = square(0.0, 24).repeat(2, 1, 1, 1), torch.zeros((2, 24, 24), dtype=torch.long)
    out, lab_out = Augmenter({"prob": 1.0, "flip": True, "rotate_degrees": 15, "gamma": [0.7, 1.5]}, 2)(img, lab, seed=2)
    assert type(out) is torch.Tensor and type(lab_out) is torch.Tensor  # not MONAI MetaTensors: they slow every later op
