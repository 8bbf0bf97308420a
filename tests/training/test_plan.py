"""The data plan: the one place "case:z" items are parsed, and what a run may use unlabelled."""

from pathlib import Path

import pytest

from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.training.plan import DataPlan, format_slice, make_plan, parse_slice, slices_with_anatomy


def test_slice_items_round_trip_and_bad_items_are_one_line_errors():
    assert parse_slice(format_slice("BraTS2021_00001", 60)) == ("BraTS2021_00001", 60)
    assert parse_slice("a:b:7") == ("a:b", 7)  # case ids may contain colons
    for bad in ("case", ":3", "case:x"):
        with pytest.raises(SemisegInputError, match="labelled item"):
            parse_slice(bad)


def test_2d_plan_unlabelled_slices_leave_out_labelled_ones(tiny_cache: Path):
    cache = Cache(tiny_cache)
    plan = make_plan(cache, 2, n_labelled=3, seed=0)
    labelled = plan.labelled_slices()
    unlabelled = plan.unlabelled_items(cache)
    assert len(labelled) == 3 and not set(labelled) & set(unlabelled)
    assert {c for c, _ in unlabelled} == set(cache.ids("train")) | set(cache.ids("unlabelled"))
    assert not set(plan.test) & {c for c, _ in unlabelled}
    assert DataPlan.from_json(plan.to_json()) == plan


def test_2d_unlabelled_slices_can_keep_to_the_anatomy_or_its_middle_half(tiny_cache: Path):
    cache = Cache(tiny_cache)
    plan = make_plan(cache, 2, n_labelled=3, seed=0)
    every, anatomy, central = (set(plan.unlabelled_items(cache, which)) for which in ("all", "anatomy", "central"))
    assert central < anatomy <= every and not set(plan.labelled_slices()) & every
    for c in plan.unlabelled_cases:
        zs = sorted(slices_with_anatomy(cache, c))
        kept = sorted(z for case, z in central if case == c)
        assert kept and zs[0] <= kept[0] and kept[-1] <= zs[-1] and len(kept) < len(zs)
        assert {z for case, z in anatomy if case == c} <= set(zs)
    assert plan.unlabelled_items(cache, "central") == plan.unlabelled_items(cache, "central")  # a fixed order, no draw
    with pytest.raises(SemisegInputError, match="unlabelled.slices must be one of all, anatomy, central, got 'middle'"):
        plan.unlabelled_items(cache, "middle")


def test_3d_plan_and_ddpm_plan(tiny_cache: Path):
    cache = Cache(tiny_cache)
    plan = make_plan(cache, 3, n_labelled=2, seed=1)
    assert plan.labelled_cases() == list(plan.labelled) and not set(plan.labelled) & set(plan.unlabelled_cases)
    ddpm = make_plan(cache, 2, unlabelled_only=True, transductive=True)
    assert set(ddpm.unlabelled_cases) == set(cache.ids()) and ddpm.labelled == ()


@pytest.mark.parametrize("bad", [[], {"dims": 4, "labelled": [], "unlabelled_cases": [], "test": []},
                                 {"dims": 2, "labelled": [3], "unlabelled_cases": [], "test": []},
                                 {"dims": 2, "labelled": ["nocolon"], "unlabelled_cases": [], "test": []}])
def test_damaged_plans_are_refused(bad):
    with pytest.raises(SemisegInputError):
        DataPlan.from_json(bad, "config.json")


@pytest.mark.parametrize("dims", [2, 3])
def test_transductive_adds_test_images_and_inductive_never_does(tiny_cache: Path, dims: int):
    cache = Cache(tiny_cache)
    test = set(cache.ids("test"))
    inductive = make_plan(cache, dims, n_labelled=2, seed=0)
    transductive = make_plan(cache, dims, n_labelled=2, seed=0, transductive=True)
    assert not test & set(inductive.unlabelled_cases) and test <= set(transductive.unlabelled_cases)
    assert transductive.labelled == inductive.labelled and transductive.transductive and not inductive.transductive
    assert not test & set(make_plan(cache, 2, unlabelled_only=True).unlabelled_cases)
    assert DataPlan.from_json(transductive.to_json()) == transductive


def test_negatives_are_lesion_free_slices_of_the_labelled_patients(tiny_cache: Path):
    cache = Cache(tiny_cache)
    plan = make_plan(cache, 2, n_labelled=2, seed=3, negatives=3)
    assert len(plan.labelled) == 2 and len(plan.negatives) == 3
    labelled_cases = {parse_slice(i)[0] for i in plan.labelled}
    for item in plan.negatives:
        case, z = parse_slice(item)
        assert case in labelled_cases and cache.cases[case].slice_label_voxels[z] == 0 and item not in plan.labelled
    assert set(map(parse_slice, plan.negatives)) <= set(plan.labelled_slices())
    assert not set(plan.labelled_slices()) & set(plan.unlabelled_items(cache))
    assert make_plan(cache, 2, n_labelled=2, seed=3).negatives == ()
    assert DataPlan.from_json(plan.to_json()) == plan
    with pytest.raises(SemisegInputError, match="2D"):
        make_plan(cache, 3, n_labelled=2, negatives=1)


def test_central_slices_are_the_middle_of_the_anatomy(tiny_cache: Path):
    from semiseg.training.plan import central_slices, slices_with_anatomy

    cache = Cache(tiny_cache)
    case = cache.ids("train")[0]
    zs = slices_with_anatomy(cache, case)
    assert len(zs) >= 5  # the fixture's cases show anatomy on several slices
    middle = central_slices(cache, case, 0.5)
    lo, hi = zs[0], zs[-1]
    assert middle and set(middle) < set(zs) and lo not in middle and hi not in middle
    assert all(abs(z - (lo + hi) / 2) <= (hi - lo) / 4 for z in middle)
    assert central_slices(cache, case, 1.0) == zs
    assert central_slices(cache, case, 0.0) == [min(zs, key=lambda z: abs(z - (lo + hi) / 2))]
