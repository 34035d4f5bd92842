"""From probabilities to decisions: operating point, referral, risk–coverage and conformal sets.

A classifier's probabilities become clinical decisions only through choices made on
held-out (validation) data; this module holds those choices and their checks.

* Operating point (binary, class 1 = COVID-19 the positive class):
  :func:`choose_threshold` (Youden's J or a target sensitivity), :func:`rates_at_threshold`
  (confusion counts, sensitivity, specificity, PPV, NPV, optionally at another
  prevalence), :func:`predictive_values` (Bayes' rule).
* Verdicts and how far they are from the operating point: :func:`verdicts`,
  :func:`verdict_confidence`.
* Selective prediction: :func:`referral_level` (refer the least confident cases so that a
  chosen fraction is decided automatically) and :func:`risk_coverage` (error rate against
  the fraction kept, AURC and excess AURC of Geifman et al.).
* Split conformal prediction sets, with the definitions of Angelopoulos & Bates, "A Gentle
  Introduction to Conformal Prediction and Distribution-Free Uncertainty Quantification"
  (2021): :func:`conformal_quantile`, :func:`prediction_sets`, :func:`set_coverage`. The
  LAC score is ``1 - p_y`` (Sadinle et al. 2019); the APS score (Romano et al. 2020,
  non-randomised) is the probability mass of the classes ranked at or above the true one.

Scores, probabilities and labels follow :mod:`medrobust.metrics`: probabilities are
``(n, K)`` arrays whose rows sum to 1, or ``(n,)`` P(class 1) for a binary task; labels are
class indices ``0..K-1``. Text choices are the enums :class:`~medrobust.choices.ThresholdRule`
and :class:`~medrobust.choices.ConformalMethod`, checked where they enter.

Everything here is plain NumPy and deterministic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medrobust.choices import ConformalMethod, ThresholdRule, parse_choice
from medrobust.metrics import _as_class_indices, _as_probs2d

__all__ = [
    "choose_threshold",
    "conformal_quantile",
    "prediction_sets",
    "predictive_values",
    "rates_at_threshold",
    "referral_level",
    "risk_coverage",
    "set_coverage",
    "verdict_confidence",
    "verdicts",
]

# Probabilities are clipped to [_P_CLIP, 1 - _P_CLIP] before taking log-odds.
_P_CLIP = 1e-12
# ceil(fraction * n) with fraction * n a whole number up to float rounding (0.7 * 10 is
# 7.000000000000001): this much is taken off first, so ceil gives 7, not 8.
_CEIL_SLACK = 1e-9


# --------------------------------------------------------------------------- validation


def _as_1d(values: ArrayLike, *, name: str) -> NDArray[np.float64]:
    """``values`` as a non-empty, finite, 1-D float64 array."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {exc}") from exc
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; at least one sample is needed")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _binary_inputs(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validated 0/1 labels and scores in [0, 1] (P(class 1)) of equal length."""
    s = _as_1d(scores, name="scores")
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError(
            f"scores must be P(positive) in [0, 1], got values in [{s.min():.6g}, {s.max():.6g}]"
        )
    y = _as_class_indices(labels, name="labels", k=2, n=s.size, n_source=f"scores has {s.size} entries")
    return y, s


def _as_real(value: float, *, name: str, what: str) -> float:
    """``value`` as a float (bool refused); ``what`` ends the message, e.g. 'in (0, 1]'."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number {what}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number {what}, got {value!r}") from exc


def _unit_open(value: float, *, name: str) -> float:
    v = _as_real(value, name=name, what="strictly between 0 and 1")
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return v


def _rank_ceil(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` without float noise, clipped to ``1..n``."""
    return min(max(math.ceil(fraction * n - _CEIL_SLACK), 1), n)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


# --------------------------------------------------------------------------- operating point


