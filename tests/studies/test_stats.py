"""Study statistics on a hand-computed study: per-patient values, bootstrap CIs, Wilcoxon p-values,
Holm's correction and which cell is bold; one seed shows no "±"."""

import math

import pytest

from semiseg.studies.report import fmt_mean_sd, metric_table, summary_tex
from semiseg.studies.stats import PatientValue, best_method, bootstrap_ci, holm, patient_values, wilcoxon_p
from semiseg.studies.sweep import summarise_results, summary_table

PATIENTS = [f"p{i:02d}" for i in range(1, 11)]


def row(method, case, value, seed=0, region="WT", metric="dice", budget=2, protocol="central_slices", slice_=0, gt=10, pred=10):
    return {"method": method, "budget": budget, "seed": seed, "case": case, "slice": slice_, "protocol": protocol, "region": region,
            "metric": metric, "value": value, "gt_voxels": gt, "pred_voxels": pred}


def hand_study(seeds=(0, 1)) -> list[dict]:
    """Ten test patients, one slice each, three methods.

    WT: supervised 0.5; alpha 0.5 + 0.01 i; beta 0.5 - 0.01 i (patient i = 1..10). Every paired
    difference has one sign and distinct sizes, so each exact two-sided Wilcoxon p is 2 / 2**10.
    TC: supervised and beta 0.5; alpha 0.6 for patients 1-5, 0.5 for 6-10: differences 0.1 x 5 and
    0 x 5, whose bootstrap means are 0.1 x Binomial(10, 1/2) / 10, so the 95 % percentile interval is
    [0.02, 0.08]; Wilcoxon drops the zeros, leaving 5 equal signs: p = 2 / 2**5.
    With two seeds, seed 0 scores 0.02 lower and seed 1 0.02 higher: the patients' values are the above.
    """
    wt = {"supervised": [0.5] * 10, "alpha": [0.5 + 0.01 * i for i in range(1, 11)], "beta": [0.5 - 0.01 * i for i in range(1, 11)]}
    tc = {"supervised": [0.5] * 10, "alpha": [0.6] * 5 + [0.5] * 5, "beta": [0.5] * 10}
    shift = {0: -0.02, 1: 0.02} if len(seeds) == 2 else {seeds[0]: 0.0}
    rows = []
    for region, values in (("WT", wt), ("TC", tc)):
        for m, vals in values.items():
            for seed in seeds:
                rows += [row(m, c, v + shift[seed], seed, region) for c, v in zip(PATIENTS, vals)]
    return rows


def by_key(summary):
    return {(r["method"], r["region"]): r for r in summary}


def test_hand_computed_study_cis_p_values_holm_and_bold():
    s = by_key(summarise_results(hand_study()))
    wt_a, wt_b, tc_a, tc_b = s["alpha", "WT"], s["beta", "WT"], s["alpha", "TC"], s["beta", "TC"]
    # means over seeds of the per-seed means; the seed standard deviation of (m - 0.02, m + 0.02)
    assert wt_a["mean"] == pytest.approx(0.555) and wt_a["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert (wt_a["n_seeds"], wt_a["n_values"], wt_a["n_patients"], wt_a["n_empty"], wt_a["n_misses"]) == (2, 20, 10, 0, 0)
    # WT: differences alpha - supervised are 0.01 .. 0.10
    assert wt_a["vs_supervised_diff"] == pytest.approx(0.055) and wt_a["vs_supervised_n"] == 10
    assert wt_a["vs_supervised_p"] == pytest.approx(2 / 2**10)
    assert wt_b["vs_supervised_diff"] == pytest.approx(-0.055) and wt_b["vs_supervised_p"] == pytest.approx(2 / 2**10)
    assert wt_b["best_other"] == "alpha" and wt_b["vs_best_other_diff"] == pytest.approx(-0.11)
    # TC: the binomial bootstrap interval, and p over the five non-zero differences
    assert tc_a["vs_supervised_diff"] == pytest.approx(0.05)
    assert (tc_a["vs_supervised_ci_low"], tc_a["vs_supervised_ci_high"]) == (pytest.approx(0.02), pytest.approx(0.08))
    assert tc_a["vs_supervised_p"] == pytest.approx(2 / 2**5)
    assert tc_b["vs_supervised_p"] == 1.0 and tc_b["vs_supervised_diff"] == 0.0
    assert (tc_b["vs_supervised_ci_low"], tc_b["vs_supervised_ci_high"]) == (0.0, 0.0)
    # Holm over the table's six comparisons (WT: alpha-sup, beta-sup, alpha-beta; TC: the same):
    # p sorted 2^-9 (x3), 2^-4 (x2), 1 -> adjusted 6, 5, 4 x 2^-9 -> running max 6 x 2^-9; 3 x 2^-4; 1
    assert wt_a["vs_supervised_p_holm"] == pytest.approx(6 * 2**-9)
    assert wt_b["vs_supervised_p_holm"] == pytest.approx(6 * 2**-9) and wt_a["vs_best_other_p_holm"] == pytest.approx(6 * 2**-9)
    assert tc_a["vs_supervised_p_holm"] == pytest.approx(3 * 2**-4) and tc_a["vs_best_other_p_holm"] == pytest.approx(3 * 2**-4)
    assert tc_b["vs_supervised_p_holm"] == 1.0
    # bold: alpha beats both others in WT after Holm; in TC it has the best mean but p_holm 0.1875
    assert [k for k, r in s.items() if r["significantly_best"]] == [("alpha", "WT")]
    # the supervised baseline has no comparison with itself, but one with the best other method
    assert s["supervised", "WT"]["vs_supervised_p"] is None and s["supervised", "WT"]["best_other"] == "alpha"
    html = metric_table(list(s.values()), "central_slices", "dice", [2], ["supervised", "alpha", "beta"], ["WT", "TC"], "labelled slices")
    cells = {(c.row.split("|")[0], c.row.split("|")[3]): c for r in html.rows for c in r if c.src}
    assert cells["alpha", "WT"].cls == "best" and cells["alpha", "WT"].text == "0.555 ± 0.028"
    assert cells["alpha", "TC"].cls == "" and cells["supervised", "WT"].cls == ""


def test_one_seed_shows_no_plus_minus():
    summary = summarise_results(hand_study(seeds=(3,)))
    s = by_key(summary)
    assert s["alpha", "WT"]["n_seeds"] == 1 and math.isnan(s["alpha", "WT"]["std"])
    assert fmt_mean_sd(s["alpha", "WT"], "dice") == "0.555"
    table = metric_table(summary, "central_slices", "dice", [2], ["supervised", "alpha", "beta"], ["WT", "TC"], "labelled slices")
    assert all("±" not in c.text for r in table.rows for c in r)
    study = type("S", (), {"dims": 2, "test_slices_per_case": 7, "seeds": [3]})()
    tex = summary_tex(study, summary)
    assert r"\pm" not in tex and r"\textbf{0.555}" in tex and "one seed" in tex
    # the one-seed result is the same as the two-seed one: the patients' values did not change
    assert s["alpha", "WT"]["vs_supervised_p_holm"] == pytest.approx(6 * 2**-9)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(summary, "dice"))
    text = console.export_text()
    assert "±" not in text and "0.555" in text


