"""Tests for medrobust.metrics: golden values from reference libraries plus properties."""

from __future__ import annotations

import ast
import doctest
import inspect
import math
import time
import warnings
from pathlib import Path

import calibration
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from medrobust import metrics as M
from medrobust.metrics import (
    DEGENERATE_THRESHOLD,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    is_degenerate,
    per_class_recall,
    predictive_entropy,
    reliability_bins,
)

KINDS = ("calibrated", "overconfident", "underconfident", "inverted", "rounded")
SIZES = (30, 117, 500)
ALL_KEYS = (
    "n", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc", "nll",
    "brier", "ece", "rmsce", "rmsce_plugin", "entropy", "positive_rate",
    "majority_fraction", "degenerate",
)


def make_case(n: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a known P(COVID) and a model reporting a distorted version.

    ``overconfident``/``underconfident`` sharpen/flatten the true logit, ``inverted``
    reports the opposite class, and ``rounded`` produces many tied confidences, which
    exercises the merging of duplicate equal-mass bin edges.
    """
    rng = np.random.default_rng([n, seed, KINDS.index(kind)])
    logit = rng.normal(0.0, 2.0, size=n)
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    scale = {"overconfident": 4.0, "underconfident": 0.25, "inverted": -1.0}.get(kind, 1.0)
    p1 = 1.0 / (1.0 + np.exp(-scale * logit))
    if kind == "rounded":
        p1 = np.round(p1, 1)
    return y, np.stack([1.0 - p1, p1], axis=1)


def kumar_l2_ce(y: np.ndarray, probs2d: np.ndarray, *, debias: bool) -> float:
    return float(
        calibration.lower_bound_scaling_ce(
            probs2d, y, p=2, debias=debias, num_bins=15,
            binning_scheme=calibration.get_equal_bins, mode="top-label",
        )
    )


GOLDEN_CASES = [(n, s, k) for n in SIZES for k in KINDS for s in (0, 1)]


# --------------------------------------------------------------------------- golden values


@pytest.mark.parametrize(("n", "seed", "kind"), GOLDEN_CASES)
def test_rmsce_matches_kumar_calibration_package(n: int, seed: int, kind: str) -> None:
    y, p = make_case(n, seed, kind)
    m = classification_metrics(labels=y, probs=p)
    assert m["rmsce"] == pytest.approx(kumar_l2_ce(y, p, debias=True), abs=1e-9)
    assert m["rmsce_plugin"] == pytest.approx(kumar_l2_ce(y, p, debias=False), abs=1e-9)


def test_golden_cases_cover_clipped_and_positive_debiased_values() -> None:
    # Agreement is only meaningful if both branches of the max(., 0) clip are hit.
    values = [classification_metrics(labels=y, probs=p)["rmsce"]
              for y, p in (make_case(*c) for c in GOLDEN_CASES)]
    assert any(v == 0.0 for v in values)
    assert sum(v > 0.1 for v in values) >= 10


def test_debiased_rmsce_is_exactly_zero_when_squared_estimate_is_negative() -> None:
    # Calibrated model, n=30: the variance correction outweighs the squared gaps.
    y, p = make_case(30, 1, "calibrated")
    m = classification_metrics(labels=y, probs=p)
    assert kumar_l2_ce(y, p, debias=True) == 0.0
    assert m["rmsce"] == 0.0
    assert m["rmsce_plugin"] > 0.2


@pytest.mark.parametrize("n", [1, 2, 7, 14, 15, 16])
def test_rmsce_matches_kumar_with_fewer_samples_than_bins(n: int) -> None:
    y, p = make_case(n, 3, "overconfident")
    m = classification_metrics(labels=y, probs=p)
    assert m["rmsce"] == pytest.approx(kumar_l2_ce(y, p, debias=True), abs=1e-9)
    assert m["rmsce_plugin"] == pytest.approx(kumar_l2_ce(y, p, debias=False), abs=1e-9)


def ece_reference(y: np.ndarray, probs2d: np.ndarray, n_bins: int = 15) -> float:
    n = len(y)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for i in range(n):
            pred = 0 if probs2d[i, 0] >= probs2d[i, 1] else 1
            conf = probs2d[i, pred]
            if (lo < conf or (b == 0 and conf == 0.0)) and conf <= hi:
                members.append((conf, float(pred == y[i])))
        if members:
            mean_conf = sum(c for c, _ in members) / len(members)
            mean_acc = sum(a for _, a in members) / len(members)
            total += len(members) / n * abs(mean_conf - mean_acc)
    return total


@pytest.mark.parametrize(("n", "seed", "kind"), GOLDEN_CASES[::3])
def test_ece_matches_reference_loop_and_calibration_package(n: int, seed: int, kind: str) -> None:
    y, p = make_case(n, seed, kind)
    ece = classification_metrics(labels=y, probs=p)["ece"]
    assert ece == pytest.approx(ece_reference(y, p), abs=1e-12)
    assert ece == pytest.approx(calibration.get_ece(p, y, num_bins=15), abs=1e-12)


def test_ece_puts_confidence_on_an_edge_in_the_lower_bin() -> None:
    # 0.6 = 9/15 sits exactly on an edge; the bins are (lower, upper].
    bins = reliability_bins(labels=[1, 0], probs=[0.6, 0.6])
    occupied = [b for b in bins if b["count"] > 0]
    assert len(occupied) == 1
    assert occupied[0]["upper"] == pytest.approx(0.6)
    assert occupied[0]["accuracy"] == 0.5


@pytest.mark.parametrize(("n", "seed", "kind"), GOLDEN_CASES[1::3])
def test_discrimination_and_scores_match_sklearn(n: int, seed: int, kind: str) -> None:
    y, p = make_case(n, seed, kind)
    m = classification_metrics(labels=y, probs=p)
    pred = np.argmax(p, axis=1)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    # sklearn's binary Brier is the squared error of P(class 1) alone; summing over
    # both classes doubles it.
    assert m["brier"] == pytest.approx(2.0 * brier_score_loss(y, p[:, 1]), abs=1e-12)
    if p.min() > 1e-12:
        assert m["nll"] == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=1e-12)
    else:
        # sklearn clips at machine epsilon, this module at 1e-12: compare the samples
        # with a usable true-class probability and add the clipped ones by hand.
        p_true = p[np.arange(n), y]
        ok = p_true > 1e-12
        expected = (ok.sum() * log_loss(y[ok], p[ok], labels=[0, 1])
                    + (~ok).sum() * -math.log(1e-12)) / n
        assert m["nll"] == pytest.approx(expected, abs=1e-12)


def test_nll_clips_zero_probability_of_true_class() -> None:
    m = classification_metrics(labels=[1, 0], probs=[[1.0, 0.0], [1.0, 0.0]])
    assert m["nll"] == pytest.approx(-math.log(1e-12) / 2)


def test_docstring_example_numbers_are_current() -> None:
    result = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2
    assert result.failed == 0


def test_one_dimensional_probs_mean_p_class_one() -> None:
    y, p = make_case(117, 0, "overconfident")
    m1 = classification_metrics(labels=y, probs=p[:, 1])
    m2 = classification_metrics(labels=y, probs=p)
    np.testing.assert_allclose([m1[k] for k in ALL_KEYS], [m2[k] for k in ALL_KEYS],
                               rtol=0, atol=1e-12)


def test_returns_exactly_the_documented_keys_as_floats() -> None:
    m = classification_metrics(labels=[0, 1, 1], probs=[0.2, 0.4, 0.9])
    assert tuple(m) == ALL_KEYS
    assert all(type(v) is float for v in m.values())


def test_argmax_tie_goes_to_class_zero() -> None:
    m = classification_metrics(labels=[0, 1], probs=[[0.5, 0.5], [0.5, 0.5]])
    assert m["positive_rate"] == 0.0
    assert m["specificity"] == 1.0 and m["sensitivity"] == 0.0


# --------------------------------------------------------------------------- degenerate


def test_constant_predictor_high_accuracy_but_chance_balanced_accuracy() -> None:
    y = np.array([0] * 85 + [1] * 15)
    p = np.tile([0.9, 0.1], (100, 1))
    m = classification_metrics(labels=y, probs=p)
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert m["auroc"] == pytest.approx(0.5)
    assert m["positive_rate"] == 0.0
    assert m["majority_fraction"] == 1.0
    assert m["degenerate"] == 1.0
    assert is_degenerate(preds=np.argmax(p, axis=1))


def test_degenerate_threshold_is_inclusive() -> None:
    assert DEGENERATE_THRESHOLD == 0.95
    assert is_degenerate(preds=[1] * 95 + [0] * 5)
    assert not is_degenerate(preds=[1] * 94 + [0] * 6)
    assert not is_degenerate(preds=[0, 1] * 50)
    m = classification_metrics(labels=[0] * 100, probs=[0.9] * 94 + [0.1] * 6)
    assert m["majority_fraction"] == pytest.approx(0.94) and m["degenerate"] == 0.0


def test_single_class_labels_give_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(labels=[1, 1, 1, 1], probs=[0.2, 0.7, 0.9, 0.6])
        ci = bootstrap_ci(labels=[1, 1, 1, 1], probs=[0.2, 0.7, 0.9, 0.6],
                          metrics=("specificity", "auroc", "balanced_accuracy"), n_boot=50)
    assert math.isnan(m["auroc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == 0.75
    assert m["balanced_accuracy"] == 0.75  # recall of the only class present
    assert all(math.isnan(v) for v in ci["specificity"] + ci["auroc"])
    assert not any(math.isnan(v) for v in ci["balanced_accuracy"])


# --------------------------------------------------------------------------- reliability


def test_reliability_bins_are_consistent_with_ece() -> None:
    y, p = make_case(117, 1, "overconfident")
    bins = reliability_bins(labels=y, probs=p)
    assert len(bins) == 15
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    for prev, cur in zip(bins, bins[1:]):
        assert prev["upper"] == cur["lower"]
    assert sum(b["count"] for b in bins) == 117
    ece = sum(b["count"] / 117 * abs(b["gap"]) for b in bins if b["count"] > 0)
    assert ece == pytest.approx(classification_metrics(labels=y, probs=p)["ece"], abs=1e-12)
    empty = [b for b in bins if b["count"] == 0]
    assert empty and all(math.isnan(b["confidence"]) and math.isnan(b["gap"]) for b in empty)
    assert len(reliability_bins(labels=y, probs=p, n_bins=4)) == 4


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_seed_matters() -> None:
    y, p = make_case(117, 0, "calibrated")
    names = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc")
    a = bootstrap_ci(labels=y, probs=p, metrics=names, seed=7)
    b = bootstrap_ci(labels=y, probs=p, metrics=names, seed=7)
    c = bootstrap_ci(labels=y, probs=p, metrics=names, seed=8)
    np.testing.assert_equal(a, b)
    assert a != c


def test_bootstrap_interval_narrows_with_lower_level() -> None:
    y, p = make_case(117, 0, "calibrated")
    wide = bootstrap_ci(labels=y, probs=p, level=0.95)["accuracy"]
    narrow = bootstrap_ci(labels=y, probs=p, level=0.5)["accuracy"]
    assert wide[0] < narrow[0] <= narrow[1] < wide[1]


def test_bootstrap_is_fast() -> None:
    # 1000 resamples x 120 samples takes ~3 ms when vectorised; a Python loop over
    # resamples takes tens to hundreds of ms. The bound leaves room for a busy machine.
    y, p = make_case(120, 0, "overconfident")
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        bootstrap_ci(labels=y, probs=p, n_boot=1000)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05


labels_and_probs = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    )
)


@settings(max_examples=40, deadline=None)
@given(data=labels_and_probs, seed=st.integers(0, 2**32 - 1))
def test_bootstrap_replicate_equals_point_metrics_of_the_resample(data, seed) -> None:
    # With one resample the interval collapses onto that resample's value, which must
    # be what classification_metrics reports for the resampled data (duplicates and
    # ties included). Mirrors bootstrap_ci's documented draw: one (n_boot, n) matrix.
    y, p1 = map(np.asarray, data)
    names = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc",
             "nll", "brier", "entropy", "positive_rate")
    ci = bootstrap_ci(labels=y, probs=p1, metrics=names, n_boot=1, seed=seed)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(1, len(y)))[0]
    m = classification_metrics(labels=y[idx], probs=p1[idx])
    for name in names:
        lo, hi = ci[name]
        np.testing.assert_allclose([lo, hi], [m[name], m[name]], rtol=0, atol=1e-12,
                                   err_msg=name)


@settings(max_examples=40, deadline=None)
@given(data=labels_and_probs, seed=st.integers(0, 2**32 - 1))
def test_bootstrap_ci_is_ordered_contains_accuracy_and_repeats(data, seed) -> None:
    y, p1 = data
    names = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc")
    ci = bootstrap_ci(labels=y, probs=p1, metrics=names, n_boot=300, seed=seed)
    for lo, hi in ci.values():
        assert (math.isnan(lo) and math.isnan(hi)) or lo <= hi
    lo, hi = ci["accuracy"]
    assert lo <= classification_metrics(labels=y, probs=p1)["accuracy"] <= hi
    # assert_equal, unlike ==, treats the (nan, nan) of undefined metrics as equal.
    np.testing.assert_equal(
        bootstrap_ci(labels=y, probs=p1, metrics=names, n_boot=300, seed=seed), ci
    )


# --------------------------------------------------------------------------- properties


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_entropy_between_zero_and_ln2(p1) -> None:
    h = predictive_entropy(probs=p1)
    assert h.shape == (len(p1),)
    assert np.all(h >= 0.0)
    # A few ulps of rounding are possible right at p = 0.5.
    assert np.all(h <= math.log(2) + 1e-12)
    mean_h = classification_metrics(labels=[0] * len(p1), probs=p1)["entropy"]
    assert mean_h == pytest.approx(float(np.mean(h)), abs=1e-12)


def test_entropy_extremes() -> None:
    np.testing.assert_allclose(predictive_entropy(probs=[[1.0, 0.0], [0.5, 0.5]]),
                               [0.0, math.log(2)], rtol=0, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(data=labels_and_probs, perm_seed=st.integers(0, 2**32 - 1))
def test_metrics_invariant_to_sample_permutation(data, perm_seed) -> None:
    y, p1 = map(np.asarray, data)
    perm = np.random.default_rng(perm_seed).permutation(len(y))
    a = classification_metrics(labels=y, probs=p1)
    b = classification_metrics(labels=y[perm], probs=p1[perm])
    np.testing.assert_allclose([a[k] for k in ALL_KEYS], [b[k] for k in ALL_KEYS],
                               rtol=0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(data=labels_and_probs)
def test_metric_ranges(data) -> None:
    y, p1 = data
    m = classification_metrics(labels=y, probs=p1)
    for key in ("accuracy", "balanced_accuracy", "ece", "rmsce", "rmsce_plugin",
                "positive_rate"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["brier"] <= 2.0
    assert 0.5 <= m["majority_fraction"] <= 1.0
    assert m["rmsce"] <= m["rmsce_plugin"] + 1e-12


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 1, 1], [0.1, 0.9], "3 entries but probs has 2"),
        ([], [], "empty"),
        ([], np.empty((0, 2)), "empty"),
        ([0, 1], [0.2, 1.2], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"\[0, 1\]"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], r"\[0, 1\]"),
        ([0, 1], [0.2, float("nan")], "NaN"),
        ([0, 2], [0.2, 0.8], "0 .* or 1"),
        ([0, -1], [0.2, 0.8], "0 .* or 1"),
        ([0, 0.5], [0.2, 0.8], "0 .* or 1"),
        ([0, float("nan")], [0.2, 0.8], "0 .* or 1"),
        ([0, 2], [[0.2, 0.8], [0.5, 0.5]], r"0 .* or 1.*found \[2\]"),
        (["a", "b"], [0.2, 0.8], "numeric"),
        ([[0, 1]], [0.2, 0.8], "1-D"),
        ([0, 1], [[0.2, 0.3], [0.5, 0.5]], "sum to 1"),
        ([0, 1], [[0.2, 0.3, 0.4], [0.5, 0.25, 0.25]], "sum to 1"),
        ([0, 1], [[1.0], [1.0]], r"shape \(n, K\) with K >= 2"),
        ([0, 1], np.full((2, 2, 1), 0.5), r"shape \(n, K\)"),
        # K classes: labels must index the K columns of probs.
        ([0, 3], [[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]], r"0\.\.K-1 = 0\.\.2 .*found \[3\]"),
        ([0, -1], [[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]], r"0\.\.K-1 .*found \[-1\]"),
        ([0, 1.5], [[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]], r"0\.\.K-1 .*found \[1\.5\]"),
        ([4, 7, 9], np.full((3, 4), 0.25), r"0\.\.3 .*found \[4, 7, 9\]"),
    ],
)
def test_invalid_inputs_raise_value_error(labels, probs, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels=labels, probs=probs)
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(labels=labels, probs=probs)
    with pytest.raises(ValueError, match=match):
        reliability_bins(labels=labels, probs=probs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ("accuracy", "f1")}, "unknown metric"),
        ({"metrics": "accuracy"}, "sequence of names"),
        ({"n_boot": 0}, "n_boot"),
        ({"n_boot": 10.5}, "n_boot"),
        ({"level": 1.0}, "level"),
        ({"level": 0.0}, "level"),
    ],
)
def test_bootstrap_argument_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(labels=[0, 1], probs=[0.2, 0.8], **kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: is_degenerate(preds=[]), "empty"),
        (lambda: is_degenerate(preds=[[0, 1]]), "1-D"),
        (lambda: is_degenerate(preds=[0.2, 0.8]), "integer class indices"),
        (lambda: predictive_entropy(probs=[]), "empty"),
        (lambda: predictive_entropy(probs=[1.5]), r"\[0, 1\]"),
        (lambda: reliability_bins(labels=[0], probs=[0.3], n_bins=0), "n_bins"),
    ],
)
def test_other_value_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_public_functions_are_keyword_only() -> None:
    for fn in (classification_metrics, bootstrap_ci, reliability_bins, is_degenerate,
               predictive_entropy):
        params = inspect.signature(fn).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), fn.__name__
    with pytest.raises(TypeError):
        classification_metrics([0, 1], [0.2, 0.8])  # type: ignore[misc]


def test_module_imports_only_numpy() -> None:
    # Evaluation must run without torch or the reference `calibration` package.
    tree = ast.parse(Path(M.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "collections", "typing", "numpy"}


# --------------------------------------------------------------------------- K classes

KS = (3, 4, 5)
MULTI_CASES = [(k, n, seed) for k in KS for n in (9, 60, 400) for seed in (0, 1)]


def make_multiclass_case(k: int, n: int, seed: int, *, rounded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a softmax over random logits, and a sharpened, noisy model of it.

    Every class is forced to occur at least once (so scikit-learn's multiclass AUROC is
    defined); ``rounded`` leaves many tied scores and confidences.
    """
    rng = np.random.default_rng([k, n, seed])
    logits = rng.normal(0.0, 1.5, size=(n, k))
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in true_p])
    y[rng.permutation(n)[:k]] = np.arange(k)
    model_logits = 2.0 * logits + rng.normal(0.0, 1.0, size=(n, k))
    p = np.exp(model_logits) / np.exp(model_logits).sum(axis=1, keepdims=True)
    if rounded:
        p = np.round(p, 1)
        p[:, -1] = 1.0 - p[:, :-1].sum(axis=1)
        p = np.clip(p, 0.0, 1.0)
        p /= p.sum(axis=1, keepdims=True)
    return y, p


