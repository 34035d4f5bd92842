"""Tests for medrobust.stats: patient-level (cluster) bootstrap, paired comparison, fold spread.

The coverage tests are the scientific core: on simulated data with a strong patient effect they
check that the cluster bootstrap covers a known truth at about its nominal rate, and that the
per-image bootstrap does not. The second half is what makes the first meaningful: a cluster
bootstrap that silently resampled images would land at the naive rate and fail.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest

from medrobust import stats as S
from medrobust.metrics import _BOOTSTRAP_METRICS, bootstrap_ci, classification_metrics
from medrobust.stats import (
    cluster_bootstrap_ci,
    describe_difference,
    fold_spread,
    paired_cluster_bootstrap,
)

ALL = _BOOTSTRAP_METRICS

# --------------------------------------------------------------------------- simulation

# Per-image correctness: P(correct | patient) = expit(MU + u), u ~ N(0, SIGMA^2) shared by all of
# the patient's images. SIGMA = 2.5 on the logit scale is a strong patient effect (intraclass
# correlation of correctness around 0.3), so with 1-6 images per patient the per-image bootstrap
# underestimates the variance roughly twofold.
MU, SIGMA = 1.2, 2.5


def true_accuracy() -> float:
    """E[expit(MU + SIGMA Z)] by 80-point Gauss-Hermite quadrature (exact to ~1e-10).

    Image counts are drawn independently of the patient effect, so the population fraction of
    images classified correctly, E[m p(u)] / E[m], is E[p(u)].
    """
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(w / math.sqrt(2.0 * math.pi) / (1.0 + np.exp(-(MU + SIGMA * z)))))


TRUE_ACCURACY = true_accuracy()


def correct_to_probs(rng: np.random.Generator, y: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """P(class 1) whose argmax is right exactly where ``correct`` is True."""
    conf = rng.uniform(0.55, 0.99, size=y.size)
    p_true = np.where(correct, conf, 1.0 - conf)
    return np.where(y == 1, p_true, 1.0 - p_true)


def simulate(rng: np.random.Generator, n_patients: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One data set: (labels, P(class 1), patient ids), 1-6 images per patient."""
    m = rng.integers(1, 7, size=n_patients)
    u = rng.normal(0.0, SIGMA, size=n_patients)
    patient_label = (rng.random(n_patients) < 0.4).astype(np.int64)
    groups = np.repeat(np.arange(n_patients), m)
    y = patient_label[groups]
    correct = rng.random(groups.size) < 1.0 / (1.0 + np.exp(-(MU + u[groups])))
    return y, correct_to_probs(rng, y, correct), groups


def test_true_accuracy_matches_a_large_simulation() -> None:
    # Guards the quadrature (and the simulation's meaning of "truth") against a typo.
    y, p, _ = simulate(np.random.default_rng(99), n_patients=200_000)
    assert abs(np.mean((p > 0.5) == (y == 1)) - TRUE_ACCURACY) < 0.005
    assert 0.6 < TRUE_ACCURACY < 0.7


def test_cluster_bootstrap_covers_truth_and_image_bootstrap_does_not() -> None:
    n_sets, n_boot = 400, 200
    rng = np.random.default_rng(2024)
    hits = {"stratified": 0, "unstratified": 0, "naive": 0}
    for i in range(n_sets):
        y, p, g = simulate(rng)
        for key, strat in (("stratified", True), ("unstratified", False)):
            lo, hi = cluster_bootstrap_ci(labels=y, probs=p, groups=g, metrics=("accuracy",),
                                          n_boot=n_boot, seed=i, stratify=strat)["accuracy"]
            hits[key] += lo <= TRUE_ACCURACY <= hi
        lo, hi = bootstrap_ci(labels=y, probs=p, metrics=("accuracy",), n_boot=n_boot, seed=i)["accuracy"]
        hits["naive"] += lo <= TRUE_ACCURACY <= hi
    coverage = {k: v / n_sets for k, v in hits.items()}
    # Measured with these seeds: stratified 0.9325, unstratified 0.925, naive 0.7425.
    assert 0.90 <= coverage["stratified"] <= 0.985, coverage
    assert 0.90 <= coverage["unstratified"] <= 0.985, coverage
    assert coverage["naive"] < 0.88, coverage
    assert coverage["stratified"] - coverage["naive"] > 0.08, coverage