def choose_threshold(
    *,
    labels: ArrayLike,
    scores: ArrayLike,
    rule: str | ThresholdRule = ThresholdRule.YOUDEN,
    target_sensitivity: float = 0.9,
) -> float:
    """The operating point of a binary classifier, chosen on validation data.

    The verdict is positive (class 1, COVID-19) when ``score >= threshold``.

    Parameters
    ----------
    labels : array_like, shape (n,)
        0 (non-COVID) or 1 (COVID-19).
    scores : array_like, shape (n,)
        P(positive) of each sample, in [0, 1].
    rule : {"youden", "sensitivity"} or ThresholdRule, default "youden"
        ``"youden"``: the cut maximising Youden's J = sensitivity + specificity - 1 over
        every distinct way of splitting the sorted scores. Each cut is the midpoint
        between two adjacent distinct values of the scores together with 0 and 1, so it
        never sits on a data point; the trivial cuts (everyone positive, everyone
        negative; J = 0) take part too, 0.0 standing for "everyone positive" when a score
        is 0 and the float just above 1.0 for "everyone negative" when a score is 1.
        Among cuts with the same J (compared exactly, in integer counts) the one nearest
        0.5 wins (distances within 1e-12 count as equal), then the lower one.
        ``"sensitivity"``: the largest threshold whose sensitivity is at least
        ``target_sensitivity``, i.e. the ``ceil(target * P)``-th largest score among the
        ``P`` positives (so it is a positive's score). Ties at that score can make the
        sensitivity higher than the target.
    target_sensitivity : float, default 0.9
        In (0, 1]; used by ``rule="sensitivity"`` only.

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    ValueError
        On an unknown rule, labels not 0/1, scores outside [0, 1] or of another length,
        a class missing (Youden's J needs both; the sensitivity rule needs positives), or
        ``target_sensitivity`` outside (0, 1].

    Examples
    --------
    Positives score 0.35, 0.6, 0.8, 0.9 and negatives 0.1, 0.2, 0.4, 0.7. Cutting between
    0.2 and 0.35 keeps every positive and clears half the negatives (J = 0.5); cutting
    between 0.4 and 0.6 misses one positive and clears three negatives (J = 0.5 as
    well), and is nearer 0.5:

    >>> labels = [0, 0, 1, 0, 1, 0, 1, 1]
    >>> scores = [0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9]
    >>> choose_threshold(labels=labels, scores=scores)
    0.5
    >>> choose_threshold(labels=labels, scores=scores, rule="sensitivity", target_sensitivity=1.0)
    0.35
    >>> choose_threshold(labels=labels, scores=scores, rule="sensitivity", target_sensitivity=0.7)
    0.6
    """
    rule = parse_choice(ThresholdRule, rule)
    y, s = _binary_inputs(labels, scores)
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    n_pos, n_neg = pos.size, neg.size
    if rule is ThresholdRule.SENSITIVITY:
        target = _as_real(target_sensitivity, name="target_sensitivity", what="in (0, 1]")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
        if n_pos == 0:
            raise ValueError("labels has no positives (1); the sensitivity rule needs at least one")
        return float(pos[::-1][_rank_ceil(target, n_pos) - 1])

    if n_pos == 0 or n_neg == 0:
        raise ValueError("Youden's J needs both classes in labels; found only one")
    vals = np.unique(np.concatenate([[0.0], s, [1.0]]))
    cuts = [(vals[:-1] + vals[1:]) / 2.0]
    if s.min() == 0.0:
        cuts.append(np.array([0.0]))
    if s.max() == 1.0:
        cuts.append(np.array([np.nextafter(1.0, 2.0)]))
    cut = np.unique(np.concatenate(cuts))
    tp = n_pos - np.searchsorted(pos, cut, side="left")  # positives with score >= cut
    tn = np.searchsorted(neg, cut, side="left")  # negatives with score < cut
    j = tp.astype(np.int64) * n_neg + tn.astype(np.int64) * n_pos  # J * P * N + P * N, exact
    best = np.flatnonzero(j == j.max())
    dist = np.abs(cut[best] - 0.5)
    # Midpoints carry rounding (0.5 - (0.2 + 0.4) / 2 != (0.6 + 0.8) / 2 - 0.5 in floats):
    # distances within 1e-12 count as equal, and the lower cut wins.
    nearest = best[dist <= dist.min() + 1e-12]
    return float(cut[nearest[0]])  # cut is sorted, so the first is the lower one