def ovr_auroc_reference(y: np.ndarray, p: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of sklearn's AUROC of class c vs the rest."""
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


@pytest.mark.parametrize(("k", "n", "seed"), MULTI_CASES)
@pytest.mark.parametrize("rounded", [False, True])
def test_multiclass_metrics_match_sklearn(k: int, n: int, seed: int, rounded: bool) -> None:
    y, p = make_multiclass_case(k, n, seed, rounded=rounded)
    m = classification_metrics(labels=y, probs=p)
    pred = np.argmax(p, axis=1)
    assert tuple(m) == ALL_KEYS
    assert m["n"] == n
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["auroc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert m["brier"] == pytest.approx(
        brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False), abs=1e-12
    )
    if p[np.arange(n), y].min() > 1e-12:
        assert m["nll"] == pytest.approx(log_loss(y, p, labels=list(range(k))), abs=1e-12)
    assert m["ece"] == pytest.approx(calibration.get_ece(p, y, num_bins=15), abs=1e-12)
    assert m["rmsce"] == pytest.approx(kumar_l2_ce(y, p, debias=True), abs=1e-9)
    assert m["rmsce_plugin"] == pytest.approx(kumar_l2_ce(y, p, debias=False), abs=1e-9)
    h = predictive_entropy(probs=p)
    assert np.all(h <= math.log(k) + 1e-12) and np.all(h >= 0.0)
    assert m["entropy"] == pytest.approx(float(np.mean(h)), abs=1e-12)
    _, counts = np.unique(pred, return_counts=True)
    assert m["majority_fraction"] == counts.max() / n
    # Binary notions have no K-class value.
    assert all(math.isnan(m[key]) for key in ("sensitivity", "specificity", "positive_rate"))