def test_paired_test_holds_its_size_under_no_difference() -> None:
    # Two models of equal skill whose patient effects are correlated (they find the same patients
    # hard): the true difference is 0, so p < 0.05 should happen in about 5 % of data sets.
    n_sets = 300
    rng = np.random.default_rng(7)
    rejections = 0
    for i in range(n_sets):
        n_patients = 60
        m = rng.integers(1, 7, size=n_patients)
        groups = np.repeat(np.arange(n_patients), m)
        y = (rng.random(n_patients) < 0.4).astype(np.int64)[groups]
        shared = rng.normal(0.0, SIGMA, size=n_patients)
        probs = []
        for _ in range(2):
            u = math.sqrt(0.5) * shared + math.sqrt(0.5) * rng.normal(0.0, SIGMA, size=n_patients)
            correct = rng.random(groups.size) < 1.0 / (1.0 + np.exp(-(MU + u[groups])))
            probs.append(correct_to_probs(rng, y, correct))
        r = paired_cluster_bootstrap(labels=y, probs_a=probs[0], probs_b=probs[1], groups=groups,
                                     metrics=("accuracy",), n_boot=200, seed=i)["accuracy"]
        rejections += r["p_value"] < 0.05
    assert 0.01 <= rejections / n_sets <= 0.11, rejections / n_sets


# --------------------------------------------------------------------------- agreement with metrics


def small_case(seed: int = 0, n_patients: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    m = rng.integers(1, 5, size=n_patients)
    idx = np.repeat(np.arange(n_patients), m)
    y = (rng.random(n_patients) < 0.5).astype(np.int64)[idx]
    # Rounded so AUROC sees ties; two-column form exercises that input path.
    p1 = np.round(np.clip(0.5 + 0.3 * (2 * y - 1) + 0.3 * rng.standard_normal(y.size), 0, 1), 1)
    p2 = np.stack([1.0 - p1, p1], axis=1)
    groups = [f"patient-{i:03d}" for i in idx]
    return y, p1, p2, groups


def test_point_values_equal_classification_metrics() -> None:
    y, p1, p2, g = small_case()
    ref = classification_metrics(labels=y, probs=p1)
    res = paired_cluster_bootstrap(labels=y, probs_a=p1, probs_b=p2, groups=g, metrics=ALL, n_boot=5)
    for name in ALL:
        assert res[name]["a"] == pytest.approx(ref[name], rel=1e-12, abs=1e-15), name
        assert res[name]["b"] == pytest.approx(ref[name], rel=1e-12, abs=1e-15), name


def test_one_image_per_patient_unstratified_reproduces_bootstrap_ci() -> None:
    rng = np.random.default_rng(3)
    n = 57
    y = rng.integers(0, 2, size=n)
    p = np.round(rng.random(n), 2)
    groups = [f"id-{k}" for k in rng.permutation(10 * n)[:n]]  # distinct, unordered keys
    ours = cluster_bootstrap_ci(labels=y, probs=p, groups=groups, metrics=ALL, n_boot=300, seed=11,
                                stratify=False)
    ref = bootstrap_ci(labels=y, probs=p, metrics=ALL, n_boot=300, seed=11)
    for name in ALL:
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name


def test_interval_contains_point_estimate_and_is_ordered() -> None:
    y, p1, _, g = small_case(seed=5, n_patients=40)
    ref = classification_metrics(labels=y, probs=p1)
    ci = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=400, seed=0)
    for name in ALL:
        lo, hi = ci[name]
        assert lo <= hi, name
        assert lo - 1e-12 <= ref[name] <= hi + 1e-12, name


def test_seeded_and_seed_matters() -> None:
    y, p1, _, g = small_case(seed=1)
    a = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=200, seed=4)
    b = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=200, seed=4)
    c = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=200, seed=5)
    assert a == b
    assert a != c
    pa = paired_cluster_bootstrap(labels=y, probs_a=p1, probs_b=1 - p1, groups=g, metrics=ALL, n_boot=200, seed=4)
    pb = paired_cluster_bootstrap(labels=y, probs_a=p1, probs_b=1 - p1, groups=g, metrics=ALL, n_boot=200, seed=4)
    assert pa == pb


