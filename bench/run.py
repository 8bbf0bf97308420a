"""semiseg benchmarks: speed and peak memory of each pipeline stage on this machine.

Each benchmark runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Results are merged into ``bench/results.json`` (keyed by benchmark name, with the machine and the
command) and printed as the Markdown table the README's performance section shows.

    python bench/run.py                       # every benchmark
    python bench/run.py prepare evaluate      # some
    python bench/run.py --table               # print the table from results.json
    REF_SRC=/path/to/braintumor-ddpm python bench/run.py ddpm-train-vs-ref-b8 features-vs-ref

The ``*-vs-ref`` benchmarks run braintumor-ddpm (the reference code) beside semiseg in one process,
alternating, so the ratio holds on a busy machine (bench/reference.py); they are skipped, saying
why, when ``REF_SRC`` is not set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
BENCHES: dict[str, Callable[[Path], dict[str, Any]]] = {}
#: in the names of the benchmarks that run the reference code beside semiseg
SIDE_BY_SIDE = "-vs-ref"


def bench(fn: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
    BENCHES[fn.__name__.replace("_", "-")] = fn
    return fn


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: on a busy machine it grows with the work
    done, where wall time also grows with the other jobs."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def phantom(tmp: Path, cases: int, shape=(128, 128, 96), spacing=1.5) -> Path:
    from semiseg.data.phantom import write_phantom_dataset

    out = tmp / f"phantom-{cases}-{shape[0]}"
    if not out.exists():
        write_phantom_dataset(out, cases, seed=0, shape=shape, spacing=(spacing,) * 3)
    return out


def prepared(tmp: Path, cases: int = 10, slice_size: int = 128, dims=("2d", "3d"), shape=(128, 128, 96), spacing=1.5) -> Path:
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache

    out = tmp / f"cache-{cases}-{slice_size}-{shape[0]}"
    if not out.exists():
        build_cache(discover(phantom(tmp, cases, shape, spacing)), out, slice_size=slice_size, dims=dims, test_fraction=0.2)
    return out


# ---------------------------------------------------------------------------------------------
@bench
def prepare(tmp: Path) -> dict[str, Any]:
    """`semiseg prepare` of 10 phantom cases (128x128x96) to 128 px slices and 3D volumes."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache

    data = phantom(tmp, 10)
    t = time.perf_counter()
    build_cache(discover(data), tmp / "bench-cache", slice_size=128)
    secs = time.perf_counter() - t
    return {"what": "prepare 10 phantom cases (128x128x96 -> 128 px slices + volumes)", "seconds": secs, "seconds_per_case": secs / 10}