def predictive_values(
    *, sensitivity: float, specificity: float, prevalence: float
) -> tuple[float, float]:
    """PPV and NPV at a prevalence, by Bayes' rule.

    ``PPV = sens * pi / (sens * pi + (1 - spec) * (1 - pi))`` and
    ``NPV = spec * (1 - pi) / (spec * (1 - pi) + (1 - sens) * pi)``. A test's sensitivity
    and specificity carry over between populations; its predictive values do not.

    Parameters
    ----------
    sensitivity, specificity : float
        In [0, 1], or nan (undefined), which makes the results nan.
    prevalence : float
        ``pi``, the fraction of positives in the population the test is used on, in [0, 1].

    Returns
    -------
    tuple of float
        ``(ppv, npv)``; nan where the denominator is 0 (no positive, resp. negative, verdicts
        are expected).

    Raises
    ------
    ValueError
        If a value is not a number, lies outside [0, 1], or ``prevalence`` is nan.

    Examples
    --------
    A test with sensitivity 0.9 and specificity 0.8 in a clinic where 1 in 10 has the disease:

    >>> ppv, npv = predictive_values(sensitivity=0.9, specificity=0.8, prevalence=0.1)
    >>> round(ppv, 4), round(npv, 4)
    (0.3333, 0.9863)
    """
    sens = _as_real(sensitivity, name="sensitivity", what="in [0, 1] or nan")
    spec = _as_real(specificity, name="specificity", what="in [0, 1] or nan")
    pi = _as_real(prevalence, name="prevalence", what="in [0, 1]")
    for name, v in (("sensitivity", sens), ("specificity", spec)):
        if not math.isnan(v) and not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] or nan, got {v!r}")
    if not 0.0 <= pi <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence!r}")
    if math.isnan(sens) or math.isnan(spec):
        return math.nan, math.nan
    ppv = _ratio(sens * pi, sens * pi + (1.0 - spec) * (1.0 - pi))
    npv = _ratio(spec * (1.0 - pi), spec * (1.0 - pi) + (1.0 - sens) * pi)
    return ppv, npv


def rates_at_threshold(
    *,
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    prevalence: float | None = None,
) -> dict[str, float]:
    """Confusion counts and rates of a binary classifier at one operating point.

    Parameters
    ----------
    labels : array_like, shape (n,)
        0 (non-COVID) or 1 (COVID-19).
    scores : array_like, shape (n,)
        P(positive), in [0, 1]; the verdict is positive when ``score >= threshold``.
    threshold : float
        The operating point (e.g. from :func:`choose_threshold`), a finite number.
    prevalence : float, optional
        When given, in [0, 1]: the PPV and NPV the same sensitivity and specificity would
        have in a population with this fraction of positives (:func:`predictive_values`).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``tn``, ``fn`` (int counts); ``sensitivity`` = tp / (tp + fn),
        ``specificity`` = tn / (tn + fp), ``ppv`` = tp / (tp + fp), ``npv`` = tn / (tn + fn)
        (floats at the sample's own prevalence). With ``prevalence``: also
        ``prevalence``, ``ppv_at_prevalence`` and ``npv_at_prevalence``. A rate whose
        denominator is 0 (no positives, no positive verdicts, ...) is nan.

    Raises
    ------
    ValueError
        On labels not 0/1, scores outside [0, 1] or of another length, a non-finite
        threshold, or a prevalence outside [0, 1].

    Examples
    --------
    >>> r = rates_at_threshold(labels=[0, 0, 1, 0, 1, 0, 1, 1],
    ...                        scores=[0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9],
    ...                        threshold=0.5, prevalence=0.1)
    >>> {k: round(v, 4) for k, v in r.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'tp': 3, 'fp': 1, 'tn': 3, 'fn': 1, 'sensitivity': 0.75, 'specificity': 0.75,
     'ppv': 0.75, 'npv': 0.75, 'prevalence': 0.1, 'ppv_at_prevalence': 0.25,
     'npv_at_prevalence': 0.9643}
    """
    y, s = _binary_inputs(labels, scores)
    t = _as_real(threshold, name="threshold", what="such as 0.5")
    if not math.isfinite(t):  # also catches nan
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    verdict = s >= t
    positive = y == 1
    tp = int(np.sum(verdict & positive))
    fp = int(np.sum(verdict & ~positive))
    tn = int(np.sum(~verdict & ~positive))
    fn = int(np.sum(~verdict & positive))
    out: dict[str, float] = {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }
    if prevalence is not None:
        ppv, npv = predictive_values(
            sensitivity=out["sensitivity"], specificity=out["specificity"], prevalence=prevalence
        )
        out.update(prevalence=float(prevalence), ppv_at_prevalence=ppv, npv_at_prevalence=npv)
    return out