def test_key_type_does_not_matter_only_the_partition() -> None:
    y, p1, _, g = small_case(seed=2)
    as_int = [int(k.split("-")[1]) for k in g]
    as_tuple = [("site-A", k) for k in g]
    ref = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=100, seed=0)
    assert cluster_bootstrap_ci(labels=y, probs=p1, groups=np.array(as_int), metrics=ALL, n_boot=100, seed=0) == ref
    assert cluster_bootstrap_ci(labels=y, probs=p1, groups=as_tuple, metrics=ALL, n_boot=100, seed=0) == ref


def test_blocks_give_the_same_answer_as_one_pass(monkeypatch) -> None:
    # Resamples are evaluated in memory-bounded blocks; the split must not change anything.
    y, p1, _, g = small_case(seed=8)
    whole = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=150, seed=2)
    monkeypatch.setattr(S, "_BLOCK_CELLS", 7 * len(y))  # 7 resamples per block
    blocked = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=ALL, n_boot=150, seed=2)
    for name in ALL:
        assert blocked[name] == pytest.approx(whole[name], abs=1e-12), name


# --------------------------------------------------------------------------- resampling structure


def test_resamples_take_whole_patients_and_keep_class_counts() -> None:
    codes = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5])
    labels = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0])  # patients 0 and 3 positive
    patient_pos = np.bincount(codes, weights=labels, minlength=6) > 0
    assert patient_pos.tolist() == [True, False, False, True, False, False]
    rng = np.random.default_rng(0)
    for stratify in (True, False):
        drawn = S._draw_patients(rng, patient_pos, 500, stratify)
        assert drawn.shape == (500, 6)
        counts = S._image_counts(drawn, codes, 6)
        # Every image of a patient appears exactly as often as the patient was drawn.
        per_patient = np.stack([np.bincount(row, minlength=6) for row in drawn])
        np.testing.assert_array_equal(counts, per_patient[:, codes])
        assert len(np.unique(counts.sum(axis=1))) > 1  # resample size varies with the patients drawn
        n_pos_drawn = per_patient[:, patient_pos].sum(axis=1)
        if stratify:
            assert np.all(n_pos_drawn == 2)
        else:
            assert np.any(n_pos_drawn == 0) and np.any(n_pos_drawn != 2)


def test_stratified_resamples_always_hold_both_classes() -> None:
    # One COVID-19 patient among 30: unstratified, about a third of resamples lack them.
    codes = np.arange(30).repeat(2)
    patient_pos = np.zeros(30, dtype=bool)
    patient_pos[17] = True
    rng = np.random.default_rng(1)
    strat = S._image_counts(S._draw_patients(rng, patient_pos, 400, True), codes, 30)
    plain = S._image_counts(S._draw_patients(rng, patient_pos, 400, False), codes, 30)
    pos_images = patient_pos[codes]
    assert np.all(strat[:, pos_images].sum(axis=1) > 0)
    assert 0.2 < np.mean(plain[:, pos_images].sum(axis=1) == 0) < 0.5


def test_one_class_data_falls_back_to_plain_draw() -> None:
    ci = cluster_bootstrap_ci(labels=[1, 1, 1, 1], probs=[0.2, 0.7, 0.9, 0.6], groups=[1, 1, 2, 3],
                              metrics=("accuracy", "sensitivity", "specificity", "auroc"), n_boot=50)
    assert all(math.isnan(v) for v in ci["specificity"] + ci["auroc"])
    assert 0.0 <= ci["accuracy"][0] <= ci["accuracy"][1] <= 1.0
    assert ci["accuracy"] == ci["sensitivity"]


