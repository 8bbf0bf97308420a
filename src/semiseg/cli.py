"""The ``semiseg`` command: a thin typer layer. Each command parses its options, calls one library
function and prints the result. Users' mistakes (SemisegInputError) become one line on stderr and
exit code 2; library imports happen inside commands so ``semiseg --help`` stays instant.

Spellings: options that count or list labelled data accept both ``labelled`` and ``labeled``
(``--labelled``/``--labeled``, ``--unlabelled``/``--unlabeled``); ``-n`` is only ever ``--cases``.
Help is click's plain layout: typer's rich panels print boolean flags as ``--resume <bool>``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.16 ships its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError


def _fail(message: str) -> None:
    """Print one line on stderr and exit with code 2."""
    print(f"semiseg: error: {' '.join(message.split())}", file=sys.stderr)
    raise typer.Exit(2)


class OneLineErrors(TyperGroup):
    """The group of semiseg's commands: users' mistakes (SemisegInputError), OS errors and wrong
    options end with one line on stderr and exit code 2, whether the app runs as the console
    script or under typer's CliRunner."""

    def invoke(self, ctx: Any) -> Any:
        from semiseg.errors import SemisegInputError
        from semiseg.files import os_problem

        try:
            return super().invoke(ctx)
        except SemisegInputError as exc:
            _fail(str(exc))
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _fail(exc.format_message() + where)
        except OSError as exc:
            # a last resort: library code turns OS errors into SemisegInputErrors where it knows the
            # file; this keeps the promise of one line for an OS error it did not foresee
            _fail(f"{exc.filename}: {os_problem(exc)}" if exc.filename else os_problem(exc))


app = typer.Typer(
    cls=OneLineErrors,
    name="semiseg",
    help="Label-efficient medical image segmentation: diffusion representations, embedding matching and their baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset from the shipped config files (e.g. small).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Your YAML settings (see `semiseg config`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, e.g. --set train.steps=200 (repeatable).")]
TransductiveOpt = Annotated[
    bool, typer.Option("--transductive", help="Also use the cache's test patients' images, unlabelled (as the diffusion paper's DDPM does).")
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, mps (default: best available).")]


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _print_version(value: bool) -> None:
    if value:
        from semiseg import __version__

        typer.echo(f"semiseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print semiseg's version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Label-efficient medical image segmentation: diffusion representations, embedding matching and their baselines."""


def _ints(value: str | None, option: str) -> list[int] | None:
    """A comma-separated list of integers; anything else is a one-line error naming ``option``."""
    from semiseg.errors import SemisegInputError

    items = _csv(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        bad = next(v for v in items if not v.lstrip("+-").isdigit())
        raise SemisegInputError(None, f"{option} {value!r}: {bad!r} is not an integer") from None


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (BraTS 2021 layout).")],
    cases: Annotated[int, typer.Option("--cases", "-n", help="Number of cases.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same data.")] = 0,
    unlabelled: Annotated[int, typer.Option("--unlabelled", "--unlabeled", help="How many of the cases get no seg file.")] = 0,
    shape: Annotated[Optional[str], typer.Option("--shape", help="Volume shape X,Y,Z (default 128,128,96).")] = None,
    spacing: Annotated[Optional[float], typer.Option("--spacing", help="Isotropic voxel spacing in mm (default 1.5).")] = None,
) -> None:
    """Write a synthetic 4-contrast brain MRI dataset with glioma-like tumours (BraTS 2021 layout)."""
    from semiseg.data import phantom
    from semiseg.errors import SemisegInputError
    from semiseg.progress import progress_bar

    kwargs: dict = {}
    if shape:
        try:
            kwargs["shape"] = tuple(int(s) for s in shape.split(","))
        except ValueError:
            raise SemisegInputError(None, f"--shape {shape!r}: expected three integers like 128,128,96") from None
        if len(kwargs["shape"]) != 3 or min(kwargs["shape"]) < 16:
            raise SemisegInputError(None, f"--shape {shape!r}: expected three integers of at least 16")
    if spacing:
        kwargs["spacing"] = (spacing,) * 3
    if cases < 1:
        raise SemisegInputError(None, f"--cases must be at least 1, got {cases}")
    with progress_bar() as bar:
        task = bar.add_task("synth", total=cases, info="", unit="case")
        ids = phantom.write_phantom_dataset(
            out, cases, seed=seed, unlabelled=unlabelled, progress=lambda i, n: bar.update(task, completed=i), **kwargs
        )
    typer.echo(f"wrote {len(ids)} cases to {out}")


@app.command()
def prepare(
    data: Annotated[Path, typer.Argument(help="Dataset folder: BraTS 2021/2023 or nnU-Net v2 raw.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to create.")],
    modalities: Annotated[Optional[str], typer.Option("--modalities", "-m", help="Channels to use, e.g. flair,t1ce (default: all).")] = None,
    slice_size: Annotated[int, typer.Option("--slice-size", help="Side of the 2D slices in pixels.")] = 128,
    dims: Annotated[str, typer.Option("--dims", help="What to cache: 2d, 3d or 2d,3d.")] = "2d,3d",
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of labelled patients held out for testing.")] = 0.2,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the patient-level split.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cache.")] = False,
) -> None:
    """Preprocess a dataset into a cache: canonical orientation, crop, normalisation, slices, split."""
    from semiseg.data.cases import discover
    from semiseg.preprocess.cache import build_cache
    from semiseg.progress import log, progress_bar

    dataset = discover(data, _csv(modalities))
    for note in dataset.notes:
        log(f"note: {note}")
    log(
        f"{dataset.format}: {len(dataset.cases)} cases ({len(dataset.labelled_cases)} labelled), "
        f"channels {', '.join(dataset.modalities)}, labels {dataset.scheme.name}"
    )
    with progress_bar() as bar:
        task = bar.add_task("prepare", total=len(dataset.cases), info="", unit="case")
        cache = build_cache(
            dataset, out, slice_size=slice_size, dims=tuple(_csv(dims) or []), test_fraction=test_fraction,
            split_seed=split_seed, overwrite=overwrite, progress=lambda i, n: bar.update(task, completed=i),
        )
    typer.echo(
        f"cache {out}: {len(cache.ids('train'))} train, {len(cache.ids('test'))} test, "
        f"{len(cache.ids('unlabelled'))} unlabelled cases"
    )