# --------------------------------------------------------------------------- verdicts


def _binary_threshold(p2: NDArray[np.float64], threshold: float) -> float:
    if p2.shape[1] != 2:
        raise ValueError(
            f"a threshold applies to binary probabilities only; probs has K = {p2.shape[1]} classes "
            "(pass threshold=None for the argmax)"
        )
    return _unit_open(threshold, name="threshold")


def verdicts(*, probs: ArrayLike, threshold: float | None = None) -> NDArray[np.int64]:
    """The class each sample is assigned to.

    Parameters
    ----------
    probs : array_like, shape (n, K) or (n,)
        Class probabilities, or P(class 1) of a binary task when 1-D.
    threshold : float, optional
        Binary only, in (0, 1): class 1 when ``P(class 1) >= threshold``. None: the argmax
        (an exact tie goes to the lower class index).

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    Raises
    ------
    ValueError
        On invalid probabilities, or a threshold with ``K > 2`` or outside (0, 1).

    Examples
    --------
    >>> verdicts(probs=[0.2, 0.35, 0.9], threshold=0.3).tolist()
    [0, 1, 1]
    >>> verdicts(probs=[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]).tolist()
    [1, 0]
    """
    p2 = _as_probs2d(probs)
    if threshold is None:
        return np.argmax(p2, axis=1).astype(np.int64)
    t = _binary_threshold(p2, threshold)
    return (p2[:, 1] >= t).astype(np.int64)


def verdict_confidence(*, probs: ArrayLike, threshold: float | None = None) -> NDArray[np.float64]:
    """How far each verdict is from being the other one.

    With a binary operating point ``t`` it is the distance of P(class 1) from ``t`` in
    log-odds, ``|logit(p1) - logit(t)|`` (``p1`` clipped to [1e-12, 1 - 1e-12]). The usual
    ``max(p, 1 - p)`` measures the distance from 0.5, which is only the verdict's
    confidence when ``t = 0.5``: at ``t = 0.2`` a case with ``p1 = 0.25`` is called
    positive yet has ``max(p, 1 - p) = 0.75``, as confident-looking as ``p1 = 0.75``,
    while it sits right at the operating point. Log-odds make equal steps on either side
    of ``t`` comparable (a likelihood-ratio scale) and give 0 exactly at the threshold.

    Without a threshold (argmax verdicts, any ``K``) it is the top-class probability.
    The two are on different scales: compare values of one kind only.

    Parameters
    ----------
    probs : array_like, shape (n, K) or (n,)
        Class probabilities, or P(class 1) of a binary task when 1-D.
    threshold : float, optional
        Binary only, in (0, 1). None: top-class probability.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        Log-odds distances (>= 0) with a threshold, probabilities in [1/K, 1] without.

    Raises
    ------
    ValueError
        On invalid probabilities, or a threshold with ``K > 2`` or outside (0, 1).

    Examples
    --------
    >>> verdict_confidence(probs=[0.25, 0.2, 0.5], threshold=0.2).round(4).tolist()
    [0.2877, 0.0, 1.3863]
    >>> verdict_confidence(probs=[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]).tolist()
    [0.5, 0.6]
    """
    p2 = _as_probs2d(probs)
    if threshold is None:
        return p2.max(axis=1)
    t = _binary_threshold(p2, threshold)
    p1 = np.clip(p2[:, 1], _P_CLIP, 1.0 - _P_CLIP)
    logit_p = np.log(p1) - np.log1p(-p1)
    return np.abs(logit_p - (math.log(t) - math.log1p(-t)))


# --------------------------------------------------------------------------- selective prediction