def test_patient_level_interval_is_wider_when_images_are_copies() -> None:
    # 40 patients, each imaged 5 times with identical predictions: resampling images treats one
    # patient as five, the cluster bootstrap does not; its interval must be about sqrt(5) wider.
    rng = np.random.default_rng(4)
    y_pat = rng.integers(0, 2, 40)
    p_pat = np.where(rng.random(40) < 0.7, y_pat, 1 - y_pat) * 0.6 + 0.2
    y, p, g = np.repeat(y_pat, 5), np.repeat(p_pat, 5), np.repeat(np.arange(40), 5)
    lo_c, hi_c = cluster_bootstrap_ci(labels=y, probs=p, groups=g, metrics=("accuracy",), n_boot=2000)["accuracy"]
    lo_n, hi_n = bootstrap_ci(labels=y, probs=p, metrics=("accuracy",), n_boot=2000)["accuracy"]
    assert 1.7 < (hi_c - lo_c) / (hi_n - lo_n) < 2.8


# --------------------------------------------------------------------------- paired comparison


def test_identical_models_differ_by_exactly_zero() -> None:
    y, p1, p2, g = small_case(seed=6)
    res = paired_cluster_bootstrap(labels=y, probs_a=p1, probs_b=p2, groups=g, metrics=ALL, n_boot=300)
    assert set(res) == set(ALL)
    for name, r in res.items():
        assert set(r) == {"a", "b", "difference", "ci", "p_value"}
        assert r["difference"] == 0.0, name
        assert r["ci"] == [0.0, 0.0], name
        assert r["p_value"] == 1.0, name


def better_model_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """B equals A except on 15 of 60 patients, where A is wrong on every image and B right."""
    y, p, g = simulate(np.random.default_rng(12))
    fixed = np.isin(g, np.arange(0, 60, 4))
    wrong = np.where(y == 1, 0.2, 0.8)
    right = np.where(y == 1, 0.8, 0.2)
    p_a = np.where(fixed, wrong, p)
    p_b = np.where(fixed, right, p)
    return y, p_a, p_b, g


def test_strictly_better_model_has_positive_difference_with_ci_above_zero() -> None:
    y, p_a, p_b, g = better_model_case()
    res = paired_cluster_bootstrap(labels=y, probs_a=p_a, probs_b=p_b, groups=g,
                                   metrics=("accuracy", "balanced_accuracy", "auroc", "nll", "brier"))
    for name in ("accuracy", "balanced_accuracy", "auroc"):
        r = res[name]
        assert r["difference"] > 0.0, name
        assert r["ci"][0] > 0.0, name
        assert r["p_value"] < 0.01, name
    for name in ("nll", "brier"):  # lower is better: B's improvement is a negative difference
        assert res[name]["difference"] < 0.0 and res[name]["ci"][1] < 0.0, name
    ref_a = classification_metrics(labels=y, probs=p_a)
    ref_b = classification_metrics(labels=y, probs=p_b)
    assert res["accuracy"]["difference"] == pytest.approx(ref_b["accuracy"] - ref_a["accuracy"], abs=1e-12)


def test_swapping_models_negates_difference_and_mirrors_ci() -> None:
    y, p_a, p_b, g = better_model_case()
    rng = np.random.default_rng(0)
    p_b = np.clip(p_b + rng.normal(0, 0.3, size=p_b.size), 0, 1)  # make it a non-trivial comparison
    ab = paired_cluster_bootstrap(labels=y, probs_a=p_a, probs_b=p_b, groups=g, metrics=ALL, n_boot=500, seed=3)
    ba = paired_cluster_bootstrap(labels=y, probs_a=p_b, probs_b=p_a, groups=g, metrics=ALL, n_boot=500, seed=3)
    for name in ALL:
        assert ba[name]["a"] == ab[name]["b"] and ba[name]["b"] == ab[name]["a"], name
        assert ba[name]["difference"] == -ab[name]["difference"], name
        lo, hi = ab[name]["ci"]
        assert ba[name]["ci"] == pytest.approx([-hi, -lo], abs=1e-12), name
        assert ba[name]["p_value"] == ab[name]["p_value"], name