@bench
def prepare_brats(tmp: Path) -> dict[str, Any]:
    """`semiseg prepare` of one BraTS-sized case (240x240x155, 4 modalities) to 128 px slices and the 3D volume."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache

    data = _brats_sized_volume(tmp)
    t = time.perf_counter()
    build_cache(discover(data), tmp / "bench-cache-brats", slice_size=128, test_fraction=0.0)
    secs = time.perf_counter() - t
    return {"what": "prepare 1 BraTS-sized phantom case (240x240x155 -> 128 px slices + volume)", "seconds": secs, "seconds_per_case": secs}


@bench
def evaluate(tmp: Path) -> dict[str, Any]:
    """`semiseg evaluate` of 10 predictions against 10 ground truths (3 BraTS regions each)."""
    from semiseg.evaluation.evaluate import evaluate_folders

    data = phantom(tmp, 10)
    gt = sorted(data.glob("*/*_seg.nii.gz"))
    pred = tmp / "pred"
    pred.mkdir(exist_ok=True)
    for i, g in enumerate(gt):  # a neighbour's label as "prediction": realistic overlap and distances
        shutil.copy(gt[(i + 1) % len(gt)], pred / g.name.replace("_seg", ""))
    t = time.perf_counter()
    evaluate_folders(pred, data)
    secs = time.perf_counter() - t
    return {"what": "evaluate 10 cases x 3 regions (Dice, IoU, HD95 mm)", "seconds": secs, "seconds_per_case": secs / 10}


def _train_speed(tmp: Path, method: str, preset: str, overrides: list[str], steps: int, cache: Path, **kw: Any) -> dict[str, Any]:
    from semiseg.runs import train
    from semiseg.training.log import read_log

    run = tmp / f"run-{method}-{preset}"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    schedule = [f"train.steps={steps}", f"train.log_every={max(steps // 2, 1)}", f"train.checkpoint_every={steps}"]
    train(cache, method, run, preset=preset, overrides=overrides + schedule, **kw)
    secs = time.perf_counter() - t
    rows = read_log(run / "train_log.csv")
    return {"seconds": secs, "images_per_s": rows[-1]["images_per_s"], "steps": steps, "run": str(run)}


@bench
def ddpm_small(tmp: Path) -> dict[str, Any]:
    """DDPM pretraining, small preset (64 px, batch 16)."""
    cache = prepared(tmp, 10, 64)
    r = _train_speed(tmp, "ddpm", "small", [], 40, cache)
    return {"what": "DDPM pretraining, small preset, 64 px, batch 16", **r}


@bench
def ddpm_paper(tmp: Path) -> dict[str, Any]:
    """DDPM pretraining, paper preset (128 px, batch 32, 36 M parameters)."""
    cache = prepared(tmp, 10, 128)
    r = _train_speed(tmp, "ddpm", "paper", [], 2, cache)  # images/s of the second step (the first warms up)
    return {"what": "DDPM pretraining, paper preset, 128 px, batch 32", **r}


def _ddpm_run(tmp: Path, cache: Path, name: str, preset: str, settings: list[str]) -> Path:
    """A DDPM run for the diffusion methods to read (made once per scratch folder). Trained in a
    child process, so its memory does not count in the calling benchmark's peak."""
    run = tmp / name
    if not (run / "latest.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        sets = [arg for s in settings for arg in ("--set", s)]
        subprocess.run([sys.executable, "-m", "semiseg", "pretrain", str(cache), "--out", str(run), "--preset", preset, *sets],
                       check=True, capture_output=True)
    return run


def _paper_ddpm(tmp: Path, cache: Path) -> Path:
    """The paper preset's architecture after one step (the weights do not matter for timing)."""
    return _ddpm_run(tmp, cache, "ddpm-paper-1step", "paper", ["train.steps=1", "train.batch_size=2"])


def _pixel_memory(tmp: Path, n: int) -> dict[str, Any]:
    cache = prepared(tmp, 20, 128, dims=("2d",))
    ddpm = _paper_ddpm(tmp, cache)
    from semiseg.runs import train

    run = tmp / f"pixel-{n}"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    train(cache, "ddpm-pixel", run, preset="default", n_labelled=n, ddpm_run=ddpm,
          overrides=["train.steps=200", "train.log_every=100", "train.checkpoint_every=200"])
    secs = time.perf_counter() - t
    from semiseg.methods.ddpm_pixel import DDPMPixel  # noqa: F401
    from semiseg.runs import load_trained

    model, _ = load_trained(run)
    return {"what": f"ddpm-pixel training, N={n} slices of 128x128, paper UNet, {model.num_features} features/pixel, 10 MLPs, 200 steps",
            "seconds": secs, "features_per_pixel": model.num_features}


@bench
def pixel_n10(tmp: Path) -> dict[str, Any]:
    """ddpm-pixel peak memory and time with 10 labelled slices (paper preset UNet)."""
    return _pixel_memory(tmp, 10)


@bench
def pixel_n50(tmp: Path) -> dict[str, Any]:
    """ddpm-pixel peak memory and time with 50 labelled slices (paper preset UNet)."""
    return _pixel_memory(tmp, 50)


def _brats_sized_volume(tmp: Path) -> Path:
    """One phantom case of BraTS size: 240 x 240 x 155 at 1 mm."""
    return phantom(tmp, 1, shape=(240, 240, 155), spacing=1.0)


def _predict_seconds(tmp: Path, method: str, preset: str, extra: list[str], ddpm: bool, dims: int, slice_size: int = 128) -> dict[str, Any]:
    from semiseg.inference.predict import predict
    from semiseg.runs import train

    cache = prepared(tmp, 10, slice_size)
    ddpm_run = _paper_ddpm(tmp, cache) if ddpm else None
    run = tmp / f"predict-{method}-{dims}d"
    shutil.rmtree(run, ignore_errors=True)
    train(cache, method, run, preset=preset, n_labelled=2 if dims == 3 else 10, ddpm_run=ddpm_run,
          overrides=extra + [f"dims={dims}", "train.steps=1", "train.batch_size=1"])
    volume = _brats_sized_volume(tmp)
    out = tmp / f"pred-{method}-{dims}d"
    shutil.rmtree(out, ignore_errors=True)
    t, cpu = time.perf_counter(), cpu_seconds()
    predict(run, volume, out)
    secs, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    result = {"what": f"predict one 240x240x155 volume, {method} ({preset} preset, {dims}D)", "seconds": secs, "seconds_per_volume": secs,
              "cpu_seconds": cpu}
    if dims == 2:
        result |= _predict_flops(run, volume, secs)
    return result


def _gemm_gflops(n: int = 3072, repeats: int = 5) -> float:
    """The fastest fp32 rate this process reaches: best of a few large matrix products (GFLOP/s),
    the ceiling a convolution network's forward can hope for on this CPU."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _predict_flops(run: Path, volume: Path, secs: float) -> dict[str, Any]:
    """The floating-point work of a 2D prediction (torch's FLOP counter on one slice, times the
    slices predicted) and the rate it ran at, beside the machine's matrix-product rate: how far a
    prediction time is from what this CPU can do without changing the output."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from semiseg.inference.predict import resolve_inputs
    from semiseg.preprocess.pipeline import prepare_case
    from semiseg.runs.train import load_trained

    method, record = load_trained(run, torch.device("cpu"))
    (case,), _ = resolve_inputs(volume, list(record.data.modalities))
    slices = prepare_case(case, method.scheme, record.data.normaliser, with_label=False).image.shape[-1]
    size = record.data.slice_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.predict(torch.zeros((1, len(record.data.modalities), size, size)))
    gflop = counter.get_total_flops() * slices / 1e9
    gemm = _gemm_gflops()
    return {"slices": slices, "gflop": round(gflop, 1), "gflop_per_s": round(gflop / secs, 1), "gemm_gflop_per_s": round(gemm, 1),
            "seconds_at_gemm_rate": round(gflop / gemm, 1)}


@bench
def predict_supervised(tmp: Path) -> dict[str, Any]:
    return _predict_seconds(tmp, "supervised", "default", [], False, 2)


@bench
def predict_ddpm_finetune(tmp: Path) -> dict[str, Any]:
    return _predict_seconds(tmp, "ddpm-finetune", "default", [], True, 2)


@bench
def predict_ddpm_pixel(tmp: Path) -> dict[str, Any]:
    return _predict_seconds(tmp, "ddpm-pixel", "default", ["pixels_per_step=64"], True, 2)


@bench
def predict_embedmatch_3d(tmp: Path) -> dict[str, Any]:
    return _predict_seconds(tmp, "embedmatch", "default", ["patch_size=[96,96,96]"], False, 3)


def _train_seconds_per_method(tmp: Path, method: str) -> dict[str, Any]:
    """Training time at N = 10 labelled slices with the small preset (the demo's), 64 px phantom."""
    cache = prepared(tmp, 20, 64)
    ddpm = _ddpm_run(tmp, cache, "ddpm-small", "small", ["train.steps=50"]) if method.startswith("ddpm") else None
    from semiseg.config import load_config
    from semiseg.methods.base import get_method

    preset_steps = int(load_config(get_method(method).config_files, "small")["train"]["steps"])
    steps = 100  # seconds per step times the preset's steps gives a full run's time
    r = _train_speed(tmp, method, "small", ["dims=2"], steps, cache, n_labelled=10, ddpm_run=ddpm)
    return {"what": f"train {method}, N=10 slices, small preset, 64 px, {steps} of its {preset_steps} steps (incl. start-up)", **r,
            "seconds_per_step": r["seconds"] / steps}


for _m in ("supervised", "ddpm-pixel", "ddpm-finetune", "mean-teacher", "embedmatch"):
    BENCHES[f"train-{_m}"] = (lambda m: lambda tmp: _train_seconds_per_method(tmp, m))(_m)


#: (method, dims, extra settings) of the data-wait benchmarks: every method at the small preset, and
#: 3D patches, where building a batch (cropping, foreground sampling, augmentation) costs most
DATA_WAIT = {
    "ddpm": ("ddpm", 2, []),
    "supervised": ("supervised", 2, []),
    "supervised-3d": ("supervised", 3, ["patch_size=[64,64,64]", "train.batch_size=2"]),
    "ddpm-pixel": ("ddpm-pixel", 2, []),
    "ddpm-finetune": ("ddpm-finetune", 2, []),
    "mean-teacher": ("mean-teacher", 2, []),
    "embedmatch": ("embedmatch", 2, []),
    "embedmatch-3d": ("embedmatch", 3, ["patch_size=[64,64,64]", "train.batch_size=2", "uncertainty.passes=4", "teacher.warmup=0.0"]),
}


def _data_wait(tmp: Path, name: str, steps: int = 40) -> dict[str, Any]:
    """The share of a training step spent waiting for its batch, with batches built in the training
    process (0 workers) and by 2 DataLoader workers: the loop's ``data_wait_share`` of the second half
    of the steps (the first half includes start-up: DDPM features, worker processes)."""
    from semiseg.runs import train
    from semiseg.training.log import read_log

    method, dims, extra = DATA_WAIT[name]
    cache = prepared(tmp, 20, 64)
    ddpm = _ddpm_run(tmp, cache, "ddpm-small", "small", ["train.steps=50"]) if method.startswith("ddpm-") else None
    out: dict[str, Any] = {"what": f"{name}: share of a step waiting for data, small preset, 64 px" + (", 64^3 patches" if dims == 3 else "")}
    total = 0.0
    for workers in (0, 2):
        run = tmp / f"wait-{name}-w{workers}"
        shutil.rmtree(run, ignore_errors=True)
        settings = extra + [f"train.steps={steps}", f"train.log_every={steps // 2}", f"train.checkpoint_every={steps}", f"train.workers={workers}"]
        if method != "ddpm":
            settings.append(f"dims={dims}")
        t = time.perf_counter()
        if method == "ddpm":
            train(cache, "ddpm", run, preset="small", overrides=settings)
        else:
            train(cache, method, run, preset="small", overrides=settings, n_labelled=2 if dims == 3 else 10, ddpm_run=ddpm)
        total += time.perf_counter() - t
        last = read_log(run / "train_log.csv")[-1]
        out[f"wait_share_w{workers}"] = last["data_wait_share"]
        out[f"images_per_s_w{workers}"] = last["images_per_s"]
    out["seconds"] = total
    return out


for _n in DATA_WAIT:
    BENCHES[f"data-wait-{_n}"] = (lambda n: lambda tmp: _data_wait(tmp, n))(_n)


def _embedmatch_step(tmp: Path, patch: int) -> dict[str, Any]:
    cache = prepared(tmp, 10, 64)
    r = _train_speed(tmp, "embedmatch", "default", ["dims=3", f"patch_size=[{patch},{patch},{patch}]", "teacher.warmup=0.0",
                                                     "train.batch_size=2"], 3, cache, n_labelled=2)
    return {"what": f"embedmatch 3D training step, {patch}^3 patches, batch 2+2, 8 MC passes, default network", **r,
            "seconds_per_step": r["seconds"] / 3}


@bench
def embedmatch_64(tmp: Path) -> dict[str, Any]:
    return _embedmatch_step(tmp, 64)


@bench
def embedmatch_96(tmp: Path) -> dict[str, Any]:
    return _embedmatch_step(tmp, 96)


# ---- side by side with the reference code (braintumor-ddpm; bench/reference.py) ----------------
# Both sides run in one process, pinned to 2 threads, their steps alternating, so that a busy
# machine slows both alike and the ratio holds; the first round warms up and is not counted.


def _alternate(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating, after one warm-up round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            print(f"round {i} {name}: {dt:.2f} s", file=sys.stderr, flush=True)
            if i:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def _brats_info(slice_size: int = 128) -> Any:
    from semiseg.data.labels import get_scheme
    from semiseg.preprocess.cache import DataInfo
    from semiseg.preprocess.normalise import Normaliser

    mods = ("t1", "t1ce", "t2", "flair")
    return DataInfo(mods, {m: "MRI" for m in mods}, get_scheme("brats2021"), Normaliser(["MRI"] * 4), slice_size, "brats2021")


def _ddpm_train_vs_ref(batch: int, rounds: int) -> dict[str, Any]:
    """Training steps/s at the paper configuration: the reference's UNetModel with its own loss path
    (uniform timestep sampler, GaussianDiffusion.training_losses) and AdamW, as its TrainLoop,
    vs semiseg's DDPM method (its forward, its loop's optimiser), both fp32 at 128 px, 4 channels."""
    import reference

    if reference.missing_reason():
        return {"skipped": reference.missing_reason()}
    import torch

    from semiseg.config import load_config
    from semiseg.methods.ddpm import DDPM
    from semiseg.training.loop import build_optimizer

    torch.set_num_threads(2)
    ref = reference.load_reference()
    ours = DDPM(load_config(["ddpm"], "paper"), _brats_info())
    n_ref, n_ours = (sum(p.numel() for p in m.parameters()) for m in (ref.model, ours.unet))
    x = torch.rand(batch, 4, 128, 128) * 2 - 1
    opt_ref = torch.optim.AdamW(ref.model.parameters(), lr=2e-4, weight_decay=0.0)
    sampler = ref.uniform_sampler(ref.diffusion)
    opt_ours = build_optimizer(ours.config["train"], ours.trainable_parameters())

    def step_ref() -> None:
        opt_ref.zero_grad(set_to_none=True)
        t, w = sampler.sample(batch, "cpu")
        (ref.diffusion.training_losses(ref.model, x, t)["loss"] * w).mean().backward()
        opt_ref.step()

    def step_ours() -> None:
        opt_ours.zero_grad(set_to_none=True)
        ours.forward({"image": x}, 0)[0].backward()
        opt_ours.step()

    ref.model.train()
    ours.train()
    secs = _alternate({"reference": step_ref, "semiseg": step_ours}, rounds)
    speed = {k: batch / v for k, v in secs.items()}
    return {"what": f"DDPM training, paper configuration ({n_ours / 1e6:.2f} M parameters; reference {n_ref / 1e6:.2f} M), "
                    f"batch {batch}, fp32, 128 px: braintumor-ddpm vs semiseg, steps alternating in one process, 2 threads",
            "images_per_s": {k: round(v, 3) for k, v in speed.items()},
            "ratio_semiseg_over_reference": round(speed["semiseg"] / speed["reference"], 3), "batch": batch, "rounds": rounds,
            "seconds": sum(secs.values()) * rounds}


@bench
def ddpm_train_vs_ref_b8(tmp: Path) -> dict[str, Any]:
    return _ddpm_train_vs_ref(8, 4)


@bench
def ddpm_train_vs_ref_b32(tmp: Path) -> dict[str, Any]:
    return _ddpm_train_vs_ref(32, 2)


@bench
def features_vs_ref(tmp: Path) -> dict[str, Any]:
    """Seconds per slice of pixel-feature extraction: the reference's PixelClassifier.feature_extractor
    (decoder blocks 16, 17, 18 at t = 200 of 4,000: 192 features) vs semiseg's ddpm-pixel at the same
    blocks and timestep and at its default preset; the paper DDPM, no gradients, 128 px."""
    import reference

    if reference.missing_reason():
        return {"skipped": reference.missing_reason()}
    import torch

    from semiseg.config import load_config
    from semiseg.methods.ddpm_pixel import DDPMPixel

    torch.set_num_threads(2)
    ref = reference.load_reference()
    layers, steps = [16, 17, 18], [200]
    pc = ref.pixel_classifier(ddpm_model_path="fresh", layers=layers, time_steps=steps)
    pc.initialize()
    paper = load_config(["ddpm"], "paper")
    ddpm = {"run": "-", "model": paper["model"], "diffusion": paper["diffusion"]}

    def pixel(overrides: list[str]) -> DDPMPixel:
        cfg = load_config(DDPMPixel.config_files, "default", overrides=overrides)
        return DDPMPixel({**cfg, "ddpm": ddpm}, _brats_info())

    same, default = pixel([f"blocks={layers}", f"timesteps={steps}"]), pixel([])
    out: dict[str, Any] = {"features": {"reference": pc.in_features, "semiseg_same": same.num_features, "semiseg_default": default.num_features},
                           "default_blocks": default.config["blocks"], "default_timesteps": default.config["timesteps"]}
    total = 0.0
    for batch, rounds in ((1, 3), (8, 2)):
        x = torch.rand(batch, 4, 128, 128) * 2 - 1
        with torch.no_grad():
            secs = _alternate({"reference": lambda: pc.feature_extractor(x), "semiseg_same": lambda: same.pixel_features(x),
                               "semiseg_default": lambda: default.pixel_features(x)}, rounds)
        total += sum(secs.values()) * rounds
        per = {k: v / batch for k, v in secs.items()}
        out[f"batch{batch}"] = {"seconds_per_slice": {k: round(v, 4) for k, v in per.items()},
                                "ratio_same_over_reference": round(per["semiseg_same"] / per["reference"], 3),
                                "ratio_default_over_reference": round(per["semiseg_default"] / per["reference"], 3)}
    out.update({"what": "pixel features of a 128 px slice, paper DDPM: braintumor-ddpm (blocks 16-18, t = 200) vs semiseg ddpm-pixel "
                        "at the same blocks and timestep and at its default preset; calls alternating in one process, 2 threads",
                "seconds": total})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help="scratch folder kept between benchmarks (default: a new temporary one)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of results.json and exit")
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("SEMISEG_PROGRESS", "0")
        from semiseg.progress import set_enabled

        set_enabled(False)
        result = BENCHES[args.child](Path(args.tmp))
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print("RESULT " + json.dumps(result))
        return
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    names = args.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]}; choose from {', '.join(BENCHES)}")
    tmp = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="semiseg-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        machine["torch"] = torch.__version__
        machine["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    for name in names:
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--tmp", str(tmp)], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(f"benchmark {name} failed")
        result = json.loads(line[-1][len("RESULT "):])
        if "skipped" in result:
            print(f"skipped: {result['skipped']}")
            continue
        result.update({"machine": machine, "command": f"python bench/run.py {name}", "date": time.strftime("%Y-%m-%d")})
        results[name] = result
        print(json.dumps(result, indent=1))
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict[str, Any]) -> str:
    lines = ["| benchmark | what | time | throughput | peak RSS |", "|---|---|---|---|---|"]
    for name, r in results.items():
        if SIDE_BY_SIDE in name:
            continue
        extra = []
        if "images_per_s" in r:
            extra.append(f"{r['images_per_s']:.1f} img/s")
        for key, label in (("seconds_per_case", "s/case"), ("seconds_per_volume", "s/volume"), ("seconds_per_step", "s/step")):
            if key in r:
                extra.append(f"{r[key]:.2f} {label}")
        if "wait_share_w0" in r:
            extra.append(f"waits {100 * r['wait_share_w0']:.0f}% of a step (0 workers), {100 * r['wait_share_w2']:.0f}% (2 workers); "
                         f"{r['images_per_s_w0']:.1f} vs {r['images_per_s_w2']:.1f} img/s")
        if "cpu_seconds" in r:
            extra.append(f"{r['cpu_seconds']:.0f} CPU s")
        if "gflop" in r:
            extra.append(f"{r['gflop']:.0f} GFLOP at {r['gflop_per_s']:.0f} GFLOP/s (matrix product here: {r['gemm_gflop_per_s']:.0f})")
        lines.append(f"| {name} | {r['what']} | {r['seconds']:.1f} s | {', '.join(extra)} | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "| side by side | reference | semiseg | semiseg / reference |", "|---|---|---|---|"]
    for name, r in results.items():
        if SIDE_BY_SIDE not in name:
            continue
        if "ratio_semiseg_over_reference" in r:
            s = r["images_per_s"]
            lines.append(f"| {name}: training, batch {r['batch']} | {s['reference']:.3f} img/s | {s['semiseg']:.3f} img/s | "
                         f"{r['ratio_semiseg_over_reference']:.2f}x the speed |")
            continue
        for batch in ("batch1", "batch8"):
            per = r[batch]["seconds_per_slice"]
            f = r["features"]
            lines.append(f"| {name}: {batch}, same {f['semiseg_same']} features | {per['reference']:.3f} s/slice | "
                         f"{per['semiseg_same']:.3f} s/slice | {r[batch]['ratio_same_over_reference']:.2f}x the time |")
            lines.append(f"| {name}: {batch}, default preset ({f['semiseg_default']} features) | {per['reference']:.3f} s/slice | "
                         f"{per['semiseg_default']:.3f} s/slice | {r[batch]['ratio_default_over_reference']:.2f}x the time |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