def referral_level(*, confidence: ArrayLike, coverage: float = 0.8) -> float:
    """The confidence below which a case is referred to a clinician.

    Chosen on validation confidences so that the fraction decided automatically (those
    with ``confidence >= level``) is as close as possible to, but not below, ``coverage``:
    the level is the ``ceil(coverage * n)``-th largest confidence. Tied confidences at the
    level are all kept, so the fraction kept can exceed ``coverage``.

    Parameters
    ----------
    confidence : array_like, shape (n,)
        Validation confidences (e.g. :func:`verdict_confidence`), finite.
    coverage : float, default 0.8
        Fraction to decide automatically, in (0, 1].

    Returns
    -------
    float
        The level; cases with ``confidence < level`` are referred.

    Raises
    ------
    ValueError
        If ``confidence`` is empty, not 1-D or not finite, or ``coverage`` is not in (0, 1].

    Examples
    --------
    >>> conf = [0.9, 0.55, 0.8, 0.6, 0.95, 0.7, 0.65, 0.99, 0.75, 0.85]
    >>> level = referral_level(confidence=conf, coverage=0.7)
    >>> level, sum(c >= level for c in conf) / len(conf)
    (0.7, 0.7)
    """
    c = _as_1d(confidence, name="confidence")
    cov = _as_real(coverage, name="coverage", what="in (0, 1]")
    if not 0.0 < cov <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    return float(np.sort(c)[::-1][_rank_ceil(cov, c.size) - 1])


def risk_coverage(*, confidence: ArrayLike, correct: ArrayLike) -> dict[str, Any]:
    """Risk–coverage curve, AURC and excess AURC of a confidence score.

    Samples are kept most confident first; after keeping ``k`` of ``n`` the coverage is
    ``k / n`` and the risk the error rate among the kept. AURC is the mean risk over the
    ``n`` coverage points and excess AURC (E-AURC) is AURC minus the AURC of the best
    possible ranking of the same predictions (every error last), as in Geifman, Uziel &
    El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers" (ICLR
    2019), in its exact finite-sample form.

    Tied confidences are not ordered by position in the input: within a group of tied
    samples the errors count as spread evenly (the expected count when ties are broken
    at random), so the curve and the AURC do not depend on the order of the input, and
    equal the plain definition when there are no ties.

    Parameters
    ----------
    confidence : array_like, shape (n,)
        Higher means more confident; finite.
    correct : array_like of bool or 0/1, shape (n,)
        Whether each prediction is right.

    Returns
    -------
    dict
        ``coverage`` and ``risk`` (numpy float64 arrays, shape (n,), coverage ``1/n ..
        1``), ``aurc`` and ``e_aurc`` (floats; 0 <= e_aurc <= aurc).

    Raises
    ------
    ValueError
        If the inputs are empty, not 1-D, of different lengths, ``confidence`` is not
        finite or ``correct`` is not boolean / 0-1.

    Examples
    --------
    Four predictions, the least confident of the right ones ranked below the one error:

    >>> rc = risk_coverage(confidence=[0.9, 0.8, 0.7, 0.6], correct=[1, 1, 0, 1])
    >>> rc["coverage"].tolist(), rc["risk"].round(4).tolist()
    ([0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.3333, 0.25])
    >>> round(rc["aurc"], 4), round(rc["e_aurc"], 4)
    (0.1458, 0.0833)
    """
    c = _as_1d(confidence, name="confidence")
    raw = np.asarray(correct)
    if raw.ndim != 1 or raw.shape[0] != c.size:
        raise ValueError(
            f"correct must be 1-D with one entry per confidence ({c.size}), got shape {raw.shape}"
        )
    if raw.dtype.kind not in "biuf" or not np.all((raw == 0) | (raw == 1)):
        raise ValueError("correct must be booleans or 0/1 (1 = right prediction)")
    err = 1.0 - raw.astype(np.float64)
    n = c.size
    order = np.argsort(-c, kind="stable")
    cs, es = c[order], err[order]
    starts = np.flatnonzero(np.concatenate([[True], cs[1:] != cs[:-1]]))
    sizes = np.diff(np.append(starts, n))
    group_err = np.add.reduceat(es, starts)
    before = np.cumsum(group_err) - group_err
    group = np.repeat(np.arange(starts.size), sizes)
    k = np.arange(1, n + 1, dtype=np.float64)
    within = k - starts[group]  # how many of the sample's tie group are kept
    errors_kept = before[group] + within * group_err[group] / sizes[group]
    risk = errors_kept / k
    n_err = float(err.sum())
    best = np.maximum(0.0, k - (n - n_err)) / k
    aurc = float(np.mean(risk))
    return {
        "coverage": k / n,
        "risk": risk,
        "aurc": aurc,
        "e_aurc": max(aurc - float(np.mean(best)), 0.0),
    }