def test_paired_draws_are_the_cluster_bootstrap_draws() -> None:
    # Against a perfect model A (accuracy 1 in every resample), B - A is B's accuracy minus 1, so
    # the paired interval must be the cluster interval of B shifted by -1.
    y, p1, _, g = small_case(seed=9)
    perfect = y.astype(float)
    paired = paired_cluster_bootstrap(labels=y, probs_a=perfect, probs_b=p1, groups=g, metrics=("accuracy",),
                                      n_boot=400, seed=21)["accuracy"]
    single = cluster_bootstrap_ci(labels=y, probs=p1, groups=g, metrics=("accuracy",), n_boot=400, seed=21)["accuracy"]
    assert paired["ci"] == pytest.approx([single[0] - 1.0, single[1] - 1.0], abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_p_value_is_a_probability_and_agrees_with_the_interval(seed) -> None:
    y, p1, _, g = small_case(seed=seed, n_patients=30)
    rng = np.random.default_rng(100 + seed)
    other = np.clip(p1 + rng.normal(0, 0.25 + 0.05 * seed, size=p1.size), 0, 1)
    res = paired_cluster_bootstrap(labels=y, probs_a=p1, probs_b=other, groups=g, metrics=ALL, n_boot=400,
                                   seed=seed, level=0.95)
    for name, r in res.items():
        assert 0.0 <= r["p_value"] <= 1.0, name
        lo, hi = r["ci"]
        if lo > 0.0 or hi < 0.0:  # 0 outside the 95 % interval: fewer than 2.5 % on the other side
            assert r["p_value"] <= 0.05 + 1e-12, name
        if r["p_value"] < 0.04:  # clearly significant: 0 is outside the interval
            assert not lo <= 0.0 <= hi, name


def test_nan_metric_gives_nan_result() -> None:
    res = paired_cluster_bootstrap(labels=[0, 0, 0], probs_a=[0.2, 0.6, 0.3], probs_b=[0.1, 0.2, 0.3],
                                   groups=["x", "y", "y"], metrics=("sensitivity", "accuracy"), n_boot=50)
    assert math.isnan(res["sensitivity"]["difference"])
    assert all(math.isnan(v) for v in res["sensitivity"]["ci"]) and math.isnan(res["sensitivity"]["p_value"])
    assert res["accuracy"]["difference"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- input checks


GOOD = {"labels": [0, 1, 1, 0], "probs": [0.2, 0.8, 0.6, 0.4], "groups": ["a", "a", "b", "c"]}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"groups": ["a", "a", "b"]}, "groups has 3 entries but probs has 4 rows"),
        ({"labels": [0, 1, 1]}, "labels has 3 entries but probs has 4 rows"),
        ({"labels": [], "probs": [], "groups": []}, "empty"),
        ({"groups": ["a", None, "b", "c"]}, r"groups\[1\] is None"),
        ({"groups": [1.0, float("nan"), 2.0, 3.0]}, r"groups\[1\] is nan"),
        ({"groups": [["a"], ["a"], ["b"], ["c"]]}, "not hashable"),
        ({"groups": "aabc"}, "not a string"),
        ({"groups": np.zeros((4, 1))}, "1-D"),
        ({"groups": 5}, "sequence of patient keys"),
        ({"probs": [0.2, 0.8, 1.6, 0.4]}, r"\[0, 1\]"),
        ({"metrics": ("accuracy", "f1")}, "unknown metric"),
        ({"metrics": "accuracy"}, "sequence of names"),
        ({"metrics": ()}, "metrics is empty"),
        ({"n_boot": 0}, "n_boot"),
        ({"n_boot": 10.5}, "n_boot"),
        ({"level": 1.0}, "level"),
        ({"level": 0.0}, "level"),
    ],
)
def test_cluster_bootstrap_input_errors(change, match) -> None:
    kwargs = {**GOOD, **change}
    with pytest.raises(ValueError, match=match):
        cluster_bootstrap_ci(**kwargs)
    paired = {k: v for k, v in kwargs.items() if k != "probs"}
    with pytest.raises(ValueError, match=match):
        paired_cluster_bootstrap(probs_a=kwargs["probs"], probs_b=GOOD["probs"] if "probs" in change else kwargs["probs"],
                                 **paired)