@app.command()
def pretrain(
    cache: Annotated[Path, typer.Argument(help="Cache folder from `semiseg prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (or resume).")],
    preset: PresetOpt = "paper",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    device: DeviceOpt = None,
    transductive: TransductiveOpt = False,
) -> None:
    """Train an unconditional DDPM on every cached slice of the training patients (labels unused). Runs under torchrun too."""
    from semiseg.runs import train as run_train

    run_train(cache, "ddpm", out, preset=preset, config_file=config, overrides=set_, seed=seed, resume=resume, device=device,
              transductive=transductive)
    typer.echo(f"run {out}")


@app.command()
def train(
    cache: Annotated[Path, typer.Argument(help="Cache folder from `semiseg prepare`.")],
    method: Annotated[str, typer.Option("--method", "-M", help="supervised, ddpm-pixel, ddpm-finetune, mean-teacher, embedmatch.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (or resume).")],
    n_labelled: Annotated[
        Optional[int], typer.Option("--labelled", "--labeled", help="Number of labelled slices (2D) or cases (3D), drawn with --seed.")
    ] = None,
    labelled_items: Annotated[
        Optional[str], typer.Option("--labelled-items", "--labeled-items", help="Explicit labelled items: case:slice,... (2D) or case,... (3D).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the labelled subset and of training.")] = 0,
    ddpm: Annotated[Optional[Path], typer.Option("--ddpm", help="Pretrained DDPM run (ddpm-pixel, ddpm-finetune).")] = None,
    preset: PresetOpt = "default",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    device: DeviceOpt = None,
    transductive: TransductiveOpt = False,
    negatives: Annotated[
        int, typer.Option("--negatives", help="2D: also label this many lesion-free slices of the labelled patients as such (not counted in --labelled).")
    ] = 0,
) -> None:
    """Train a segmentation method with few labels. Runs under torchrun too."""
    from semiseg.runs import train as run_train

    run_train(
        cache, method, out, preset=preset, config_file=config, overrides=set_, n_labelled=n_labelled,
        labelled_items=_csv(labelled_items), seed=seed, ddpm_run=ddpm, resume=resume, device=device, transductive=transductive,
        negatives=negatives,
    )
    typer.echo(f"run {out}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A trained run folder.")],
    input: Annotated[Optional[Path], typer.Argument(help="Dataset folder, case folder, folder of <case>_0000.nii.gz, or one image.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <case>.nii.gz outputs.")] = Path("predictions"),
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write <case>_prob.nii.gz (one volume per class).")] = False,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="Also write <case>_uncertainty.nii.gz.")] = False,
    image: Annotated[Optional[list[str]], typer.Option("--image", help="An explicit image set instead of INPUT: modality=path (repeat).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Segment cases with a trained run; outputs match the input's shape, affine and label values."""
    from semiseg.errors import SemisegInputError
    from semiseg.inference.predict import predict as run_predict

    images = None
    if image:
        bad = [i for i in image if "=" not in i]
        if bad:
            raise SemisegInputError(None, f"--image {bad[0]!r}: expected modality=path")
        images = dict(i.split("=", 1) for i in image)
    elif input is None:
        raise SemisegInputError(None, "give an INPUT folder or file, or --image modality=path")
    paths = run_predict(run, input or Path("."), out, probabilities, uncertainty, device, images)
    typer.echo(f"wrote {len(paths)} segmentations to {out}")


@app.command()
def evaluate(
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Ground truth: a dataset folder (BraTS, nnU-Net) or a folder of <case> label maps.")] = None,
    pred: Annotated[Optional[Path], typer.Option("--pred", help="Folder of <case> predictions (NIfTI, .mha or .nrrd).")] = None,
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="brats2021, brats2023 or binary (default: from the data).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the CSV and JSON (default: the --pred folder).")] = None,
    folders: Annotated[Optional[list[Path]], typer.Argument(hidden=True)] = None,
) -> None:
    """Dice, IoU and HD95 (mm) per region and case: a per-case CSV, a summary JSON and a table."""
    from rich.console import Console

    from semiseg.data.labels import get_scheme
    from semiseg.errors import SemisegInputError
    from semiseg.evaluation.evaluate import evaluate_folders, summary_table

    if folders:
        # nnU-Net's evaluate_folder takes (GT, PRED), semiseg's evaluate used to take (PRED, GT): refuse to guess
        raise SemisegInputError(None, "name the folders: semiseg evaluate --gt GROUND_TRUTH --pred PREDICTIONS (positional folders are ambiguous)")
    if gt is None or pred is None:
        raise SemisegInputError(None, f"give {'--gt and --pred' if gt is None and pred is None else '--gt' if gt is None else '--pred'}")
    result = evaluate_folders(pred, gt, get_scheme(scheme) if scheme else None, out)
    Console().print(summary_table(result))
    typer.echo(f"wrote {result.per_case_csv} and {result.summary_json}")


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="A DDPM run folder (from `semiseg pretrain`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("samples.png"),
    count: Annotated[int, typer.Option("--count", help="Number of samples (rows).")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="DDIM sampling steps.")] = 50,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Generate slices with the DDPM (DDIM sampling) and save a grid: one column per modality."""
    from semiseg.studies.figures import sample_grid

    sample_grid(run, out, n=count, steps=steps, seed=seed, device=device)
    typer.echo(f"wrote {out}")


@app.command()
def config(
    kind: Annotated[str, typer.Argument(help="ddpm, or a method: supervised, ddpm-pixel, ddpm-finetune, mean-teacher, embedmatch.")],
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Print only this preset.")] = None,
) -> None:
    """Print every preset's resolved settings (or one preset's) as YAML to copy, edit and pass back with --config."""
    from semiseg.config import preset_names, resolved_presets_text
    from semiseg.errors import SemisegInputError
    from semiseg.methods.base import get_method

    files = ["ddpm"] if kind == "ddpm" else get_method(kind).config_files
    if preset is not None and preset not in preset_names(files):
        raise SemisegInputError(None, f"--preset {preset!r}: {kind} has the presets {', '.join(preset_names(files))}")
    typer.echo(resolved_presets_text(files, f"semiseg config {kind}", only=preset), nl=False)


@app.command()
def sweep(
    study: Annotated[Optional[Path], typer.Argument(help="Study YAML (see the README); flags below override its entries.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Study folder.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (prepared into OUT/cache).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="An existing cache instead of --data.")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated methods.")] = None,
    budgets: Annotated[Optional[str], typer.Option("--budgets", help="Comma-separated label budgets, e.g. 2,5,10.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated seeds.")] = None,
    modalities: Annotated[Optional[str], typer.Option("--modalities", "-m", help="Channels, e.g. flair,t1ce.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset of every method.")] = None,
    device: DeviceOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="Show each run's state (done, running, failed, to do) and Slurm job; run nothing.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Results, summary, figures and report from the finished runs only.")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Record a failing run's error and go on with the others.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run only shard i of n of the runs, e.g. 1/4.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Runs at a time, each in its own process (default 1, or one per GPU).")] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPUs for the workers, e.g. 0,1,2,3; each worker gets one.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Torch threads per run (default: cores / workers); CPU results depend on it.")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or slurm (jobs through submitit).")] = "local",
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition.", rich_help_panel="Slurm")] = None,
    gpus_per_run: Annotated[Optional[int], typer.Option("--gpus-per-run", help="GPUs of each run's job (default 0).", rich_help_panel="Slurm")] = None,
    cpus_per_run: Annotated[Optional[int], typer.Option("--cpus-per-run", help="CPUs (torch threads) of each job.", rich_help_panel="Slurm")] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="Time limit of each job (default 4:00:00); then it is requeued and resumes.",
                                                      rich_help_panel="Slurm")] = None,
    array_parallelism: Annotated[Optional[int], typer.Option("--array-parallelism", help="At most this many runs at once.", rich_help_panel="Slurm")] = None,
    setup_gpus: Annotated[Optional[int], typer.Option("--setup-gpus", help="GPUs of the set-up job (DDP; default: --gpus-per-run).",
                                                      rich_help_panel="Slurm")] = None,
    slurm_option: Annotated[Optional[list[str]], typer.Option("--slurm-option", help="More sbatch options as key=value, e.g. account=lab (repeatable).",
                                                              rich_help_panel="Slurm")] = None,
) -> None:
    """Label-efficiency sweep: methods x budgets x seeds on one patient-level split; resumable and safe to run in parallel.
    Exit code 3: the study has failed runs (see --list); 2: bad input."""
    from semiseg.errors import SemisegInputError

    slurm = dict(partition=partition, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, time=time_limit,
                 array_parallelism=array_parallelism, setup_gpus=setup_gpus, slurm_option=slurm_option)
    local = dict(workers=workers, gpus=gpus, shard=shard, keep_going=keep_going or None)
    if executor not in ("local", "slurm"):
        raise SemisegInputError(None, f"--executor {executor!r}: expected local or slurm")
    if list_ and report_only:
        raise SemisegInputError(None, "--list and --report-only do not go together")
    if executor == "slurm" and (given := [k for k, v in local.items() if v is not None]):
        raise SemisegInputError(None, f"--{given[0].replace('_', '-')} is for local sweeps (with Slurm every run is a task of its own; "
                                      "see --array-parallelism)")
    if executor == "local" and (given := [k for k, v in slurm.items() if v is not None]):
        raise SemisegInputError(None, f"--{given[0].replace('_', '-')} is a Slurm option: add --executor slurm")
    shard_of = _shard(shard) if shard else None

    from semiseg.studies.execution import sweep_study, write_report_now
    from semiseg.studies.sweep import load_study

    spec = load_study(
        study, out=str(out) if out else None, data=str(data) if data else None, cache=str(cache) if cache else None,
        methods=_csv(methods), budgets=_ints(budgets, "--budgets"), seeds=_ints(seeds, "--seeds"), modalities=_csv(modalities),
        preset=preset, device=device,
    )
    if list_:
        _print_status(spec)
    elif report_only:
        _print_summary(spec, write_report_now(spec))
    elif executor == "slurm":
        _submit(spec, slurm, threads)
    else:
        _print_outcome(spec, sweep_study(spec, workers=workers, gpus=_csv(gpus), threads=threads, keep_going=keep_going, shard=shard_of))


def _shard(text: str) -> tuple[int, int]:
    """``--shard i/n`` (1 <= i <= n) -> (i, n)."""
    from semiseg.errors import SemisegInputError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SemisegInputError(None, f"--shard {text!r}: expected i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise SemisegInputError(None, f"--shard {text!r}: i must be between 1 and n")
    return i, n


def _print_outcome(spec, outcome) -> None:
    """The summary tables and report of a finished study, or what is unfinished; the failed runs
    and exit code 3 if there are any."""
    from semiseg.studies.execution import EXIT_FAILED_RUNS

    if outcome.report is not None:
        _print_summary(spec, outcome.report)
    else:
        typer.echo(f"{len(outcome.unfinished)} runs are not finished (to do in other shards, or running elsewhere); the last sweep to "
                   "finish writes the report (or use --report-only); see --list")
    if outcome.failures:
        for f in outcome.failures:
            typer.echo(f"failed: {f.run}: {f.error.splitlines()[0] if f.error else ''}", err=True)
        typer.echo(f"{len(outcome.failures)} runs failed (records in {Path(spec.out) / 'failures'}); exit code {EXIT_FAILED_RUNS}", err=True)
        raise typer.Exit(EXIT_FAILED_RUNS)


def _print_summary(spec, report: Path) -> None:
    from rich.console import Console

    from semiseg.studies.sweep import read_summary, summary_table

    console = Console()
    summary = read_summary(spec.out)
    console.print(summary_table(summary, "dice"))
    console.print(summary_table(summary, "hd95"))
    if any(r.get("protocol") == "volume" for r in summary) and spec.dims == 2 and spec.test_slices_per_case:
        console.print(summary_table(summary, "dice", "volume"))
    typer.echo(f"report: {report}")


def _print_status(spec) -> None:
    """``sweep --list``: the set-up's and every run's state, with Slurm jobs where submitted."""
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from semiseg.studies.execution import study_status

    setup, rows = study_status(spec)
    slurm = None
    if (Path(spec.out) / "slurm" / "jobs.json").exists():
        try:
            from semiseg.studies.slurm import slurm_status
        except ImportError:
            typer.echo("(install semiseg[slurm] to see the Slurm jobs' states)", err=True)
        else:
            slurm = slurm_status(spec.out)
    table = Table(title=f"{spec.out}: set-up {setup}" + (f" (Slurm job {slurm.setup[0]} {slurm.setup[1]})" if slurm and slurm.setup else ""))
    for col in ("method", "labels", "seed", "state") + (("Slurm job", "Slurm state") if slurm else ()) + ("detail",):
        table.add_column(col)
    for r in rows:
        job = slurm.runs.get(r.run.name, ("", "")) if slurm else None
        table.add_row(r.run.method, str(r.run.budget), str(r.run.seed), r.state, *(job or ()), r.detail)
    console = Console()
    if not console.is_terminal:  # piped: keep each run on one line
        console = Console(width=200)
    console.print(table)
    counts = Counter(r.state for r in rows)
    typer.echo(", ".join(f"{state}: {counts.get(state, 0)}" for state in ("done", "running", "failed", "to do"))
               + (f"; report job {slurm.report[0]} {slurm.report[1]}" if slurm and slurm.report else ""))


def _submit(spec, slurm: dict, threads: int | None) -> None:
    """``sweep --executor slurm``: submit the jobs, or write the report if every run has ended."""
    from semiseg.errors import SemisegInputError
    from semiseg.studies.execution import finish_study

    try:
        from semiseg.studies.slurm import slurm_options, submit_study
    except ImportError:
        raise SemisegInputError(None, "--executor slurm needs submitit: pip install 'semiseg[slurm]'") from None
    submission = submit_study(spec, slurm_options(threads=threads, **slurm))
    if submission is None:  # nothing to submit: every run has ended, or is queued or running
        _print_outcome(spec, finish_study(spec))
        return
    typer.echo((f"set-up job {submission.setup}, then " if submission.setup else "")
               + (f"job array {submission.array} ({len(submission.runs)} runs), " if submission.array else "")
               + f"report job {submission.report}; "
               f"follow them with --list (logs in {Path(spec.out) / 'slurm'})")


@app.command("export-nnunet")
def export_nnunet(
    source: Annotated[Path, typer.Argument(help="A run folder, or a study (its YAML file or its folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write Dataset<ID>_<NAME>/ into (e.g. $nnUNet_raw).")],
    dataset_id: Annotated[int, typer.Option("--id", help="nnU-Net dataset ID; a study's datasets count up from it.")] = 500,
    name: Annotated[Optional[str], typer.Option("--name", help="Dataset name (default: the run's or study's folder name).")] = None,
    budgets: Annotated[Optional[str], typer.Option("--budgets", help="Study only: these label budgets (default: all).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Study only: these seeds (default: all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing datasets.")] = False,
) -> None:
    """Write a run's labelled items (a study's, per budget and seed) as nnU-Net v2 raw data, with the test patients held out."""
    from semiseg.studies.export import export_source

    for export in export_source(source, out, dataset_id, name, _ints(budgets, "--budgets"), _ints(seeds, "--seeds"), overwrite):
        typer.echo(f"{export.folder}: {len(export.training)} labelled {'slices' if export.dims == 2 else 'cases'}, {len(export.test)} test patients")


@app.command()
def suggest(
    run: Annotated[str, typer.Argument(help="A trained segmentation run; or, for the first batch, a DDPM run or 'none'.")],
    data: Annotated[Optional[Path], typer.Argument(help="Cache or dataset folder (default: the run's cache).")] = None,
    count: Annotated[int, typer.Option("--count", "-k", help="How many slices (2D) or cases (3D) to suggest.")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for suggestions.csv, suggestions.png, labelled_items.txt.")] = Path("suggestions"),
    strategy: Annotated[
        Optional[str],
        typer.Option("--strategy", "-s", help="hybrid (default with a run), uncertainty, diversity, representative (first-batch default), random."),
    ] = None,
    candidates: Annotated[
        Optional[str],
        typer.Option("--candidates", help="2D: 'all' slices of the training patients, their 'central' half (default), or the paper's 'pool'."),
    ] = None,
    passes: Annotated[int, typer.Option("--passes", help="Monte Carlo dropout passes for the uncertainty.")] = 8,
    dims: Annotated[Optional[int], typer.Option("--dims", help="First batch only: 2 (slices) or 3 (cases); default 2 if the cache has slices.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of random draws, k-means and MC dropout.")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Which slices (2D) or cases (3D) to annotate next: rank the unlabelled items of the training patients."""
    from semiseg.studies.suggest import suggest as run_suggest

    result = run_suggest(None if run.lower() == "none" else run, data, count, out, strategy=strategy, seed=seed, passes=passes,
                         candidates=candidates, dims=dims, device=device)
    choice = result.choice
    typer.echo(f"suggested {len(choice.suggested)} of {len(choice.scores.items)} candidates ({choice.strategy}): {', '.join(choice.suggested)}")
    # the items are slices or cases: a method whose default dims differ (embedmatch is 3D) needs --set dims
    typer.echo(f"wrote {result.csv}, {result.figure} and {result.items_file}; train next on {result.cache} "
               f"({choice.dims}D items: --set dims={choice.dims}) with:")
    typer.echo(f"--labelled-items {result.labelled_items}")


