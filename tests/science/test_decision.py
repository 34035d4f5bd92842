"""Tests for medrobust.decision: operating point, referral, risk–coverage, conformal sets.

Golden values come from scikit-learn (confusion matrix, ROC curve) and MAPIE (split
conformal sets); the rest are hand-computed cases, brute-force re-implementations and
Hypothesis properties.
"""

from __future__ import annotations

import doctest
import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_curve

from medrobust import decision
from medrobust.choices import ConformalMethod, ThresholdRule
from medrobust.decision import (
    choose_threshold,
    conformal_quantile,
    prediction_sets,
    predictive_values,
    rates_at_threshold,
    referral_level,
    risk_coverage,
    set_coverage,
    verdict_confidence,
    verdicts,
)


def test_doctests():
    result = doctest.testmod(decision, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def youden_j(labels, scores, threshold) -> float:
    r = rates_at_threshold(labels=labels, scores=scores, threshold=threshold)
    return r["sensitivity"] + r["specificity"] - 1.0


# --------------------------------------------------------------------------- threshold


def test_youden_known_optimal_cut():
    """Positives 0.35, 0.6, 0.7, 0.8, 0.9; negatives 0.1, 0.2, 0.3, 0.4. The cuts and their
    J: 0.325 -> 5/5 + 3/4 - 1 = 0.75; 0.375 -> 4/5 + 3/4 - 1 = 0.55; 0.5 -> 4/5 + 4/4 - 1
    = 0.8 (the unique maximum); higher cuts lose positives without clearing negatives."""
    labels = [0, 0, 0, 1, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9]
    t = choose_threshold(labels=labels, scores=scores, rule=ThresholdRule.YOUDEN)
    assert t == pytest.approx(0.5)
    assert t not in scores
    assert youden_j(labels, scores, t) == pytest.approx(0.8)
    r = rates_at_threshold(labels=labels, scores=scores, threshold=t)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (4, 0, 4, 1)


def test_youden_equal_j_goes_to_the_cut_nearest_half():
    """Negatives 0.05, 0.15, 0.22, 0.30, 0.62; positives 0.55, 0.70, 0.80, 0.85, 0.95.
    Between 0.30 and 0.55 (cut 0.425): 5/5 + 4/5 - 1 = 0.8; between 0.62 and 0.70 (cut
    0.66): 4/5 + 5/5 - 1 = 0.8 as well. 0.425 is nearer 0.5."""
    labels = [0] * 5 + [1] * 5
    scores = [0.05, 0.15, 0.22, 0.30, 0.62, 0.55, 0.70, 0.80, 0.85, 0.95]
    assert youden_j(labels, scores, 0.66) == pytest.approx(0.8)
    t = choose_threshold(labels=labels, scores=scores)
    assert t == pytest.approx(0.425)
    assert youden_j(labels, scores, t) == pytest.approx(0.8)


def test_youden_tie_prefers_cut_nearest_half():
    # Perfectly separable with a wide gap: every cut in (0.2, 0.9) has J = 1.
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.2, 0.9, 0.95]
    assert choose_threshold(labels=labels, scores=scores) == pytest.approx(0.55)
    # Two equally good cuts equally far from 0.5 (up to float rounding of the midpoints):
    # the lower one wins. Cut 0.3: 2/2 + 1/2 - 1 = 0.5; cut 0.7: 1/2 + 2/2 - 1 = 0.5;
    # cut 0.5: 1/2 + 1/2 - 1 = 0.
    labels = [0, 1, 0, 1]
    scores = [0.2, 0.4, 0.6, 0.8]
    assert youden_j(labels, scores, 0.3) == youden_j(labels, scores, 0.7) == 0.5
    assert choose_threshold(labels=labels, scores=scores) == pytest.approx(0.3)


def test_youden_inverted_scores_choose_a_trivial_cut():
    labels = [1, 1, 0, 0]
    scores = [0.1, 0.2, 0.8, 0.9]
    t = choose_threshold(labels=labels, scores=scores)
    assert youden_j(labels, scores, t) == 0.0
    t = choose_threshold(labels=[1, 0], scores=[0.0, 1.0])
    assert youden_j([1, 0], [0.0, 1.0], t) == 0.0


def max_j_sklearn(labels, scores) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.max(tpr - fpr))