def test_paired_length_mismatch_names_the_model() -> None:
    with pytest.raises(ValueError, match="probs_b: labels has 4 entries but probs has 3 rows"):
        paired_cluster_bootstrap(labels=GOOD["labels"], probs_a=GOOD["probs"], probs_b=[0.1, 0.2, 0.3],
                                 groups=GOOD["groups"])
    with pytest.raises(ValueError, match="probs_a"):
        paired_cluster_bootstrap(labels=GOOD["labels"], probs_a=[], probs_b=GOOD["probs"], groups=GOOD["groups"])


def test_public_functions_are_keyword_only() -> None:
    for fn in (cluster_bootstrap_ci, paired_cluster_bootstrap):
        params = inspect.signature(fn).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), fn.__name__
    params = inspect.signature(describe_difference).parameters
    assert [p.name for p in params.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY] == ["metric", "result"]
    assert inspect.signature(cluster_bootstrap_ci).parameters["stratify"].default is True


# --------------------------------------------------------------------------- fold_spread


def test_fold_spread_matches_numpy_and_ignores_nan() -> None:
    values = [0.81, float("nan"), 0.77, 0.9, 0.85]
    s = fold_spread(values)
    assert s["mean"] == pytest.approx(np.nanmean(values))
    assert s["sd"] == pytest.approx(np.nanstd(values, ddof=1))
    assert (s["min"], s["max"], s["n"]) == (0.77, 0.9, 4.0)
    assert set(s) == {"mean", "sd", "min", "max", "n"}


def test_fold_spread_edge_cases_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = fold_spread([0.8])
        none = fold_spread([float("nan"), float("nan")])
    assert one["mean"] == 0.8 and math.isnan(one["sd"]) and one["n"] == 1.0
    assert none["n"] == 0.0 and all(math.isnan(none[k]) for k in ("mean", "sd", "min", "max"))
    for bad, match in (([], "empty"), ([[0.1, 0.2]], "1-D"), (["x"], "numbers"), ([0.1, float("inf")], "infinite")):
        with pytest.raises(ValueError, match=match):
            fold_spread(bad)


# --------------------------------------------------------------------------- describe_difference


def r(diff: float, lo: float, hi: float) -> dict:
    return {"a": 0.5, "b": 0.5 + diff, "difference": diff, "ci": [lo, hi], "p_value": 0.5}


@pytest.mark.parametrize(
    ("metric", "result", "kwargs", "expected"),
    [
        ("accuracy", r(0.12, 0.05, 0.19), {},
         "robust − standard = +12.0 [+5.0, +19.0] pts: robust keeps 12 more of 100 images correct than standard"),
        ("accuracy", r(-0.12, -0.19, -0.05), {},
         "robust − standard = −12.0 [−19.0, −5.0] pts: robust keeps 12 fewer of 100 images correct than standard"),
        # the case: the sentence's interval is the table's, in the same direction
        ("accuracy", r(-0.002, -0.035, 0.033), {},
         "robust − standard = −0.2 [−3.5, +3.3] pts: no clear difference"),
        ("accuracy", r(0.0123, 0.004, 0.021), {"per": 1000},
         "robust − standard = +1.2 [+0.4, +2.1] pts: robust keeps 12 more of 1000 images correct than standard"),
        ("accuracy", r(0.12, 0.07, 0.17), {"level": 0.9},
         "robust − standard = +12.0 [+7.0, +17.0] pts (90 % CI): robust keeps 12 more of 100 images correct than "
         "standard"),
        ("auroc", r(-0.019, -0.068, 0.034), {},
         "robust − standard = −0.019 [−0.068, +0.034]: no clear difference"),
        ("auroc", r(-0.06, -0.1, -0.02), {},
         "robust − standard = −0.060 [−0.100, −0.020]: robust has an AUROC 0.060 lower than standard"),
        ("nll", r(-0.1234, -0.2, -0.05), {},
         "robust − standard = −0.123 [−0.200, −0.050] nats: robust has an NLL 0.123 nats lower than standard"),
        ("specificity", r(0.2, 0.1, 0.3), {},
         "robust − standard = +20.0 [+10.0, +30.0] pts: robust correctly clears 20 more of 100 non-COVID images "
         "than standard"),
        ("accuracy", r(0.0, 0.0, 0.0), {},
         "robust − standard = +0.0 [+0.0, +0.0] pts: no clear difference"),
        ("sensitivity", r(float("nan"), float("nan"), float("nan")), {},
         "no estimate: sensitivity is undefined on these data, so robust and standard cannot be compared"),
    ],
)
def test_describe_difference(metric, result, kwargs, expected) -> None:
    assert describe_difference(metric, result, a_name="standard", b_name="robust", **kwargs) == expected


