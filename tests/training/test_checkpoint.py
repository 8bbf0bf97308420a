import json
from pathlib import Path

import pytest
import torch
from torch import nn

from semiseg.errors import SemisegInputError
from semiseg.training.checkpoint import (
    META,
    apply_training_state,
    fit_state_dict,
    latest_checkpoint,
    load_model_state,
    read_checkpoint,
    read_training_state,
    save_checkpoint,
)


class Tiny(nn.Module):
    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3)
        self.ema = nn.Linear(2, 2)  # stands in for an EMA copy: stored in ema.safetensors


def test_round_trip_with_optimizer(tmp_path: Path):
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.conv(torch.randn(2, 3, 5, 5)).sum() + model.ema(torch.randn(1, 2)).sum()
    loss.backward()
    opt.step()
    folder = save_checkpoint(tmp_path, 7, model, opt, meta={"note": "x"})
    assert latest_checkpoint(tmp_path) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "ema.safetensors", "state.safetensors", "weights.safetensors"]
    assert read_checkpoint(folder).meta["note"] == "x"

    other = Tiny()
    fit_state_dict(other, load_model_state(folder), folder)
    assert torch.equal(other.conv.weight, model.conv.weight) and torch.equal(other.ema.bias, model.ema.bias)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    assert apply_training_state(read_training_state(read_checkpoint(folder), opt2, None), opt2, None, folder) == 7
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert torch.equal(s1["state"][0]["exp_avg"], s2["state"][0]["exp_avg"])


def test_only_latest_checkpoint_is_kept(tmp_path: Path):
    model = Tiny()
    save_checkpoint(tmp_path, 1, model)
    save_checkpoint(tmp_path, 2, model)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]


def test_mismatch_is_one_clear_line(tmp_path: Path):
    folder = save_checkpoint(tmp_path, 1, Tiny(c=4))
    with pytest.raises(SemisegInputError, match=r"conv\.weight has shape \(4, 4, 3, 3\) in the checkpoint but \(4, 2, 3, 3\)") as info:
        fit_state_dict(Tiny(c=2), load_model_state(folder), folder)
    assert "\n" not in str(info.value)


def test_no_pickle_in_checkpoint(tmp_path: Path):
    folder = save_checkpoint(tmp_path, 1, Tiny())
    for f in folder.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"


@pytest.mark.parametrize("fused", [False, True])
def test_resumed_adam_matches_uninterrupted_with_channels_last_weights(tmp_path: Path, fused: bool):
    """Adam's moments come back from safetensors contiguous; for channels-last weights the fused
    kernel would then pair the wrong elements (seen as a DDPM that resumed differently)."""

    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        return net, torch.optim.AdamW(net.parameters(), lr=0.1, fused=fused)

    def step(net: nn.Module, opt: torch.optim.Optimizer, i: int) -> None:
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        (net(x) * torch.arange(64.0).reshape(4, 4, 4)).sum().backward()
        opt.step()

    net, opt = build()
    for i in range(6):
        step(net, opt, i)
    resumed, opt2 = build()
    for i in range(3):
        step(resumed, opt2, i)
    folder = save_checkpoint(tmp_path, 3, resumed, opt2)
    resumed, opt2 = build()
    resumed.load_state_dict(load_model_state(folder))
    apply_training_state(read_training_state(read_checkpoint(folder), opt2, None), opt2, None, folder)
    for i in range(3, 6):
        step(resumed, opt2, i)
    assert torch.equal(net.weight, resumed.weight)


def scaled_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    """A checkpoint of an fp16-style run: its gradient scaler's state, after a few updates, in checkpoint.json."""
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model.conv(torch.randn(2, 3, 5, 5)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    return save_checkpoint(tmp_path, 2, model, opt, meta={"grad_scaler": scaler.state_dict()}), scaler.state_dict()


def test_grad_scaler_state_is_restored(tmp_path: Path):
    folder, saved = scaled_checkpoint(tmp_path)
    opt = torch.optim.AdamW(Tiny().parameters(), lr=1e-3)
    training = read_training_state(read_checkpoint(folder), opt, None)
    assert training.grad_scaler == saved
    scaler = torch.amp.GradScaler("cpu")
    assert apply_training_state(training, opt, None, folder, scaler) == 2
    assert scaler.state_dict() == saved and scaler.get_scale() == 4096.0


@pytest.mark.parametrize("damage", [{"scale": -1.0}, {"scale": "big"}, {"scale": float("inf")}, [], {"scale": 8.0, "growth_factor": None}])
def test_damaged_grad_scaler_state_is_one_line(tmp_path: Path, damage):
    folder, saved = scaled_checkpoint(tmp_path)
    meta = json.loads((folder / META).read_text())
    meta["grad_scaler"] = {**saved, **damage} if isinstance(damage, dict) else damage
    (folder / META).write_text(json.dumps(meta))
    opt = torch.optim.AdamW(Tiny().parameters(), lr=1e-3)
    with pytest.raises(SemisegInputError, match=r"checkpoint\.json: checkpoint metadata's 'grad_scaler' .*the checkpoint is damaged") as info:
        read_training_state(read_checkpoint(folder), opt, None)
    assert "\n" not in str(info.value)