# --------------------------------------------------------------------------- conformal sets


def _class_scores(p2: NDArray[np.float64], method: ConformalMethod) -> tuple[
    NDArray[np.float64], NDArray[np.float64] | None
]:
    """The nonconformity score each class would have as the label, shape ``(n, K)``.

    For APS also the mass of the classes ranked strictly above each class. Calibration
    scores are read off the same matrix at the labels, so a test label is in its set
    whenever its score is at most ``qhat``, bit for bit.
    """
    if method is ConformalMethod.LAC:
        return 1.0 - p2, None
    k = p2.shape[1]
    at_or_above = np.empty_like(p2)
    above = np.empty_like(p2)
    for c in range(k):
        pc = p2[:, c:c + 1]
        at_or_above[:, c] = np.sum(np.where(p2 >= pc, p2, 0.0), axis=1)
        above[:, c] = np.sum(np.where(p2 > pc, p2, 0.0), axis=1)
    return at_or_above, above


def conformal_quantile(
    *,
    probs: ArrayLike,
    labels: ArrayLike,
    alpha: float = 0.1,
    method: str | ConformalMethod = ConformalMethod.LAC,
) -> float:
    """The split-conformal threshold ``qhat`` from a calibration set.

    ``qhat`` is the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` calibration
    nonconformity scores (the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile, lower
    interpolation); when ``(n + 1)(1 - alpha) > n`` no finite threshold is valid and it is
    +inf (every set is every class). Sets built with it by :func:`prediction_sets`
    contain the true class with probability at least ``1 - alpha`` whenever the
    calibration and test cases are exchangeable (e.g. drawn from one population, not
    under a shift).

    Scores (``p_y`` the probability of the true class):

    * ``"lac"``: ``1 - p_y``.
    * ``"aps"``: the total probability of the classes ranked at or above the true class
      in descending order of probability, the true class's own mass included. Classes
      tied with the true class count as ranked with it.

    Parameters
    ----------
    probs : array_like, shape (n, K) or (n,)
        Calibration probabilities (rows summing to 1), or P(class 1) when 1-D.
    labels : array_like, shape (n,)
        True class indices in ``0..K-1``.
    alpha : float, default 0.1
        Miscoverage level, strictly between 0 and 1.
    method : {"lac", "aps"} or ConformalMethod, default "lac"

    Returns
    -------
    float
        ``qhat`` (possibly +inf).

    Raises
    ------
    ValueError
        On an unknown method, invalid probabilities or labels, or ``alpha`` outside (0, 1).

    Examples
    --------
    Nine calibration cases, alpha 0.2: ``ceil(10 * 0.8) = 8``, the 8th smallest score.

    >>> p1 = [0.9, 0.8, 0.7, 0.6, 0.4, 0.95, 0.85, 0.75, 0.3]
    >>> labels = [1, 1, 1, 1, 1, 1, 1, 1, 1]
    >>> round(conformal_quantile(probs=p1, labels=labels, alpha=0.2), 4)
    0.6
    >>> conformal_quantile(probs=p1, labels=labels, alpha=0.05)
    inf
    """
    m = parse_choice(ConformalMethod, method)
    p2 = _as_probs2d(probs)
    n = p2.shape[0]
    y = _as_class_indices(labels, name="labels", k=p2.shape[1], n=n, n_source=f"probs has {n} rows")
    a = _unit_open(alpha, name="alpha")
    scores, _ = _class_scores(p2, m)
    cal = scores[np.arange(n), y]
    rank = math.ceil((n + 1) * (1.0 - a))
    if rank > n:
        return math.inf
    return float(np.sort(cal)[rank - 1])