def test_ties_and_penalty_values_are_never_bold():
    """Every method scores 0 on ET (a region nobody finds): no "best" among equals."""
    rows = [row(m, c, 0.0, region="ET", gt=10, pred=0) for m in ("supervised", "alpha") for c in PATIENTS]
    rows += [row(m, c, 300.0, region="ET", metric="hd95", gt=10, pred=0) for m in ("supervised", "alpha") for c in PATIENTS]
    summary = summarise_results(rows)
    assert not any(r["significantly_best"] for r in summary)
    hd = next(r for r in summary if r["metric"] == "hd95" and r["method"] == "alpha")
    assert hd["n_misses"] == 10 and hd["median"] == 300.0 and hd["vs_supervised_p"] == 1.0
    assert best_method({"a": 0.0, "b": 0.0}, "dice") is None and best_method({"a": 1.0, "b": 2.0}, "hd95") == "a"


def test_patient_values_average_slices_then_seeds_and_count_what_was_left_out():
    nan = float("nan")
    rows = [row("m", "p1", 0.2, seed=0, slice_=1), row("m", "p1", 0.4, seed=0, slice_=2),
            row("m", "p1", 0.6, seed=1, slice_=1), row("m", "p1", nan, seed=1, slice_=2, gt=0, pred=0),
            row("m", "p1", 0.0, seed=1, slice_=3, gt=0, pred=5),  # hallucinated: a miss
            row("m", "p2", nan, seed=0, gt=0, pred=0)]
    values = patient_values(rows)[("m", 2, "central_slices", "WT", "dice")]
    assert values["p1"] == PatientValue(pytest.approx((0.3 + 0.3) / 2), 2, 4, 1, 1)
    assert math.isnan(values["p2"].value) and values["p2"].n_empty == 1 and values["p2"].n_seeds == 0
    (s,) = summarise_results(rows)
    # seed 0: mean(0.2, 0.4); seed 1: mean(0.6, 0.0); the median of every scored value
    assert s["mean"] == pytest.approx(0.3) and s["median"] == pytest.approx(0.3) and s["n_patients"] == 1
    assert (s["n_values"], s["n_empty"], s["n_misses"]) == (4, 2, 1)
    # results of an older semiseg carry no voxel counts: misses unknown, not zero
    old = [{k: v for k, v in r.items() if k not in ("gt_voxels", "pred_voxels")} for r in rows]
    assert summarise_results(old)[0]["n_misses"] is None


def test_holm_bootstrap_and_wilcoxon_edge_cases():
    import numpy as np

    # a textbook example: p sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.06 (running max)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])  # NaN is not a comparison
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.9, 0.8]) == [1.0, 1.0]
    assert wilcoxon_p(np.zeros(4)) == 1.0 and math.isnan(wilcoxon_p(np.array([0.3])))
    assert bootstrap_ci(np.array([0.1, 0.1, 0.1])) == (0.1, 0.1)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([0.1])))
