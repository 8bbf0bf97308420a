"""The denoising UNet's speed settings change no numbers, and feature reading stops the UNet after
the last block it needs."""

from __future__ import annotations

import torch

from helpers import PLAIN_UNET, TINY_DDPM, data_info
from semiseg.config import load_config
from semiseg.methods.ddpm import DDPM
from semiseg.models.diffusion import DecoderFeatures, build_unet, decoder_blocks

#: the tiny model with self-attention at its 16 px level, so the attention path is exercised
TINY_MODEL = [s for s in TINY_DDPM if s.startswith("model.")]


def ddpm(extra: list[str]) -> DDPM:
    cfg = load_config(["ddpm"], "small", overrides=TINY_MODEL + extra)
    return DDPM(cfg, data_info(("t1", "t2"), slice_size=32))


def loss_and_grads(method: DDPM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same noise and timesteps for both paths
    method.unet.zero_grad(set_to_none=True)
    loss, _ = method.forward(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in method.unet.named_parameters()}


def test_fast_paths_give_the_plain_paths_loss_and_gradients():
    fast, plain = ddpm([]), ddpm(PLAIN_UNET)
    assert fast.unet.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.unet.conv_in.conv.weight.is_contiguous()
    assert any(getattr(m, "use_flash_attention", False) for m in fast.unet.modules())
    assert not any(getattr(m, "use_flash_attention", False) for m in plain.unet.modules())
    plain.unet.load_state_dict(fast.unet.state_dict())
    # a non-zero output layer (MONAI zero-initialises it), so every gradient is non-trivial
    with torch.no_grad():
        for m in (fast, plain):
            m.unet.out[-1].conv.weight.copy_(torch.linspace(-0.1, 0.1, m.unet.out[-1].conv.weight.numel()).reshape_as(m.unet.out[-1].conv.weight))
    batch = {"image": torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(0))}
    loss_f, grads_f = loss_and_grads(fast, batch)
    loss_p, grads_p = loss_and_grads(plain, batch)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=0)
    # tolerance relative to the largest gradient: some (the key projection's bias) are zero in
    # exact arithmetic and rounding noise in both paths
    scale = max(g.abs().max().item() for g in grads_p.values())
    assert scale > 0
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=1e-6 * scale, msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_feature_reading_stops_after_the_last_block():
    torch.manual_seed(0)
    cfg = {**load_config(["ddpm"], "small", overrides=TINY_MODEL)["model"], "image_size": 32}
    unet = build_unet(cfg, 2).eval()
    blocks = decoder_blocks(unet)
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([10, 500])
    full: dict[int, torch.Tensor] = {}
    handles = [blocks[b].register_forward_hook(lambda m, i, o, b=b: full.__setitem__(b, o)) for b in range(len(blocks))]
    with torch.no_grad():
        unet(x, t)
    for h in handles:
        h.remove()
    ran_after = []
    unet.out.register_forward_hook(lambda *a: ran_after.append("out"))
    blocks[2].register_forward_hook(lambda *a: ran_after.append("block 2"))
    reader = DecoderFeatures(unet, [1, 0])
    with torch.no_grad():
        acts = reader.activations(x, t)
        feats = reader(x, t)
    assert ran_after == [], "the UNet ran past the last block it was asked for"
    torch.testing.assert_close(acts[0], full[1])
    torch.testing.assert_close(acts[1], full[0])
    assert feats.shape == (2, reader.channels(), 32, 32)
    # the UNet still runs whole when called directly
    with torch.no_grad():
        assert unet(x, t).shape == x.shape
    assert ran_after == ["block 2", "out"]