def test_describe_difference_covers_every_metric_of_a_real_result() -> None:
    y, p_a, p_b, g = better_model_case()
    res = paired_cluster_bootstrap(labels=y, probs_a=p_a, probs_b=p_b, groups=g, metrics=ALL, n_boot=200)
    for name in ALL:
        text = describe_difference(name, res[name], a_name="ERM", b_name="PGD-AT")
        assert text.startswith("PGD-AT − ERM = "), text
    text = describe_difference("accuracy", res["accuracy"], a_name="ERM", b_name="PGD-AT")
    assert ": PGD-AT keeps" in text and "more of 100 images correct" in text


def test_describe_difference_errors() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        describe_difference("f1", r(0.1, 0.0, 0.2), a_name="a", b_name="b")
    with pytest.raises(ValueError, match="'difference' and 'ci'"):
        describe_difference("accuracy", {"a": 0.5}, a_name="a", b_name="b")
    with pytest.raises(ValueError, match="per"):
        describe_difference("accuracy", r(0.1, 0.0, 0.2), a_name="a", b_name="b", per=0)


# --------------------------------------------------------------------------- K classes

FINITE_K = ("accuracy", "balanced_accuracy", "auroc", "nll", "brier", "entropy")
BINARY_ONLY = ("sensitivity", "specificity", "positive_rate")