def test_multiclass_golden_cases_are_not_trivial() -> None:
    # The comparisons above mean little if every case were perfect or the AUROC saturated,
    # or if the debiased L2 error were always clipped to 0.
    ms = [classification_metrics(labels=y, probs=p)
          for y, p in (make_multiclass_case(*c) for c in MULTI_CASES)]
    assert all(0.3 < m["accuracy"] < 0.99 for m in ms if m["n"] >= 60)
    assert all(0.6 < m["auroc"] < 0.999 for m in ms if m["n"] >= 60)
    assert sum(m["rmsce"] > 0.05 for m in ms) >= 5
    assert all(m["balanced_accuracy"] != m["accuracy"] for m in ms if m["n"] >= 60)


def test_multiclass_auroc_is_not_the_binary_auroc_of_one_column() -> None:
    # Guards against silently scoring K > 2 with column 1 alone (the binary rule).
    y, p = make_multiclass_case(4, 400, 3)
    m = classification_metrics(labels=y, probs=p)
    assert m["auroc"] == pytest.approx(ovr_auroc_reference(y, p), abs=1e-12)
    assert abs(m["auroc"] - roc_auc_score(y == 1, p[:, 1])) > 1e-3


def test_multiclass_auroc_with_an_absent_class_averages_over_present_classes() -> None:
    # K = 4 columns, labels only from {0, 2}: classes 1 and 3 have no one-vs-rest AUROC.
    y = np.array([0, 0, 0, 2, 2, 2])
    p = np.array([[0.6, 0.1, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.2, 0.2, 0.5, 0.1],
                  [0.3, 0.1, 0.5, 0.1], [0.5, 0.1, 0.3, 0.1], [0.1, 0.1, 0.7, 0.1]])
    m = classification_metrics(labels=y, probs=p)
    # Class 0 scores 0.6, 0.4, 0.2 against 0.3, 0.5, 0.1: 3 + 2 + 1 of 9 pairs won -> 6/9.
    # Class 2 scores 0.5, 0.3, 0.7 against 0.2, 0.2, 0.5: 7 pairs won, one tie -> 7.5/9.
    assert m["auroc"] == pytest.approx((6 / 9 + 7.5 / 9) / 2, abs=1e-12) == 0.75
    assert m["auroc"] == pytest.approx(ovr_auroc_reference(y, p), abs=1e-12)
    # Balanced accuracy averages the recalls of the present classes only (2/3 and 2/3).
    assert m["balanced_accuracy"] == pytest.approx(2 / 3, abs=1e-12)
    recall = per_class_recall(labels=y, probs=p)
    assert recall[[0, 2]] == pytest.approx([2 / 3, 2 / 3]) and np.isnan(recall[[1, 3]]).all()
    one_class = classification_metrics(labels=[2, 2, 2], probs=p[:3])
    assert math.isnan(one_class["auroc"])
    assert one_class["balanced_accuracy"] == pytest.approx(1 / 3)


