"""``semiseg demo``: the whole pipeline on the built-in phantom, on a laptop CPU.

Synthesise the phantom, prepare it, pretrain the small DDPM, run a label-efficiency sweep over all
five methods and write the report. ``--quick`` is the smoke-sized version (minutes); the full demo
uses more cases, budgets, seeds and steps.
"""

from __future__ import annotations

import time
from os import PathLike
from pathlib import Path

from semiseg.progress import log

METHODS = ["supervised", "ddpm-pixel", "ddpm-finetune", "mean-teacher", "embedmatch"]

#: the two demo sizes, chosen by timing on 2 CPU cores (README, performance); ``steps``: training
#: steps of the network methods; ``pixel_steps``: of ddpm-pixel's MLPs, whose steps cost far less
MODES = {
    "quick": {
        "cases": 12, "shape": (96, 96, 64), "spacing": 2.0, "slice_size": 64,
        "ddpm_steps": 200, "ddpm_batch": 8, "budgets": [2, 10], "seeds": [0], "steps": 100, "pixel_steps": 200,
        "test_slices_per_case": 12,
    },
    "full": {
        "cases": 40, "shape": (96, 96, 64), "spacing": 2.0, "slice_size": 64,
        "ddpm_steps": 1000, "ddpm_batch": 16, "budgets": [2, 5, 10], "seeds": [0, 1], "steps": 200, "pixel_steps": 600,
        "test_slices_per_case": 12,
    },
}


def demo_pool(device: str | None, quick: bool) -> dict[str, int]:
    """Worker processes and threads for the demo's runs: on a CPU with several cores, two at a time
    sharing the cores out, as the small networks keep two threads busy poorly; one on a GPU. The
    quick demo also pretrains its DDPM in a worker beside the runs that need none (its threads
    given), which pays off when those runs take as long as the DDPM, as there (README,
    performance); the full demo's longer DDPM takes every core first."""
    from semiseg.studies.execution import available_cores
    from semiseg.training.distributed import pick_device

    cores = available_cores()
    if pick_device(0, device).type != "cpu" or cores < 2:
        return {}
    return {"workers": 2, "threads": cores // 2} if quick else {"workers": 2}


def run_demo(out: str | PathLike = "semiseg-demo", quick: bool = False, device: str | None = None, seed: int = 0) -> Path:
    """Run the demo into ``out`` (resumable: finished stages are skipped); returns the report path."""
    from semiseg.files import check_output, removed_on_failure
    from semiseg.runs.train import has_progress
    from semiseg.training.distributed import pick_device

    out = Path(out)
    check_output(out, "folder")
    pick_device(0, device)
    with removed_on_failure(out, keep=has_progress):
        return _run_demo(out, quick, device, seed)


def _run_demo(out: Path, quick: bool, device: str | None, seed: int) -> Path:
    from semiseg.data.phantom import write_phantom_dataset
    from semiseg.progress import progress_bar
    from semiseg.studies.sweep import load_study, run_sweep

    t0 = time.perf_counter()
    mode = MODES["quick" if quick else "full"]
    data = out / "phantom"
    if not data.exists():
        log(f"[bold]1/4 synth[/] {mode['cases']} phantom cases -> {data}")
        with progress_bar() as bar:
            task = bar.add_task("synth", total=mode["cases"], info="", unit="case")
            write_phantom_dataset(
                data, mode["cases"], seed=seed, shape=mode["shape"], spacing=(mode["spacing"],) * 3,
                progress=lambda i, n: bar.update(task, completed=i),
            )
    log("[bold]2/4 prepare, 3/4 pretrain, 4/4 sweep[/]")
    study = load_study(
        None,
        out=str(out / "study"),
        data=str(data),
        slice_size=mode["slice_size"],
        test_fraction=0.25,
        methods=METHODS,
        budgets=mode["budgets"],
        seeds=mode["seeds"],
        preset="small",
        ddpm={"preset": "small", "set": [f"train.steps={mode['ddpm_steps']}", f"train.batch_size={mode['ddpm_batch']}"]},
        settings={m: [f"train.steps={mode['pixel_steps' if m == 'ddpm-pixel' else 'steps']}"] for m in METHODS},
        test_slices_per_case=mode["test_slices_per_case"],
        device=device,
    )
    report = run_sweep(study, **demo_pool(device, quick))
    log(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return report
