"""medrobust.report's words come from what the results hold: K, the radii and suites run, how the test set was chosen;
and every interval is written by medrobust.intervals."""

from __future__ import annotations

import math

import pytest

from medrobust import intervals, report


def _result(k: int = 2, *, eps=(1.0, 2.0, 3.0, 4.0, 5.0), noise=(0.1, 0.5, 1.0), **extra) -> dict:
    classes = ["covid", "normal", "pneumonia", "other"][:k]
    row = {"accuracy": 0.6, "balanced_accuracy": 0.5, "auroc": 0.6}
    rows = [{"suite": "attack", "perturbation": "pgd_l2", "severity": e, **row} for e in eps]
    rows += [{"suite": "paper", "perturbation": n, "severity": s, **row} for n in ("gaussian", "speckle") for s in noise]
    return {"name": f"m{k}", "method": "standard", "classes": classes, "rows": rows, "params": {"norm": "l2"}, **extra}


@pytest.mark.parametrize(("k", "pct", "bound"), [(2, "50 %", "ln 2 ≈ 0.693"), (3, "33 %", "ln 3 ≈ 1.099"),
                                                 (4, "25 %", "ln 4 ≈ 1.386")])
def test_chance_and_the_entropy_bound_follow_k(k, pct, bound):
    rs = [_result(k)]
    assert report.chance_balanced_accuracy(rs) == pytest.approx(1 / k)
    assert f"Balanced accuracy {pct} is chance for {k} classes" in report.chance_text(rs)
    assert bound in report.entropy_text(rs)
    assert "below it" in report.chance_text(rs)  # a score under chance is explained, not left bare


def test_mixed_k_claims_no_single_chance_level():
    rs = [_result(2), _result(3)]
    assert report.n_classes(rs) is None
    assert "%" not in report.chance_text(rs) and "1/K" in report.chance_text(rs)
    assert "ln K" in report.entropy_text(rs)


def test_table_one_caption_states_only_what_was_run():
    full = report.table_one_caption([_result()])
    assert "eps 1–5" in full and "severities 0.1–1" in full
    one = report.table_one_caption([_result(3, eps=(1.0,), noise=())])
    assert "eps 1 " in one and "severit" not in one and "1–5" not in one
    assert "only the clean cells" in report.table_one_caption([_result(eps=(), noise=())])


def test_test_set_words_claim_no_more_than_the_result_proves():
    assert "never saw" in report.test_set_text(_result(split_hash="abc"))
    manifest = report.test_set_text(_result(part="test-manifest"))
    assert "never saw" not in manifest and "cannot prove" in manifest
    assert "checked against" in report.test_set_text(_result(part="test-manifest", test_patients_checked=True))
    assert "not proven" in report.test_set_text(_result())


def test_table_one_and_two_captions_use_the_results_k():
    r = _result(3)
    r.update(clean={"accuracy": 0.5, "balanced_accuracy": 0.4, "auroc": 0.6, "ci": {"accuracy": [0.4, 0.6],
                                                                                  "balanced_accuracy": [0.3, 0.5]}},
             summary={}, calibration={"rmsce": 0.1, "rmsce_plugin": 0.12, "ece": 0.1, "entropy": 1.02, "nll": 1.0,
                                      "brier": 0.6})
    two = report.table_two([r])
    assert "ln 3" in two and "ln 2" not in two
    assert "eps 1–5" in report.table_one([r])


# --------------------------------------------------------------------------- one formatter


def test_formatter_signs_both_ends_and_never_prints_minus_zero():
    assert intervals.format_difference("auroc", -0.0193, (-0.0681, 0.0342)) == "−0.019 [−0.068, +0.034]"
    assert intervals.format_difference("accuracy", -0.002, (-0.035, 0.033)) == "−0.2 [−3.5, +3.3] pts"
    assert intervals.format_number(-0.0004, decimals=3) == "0.000"
    assert intervals.format_number(-0.0004, decimals=3, signed=True) == "+0.000"
    assert intervals.format_value("auroc", math.nan, (0.1, 0.2)) == "–"
    assert intervals.format_value("auroc", 0.5, (math.nan, 0.2)) == "0.500"


@pytest.mark.parametrize(("p", "text"), [(0.0, "< 0.001"), (0.0009, "< 0.001"), (0.001, "0.001"), (0.0123, "0.012"),
                                         (1.0, "1.000"), (None, "–"), (math.nan, "–")])
def test_p_values_never_print_as_zero(p, text):
    assert intervals.format_p(p) == text


def test_paired_table_and_its_sentence_show_the_same_characters():
    from medrobust.stats import describe_difference

    d = {"a": 0.7, "b": 0.68, "difference": -0.019, "ci": [-0.068, 0.034], "p_value": 0.0}
    table = report.table_paired([{"model": "robust", "baseline": "standard", "condition": "clean",
                                  "differences": {"auroc": d}}], metric="auroc")
    row = table.splitlines()[2]
    assert "| −0.019 [−0.068, +0.034] | < 0.001 |" in row
    assert describe_difference("auroc", d, a_name="standard", b_name="robust") in row
    with pytest.raises(ValueError, match="unknown metric"):
        intervals.format_difference("f1", 0.1)


@pytest.mark.parametrize("k", [2, 3])
def test_the_curves_draw_chance_at_one_over_k_for_balanced_accuracy(k):
    from medrobust.dashboard import plots

    r = _result(k, clean={"accuracy": 0.6, "balanced_accuracy": 0.5, "auroc": 0.6})
    lines = {round(s["y0"], 3) for s in plots.robustness_curves([r], metric="balanced_accuracy").layout.shapes}
    assert lines == {round(1 / k, 3)}
    lines = {round(s["y0"], 3) for s in plots.robustness_curves([r], metric="auroc").layout.shapes}
    assert lines == {0.5}


def test_noise_is_described_in_grey_levels_on_the_scale_that_was_run():
    r = _result(clean={"accuracy": 0.6, "balanced_accuracy": 0.5, "auroc": 0.6, "sensitivity": 0.7, "specificity": 0.3},
                calibration={"ece": 0.1, "rmsce": 0.1})
    paper_only = " ".join(report.clinical_reading([r]))
    assert "poor detector" not in paper_only and "81 of 255 grey levels" in paper_only
    r["rows"].append({"suite": "clinical", "perturbation": "clinical/gaussian_noise", "severity": 2,
                      "accuracy": 0.6, "balanced_accuracy": 0.55, "auroc": 0.6})
    clinical = " ".join(report.clinical_reading([r]))
    assert "level 2 of 5: σ 0.08 (about 20 of 255 grey levels)" in clinical and "55.0 %" in clinical


def test_at_a_glance_is_short_and_carries_intervals():
    r = _result(n_test=100, n_patients=80, split_hash="x",
                clean={"accuracy": 0.6, "balanced_accuracy": 0.55, "auroc": 0.61,
                       "ci": {"balanced_accuracy": [0.5, 0.6], "auroc": [0.55, 0.67]}},
                calibration={"ece": 0.1, "rmsce": 0.1})
    lines = report.at_a_glance([r], claims=[{"verdict": "undecided"}, {"verdict": "confirmed"},
                                            {"verdict": "undecided"}])
    assert len(lines) <= 5
    assert "100 test images of 80 patients" in lines[0]
    assert "55.0 [50.0, 60.0] %" in lines[1] and "chance 50 %" in lines[1] and "0.610 [0.550, 0.670]" in lines[1]
    assert "eps 2" in lines[2]
    assert lines[-1] == "The paper's claims on this set: 2 undecided, 1 confirmed."
