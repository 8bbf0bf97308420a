"""Active-learning studies: guided label selection beside the sweep's random draws.

A study with ::

    selection: {strategy: hybrid, rounds: [2, 5, 10]}

runs, for every segmentation method and seed, a chain of rounds: the first ``rounds[0]`` items
come from a pick that needs no model (``first``, by default k-means representatives on the shared
DDPM's features in 2D studies with a DDPM, else on intensity features); each later round loads the
previous round's trained run, asks the strategy for the missing items (see
:mod:`semiseg.selection`), and trains a new run from scratch on the larger set. Every round is an
ordinary run folder, ``OUT/runs/<method>+<strategy>/n<budget>-s<seed>/``, scored on the same test
patients and summarised like any method, so ``supervised+hybrid`` and the random ``supervised``
share the report's tables, statistics and label-efficiency plot. What each round picked, with the
scores, is in ``OUT/selection/<method>+<strategy>/n<budget>-s<seed>.csv``.

Resumable like the sweep: a round whose run folder exists takes its labelled items from the run's
record, one interrupted before its run folder was made from its selection file, a finished one is
skipped, and picks are deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegInputError
from semiseg.files import read_csv, write_csv
from semiseg.preprocess.cache import Cache
from semiseg.progress import log
from semiseg.selection import COLD_START, STRATEGIES, SUGGESTION_FIELDS, Choice, choose_next
from semiseg.selection.scoring import CANDIDATES, default_candidates

FEATURES = ("auto", "ddpm", "intensity")


@dataclass(frozen=True)
class SelectionPlan:
    """A study's ``selection`` block: ``strategies`` (one chain each), the ``rounds`` (label
    budgets, increasing), the ``first`` pick's strategy and ``features``, the 2D ``candidates``,
    the MC dropout ``passes`` and the ``methods`` (default: all the study's)."""

    strategies: tuple[str, ...]
    rounds: tuple[int, ...]
    first: str = "representative"
    features: str = "auto"
    candidates: str | None = None
    passes: int = 8
    methods: tuple[str, ...] | None = None

    @classmethod
    def from_study(cls, obj: Any, source: str | PathLike | None = None) -> "SelectionPlan":
        """Validate a study's ``selection`` value; anything wrong is a one-line error naming ``source``."""
        if not isinstance(obj, dict):
            raise SemisegInputError(source, f"'selection' must be a mapping like {{strategy: hybrid, rounds: [2, 5, 10]}}, got {obj!r}")
        known = {"strategy", "rounds", "first", "features", "candidates", "passes", "methods"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise SemisegInputError(source, f"unknown selection setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        strategies = obj.get("strategy")
        strategies = [strategies] if isinstance(strategies, str) else strategies
        if not strategies or not isinstance(strategies, list) or any(s not in STRATEGIES for s in strategies):
            raise SemisegInputError(source, f"selection.strategy must be one or a list of {', '.join(STRATEGIES)}, got {obj.get('strategy')!r}")
        rounds = obj.get("rounds")
        if (not isinstance(rounds, list) or not rounds or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rounds)
                or rounds != sorted(set(rounds))):
            raise SemisegInputError(source, f"selection.rounds must be increasing positive label budgets like [2, 5, 10], got {rounds!r}")
        plan = cls(tuple(strategies), tuple(rounds), **{k: obj[k] for k in ("first", "features", "candidates", "passes") if k in obj},
                   methods=tuple(obj["methods"]) if obj.get("methods") is not None else None)
        if plan.first not in COLD_START:
            raise SemisegInputError(source, f"selection.first must be one of {', '.join(COLD_START)} (no model exists yet), got {plan.first!r}")
        if plan.features not in FEATURES:
            raise SemisegInputError(source, f"selection.features must be one of {', '.join(FEATURES)}, got {plan.features!r}")
        if plan.candidates is not None and plan.candidates not in CANDIDATES:
            raise SemisegInputError(source, f"selection.candidates must be one of {', '.join(CANDIDATES)}, got {plan.candidates!r}")
        if not isinstance(plan.passes, int) or plan.passes < 1:
            raise SemisegInputError(source, f"selection.passes must be a positive integer, got {plan.passes!r}")
        return plan

    def first_features(self, ddpm_run: Path | None, dims: int) -> str:
        """What the first pick runs on: ``ddpm`` or ``intensity`` (``auto``: the study's DDPM in 2D)."""
        if self.features != "auto":
            return self.features
        return "ddpm" if ddpm_run is not None and dims == 2 else "intensity"

    def describe(self, ddpm_run: Path | None, dims: int) -> str:
        """One line for the report's set-up table."""
        return (f"guided ({', '.join(self.strategies)}) in rounds of {', '.join(map(str, self.rounds))} labels, "
                f"the first by {self.first} on {self.first_features(ddpm_run, dims)} features, "
                f"candidates: {self.candidates or default_candidates(dims)}; "
                "the plain method names are random draws")


def guided_label(method: str, strategy: str) -> str:
    """The method name of a guided chain in results and run folders."""
    return f"{method}+{strategy}"


def selection_file(out: str | PathLike, label: str, budget: int, seed: int) -> Path:
    return Path(out) / "selection" / label / f"n{budget}-s{seed}.csv"


def saved_picks(path: Path, labelled: list[str], budget: int) -> list[str] | None:
    """The items a round's selection file marks as suggested, if it exists and completes ``labelled``
    to ``budget`` with new items; else None (the round's selection runs again)."""
    if not path.exists():
        return None
    try:
        picks = [row["item"] for row in read_csv(path, ("item", "suggested")) if row["suggested"] == "yes"]
    except SemisegInputError:
        return None  # damaged: computed again and rewritten
    if len(labelled) + len(picks) != budget or set(picks) & set(labelled) or len(set(picks)) != len(picks):
        return None
    return picks


def guided_methods(study: Any) -> list[str]:
    """The segmentation methods a study's selection block runs guided chains for."""
    from semiseg.methods.base import get_method

    plan = SelectionPlan.from_study(study.selection)
    return [m for m in (plan.methods or study.methods) if get_method(m).segments]


@dataclass(frozen=True)
class Chain:
    """One guided chain: a segmentation method, a strategy and a seed; its rounds depend on each
    other, chains do not (a sweep's workers run different chains side by side)."""

    method: str
    strategy: str
    seed: int

    @property
    def label(self) -> str:
        return guided_label(self.method, self.strategy)


def guided_chains(study: Any) -> list[Chain]:
    """Every guided chain of ``study`` (none without a selection block)."""
    if not study.selection:
        return []
    plan = SelectionPlan.from_study(study.selection)
    return [Chain(m, strategy, seed) for m in guided_methods(study) for strategy in plan.strategies for seed in study.seeds]


# The first pick needs no model and is the same for every chain of one seed: computed once per
# process (a pool's workers each compute it again, which costs a feature pass, not a training run).
_FIRST_PICKS: dict[tuple, Choice] = {}


def run_chain(study: Any, cache: Cache, ddpm_run: Path | None, keep: list[tuple[str, int]], chain: Chain,
              on_round: Callable[[int, bool], None] | None = None) -> None:
    """Run (or finish) one guided chain. ``on_round(budget, finished)`` is called as each
    unfinished round starts and ends."""
    from semiseg.runs import load_trained, read_run_record
    from semiseg.runs.record import CONFIG
    from semiseg.studies.sweep import TEST_METRICS, run_one, run_path
    from semiseg.training.distributed import pick_device

    plan = SelectionPlan.from_study(study.selection)
    features = plan.first_features(ddpm_run, study.dims)
    if features == "ddpm" and ddpm_run is None:
        raise SemisegInputError(None, "selection.features is ddpm, but the study has no DDPM (add a diffusion method or ddpm: {run: ...})")
    device = pick_device(0, study.device)
    label, seed = chain.label, chain.seed
    labelled: list[str] = []
    previous: Path | None = None
    for budget in plan.rounds:
        run = run_path(study.out, label, budget, seed)
        picked = selection_file(study.out, label, budget, seed)
        if (run / CONFIG).exists():
            labelled = list(read_run_record(run).plan.labelled)
        elif (saved := saved_picks(picked, labelled, budget)) is not None:
            # interrupted after its suggestion and before its training: the picks on disk came from the
            # same previous round, so they are reused rather than computed again (minutes per 3D round)
            log(f"[bold]select[/] {label} seed {seed}: {budget - len(labelled)} items from {picked}")
            labelled = labelled + saved
        else:
            if previous is None:
                first = "random" if chain.strategy == "random" else plan.first
                key = (str(study.out), str(cache.root), first, features, seed, budget, plan.candidates)
                if key not in _FIRST_PICKS:
                    log(f"[bold]select[/] first {budget} items ({first}, {features} features, seed {seed})")
                    _FIRST_PICKS[key] = choose_next(
                        cache, study.dims, [], budget, first, ddpm_run=ddpm_run if features == "ddpm" else None,
                        seed=seed, candidates=plan.candidates, device=device)
                choice = _FIRST_PICKS[key]
            else:
                log(f"[bold]select[/] {label} seed {seed}: {budget - len(labelled)} more items with {previous}")
                model, record = load_trained(previous, device)
                choice = choose_next(cache, study.dims, labelled, budget - len(labelled), chain.strategy, method=model, seed=seed,
                                     passes=plan.passes, candidates=plan.candidates, device=device, negatives=record.plan.negatives)
            write_csv(picked, choice.rows(cache), SUGGESTION_FIELDS)
            labelled = choice.next_items
        todo = not (run / TEST_METRICS).exists()
        if todo and on_round:
            on_round(budget, False)
        run_one(study, cache, chain.method, budget, seed, ddpm_run, keep, labelled_items=labelled, label=label)
        if todo and on_round:
            on_round(budget, True)
        previous = run