binary_case = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
        st.lists(st.integers(0, 20).map(lambda i: i / 20.0), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(case=binary_case)
def test_youden_attains_the_roc_maximum(case):
    """J at the chosen cut equals max(tpr - fpr) over sklearn's full ROC curve."""
    labels, scores = case
    t = choose_threshold(labels=labels, scores=scores)
    assert youden_j(labels, scores, t) == pytest.approx(max_j_sklearn(labels, scores), abs=1e-12)
    assert 0.0 <= t <= np.nextafter(1.0, 2.0)


@settings(max_examples=150, deadline=None)
@given(case=binary_case, target=st.sampled_from([0.5, 0.7, 0.8, 0.9, 0.95, 1.0]))
def test_sensitivity_rule_is_the_largest_threshold_reaching_target(case, target):
    labels, scores = case
    t = choose_threshold(labels=labels, scores=scores, rule="sensitivity", target_sensitivity=target)
    assert rates_at_threshold(labels=labels, scores=scores, threshold=t)["sensitivity"] >= target - 1e-12
    above = np.nextafter(t, 2.0)
    assert rates_at_threshold(labels=labels, scores=scores, threshold=above)["sensitivity"] < target


def test_sensitivity_rule_hand_case():
    labels = [1] * 10 + [0] * 5
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3, 0.2] + [0.1, 0.4, 0.5, 0.55, 0.05]
    # 9 of 10 positives are needed for 0.9: the 9th largest positive score, 0.3
    assert choose_threshold(labels=labels, scores=scores, rule="sensitivity", target_sensitivity=0.9) == 0.3
    # 0.7 * 10 is 7.000000000000001 in floating point; 7 positives suffice
    assert choose_threshold(labels=labels, scores=scores, rule="sensitivity", target_sensitivity=0.7) == 0.65


# --------------------------------------------------------------------------- rates


@settings(max_examples=100, deadline=None)
@given(case=binary_case, t=st.floats(0.0, 1.0))
def test_rates_match_sklearn_confusion_matrix(case, t):
    labels, scores = case
    r = rates_at_threshold(labels=labels, scores=scores, threshold=t)
    pred = (np.asarray(scores) >= t).astype(int)
    tn, fp, fn, tp = sk_confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (tp, fp, tn, fn)
    assert r["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert r["specificity"] == pytest.approx(tn / (tn + fp))
    if tp + fp:
        assert r["ppv"] == pytest.approx(tp / (tp + fp))
    else:
        assert math.isnan(r["ppv"])


def test_rates_are_nan_not_errors_when_undefined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = rates_at_threshold(labels=[0, 0, 0], scores=[0.1, 0.2, 0.3], threshold=0.5, prevalence=0.2)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (0, 0, 3, 0)
    assert math.isnan(r["sensitivity"]) and math.isnan(r["ppv"])
    assert r["specificity"] == 1.0 and r["npv"] == 1.0
    assert math.isnan(r["ppv_at_prevalence"]) and math.isnan(r["npv_at_prevalence"])


def test_predictive_values_hand_values():
    # 1000 people, 100 diseased; sens 0.9 -> 90 TP, 10 FN; spec 0.8 -> 720 TN, 180 FP
    ppv, npv = predictive_values(sensitivity=0.9, specificity=0.8, prevalence=0.1)
    assert ppv == pytest.approx(90 / 270)
    assert npv == pytest.approx(720 / 730)
    # a perfect test, and the edges of prevalence
    assert predictive_values(sensitivity=1.0, specificity=1.0, prevalence=0.3) == (1.0, 1.0)
    ppv, npv = predictive_values(sensitivity=0.9, specificity=1.0, prevalence=0.0)
    assert math.isnan(ppv) and npv == 1.0
    ppv, npv = predictive_values(sensitivity=math.nan, specificity=0.9, prevalence=0.5)
    assert math.isnan(ppv) and math.isnan(npv)


@settings(max_examples=100, deadline=None)
@given(case=binary_case, t=st.floats(0.0, 1.0))
def test_bayes_at_the_sample_prevalence_gives_the_sample_values(case, t):
    labels, scores = case
    prev = float(np.mean(labels))
    r = rates_at_threshold(labels=labels, scores=scores, threshold=t, prevalence=prev)
    for key in ("ppv", "npv"):
        if math.isnan(r[key]):
            assert math.isnan(r[f"{key}_at_prevalence"])
        else:
            assert r[f"{key}_at_prevalence"] == pytest.approx(r[key], abs=1e-12)


# --------------------------------------------------------------------------- verdicts


def test_verdict_confidence_is_log_odds_from_the_operating_point():
    t = 0.2
    logit_t = math.log(t / (1 - t))
    p = 1.0 / (1.0 + np.exp(-(logit_t + np.array([-1.5, 0.0, 1.5]))))
    conf = verdict_confidence(probs=p, threshold=t)
    np.testing.assert_allclose(conf, [1.5, 0.0, 1.5], atol=1e-12)
    # equal distances, opposite verdicts
    assert verdicts(probs=p, threshold=t).tolist() == [0, 1, 1]
    # clipping keeps 0 and 1 finite
    assert np.all(np.isfinite(verdict_confidence(probs=[0.0, 1.0], threshold=0.5)))
    # argmax verdicts: the top-class probability, for two columns as for more
    assert verdict_confidence(probs=[[0.3, 0.7]]).tolist() == [0.7]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probs": [[0.2, 0.5, 0.3]], "threshold": 0.5}, "binary probabilities only"),
        ({"probs": [0.2, 0.5], "threshold": 0.0}, "strictly between 0 and 1"),
        ({"probs": [0.2, 0.5], "threshold": 1.0}, "strictly between 0 and 1"),
        ({"probs": [1.2, 0.5], "threshold": 0.3}, "\\[0, 1\\]"),
    ],
)
def test_verdict_functions_reject_bad_input(kwargs, match):
    for fn in (verdicts, verdict_confidence):
        with pytest.raises(ValueError, match=match) as info:
            fn(**kwargs)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- referral