multiclass_data = st.tuples(st.integers(3, 5), st.integers(1, 40)).flatmap(
    lambda kn: st.tuples(
        st.just(kn[0]),
        st.lists(st.integers(0, kn[0] - 1), min_size=kn[1], max_size=kn[1]),
        st.lists(
            st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0),
                     min_size=kn[0], max_size=kn[0]),
            min_size=kn[1], max_size=kn[1],
        ),
    )
)


def as_multiclass(data) -> tuple[int, np.ndarray, np.ndarray]:
    """Hypothesis draw -> (K, labels, probs): rows normalised, all-zero rows made uniform."""
    k, y, w = data
    w = np.asarray(w, dtype=np.float64)
    w[w.sum(axis=1) == 0.0] = 1.0
    return k, np.asarray(y, dtype=np.int64), w / w.sum(axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(data=multiclass_data)
def test_multiclass_properties_and_references(data) -> None:
    k, y, p = as_multiclass(data)
    n = y.size
    m = classification_metrics(labels=y, probs=p)
    pred = np.argmax(p, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    ref_auroc = ovr_auroc_reference(y, p)
    assert (math.isnan(m["auroc"]) and math.isnan(ref_auroc)) or m["auroc"] == pytest.approx(ref_auroc, abs=1e-12)
    if np.unique(y).size == k:
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert m["entropy"] <= math.log(k) + 1e-12
    for key in ("accuracy", "balanced_accuracy", "ece", "rmsce", "rmsce_plugin"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["brier"] <= 2.0
    assert 1.0 / k - 1e-12 <= m["majority_fraction"] <= 1.0
    assert m["rmsce"] == pytest.approx(kumar_l2_ce(y, p, debias=True), abs=1e-9)
    assert m["rmsce_plugin"] == pytest.approx(kumar_l2_ce(y, p, debias=False), abs=1e-9)
    cm = confusion_matrix(labels=y, preds=pred, num_classes=k)
    np.testing.assert_array_equal(cm, sk_confusion_matrix(y, pred, labels=list(range(k))))
    assert cm.sum() == n and np.trace(cm) == round(m["accuracy"] * n)
    recall = per_class_recall(labels=y, probs=p)
    present = np.bincount(y, minlength=k) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_recall = recall_score(y, pred, labels=list(range(k)), average=None, zero_division=0.0)
    np.testing.assert_allclose(recall[present], sk_recall[present], rtol=0, atol=1e-12)
    assert np.isnan(recall[~present]).all()
    assert m["balanced_accuracy"] == pytest.approx(float(np.nanmean(recall)), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=multiclass_data, seed=st.integers(0, 2**32 - 1))
def test_multiclass_bootstrap_replicate_equals_point_metrics_of_the_resample(data, seed) -> None:
    # The weighted K-class code (macro AUROC over the classes a resample holds included)
    # must agree with the point metrics of the materialised resample.
    _, y, p = as_multiclass(data)
    names = M._BOOTSTRAP_METRICS
    ci = bootstrap_ci(labels=y, probs=p, metrics=names, n_boot=1, seed=seed)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(1, len(y)))[0]
    m = classification_metrics(labels=y[idx], probs=p[idx])
    for name in names:
        lo, hi = ci[name]
        np.testing.assert_allclose([lo, hi], [m[name], m[name]], rtol=0, atol=1e-12, err_msg=name)
    assert all(math.isnan(v) for key in ("sensitivity", "specificity", "positive_rate") for v in ci[key])


@pytest.mark.parametrize("k", KS)
def test_multiclass_bootstrap_intervals_contain_point_estimates(k: int) -> None:
    y, p = make_multiclass_case(k, 300, 7)
    names = ("accuracy", "balanced_accuracy", "auroc", "nll", "brier", "entropy")
    m = classification_metrics(labels=y, probs=p)
    ci = bootstrap_ci(labels=y, probs=p, metrics=names, n_boot=500, seed=k)
    for name in names:
        lo, hi = ci[name]
        assert lo < m[name] < hi, (name, lo, m[name], hi)
        assert 0.0 < hi - lo < 0.35 * max(1.0, m[name]), name  # a real, finite interval
    np.testing.assert_equal(bootstrap_ci(labels=y, probs=p, metrics=names, n_boot=500, seed=k), ci)


def test_multiclass_bootstrap_blocks_match_one_pass() -> None:
    y, p = make_multiclass_case(4, 60, 2)
    w = np.random.default_rng(0).integers(0, 3, size=(40, 60)).astype(np.float64)
    whole = M._resampled_metrics(y, p, M._BOOTSTRAP_METRICS, w)
    parts = [M._resampled_metrics(y, p, M._BOOTSTRAP_METRICS, w[i:i + 7]) for i in range(0, 40, 7)]
    for name in M._BOOTSTRAP_METRICS:
        np.testing.assert_array_equal(np.concatenate([b[name] for b in parts]), whole[name], err_msg=name)


def test_multiclass_degenerate_flag() -> None:
    # A model predicting class 1 of 3 for 96 % of the samples is degenerate even though
    # it is right on the class-1 majority; at 94 % it is not.
    y = np.array([1] * 80 + [0] * 10 + [2] * 10)
    for share, flagged in ((96, 1.0), (94, 0.0)):
        p = np.tile([0.2, 0.6, 0.2], (100, 1))
        p[share:] = [0.1, 0.1, 0.8]
        m = classification_metrics(labels=y, probs=p)
        assert m["majority_fraction"] == pytest.approx(share / 100)
        assert m["degenerate"] == flagged
        assert is_degenerate(preds=np.argmax(p, axis=1)) is bool(flagged)
    assert m["accuracy"] > 0.8 and m["balanced_accuracy"] < 0.7


def test_multiclass_reliability_bins_are_top_label() -> None:
    y, p = make_multiclass_case(5, 400, 1)
    bins = reliability_bins(labels=y, probs=p)
    assert sum(b["count"] for b in bins) == 400
    conf = p.max(axis=1)
    assert bins[0]["count"] == np.sum(conf <= 1 / 15)  # top-label confidence, may go below 1/2
    occupied = [b for b in bins if b["count"] > 0]
    assert min(b["lower"] for b in occupied) < 0.5 - 1e-9
    ece = sum(b["count"] / 400 * abs(b["gap"]) for b in occupied)
    assert ece == pytest.approx(classification_metrics(labels=y, probs=p)["ece"], abs=1e-12)
    correct = (np.argmax(p, axis=1) == y)
    in_top = [b for b in occupied if b["upper"] == 1.0]
    assert in_top[0]["accuracy"] == pytest.approx(np.mean(correct[conf > 14 / 15]))


def test_entropy_of_uniform_k_class_prediction_is_ln_k() -> None:
    for k in (2, *KS):
        h = predictive_entropy(probs=np.full((3, k), 1.0 / k))
        np.testing.assert_allclose(h, math.log(k), rtol=0, atol=1e-12)


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(labels=[0, 0, 2, 2, 2], preds=[1, 1, 2, 0, 2], num_classes=4)
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 1], expected[2, 2], expected[2, 0] = 2, 2, 1
    np.testing.assert_array_equal(cm, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [0, 1], "preds": [0, 1], "num_classes": 1}, "num_classes"),
        ({"labels": [0, 1], "preds": [0, 1], "num_classes": 2.0}, "num_classes"),
        ({"labels": [0, 1], "preds": [0, 1], "num_classes": True}, "num_classes"),
        ({"labels": [0, 1], "preds": [0, 1, 1], "num_classes": 3}, "preds has 3 entries but labels has 2"),
        ({"labels": [0, 3], "preds": [0, 1], "num_classes": 3}, r"labels must be integers in 0\.\.K-1"),
        ({"labels": [0, 1], "preds": [0, 3], "num_classes": 3}, r"preds must be integers in 0\.\.K-1 = 0\.\.2"),
        ({"labels": [0, 1], "preds": [0.2, 1], "num_classes": 3}, "preds must be integers"),
        ({"labels": [[0, 1]], "preds": [0, 1], "num_classes": 3}, "1-D"),
        ({"labels": [0, 1], "preds": ["a", "b"], "num_classes": 3}, "numeric"),
    ],
)
def test_confusion_matrix_input_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(**kwargs)


def test_per_class_recall_binary_is_specificity_and_sensitivity() -> None:
    y, p = make_case(117, 0, "overconfident")
    m = classification_metrics(labels=y, probs=p)
    recall = per_class_recall(labels=y, probs=p[:, 1])
    assert recall.shape == (2,) and recall.dtype == np.float64
    assert recall.tolist() == [m["specificity"], m["sensitivity"]]
    assert float(np.mean(recall)) == pytest.approx(m["balanced_accuracy"], abs=1e-15)
    with pytest.raises(ValueError, match="0 .* or 1"):
        per_class_recall(labels=[0, 2], probs=[0.1, 0.9])


def test_new_functions_are_public_and_keyword_only() -> None:
    assert {"confusion_matrix", "per_class_recall"} <= set(M.__all__)
    for fn in (confusion_matrix, per_class_recall):
        params = inspect.signature(fn).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), fn.__name__
        assert "Examples" in (fn.__doc__ or "")