@app.command()
def patient(
    case: Annotated[Path, typer.Argument(help="One case folder (BraTS naming) with its label file.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: ./<case>-patient).")] = None,
    method: Annotated[str, typer.Option("--method", "-M", help="Segmentation method.")] = "ddpm-finetune",
    label_slices: Annotated[Optional[str], typer.Option("--label-slices", help="Axial slice indices to train on, e.g. 60,70,80.")] = None,
    label_count: Annotated[Optional[int], typer.Option("--label-count", help="Or: this many annotated slices picked over the lesion.")] = None,
    modalities: Annotated[Optional[str], typer.Option("--modalities", "-m", help="Channels, e.g. flair,t1ce.")] = None,
    slice_size: Annotated[int, typer.Option("--slice-size")] = 128,
    ddpm: Annotated[Optional[Path], typer.Option("--ddpm", help="Pretrained DDPM (same channels and slice size); else one is pretrained on this case.")] = None,
    preset: PresetOpt = "default",
    set_: SetOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Patient-level use case: train on a few annotated slices of one case, segment the whole volume."""
    from semiseg.studies.patient import run_patient

    result = run_patient(
        case, out, method, _ints(label_slices, "--label-slices"), label_count, _csv(modalities), slice_size, preset, set_, ddpm,
        seed=seed, device=device,
    )
    typer.echo(f"segmentation {result['segmentation']}; per-slice Dice {result['plot']} (annotated: {result['annotated']})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("semiseg-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="The few-minute version.")] = False,
    device: DeviceOpt = None,
) -> None:
    """The whole pipeline on the built-in phantom: synth, prepare, pretrain, sweep of all methods, report."""
    from rich.console import Console

    from semiseg.studies.demo import run_demo
    from semiseg.studies.sweep import read_summary, summary_table

    report = run_demo(out, quick=quick, device=device)
    Console().print(summary_table(read_summary(report.parent), "dice"))
    typer.echo(f"report: {report.resolve()}")


def main() -> None:
    """Console entry point (``semiseg``, ``python -m semiseg``): one line and exit code 2 for users'
    mistakes, no traceback (see :class:`OneLineErrors`)."""
    app()


if __name__ == "__main__":
    main()