@settings(max_examples=150, deadline=None)
@given(
    conf=st.lists(st.integers(0, 30).map(lambda i: i / 30.0), min_size=1, max_size=60),
    coverage=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0]),
)
def test_referral_keeps_at_least_coverage_and_as_little_more_as_possible(conf, coverage):
    c = np.asarray(conf)
    level = referral_level(confidence=c, coverage=coverage)
    kept = float(np.mean(c >= level))
    assert kept >= coverage - 1e-12
    higher = c[c > level]
    if higher.size:  # the next level up keeps too few
        assert float(np.mean(c >= higher.min())) < coverage - 1e-12


# --------------------------------------------------------------------------- risk–coverage


def brute_force_risk_coverage(conf, correct):
    """Average, over every order of the input, of the plain stable-sort curve (ties broken
    by input position): the expected curve under random tie-breaking."""
    conf = np.asarray(conf, dtype=float)
    err = 1.0 - np.asarray(correct, dtype=float)
    n = conf.size
    curves = []
    for perm in itertools.permutations(range(n)):
        perm = np.array(perm)
        order = perm[np.argsort(-conf[perm], kind="stable")]
        curves.append(np.cumsum(err[order]) / np.arange(1, n + 1))
    risk = np.mean(curves, axis=0)
    # optimal: the errors last
    best = np.cumsum(np.sort(err)) / np.arange(1, n + 1)
    return risk, float(risk.mean()), float(risk.mean() - best.mean())


