"""How much a DDPM run has learned: its denoising error on held-out slices at fixed timesteps.

The DDPM's EMA denoiser is run on the central slices of the cache's *test* patients (never used
to pretrain an inductive DDPM), noised with one fixed noise tensor per slice at a few fixed
timesteps; the score is the mean squared error of the predicted noise (v-prediction runs are
converted to a noise prediction), so runs with different objectives, weightings or lengths are
compared on one scale. Lower is better.

    python bench/ddpm_heldout.py RUN [RUN ...] [--slices 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

TIMESTEP_FRACTIONS = (0.01, 0.05, 0.15, 0.25, 0.5, 0.9)


@torch.no_grad()
def heldout_error(run: str, slices: int = 64, seed: int = 0) -> dict[str, float]:
    from semiseg.preprocess.cache import Cache
    from semiseg.preprocess.splits import slice_pool
    from semiseg.runs import load_trained
    from semiseg.training.checkpoint import latest_step

    method, record = load_trained(run)
    cache = Cache(record.cache)
    items = [(c, z) for c in cache.ids("test") for z in slice_pool(cache.cases[c].n_slices)]
    items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))[:slices]]
    x = torch.from_numpy(np.stack([np.asarray(cache.slices(c)[z], np.float32) for c, z in items])) / method.scale
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    net, sched = method.denoiser().eval(), method.scheduler
    out = {"step": latest_step(run), "slices": len(items)}
    for frac in TIMESTEP_FRACTIONS:
        t = torch.full((len(x),), int(round(frac * sched.num_train_timesteps)), dtype=torch.long)
        noisy = sched.add_noise(original_samples=x, noise=noise, timesteps=t)
        pred = torch.cat([net(noisy[i : i + 16], t[i : i + 16]) for i in range(0, len(x), 16)])
        if sched.prediction_type == "v_prediction":
            a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
            pred = a.sqrt() * pred + (1 - a).sqrt() * noisy
        out[f"t{frac}"] = float(((pred - noise) ** 2).mean())
    out["mean"] = float(np.mean([out[f"t{f}"] for f in TIMESTEP_FRACTIONS]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {r: heldout_error(r, args.slices) for r in args.runs}
    for r, v in results.items():
        print(r, json.dumps(v))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
