"""Which data a training run uses: its labelled items and its unlabelled cases, chosen from the
cache's training patients only.

Labelled items are slices in 2D, written ``"case:z"`` (z a cached slice number), and case ids in
3D. :class:`DataPlan` is the one place that format is parsed and written; methods ask the plan for
their slices or cases instead of selecting data themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.preprocess.splits import choose_subset, slice_pool

SliceItem = tuple[str, int]
#: which slices of the unlabelled cases a 2D run may use: every slice, those that show anatomy, or the
#: middle :data:`CENTRAL_FRACTION` of each case's anatomy (none of them needs a label)
UNLABELLED_SLICES = ("all", "anatomy", "central")
#: the middle share of a case's slices with anatomy that ``central`` keeps (as label selection's candidates)
CENTRAL_FRACTION = 0.5


def format_slice(case_id: str, z: int) -> str:
    """(case, z) -> ``"case:z"``."""
    return f"{case_id}:{z}"


def parse_slice(item: str) -> SliceItem:
    """``"case:z"`` -> (case, z); a malformed item is a one-line error."""
    case, sep, z = str(item).rpartition(":")
    if not sep or not case:
        raise SemisegInputError(None, f"labelled item {item!r}: expected case:slice, e.g. BraTS2021_00000:60")
    try:
        return case, int(z)
    except ValueError:
        raise SemisegInputError(None, f"labelled item {item!r}: the slice {z!r} is not an integer") from None


@dataclass(frozen=True)
class DataPlan:
    """A run's data: ``labelled`` items (``"case:z"`` in 2D, case ids in 3D), the cases it may use
    unlabelled, and the test cases it never trains on with labels. ``transductive``: the test
    patients' images are among the unlabelled cases (as in the diffusion paper, whose DDPM sees
    every slice); otherwise no image of a test patient is used in training (inductive)."""

    dims: int
    labelled: tuple[str, ...]
    unlabelled_cases: tuple[str, ...]
    test: tuple[str, ...]
    transductive: bool = False
    #: 2D: lesion-free slices labelled as such (all background). Marking a slice "no lesion here"
    #: costs an annotator a glance, not a delineation, so they are not counted in the budget; they
    #: teach every method alike that a slice may hold no lesion at all
    negatives: tuple[str, ...] = ()

    def labelled_slices(self) -> list[SliceItem]:
        """The labelled slices as (case, z) (2D plans): the delineated ones, then the negatives."""
        if self.dims != 2:
            raise ValueError("a 3D plan has labelled cases, not slices")
        return [parse_slice(i) for i in self.labelled + self.negatives]

    def labelled_cases(self) -> list[str]:
        """The labelled cases (3D), or the cases the labelled slices come from (2D)."""
        if self.dims == 3:
            return list(self.labelled)
        return sorted({c for c, _ in self.labelled_slices()})

    def labelled_items(self) -> list[SliceItem] | list[str]:
        """Labelled slices (2D) or cases (3D)."""
        return self.labelled_slices() if self.dims == 2 else self.labelled_cases()

    def unlabelled_items(self, cache: Cache, slices: str = "all") -> list[SliceItem] | list[str]:
        """What the run may use without labels: the slices of its unlabelled cases except the
        labelled slices (2D; ``slices`` one of :data:`UNLABELLED_SLICES`), or its unlabelled cases (3D)."""
        check_unlabelled_slices(slices)
        if self.dims == 3:
            return list(self.unlabelled_cases)
        taken = set(self.labelled_slices())
        return [(c, z) for c in self.unlabelled_cases for z in case_slices(cache, c, slices) if (c, z) not in taken]

    def to_json(self) -> dict[str, Any]:
        return {
            "dims": self.dims, "labelled": list(self.labelled), "unlabelled_cases": list(self.unlabelled_cases),
            "test": list(self.test), "transductive": self.transductive, "negatives": list(self.negatives),
        }

    @classmethod
    def from_json(cls, obj: Any, source: str | None = None) -> "DataPlan":
        """Read a plan from ``config.json``; anything malformed is a one-line error naming ``source``."""
        keys = ("dims", "labelled", "unlabelled_cases", "test")
        if not isinstance(obj, dict) or any(k not in obj for k in keys):
            raise SemisegInputError(source, f"'plan' must be an object with the keys {', '.join(keys)}")
        if obj["dims"] not in (2, 3):
            raise SemisegInputError(source, f"plan.dims must be 2 or 3, got {obj['dims']!r}")
        for k in keys[1:]:
            if not isinstance(obj[k], list) or not all(isinstance(v, str) for v in obj[k]):
                raise SemisegInputError(source, f"plan.{k} must be a list of strings")
        transductive = obj.get("transductive", bool(set(obj["test"]) & set(obj["unlabelled_cases"])))
        if not isinstance(transductive, bool):
            raise SemisegInputError(source, f"plan.transductive must be true or false, got {transductive!r}")
        negatives = obj.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(v, str) for v in negatives):
            raise SemisegInputError(source, "plan.negatives must be a list of strings")
        plan = cls(int(obj["dims"]), tuple(obj["labelled"]), tuple(obj["unlabelled_cases"]), tuple(obj["test"]), transductive, tuple(negatives))
        if plan.dims == 2:
            try:
                plan.labelled_slices()  # every item parses
            except SemisegInputError as exc:
                raise SemisegInputError(source, f"plan: {exc.problem}") from None
        return plan


def labelled_pool(cache: Cache, dims: int) -> list[str]:
    """Candidates for labelling: the paper's central-slice pool of every training patient (2D),
    or the training patients themselves (3D)."""
    train = cache.ids("train")
    if dims == 3:
        return train
    return [format_slice(cid, z) for cid in train for z in slice_pool(cache.cases[cid].n_slices)]


def slices_with_anatomy(cache: Cache, case_id: str, min_foreground: float = 0.1) -> list[int]:
    """Cached slices of a case with at least ``min_foreground`` of their pixels off the background
    (not empty air above the head)."""
    background = cache.normaliser.background_value().reshape(-1, 1, 1)
    slices = cache.slices(case_id)
    return [
        z for z in range(cache.cases[case_id].n_slices)
        if (np.abs(np.asarray(slices[z], np.float32) - background) > 1e-3).any(0).mean() >= min_foreground
    ]


def central_slices(cache: Cache, case_id: str, fraction: float) -> list[int]:
    """The slices of :func:`slices_with_anatomy` in the middle ``fraction`` of the case's anatomy
    along the slice axis (1: all of them; at least the middle slice)."""
    zs = slices_with_anatomy(cache, case_id)
    if not zs or fraction >= 1:
        return zs
    mid, half = (zs[0] + zs[-1]) / 2, (zs[-1] - zs[0]) * fraction / 2
    return [z for z in zs if abs(z - mid) <= half] or [min(zs, key=lambda z: abs(z - mid))]


def case_slices(cache: Cache, case_id: str, which: str) -> list[int]:
    """A case's slices: every one (``all``), those that show anatomy (``anatomy``), or the middle
    :data:`CENTRAL_FRACTION` of its anatomy (``central``)."""
    if which == "anatomy":
        return slices_with_anatomy(cache, case_id)
    return central_slices(cache, case_id, CENTRAL_FRACTION) if which == "central" else list(range(cache.cases[case_id].n_slices))


def check_unlabelled_slices(value: Any) -> None:
    """``unlabelled.slices`` must be one of :data:`UNLABELLED_SLICES` (a one-line error otherwise)."""
    if value not in UNLABELLED_SLICES:
        raise SemisegInputError(None, f"unlabelled.slices must be one of {', '.join(UNLABELLED_SLICES)}, got {value!r}")


def lesion_free_slices(cache: Cache, case_id: str, min_foreground: float = 0.1) -> list[int]:
    """Slices of a labelled case without any annotated voxel that show anatomy (:func:`slices_with_anatomy`)."""
    voxels = cache.cases[case_id].slice_label_voxels
    return [z for z in slices_with_anatomy(cache, case_id, min_foreground) if voxels[z] == 0]


def choose_negatives(cache: Cache, labelled: list[str], count: int, seed: int) -> list[str]:
    """``count`` lesion-free slices of the labelled slices' patients (the scans the annotator has
    open), drawn with ``seed``; from every training patient if those have too few."""
    if count <= 0:
        return []
    cases = sorted({parse_slice(i)[0] for i in labelled})
    candidates = [format_slice(c, z) for c in cases for z in lesion_free_slices(cache, c)]
    if len(candidates) < count:
        others = [c for c in cache.ids("train") if c not in cases]
        candidates += [format_slice(c, z) for c in others for z in lesion_free_slices(cache, c)]
    if not candidates:
        raise SemisegInputError(cache.root, "the training patients have no lesion-free slice to label as negative")
    rng = np.random.default_rng([seed, 1])
    return sorted(candidates[i] for i in rng.permutation(len(candidates))[: min(count, len(candidates))])


def _check_items(cache: Cache, items: list[str], dims: int) -> list[str]:
    out = []
    for item in items:
        case_id, z = parse_slice(item) if dims == 2 else (item, None)
        if case_id not in cache.cases:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: no case {case_id!r} in the cache")
        entry = cache.cases[case_id]
        if not entry.labelled:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: case {case_id!r} has no annotation")
        if entry.role == "test":
            raise SemisegInputError(cache.root, f"labelled item {item!r}: case {case_id!r} is in the test split")
        if z is not None and not 0 <= z < entry.n_slices:
            raise SemisegInputError(cache.root, f"labelled item {item!r}: slice {z} outside 0..{entry.n_slices - 1}")
        out.append(format_slice(case_id, z) if z is not None else case_id)
    return out


def make_plan(
    cache: Cache,
    dims: int,
    n_labelled: int | None = None,
    seed: int = 0,
    labelled_items: list[str] | None = None,
    unlabelled_only: bool = False,
    transductive: bool = False,
    negatives: int = 0,
) -> DataPlan:
    """Choose a run's data.

    Args:
        cache: the prepared data.
        dims: 2 (slices) or 3 (patches).
        n_labelled: number of labelled items drawn from :func:`labelled_pool` with ``seed``.
        labelled_items: explicit items instead (``"case:z"`` cached slice numbers in 2D, case ids in 3D).
        unlabelled_only: DDPM pretraining: no labelled items, every training case is unlabelled data.
        transductive: the test patients' images may be used unlabelled too.
        negatives: 2D: this many lesion-free slices labelled as such, beside the labelled items.
    """
    test = tuple(cache.ids("test"))
    extra = list(test) if transductive else []
    if unlabelled_only:
        return DataPlan(dims, (), tuple(cache.ids("train") + cache.ids("unlabelled") + extra), test, transductive)
    if labelled_items:
        labelled = _check_items(cache, labelled_items, dims)
    else:
        if n_labelled is None:
            raise SemisegInputError(None, "give the number of labelled items (--labelled N) or an explicit list")
        pool = labelled_pool(cache, dims)
        labelled = choose_subset(pool, n_labelled, seed, "labelled slices" if dims == 2 else "labelled cases")
    candidates = cache.ids("train") + cache.ids("unlabelled")
    # in 3D a labelled case is wholly labelled; in 2D only its labelled slices are
    unlabelled = [c for c in candidates if c not in set(labelled)] if dims == 3 else candidates
    if negatives and dims != 2:
        raise SemisegInputError(None, "negatives (lesion-free labelled slices) are for 2D methods; 3D patches see lesion-free regions anyway")
    chosen = choose_negatives(cache, labelled, negatives, seed) if dims == 2 else []
    return DataPlan(dims, tuple(labelled), tuple(unlabelled + extra), test, transductive, tuple(chosen))