def test_risk_coverage_hand_example():
    rc = risk_coverage(confidence=[0.9, 0.8, 0.7, 0.6], correct=[True, True, False, True])
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rc["risk"], [0.0, 0.0, 1 / 3, 1 / 4])
    assert rc["aurc"] == pytest.approx((1 / 3 + 1 / 4) / 4)
    # best order puts the error last: risks 0, 0, 0, 1/4
    assert rc["e_aurc"] == pytest.approx((1 / 3 + 1 / 4) / 4 - (1 / 4) / 4)
    # ties: two samples at 0.8, one right and one wrong, count as half an error each
    rc = risk_coverage(confidence=[0.9, 0.8, 0.8], correct=[1, 0, 1])
    np.testing.assert_allclose(rc["risk"], [0.0, 0.25, 1 / 3])
    # perfect ranking
    rc = risk_coverage(confidence=[0.9, 0.8, 0.1], correct=[1, 1, 0])
    assert rc["e_aurc"] == 0.0


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=6),
)
def test_risk_coverage_matches_brute_force(rows):
    conf = [c / 3 for c, _ in rows]
    correct = [k for _, k in rows]
    rc = risk_coverage(confidence=conf, correct=correct)
    risk, aurc, e_aurc = brute_force_risk_coverage(conf, correct)
    np.testing.assert_allclose(rc["risk"], risk, atol=1e-12)
    assert rc["aurc"] == pytest.approx(aurc, abs=1e-12)
    assert rc["e_aurc"] == pytest.approx(max(e_aurc, 0.0), abs=1e-12)
    assert 0.0 <= rc["e_aurc"] <= rc["aurc"] + 1e-15


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_risk_coverage_does_not_depend_on_input_order(rows, seed):
    conf = np.array([c / 5 for c, _ in rows])
    correct = np.array([k for _, k in rows])
    perm = np.random.default_rng(seed).permutation(conf.size)
    a = risk_coverage(confidence=conf, correct=correct)
    b = risk_coverage(confidence=conf[perm], correct=correct[perm])
    np.testing.assert_allclose(a["risk"], b["risk"], atol=1e-12)
    assert a["aurc"] == pytest.approx(b["aurc"], abs=1e-12)


# --------------------------------------------------------------------------- conformal: MAPIE


def dirichlet_case(n: int, k: int, seed: int, concentration: float = 1.0):
    """Probabilities from a Dirichlet and labels drawn from those very probabilities."""
    rng = np.random.default_rng([n, k, seed])
    p = rng.dirichlet(np.full(k, concentration), size=n)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


def mapie_split_conformal(p_cal, y_cal, p_test, alpha, method):
    """MAPIE 1.6.0's SplitConformalClassifier on precomputed probabilities.

    The "estimator" is a prefit stand-in whose ``predict_proba`` looks rows up by index.
    MAPIE's APS calibration score is always randomised (it subtracts ``U * p_y``, Romano et
    al.'s randomised score); the subclass returns the non-randomised one, computed by
    MAPIE's own ``get_true_label_cumsum_proba``. Sets use ``include_last_label=True`` (the
    default): the label whose cumulative mass first reaches qhat is included, as in ours.
    """
    from mapie.classification import SplitConformalClassifier
    from mapie.conformity_scores import APSConformityScore, LACConformityScore
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Lookup(ClassifierMixin, BaseEstimator):
        def __init__(self, probs=None):
            self.probs = probs

        def fit(self, X, y):
            return self

        def predict_proba(self, X):
            return self.probs[np.asarray(X)[:, 0].astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(axis=1)

    class NonRandomisedAPS(APSConformityScore):
        def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):
            scores, self.cutoff = self.get_true_label_cumsum_proba(y, y_pred, self.classes)
            return scores

    probs = np.concatenate([p_cal, p_test])
    est = Lookup(probs)
    est.classes_ = np.arange(probs.shape[1])
    est.n_features_in_ = 1
    score = LACConformityScore() if method == "lac" else NonRandomisedAPS()
    clf = SplitConformalClassifier(
        estimator=est, confidence_level=1.0 - alpha, conformity_score=score, prefit=True
    )
    idx = np.arange(probs.shape[0])[:, None]
    n = p_cal.shape[0]
    clf.conformalize(idx[:n], y_cal)
    _, sets = clf.predict_set(idx[n:], conformity_score_params={"include_last_label": True})
    return float(np.asarray(score.quantiles_).ravel()[0]), sets[:, :, 0]


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize(("k", "seed", "alpha"), [(3, 0, 0.1), (4, 1, 0.05), (5, 2, 0.2), (10, 3, 0.1)])
def test_matches_mapie_split_conformal(method, k, seed, alpha):
    pytest.importorskip("mapie")
    p_cal, y_cal = dirichlet_case(400, k, seed)
    p_test, _ = dirichlet_case(300, k, seed + 100)
    q_ref, sets_ref = mapie_split_conformal(p_cal, y_cal, p_test, alpha, method)
    q = conformal_quantile(probs=p_cal, labels=y_cal, alpha=alpha, method=method)
    assert q == pytest.approx(q_ref, rel=1e-12, abs=1e-12)
    sets = prediction_sets(probs=p_test, qhat=q, method=method)
    np.testing.assert_array_equal(sets, sets_ref)