def prediction_sets(
    *, probs: ArrayLike, qhat: float, method: str | ConformalMethod = ConformalMethod.LAC
) -> NDArray[np.bool_]:
    """Split-conformal prediction sets for test cases.

    * ``"lac"``: ``{k : 1 - p_k <= qhat}``.
    * ``"aps"`` (non-randomised): the smallest prefix of the classes in descending order
      of probability whose cumulative mass reaches ``qhat``, i.e. class ``k`` is in the
      set when the mass of the classes ranked strictly above it is ``< qhat``; tied
      classes enter together. A class whose APS score is ``<= qhat`` is always in the
      set, so a zero-probability class enters once ``qhat`` reaches the full mass.

    Use the same ``method`` as for :func:`conformal_quantile`. Sets may be empty (LAC
    with a small ``qhat``). Both contain the true class with probability at least
    ``1 - alpha`` on exchangeable data. LAC's coverage is close to ``1 - alpha`` (the
    smallest sets on average); non-randomised APS always includes the class whose
    cumulative mass crosses ``qhat`` and so over-covers, often by several points, in
    exchange for sets whose size follows each case's uncertainty.

    Parameters
    ----------
    probs : array_like, shape (n, K) or (n,)
        Test probabilities, or P(class 1) when 1-D.
    qhat : float
        From :func:`conformal_quantile`; +inf gives every class.
    method : {"lac", "aps"} or ConformalMethod, default "lac"

    Returns
    -------
    numpy.ndarray of bool, shape (n, K)
        ``sets[i, k]`` is True when class ``k`` is in case ``i``'s set.

    Raises
    ------
    ValueError
        On an unknown method, invalid probabilities, or a ``qhat`` that is nan or not a
        number.

    Examples
    --------
    LAC keeps the classes with ``p_k >= 1 - qhat``; APS keeps top classes until their
    mass reaches ``qhat``, so the uncertain second case gets a larger set:

    >>> probs = [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]
    >>> prediction_sets(probs=probs, qhat=0.7).tolist()
    [[True, False, False], [True, True, False]]
    >>> prediction_sets(probs=probs, qhat=0.85, method="aps").tolist()
    [[True, True, False], [True, True, True]]
    """
    m = parse_choice(ConformalMethod, method)
    p2 = _as_probs2d(probs)
    q = _as_real(qhat, name="qhat", what="(from conformal_quantile)")
    if math.isnan(q):
        raise ValueError("qhat is nan; pass the value conformal_quantile returned")
    scores, above = _class_scores(p2, m)
    sets = scores <= q
    if above is not None:
        sets |= above < q
    return sets


def set_coverage(*, sets: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """How often prediction sets hold the true class, and how large they are.

    Parameters
    ----------
    sets : array_like of bool, shape (n, K)
        From :func:`prediction_sets` (0/1 accepted).
    labels : array_like, shape (n,)
        True class indices in ``0..K-1``.

    Returns
    -------
    dict of str to float
        ``coverage`` (fraction of sets containing the label), ``mean_size`` (mean number
        of classes per set) and ``empty_fraction`` (fraction of empty sets).

    Raises
    ------
    ValueError
        If ``sets`` is not a non-empty ``(n, K)`` boolean array or ``labels`` does not
        hold ``n`` class indices in ``0..K-1``.

    Examples
    --------
    >>> set_coverage(sets=[[True, True, False], [False, False, False], [False, False, True]],
    ...              labels=[1, 0, 0])
    {'coverage': 0.3333333333333333, 'mean_size': 1.0, 'empty_fraction': 0.3333333333333333}
    """
    s = np.asarray(sets)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"sets must have shape (n, K) with n >= 1 and K >= 2, got shape {s.shape}")
    if s.dtype.kind not in "biuf" or not np.all((s == 0) | (s == 1)):
        raise ValueError("sets must be booleans (or 0/1), one column per class")
    s = s.astype(bool)
    n = s.shape[0]
    y = _as_class_indices(labels, name="labels", k=s.shape[1], n=n, n_source=f"sets has {n} rows")
    size = s.sum(axis=1)
    return {
        "coverage": float(np.mean(s[np.arange(n), y])),
        "mean_size": float(np.mean(size)),
        "empty_fraction": float(np.mean(size == 0)),
    }