def multiclass_case(k: int, seed: int = 0, n_patients: int = 45) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, (n, k) probs, patient ids): one label per patient, 1-4 images each, every class present."""
    rng = np.random.default_rng([k, seed])
    patient_label = rng.integers(0, k, size=n_patients)
    patient_label[:k] = np.arange(k)
    groups = np.repeat(np.arange(n_patients), rng.integers(1, 5, size=n_patients))
    y = patient_label[groups]
    logits = rng.normal(0.0, 1.0, size=(y.size, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p, groups


@pytest.mark.parametrize("k", [3, 4, 5])
def test_multiclass_cluster_bootstrap_contains_point_estimates(k: int) -> None:
    y, p, g = multiclass_case(k)
    ref = classification_metrics(labels=y, probs=p)
    ci = cluster_bootstrap_ci(labels=y, probs=p, groups=g, metrics=ALL, n_boot=400, seed=k)
    for name in FINITE_K:
        lo, hi = ci[name]
        assert lo < ref[name] < hi, (name, lo, ref[name], hi)
    for name in BINARY_ONLY:
        assert all(math.isnan(v) for v in ci[name]), name
    np.testing.assert_equal(cluster_bootstrap_ci(labels=y, probs=p, groups=g, metrics=ALL, n_boot=400, seed=k), ci)


def test_multiclass_cluster_interval_is_wider_than_image_interval_for_copied_images() -> None:
    y1, p1, _ = multiclass_case(3, seed=1, n_patients=60)
    y1, p1 = y1[:60], p1[:60]
    y, p, g = np.repeat(y1, 4), np.repeat(p1, 4, axis=0), np.repeat(np.arange(60), 4)
    lo_c, hi_c = cluster_bootstrap_ci(labels=y, probs=p, groups=g, metrics=("accuracy",), n_boot=1000)["accuracy"]
    lo_n, hi_n = bootstrap_ci(labels=y, probs=p, metrics=("accuracy",), n_boot=1000)["accuracy"]
    assert 1.5 < (hi_c - lo_c) / (hi_n - lo_n) < 2.6  # about sqrt(4)


def test_multiclass_one_image_per_patient_unstratified_reproduces_bootstrap_ci() -> None:
    y, p, _ = multiclass_case(4, seed=3)
    groups = [f"id-{i}" for i in range(y.size)]
    ours = cluster_bootstrap_ci(labels=y, probs=p, groups=groups, metrics=ALL, n_boot=300, seed=11,
                                stratify=False)
    ref = bootstrap_ci(labels=y, probs=p, metrics=ALL, n_boot=300, seed=11)
    for name in ALL:
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=1e-12, err_msg=name)


def test_stratified_draw_keeps_the_number_of_patients_of_every_class() -> None:
    patient_label = np.array([2, 0, 0, 1, 0, 2, 0, 0, 0, 1, 0, 0])
    rng = np.random.default_rng(3)
    drawn = S._draw_patients(rng, patient_label, 400, True)
    plain = S._draw_patients(rng, patient_label, 400, False)
    for c, size in zip(range(3), np.bincount(patient_label)):
        assert np.all(np.sum(patient_label[drawn] == c, axis=1) == size), c
    assert np.any(np.sum(patient_label[plain] == 1, axis=1) == 0)  # unstratified can lose a class


def test_binary_stratified_draw_is_the_positive_then_negative_draw() -> None:
    # The binary draw predates K classes; results files depend on it staying the same.
    patient_pos = np.random.default_rng(5).random(40) < 0.3
    expected_rng = np.random.default_rng(17)
    pos_ids, neg_ids = np.flatnonzero(patient_pos), np.flatnonzero(~patient_pos)
    expected = np.concatenate([
        pos_ids[expected_rng.integers(0, pos_ids.size, size=(50, pos_ids.size))],
        neg_ids[expected_rng.integers(0, neg_ids.size, size=(50, neg_ids.size))],
    ], axis=1)
    for labels in (patient_pos, patient_pos.astype(np.int64)):
        np.testing.assert_array_equal(S._draw_patients(np.random.default_rng(17), labels, 50, True), expected)


def test_patient_stratum_is_the_largest_label_among_their_images() -> None:
    labels = [2, 0, 1, 1, 0, 0, 2, 1]  # the largest label is not the last (or first) image's
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    probs = np.full((8, 3), 1 / 3)
    *_, patient_label = S._setup(labels, [("probs", probs)], groups)
    assert patient_label.tolist() == [2, 1, 0, 2]
    *_, binary = S._setup([1, 0, 0, 0], [("probs", [0.2, 0.7, 0.1, 0.4])], ["a", "a", "b", "b"])
    assert binary.tolist() == [1, 0]


def test_multiclass_paired_bootstrap() -> None:
    y, p_a, g = multiclass_case(3, seed=4)
    res = paired_cluster_bootstrap(labels=y, probs_a=p_a, probs_b=p_a, groups=g, metrics=ALL, n_boot=100)
    ref = classification_metrics(labels=y, probs=p_a)
    for name in FINITE_K:
        assert res[name]["a"] == pytest.approx(ref[name], rel=1e-12, abs=1e-15), name
        assert res[name]["difference"] == 0.0 and res[name]["ci"] == [0.0, 0.0], name
    assert all(math.isnan(res[name]["difference"]) for name in BINARY_ONLY)
    # B: the right class gets a large boost on a quarter of the patients, so B is better.
    fixed = np.isin(g, np.arange(0, 45, 4))
    p_b = np.where(fixed[:, None], 0.1 * p_a + 0.9 * np.eye(3)[y], p_a)
    better = paired_cluster_bootstrap(labels=y, probs_a=p_a, probs_b=p_b, groups=g,
                                      metrics=("accuracy", "auroc", "nll"), n_boot=500)
    for name in ("accuracy", "auroc"):
        assert better[name]["difference"] > 0.0 and better[name]["ci"][0] > 0.0, name
    assert better["nll"]["ci"][1] < 0.0


def test_multiclass_input_errors() -> None:
    y, p, g = multiclass_case(3)
    with pytest.raises(ValueError, match=r"probs_b has 4 classes \(columns\) but probs_a has 3"):
        paired_cluster_bootstrap(labels=y, probs_a=p, probs_b=np.full((y.size, 4), 0.25), groups=g)
    bad = y.copy()
    bad[0] = 3
    with pytest.raises(ValueError, match=r"labels must be integers in 0\.\.K-1 = 0\.\.2"):
        cluster_bootstrap_ci(labels=bad, probs=p, groups=g)