# --------------------------------------------------------------------------- conformal: coverage


@pytest.mark.parametrize("method", list(ConformalMethod))
@pytest.mark.parametrize("k", [3, 5])
def test_coverage_on_exchangeable_data(method, k):
    """Calibrate on 500, test on 5000 from the same model: coverage at least 1 - alpha,
    and for LAC close to it. Non-randomised APS always adds the class whose cumulative
    mass crosses qhat, so it over-covers (here 0.99-1.0 with K = 3..5); only its lower
    bound is guaranteed."""
    alpha = 0.1
    p_cal, y_cal = dirichlet_case(500, k, 10, concentration=0.5)
    p_test, y_test = dirichlet_case(5000, k, 11, concentration=0.5)
    q = conformal_quantile(probs=p_cal, labels=y_cal, alpha=alpha, method=method)
    cov = set_coverage(sets=prediction_sets(probs=p_test, qhat=q, method=method), labels=y_test)
    assert cov["coverage"] >= 1 - alpha - 0.02
    if method is ConformalMethod.LAC:
        assert abs(cov["coverage"] - (1 - alpha)) <= 0.02
    assert 1.0 <= cov["mean_size"] + cov["empty_fraction"] and cov["mean_size"] < k


def draw_labels(p, rng):
    return np.minimum((rng.uniform(size=(p.shape[0], 1)) > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)


@pytest.mark.parametrize("method", list(ConformalMethod))
@pytest.mark.parametrize("shift", ["flattened", "flipped"])
def test_coverage_falls_under_shift(method, shift):
    """Test labels no longer follow the calibrated model's probabilities: the guarantee is
    gone. The same test probabilities with labels drawn from them are covered (control);
    with labels from a flattened truth (p ** 0.2, renormalised: the model is far more
    certain than the world) or with 40 % of them flipped, coverage falls well below
    1 - alpha (about 0.56 / 0.67 for LAC and 0.79 / 0.81 for APS here)."""
    alpha, k = 0.1, 6
    p_cal, y_cal = dirichlet_case(500, k, 20, concentration=0.3)
    p_test, y_same = dirichlet_case(5000, k, 21, concentration=0.3)
    rng = np.random.default_rng(22)
    if shift == "flattened":
        truth = p_test**0.2
        truth /= truth.sum(axis=1, keepdims=True)
        y_test = draw_labels(truth, rng)
    else:
        y_test = draw_labels(p_test, rng)
        flip = rng.uniform(size=y_test.size) < 0.4
        y_test[flip] = (y_test[flip] + rng.integers(1, k, size=flip.sum())) % k
    q = conformal_quantile(probs=p_cal, labels=y_cal, alpha=alpha, method=method)
    sets = prediction_sets(probs=p_test, qhat=q, method=method)
    assert set_coverage(sets=sets, labels=y_same)["coverage"] >= 1 - alpha - 0.02
    assert set_coverage(sets=sets, labels=y_test)["coverage"] < 1 - alpha - 0.05


def test_quantile_is_the_order_statistic_and_infinite_when_too_few():
    p, y = dirichlet_case(19, 3, 0)
    scores = np.sort(1.0 - p[np.arange(19), y])
    # ceil(20 * 0.9) = 18 -> the 18th smallest
    assert conformal_quantile(probs=p, labels=y, alpha=0.1) == scores[17]
    # ceil(20 * 0.95) = 19 = n -> the largest; alpha 0.04: ceil(19.2) = 20 > 19 -> inf
    assert conformal_quantile(probs=p, labels=y, alpha=0.05) == scores[18]
    assert conformal_quantile(probs=p, labels=y, alpha=0.04) == math.inf
    assert prediction_sets(probs=p, qhat=math.inf, method="aps").all()
    assert prediction_sets(probs=p, qhat=math.inf).all()


def test_aps_handles_ties_and_zero_probabilities():
    p = np.array([[0.4, 0.4, 0.2, 0.0]])
    # tied top classes enter together; score of either is 0.8
    assert prediction_sets(probs=p, qhat=0.3, method="aps").tolist() == [[True, True, False, False]]
    assert conformal_quantile(probs=np.repeat(p, 3, axis=0), labels=[0, 1, 0], alpha=0.5,
                              method="aps") == pytest.approx(0.8)
    # a zero-probability class enters only once qhat reaches the full mass
    assert prediction_sets(probs=p, qhat=0.99, method="aps").tolist() == [[True, True, True, False]]
    assert prediction_sets(probs=p, qhat=1.0, method="aps").tolist() == [[True, True, True, True]]


# --------------------------------------------------------------------------- conformal: properties


@st.composite
def calibration_data(draw, min_n=1, max_n=40):
    k = draw(st.integers(2, 6))
    n = draw(st.integers(min_n, max_n))
    raw = np.array(
        draw(st.lists(st.integers(0, 20), min_size=n * k, max_size=n * k)), dtype=float
    ).reshape(n, k) + 0.5
    p = raw / raw.sum(axis=1, keepdims=True)
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return p, y


@settings(max_examples=100, deadline=None)
@given(
    data=calibration_data(),
    alphas=st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.3, 0.5]), min_size=2, max_size=2, unique=True),
    method=st.sampled_from(list(ConformalMethod)),
)
def test_sets_are_nested_in_alpha(data, alphas, method):
    p, y = data
    small, large = sorted(alphas)
    q_small = conformal_quantile(probs=p, labels=y, alpha=small, method=method)
    q_large = conformal_quantile(probs=p, labels=y, alpha=large, method=method)
    assert q_small >= q_large
    wide = prediction_sets(probs=p, qhat=q_small, method=method)
    narrow = prediction_sets(probs=p, qhat=q_large, method=method)
    assert np.all(wide | ~narrow)  # narrow is a subset of wide


@settings(max_examples=100, deadline=None)
@given(data=calibration_data(), q=st.floats(0.0, 1.0))
def test_lac_set_contains_argmax_when_qhat_allows(data, q):
    p, _ = data
    sets = prediction_sets(probs=p, qhat=q)
    top = p.argmax(axis=1)
    allowed = q >= 1.0 - p.max(axis=1)
    assert np.all(sets[np.arange(p.shape[0]), top][allowed])
    # APS sets are never empty for qhat > 0: the top class has no mass above it
    if q > 0:
        assert np.all(prediction_sets(probs=p, qhat=q, method="aps").any(axis=1))


@settings(max_examples=100, deadline=None)
@given(
    data=calibration_data(min_n=2),
    alpha=st.sampled_from([0.05, 0.1, 0.2, 0.3]),
    method=st.sampled_from(list(ConformalMethod)),
)
def test_leave_one_out_coverage_guarantee_is_exact(data, alpha, method):
    """The finite-sample guarantee, without randomness: for ANY n + 1 cases, holding out
    each in turn as the test case and calibrating on the other n covers at least
    ceil((n + 1)(1 - alpha)) of them. Averaged over exchangeable draws this is
    P(y in C(x)) >= 1 - alpha."""
    p, y = data
    m = p.shape[0]  # n + 1
    sets = []
    for i in range(m):
        keep = np.arange(m) != i
        q = conformal_quantile(probs=p[keep], labels=y[keep], alpha=alpha, method=method)
        sets.append(prediction_sets(probs=p[i:i + 1], qhat=q, method=method)[0, y[i]])
    assert sum(sets) >= min(math.ceil(m * (1 - alpha)), m)
    assert np.mean(sets) >= 1 - alpha


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), method=st.sampled_from(list(ConformalMethod)))
def test_average_coverage_on_exchangeable_draws(seed, method):
    """Many small calibration sets (n = 20) from one model: mean test coverage >= 1 - alpha
    up to Monte Carlo error (about 0.005 here; 0.02 allowed)."""
    alpha, k, reps = 0.1, 4, 300
    rng = np.random.default_rng(seed)
    covered = []
    for _ in range(reps):
        p = rng.dirichlet(np.full(k, 0.7), size=20 + 30)
        y = draw_labels(p, rng)
        q = conformal_quantile(probs=p[:20], labels=y[:20], alpha=alpha, method=method)
        s = prediction_sets(probs=p[20:], qhat=q, method=method)
        covered.append(np.mean(s[np.arange(30), y[20:]]))
    assert np.mean(covered) >= 1 - alpha - 0.02


def test_set_coverage_counts():
    sets = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
    out = set_coverage(sets=sets, labels=[0, 2, 2, 1])
    assert out == {"coverage": 0.75, "mean_size": 1.75, "empty_fraction": 0.25}


# --------------------------------------------------------------------------- input checks


BAD_INPUTS = [
    (choose_threshold, {"labels": [0, 1], "scores": [0.2, 0.8], "rule": "f1"},
     "Unknown threshold rule 'f1'; choose one of youden, sensitivity"),
    (choose_threshold, {"labels": [0, 0], "scores": [0.2, 0.8]}, "both classes"),
    (choose_threshold, {"labels": [0, 0], "scores": [0.2, 0.8], "rule": "sensitivity"}, "no positives"),
    (choose_threshold, {"labels": [0, 1], "scores": [0.2, 1.8]}, "P\\(positive\\) in \\[0, 1\\]"),
    (choose_threshold, {"labels": [0, 2], "scores": [0.2, 0.8]}, "0..1"),
    (choose_threshold, {"labels": [0, 1, 1], "scores": [0.2, 0.8]}, "3 entries"),
    (choose_threshold, {"labels": [0, 1], "scores": [0.2, 0.8], "rule": "sensitivity",
                        "target_sensitivity": 0.0}, "target_sensitivity must be in \\(0, 1\\]"),
    (choose_threshold, {"labels": [0, 1], "scores": [np.nan, 0.8]}, "NaN or infinite"),
    (rates_at_threshold, {"labels": [0, 1], "scores": [0.2, 0.8], "threshold": np.nan}, "finite"),
    (rates_at_threshold, {"labels": [0, 1], "scores": [0.2, 0.8], "threshold": 0.5, "prevalence": 1.5},
     "prevalence must be in \\[0, 1\\]"),
    (predictive_values, {"sensitivity": 1.2, "specificity": 0.9, "prevalence": 0.1}, "sensitivity must be"),
    (predictive_values, {"sensitivity": 0.9, "specificity": 0.9, "prevalence": "x"}, "prevalence must be"),
    (referral_level, {"confidence": [0.5, 0.7], "coverage": 0.0}, "coverage must be in \\(0, 1\\]"),
    (referral_level, {"confidence": [0.5, 0.7], "coverage": 1.1}, "coverage must be in \\(0, 1\\]"),
    (referral_level, {"confidence": []}, "empty"),
    (referral_level, {"confidence": [[0.5]]}, "1-D"),
    (risk_coverage, {"confidence": [0.5, 0.7], "correct": [1]}, "one entry per confidence"),
    (risk_coverage, {"confidence": [0.5, 0.7], "correct": [1, 2]}, "booleans or 0/1"),
    (conformal_quantile, {"probs": [[0.5, 0.5]], "labels": [0], "alpha": 0.0}, "alpha must be strictly"),
    (conformal_quantile, {"probs": [[0.5, 0.5]], "labels": [0], "method": "raps"},
     "Unknown conformal method 'raps'; choose one of lac, aps"),
    (conformal_quantile, {"probs": [[0.5, 0.6]], "labels": [0]}, "sum to 1"),
    (conformal_quantile, {"probs": [[0.5, 0.5]], "labels": [3]}, "0..1"),
    (prediction_sets, {"probs": [[0.5, 0.5]], "qhat": np.nan}, "qhat is nan"),
    (prediction_sets, {"probs": [[0.5, 0.5]], "qhat": "high"}, "qhat must be a number"),
    (set_coverage, {"sets": [True, False], "labels": [0]}, "shape \\(n, K\\)"),
    (set_coverage, {"sets": [[2, 0]], "labels": [0]}, "booleans"),
    (set_coverage, {"sets": [[True, False]], "labels": [0, 1]}, "2 entries"),
]


@pytest.mark.parametrize(("fn", "kwargs", "match"), BAD_INPUTS,
                         ids=[f"{fn.__name__}-{i}" for i, (fn, _, _) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_one_line_value_errors(fn, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        fn(**kwargs)
    assert "\n" not in str(info.value)


def test_enums_are_accepted():
    p, y = dirichlet_case(30, 3, 0)
    assert conformal_quantile(probs=p, labels=y, method=ConformalMethod.APS) == conformal_quantile(
        probs=p, labels=y, method="aps"
    )
    assert choose_threshold(labels=[0, 1], scores=[0.2, 0.8], rule=ThresholdRule.SENSITIVITY) == 0.8
