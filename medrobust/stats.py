"""Patient-level uncertainty for classification metrics (binary COVID-19 task and K classes).

Chest X-ray data sets hold several images per patient, and images of one patient are
not independent: a model that misreads one of a patient's films tends to misread the
others. Resampling single images (:func:`medrobust.metrics.bootstrap_ci`) then treats
correlated images as fresh evidence and gives intervals that are too narrow. The
functions here resample *patients* (the cluster bootstrap) and take all of a drawn
patient's images along.

* :func:`cluster_bootstrap_ci` -- percentile intervals of one model's metrics.
* :func:`paired_cluster_bootstrap` -- the difference B - A between two models scored on
  the same images, with a paired interval and a bootstrap p-value.
* :func:`cluster_bootstrap_statistic` -- percentile intervals of any statistic of the
  images (operating-point rates, calibration errors, paired differences of them).
* :func:`fold_spread` -- mean, sd, min and max of per-fold values.
* :func:`describe_difference` -- a paired result in plain words.

Every metric has the definition of :func:`medrobust.metrics.classification_metrics`
for any number of classes ``K >= 2`` (``sensitivity``, ``specificity`` and
``positive_rate`` are binary notions and nan for ``K > 2``); a resample is the original
images weighted by how often their patient was drawn, and is evaluated by the same code
as :func:`medrobust.metrics.bootstrap_ci`'s resamples. Stratified resampling keeps the
number of patients of each class fixed, a patient's class being the largest label
among their images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medrobust.metrics import (
    _BLOCK_CELLS,
    _check_bootstrap_options as _check_options,
    _check_inputs,
    _multiplicities,
    _percentile_interval,
    _resampled_metrics,
    _row_blocks,
)

__all__ = [
    "DEFAULT_METRICS",
    "cluster_bootstrap_ci",
    "cluster_bootstrap_statistic",
    "describe_difference",
    "fold_spread",
    "paired_cluster_bootstrap",
]

DEFAULT_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
"""Metrics reported when none are named; the same default as
:func:`medrobust.metrics.bootstrap_ci`."""


# --------------------------------------------------------------------------- validation


def _factorize_groups(groups: ArrayLike | Sequence[Hashable], n: int) -> NDArray[np.intp]:
    """Patient index per image, numbered in order of first appearance.

    First-appearance numbering (rather than sorted keys) means that with one image per
    patient, patient ``j`` is image ``j``, so an unstratified draw picks exactly the
    images :func:`medrobust.metrics.bootstrap_ci` picks with the same seed.
    """
    if isinstance(groups, (str, bytes)):
        raise ValueError("groups must be a sequence of patient keys, one per image, not a string")
    if isinstance(groups, np.ndarray):
        if groups.ndim != 1:
            raise ValueError(f"groups must be 1-D (one patient key per image), got shape {groups.shape}")
        keys = groups.tolist()
    else:
        try:
            keys = list(groups)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(
                f"groups must be a sequence of patient keys, got {type(groups).__name__}"
            ) from exc
    if len(keys) != n:
        raise ValueError(f"groups has {len(keys)} entries but probs has {n} rows")
    codes: dict[Hashable, int] = {}
    out = np.empty(n, dtype=np.intp)
    for i, key in enumerate(keys):
        if key is None or (isinstance(key, float) and math.isnan(key)):
            raise ValueError(f"groups[{i}] is {key!r}; every image needs a patient key")
        try:
            out[i] = codes.setdefault(key, len(codes))
        except TypeError as exc:
            raise ValueError(
                f"groups[{i}] = {key!r} is not hashable; use patient ids (str or int)"
            ) from exc
    return out


# --------------------------------------------------------------------------- resampling


def _draw_patients(
    rng: np.random.Generator, patient_label: NDArray[np.integer] | NDArray[np.bool_],
    n_boot: int, stratify: bool,
) -> NDArray[np.intp]:
    """``(n_boot, n_patients)`` indices of the patients drawn in each resample.

    ``patient_label`` is each patient's stratum (its largest image label; a boolean
    array reads as 0/1). Stratified: from each stratum as many patients are drawn as
    it holds, so every resample keeps every stratum. Strata are drawn in descending
    label order (for binary labels: positives, then negatives), one
    ``(n_boot, size)`` block each from the same generator. With a single stratum there
    is nothing to stratify and the plain draw is used.
    """
    n_patients = patient_label.size
    strata = np.unique(patient_label)[::-1]
    if not stratify or strata.size < 2:
        return rng.integers(0, n_patients, size=(n_boot, n_patients))
    draws = []
    for stratum in strata:
        ids = np.flatnonzero(patient_label == stratum)
        draws.append(ids[rng.integers(0, ids.size, size=(n_boot, ids.size))])
    return np.concatenate(draws, axis=1)


def _image_counts(
    drawn: NDArray[np.intp], codes: NDArray[np.intp], n_patients: int
) -> NDArray[np.float64]:
    """Per-resample image multiplicities: each image counts as often as its patient."""
    return _multiplicities(drawn, n_patients)[:, codes]


def _count_blocks(
    drawn: NDArray[np.intp], codes: NDArray[np.intp], n_patients: int
) -> Iterator[NDArray[np.float64]]:
    """Image multiplicities of consecutive blocks of about ``_BLOCK_CELLS`` cells."""
    for rows in _row_blocks(drawn.shape[0], codes.size, _BLOCK_CELLS):
        yield _image_counts(drawn[rows], codes, n_patients)


def _setup(
    labels: ArrayLike,
    probs: Sequence[tuple[str, ArrayLike]],
    groups: ArrayLike | Sequence[Hashable],
) -> tuple[NDArray[np.int64], list[NDArray[np.float64]], NDArray[np.intp], NDArray[np.int64]]:
    y: NDArray[np.int64] | None = None
    p2s: list[NDArray[np.float64]] = []
    for name, p in probs:
        try:
            y_i, p2 = _check_inputs(labels, p)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        if p2s and p2.shape[0] != p2s[0].shape[0]:
            raise ValueError(
                f"{name} has {p2.shape[0]} rows but {probs[0][0]} has {p2s[0].shape[0]}; "
                "both models must be scored on the same images"
            )
        if p2s and p2.shape[1] != p2s[0].shape[1]:
            raise ValueError(
                f"{name} has {p2.shape[1]} classes (columns) but {probs[0][0]} has "
                f"{p2s[0].shape[1]}; both models must score the same classes"
            )
        y = y_i
        p2s.append(p2)
    assert y is not None
    codes = _factorize_groups(groups, y.size)
    n_patients = int(codes.max()) + 1
    # A patient's stratum is their largest label (binary: positive if any image is).
    patient_label = np.zeros(n_patients, dtype=np.int64)
    np.maximum.at(patient_label, codes, y)
    return y, p2s, codes, patient_label


# --------------------------------------------------------------------------- public API


def cluster_bootstrap_ci(
    *,
    labels: ArrayLike,
    probs: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stratify: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals that resample patients, not images.

    Each resample draws as many patients as the data hold, with replacement, and takes
    every image of each drawn patient (a patient drawn twice counts twice). Metrics are
    computed over the images of the resample, so they keep their per-image meaning
    ("fraction of images correct") while the interval reflects that a patient's images
    rise and fall together. All resamples are drawn at once and evaluated with array
    operations on per-image multiplicity counts; memory is ``O(n_boot * n_patients)``
    plus a bounded block of ``O(n)`` rows.

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class index per image in ``0..K-1``; for the binary task 0 (non-COVID)
        or 1 (COVID-19).
    probs : array_like, shape (n, K) or (n,)
        Class probabilities per image (``K >= 2`` columns), or P(class 1) when 1-D.
    groups : array_like or sequence of hashable, shape (n,)
        Patient key of each image (str, int, tuple, ...). Images with equal keys belong
        to one patient. ``None`` and nan are rejected.
    metrics : sequence of str, default ``DEFAULT_METRICS``
        Any of ``accuracy``, ``balanced_accuracy``, ``sensitivity``, ``specificity``,
        ``auroc``, ``nll``, ``brier``, ``entropy``, ``positive_rate``, with the
        definitions of :func:`medrobust.metrics.classification_metrics`
        (``sensitivity``, ``specificity`` and ``positive_rate`` give ``(nan, nan)``
        for ``K > 2``).
    n_boot : int, default 1000
        Number of resamples.
    seed : int, default 0
        Seed for ``numpy.random.default_rng``; equal seeds give identical intervals.
    level : float, default 0.95
        Coverage of the two-sided interval, in (0, 1).
    stratify : bool, default True
        Resample the patients of each class separately, keeping their numbers fixed,
        so that no resample lacks a class and sensitivity, specificity and AUROC are
        defined in every resample. A patient's class is the largest label among their
        images (binary: positive if any image is labelled 1); with several labels per
        patient only these largest labels are guaranteed in every resample. Ignored
        when all patients share one class. With
        ``stratify=False`` and one image per patient the draws are exactly those of
        :func:`medrobust.metrics.bootstrap_ci` with the same seed, so the intervals
        agree with it.

    Returns
    -------
    dict of str to (float, float)
        ``(lower, upper)`` percentiles per requested metric. Resamples in which a
        metric is undefined (possible only without stratification, or when a class is
        absent from the data) are left out; if it is undefined in all of them the
        interval is ``(nan, nan)``.

    Raises
    ------
    ValueError
        On invalid labels or probabilities (see
        :func:`medrobust.metrics.classification_metrics`), ``groups`` of the wrong
        length or holding missing/unhashable keys, an unknown or empty metric list,
        ``n_boot < 1`` or ``level`` outside (0, 1).

    Examples
    --------
    Three patients with two X-rays each; the model is right on both images of patients
    "a" and "c" and wrong on both of patient "b", so 4 of 6 images are correct:

    >>> labels = [1, 1, 0, 0, 0, 0]
    >>> probs = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    >>> groups = ["a", "a", "b", "b", "c", "c"]
    >>> ci = cluster_bootstrap_ci(labels=labels, probs=probs, groups=groups,
    ...                           metrics=("accuracy", "sensitivity"), n_boot=500, seed=1)
    >>> {k: (round(lo, 4), round(hi, 4)) for k, (lo, hi) in ci.items()}
    {'accuracy': (0.3333, 1.0), 'sensitivity': (1.0, 1.0)}

    The single positive patient "a" is in every (stratified) resample; the two
    negative draws are "b" twice (accuracy 2/6), "b" and "c" (4/6) or "c" twice (6/6),
    and patient "b"'s two images always come together.
    """
    names = _check_options(metrics, n_boot, level)
    y, (p2,), codes, patient_label = _setup(labels, [("probs", probs)], groups)
    rng = np.random.default_rng(seed)
    drawn = _draw_patients(rng, patient_label, int(n_boot), bool(stratify))
    blocks = [
        _resampled_metrics(y, p2, names, weights=counts)
        for counts in _count_blocks(drawn, codes, patient_label.size)
    ]
    return {
        name: _percentile_interval(np.concatenate([b[name] for b in blocks]), float(level))
        for name in names
    }


def cluster_bootstrap_statistic(
    statistic: Callable[[NDArray[np.intp]], Mapping[str, float]],
    *,
    labels: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stratify: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of any statistic of the images, resampling patients.

    The patients are drawn as in :func:`cluster_bootstrap_ci` (stratified by the
    patient's largest label); ``statistic`` receives the image indices of one resample
    (a patient drawn twice contributes its images twice) and returns named values. Use
    it for numbers that are not plain metrics of one probability array: rates at an
    operating point, calibration errors before and after a temperature, or a paired
    difference of two models computed on the same indices.

    Parameters
    ----------
    statistic : callable
        ``statistic(idx) -> {name: value}`` with ``idx`` an int array of image indices;
        non-finite values are left out of that name's interval.
    labels : array_like, shape (n,)
        Class index per image (only for stratification).
    groups : array_like or sequence of hashable, shape (n,)
        Patient key per image.
    n_boot, seed, level, stratify
        As for :func:`cluster_bootstrap_ci`.

    Returns
    -------
    dict of str to (float, float)
        ``(lower, upper)`` per name returned by ``statistic``; ``(nan, nan)`` when a
        value was never finite.

    Examples
    --------
    >>> labels = [1, 1, 0, 0]
    >>> correct = np.array([1.0, 1.0, 0.0, 1.0])
    >>> ci = cluster_bootstrap_statistic(lambda i: {"acc": correct[i].mean()}, labels=labels,
    ...                                  groups=["a", "a", "b", "c"], n_boot=200, seed=0)
    >>> [round(v, 3) for v in ci["acc"]]
    [0.5, 1.0]
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("labels must be a non-empty 1-D array, one per image")
    codes = _factorize_groups(groups, y.size)
    n_patients = int(codes.max()) + 1
    patient_label = np.zeros(n_patients, dtype=np.int64)
    np.maximum.at(patient_label, codes, y.astype(np.int64))
    members = [np.flatnonzero(codes == j) for j in range(n_patients)]
    rng = np.random.default_rng(seed)
    drawn = _draw_patients(rng, patient_label, int(n_boot), bool(stratify))
    values: dict[str, list[float]] = {}
    for row in drawn:
        idx = np.concatenate([members[j] for j in row])
        for name, v in statistic(idx).items():
            values.setdefault(name, []).append(float(v))
    out = {}
    for name, v in values.items():
        arr = np.asarray(v, dtype=np.float64)
        arr[~np.isfinite(arr)] = np.nan
        out[name] = _percentile_interval(arr, float(level))
    return out


def paired_cluster_bootstrap(
    *,
    labels: ArrayLike,
    probs_a: ArrayLike,
    probs_b: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    stratify: bool = True,
) -> dict[str, dict[str, Any]]:
    """Difference B - A between two models on the same images, with a paired patient bootstrap.

    Use it for two models scored on the same images: two methods' pooled out-of-fold
    predictions, or two models under the same attack. Each resample draws patients as
    :func:`cluster_bootstrap_ci` does and scores *both* models on that same resample,
    so the patient-to-patient variation both models share cancels out of the
    difference. This is far more sensitive than comparing two separate intervals.

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class index per image in ``0..K-1``; for the binary task 0 (non-COVID)
        or 1 (COVID-19).
    probs_a, probs_b : array_like, shape (n, K) or (n,)
        Probabilities of model A (the reference) and model B on the same images in the
        same order, or P(class 1) when 1-D; both with the same ``K``.
    groups : array_like or sequence of hashable, shape (n,)
        Patient key of each image.
    metrics : sequence of str, default ``DEFAULT_METRICS``
        Metric names, as for :func:`cluster_bootstrap_ci`.
    n_boot : int, default 2000
        Number of resamples. The p-value cannot resolve below about ``2 / n_boot``.
    seed : int, default 0
        Seed for ``numpy.random.default_rng``; equal seeds give identical results.
    level : float, default 0.95
        Coverage of the two-sided interval of the difference, in (0, 1).
    stratify : bool, default True
        Resample the patients of each class separately, as in
        :func:`cluster_bootstrap_ci`.

    Returns
    -------
    dict of str to dict
        Per metric:

        ``a``, ``b``
            The metric of model A and of model B on all images.
        ``difference``
            ``b - a``; positive means B scores higher (better for accuracy-like
            metrics and AUROC, worse for ``nll`` and ``brier``).
        ``ci``
            ``[lower, upper]`` percentile interval of the resampled differences.
        ``p_value``
            Two-sided bootstrap p-value for "no difference": twice the fraction of
            resampled differences on the other side of 0 from ``difference`` (0
            itself counts as the other side), capped at 1. 1.0 when ``difference`` is
            0. A value of 0 means no resample crossed 0, i.e. ``p < 2 / n_boot``.

        Values are nan where the metric is undefined (e.g. sensitivity without
        positive images).

    Raises
    ------
    ValueError
        On invalid inputs (as for :func:`cluster_bootstrap_ci`) or when ``probs_a``
        and ``probs_b`` have different numbers of rows.

    Examples
    --------
    Model B fixes patient "b", whom model A gets wrong on both images:

    >>> labels = [1, 1, 0, 0, 0, 0, 1, 1]
    >>> groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    >>> probs_a = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.7, 0.9]
    >>> probs_b = [0.9, 0.8, 0.3, 0.4, 0.2, 0.1, 0.7, 0.9]
    >>> res = paired_cluster_bootstrap(labels=labels, probs_a=probs_a, probs_b=probs_b,
    ...                                groups=groups, metrics=("accuracy",), n_boot=200)
    >>> r = res["accuracy"]
    >>> r["a"], r["b"], r["difference"]
    (0.75, 1.0, 0.25)
    >>> r["ci"][0] >= 0.0 and 0.0 <= r["p_value"] <= 1.0
    True

    The same model against itself differs by exactly 0 in every resample:

    >>> same = paired_cluster_bootstrap(labels=labels, probs_a=probs_a, probs_b=probs_a,
    ...                                 groups=groups, metrics=("accuracy",), n_boot=200)
    >>> same["accuracy"]["ci"], same["accuracy"]["p_value"]
    ([0.0, 0.0], 1.0)
    """
    names = _check_options(metrics, n_boot, level)
    y, (pa, pb), codes, patient_label = _setup(
        labels, [("probs_a", probs_a), ("probs_b", probs_b)], groups
    )
    point_a = _resampled_metrics(y, pa, names, weights=None)
    point_b = _resampled_metrics(y, pb, names, weights=None)

    rng = np.random.default_rng(seed)
    drawn = _draw_patients(rng, patient_label, int(n_boot), bool(stratify))
    diffs: dict[str, list[NDArray[np.float64]]] = {name: [] for name in names}
    for counts in _count_blocks(drawn, codes, patient_label.size):
        rep_a = _resampled_metrics(y, pa, names, weights=counts)
        rep_b = _resampled_metrics(y, pb, names, weights=counts)
        for name in names:
            diffs[name].append(rep_b[name] - rep_a[name])

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        a = float(point_a[name][0])
        b = float(point_b[name][0])
        diff = b - a
        reps = np.concatenate(diffs[name])
        reps = reps[~np.isnan(reps)]
        lo, hi = _percentile_interval(reps, float(level))
        if math.isnan(diff) or reps.size == 0:
            p_value = float("nan")
        elif diff == 0.0:
            p_value = 1.0
        else:
            other_side = np.mean(reps <= 0.0) if diff > 0.0 else np.mean(reps >= 0.0)
            p_value = float(min(1.0, 2.0 * other_side))
        out[name] = {"a": a, "b": b, "difference": diff, "ci": [lo, hi], "p_value": p_value}
    return out


def fold_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd, min and max of per-fold values, ignoring nan.

    Parameters
    ----------
    values : sequence of float, shape (k,)
        One value per fold (e.g. each fold's test accuracy). nan entries (a metric
        undefined in that fold) are left out.

    Returns
    -------
    dict of str to float
        ``mean``, ``sd`` (``ddof=1``; nan with fewer than two values), ``min``, ``max``
        and ``n`` (the number of non-nan values, as a float). All but ``n`` are nan
        when every value is nan.

    Raises
    ------
    ValueError
        If ``values`` is empty, not 1-D, not numeric, or holds an infinite value.

    Examples
    --------
    >>> s = fold_spread([0.80, 0.84, float("nan"), 0.88])
    >>> {k: round(v, 4) for k, v in s.items()}
    {'mean': 0.84, 'sd': 0.04, 'min': 0.8, 'max': 0.88, 'n': 3.0}
    >>> f"{s['mean']:.2f} ± {s['sd']:.2f} over {s['n']:.0f} folds"
    '0.84 ± 0.04 over 3 folds'
    """
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be numbers, one per fold: {exc}") from exc
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D (one value per fold), got shape {v.shape}")
    if v.size == 0:
        raise ValueError("values is empty; pass one value per fold")
    if np.any(np.isinf(v)):
        raise ValueError("values contains an infinite value")
    kept = v[~np.isnan(v)]
    k = kept.size
    nan = float("nan")
    if k == 0:
        return {"mean": nan, "sd": nan, "min": nan, "max": nan, "n": 0.0}
    mean = float(np.mean(kept))
    sd = float(np.sqrt(np.sum((kept - mean) ** 2) / (k - 1))) if k > 1 else nan
    return {"mean": mean, "sd": sd, "min": float(kept.min()), "max": float(kept.max()), "n": float(k)}


# --------------------------------------------------------------------------- plain words

# Metrics that are a fraction of some images: the difference reads as a count per `per`.
_COUNT_PHRASES: dict[str, str] = {
    "accuracy": "keeps {x} {dir} of {per} images correct",
    "sensitivity": "detects {x} {dir} of {per} COVID-19 images",
    "specificity": "correctly clears {x} {dir} of {per} non-COVID images",
    "positive_rate": "flags {x} {dir} of {per} images as COVID-19",
    "balanced_accuracy": "scores {x} {dir} points of {per} in balanced accuracy",
}
# Metrics on their own scale: (noun phrase with article, decimals, unit).
_SCALE_PHRASES: dict[str, tuple[str, int, str]] = {
    "auroc": ("an AUROC", 3, ""),
    "nll": ("an NLL", 3, " nats"),
    "brier": ("a Brier score", 3, ""),
    "entropy": ("a mean predictive entropy", 3, " nats"),
}
_NOUNS: dict[str, str] = {
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "positive_rate": "the rate of COVID-19 predictions",
    "balanced_accuracy": "balanced accuracy",
    "auroc": "AUROC",
    "nll": "NLL",
    "brier": "Brier score",
    "entropy": "mean predictive entropy",
}


def _fmt(x: float, decimals: int | None) -> str:
    """``decimals=None``: whole numbers from 10 up, one decimal below (counts per 100)."""
    if decimals is None:
        decimals = 0 if abs(x) >= 9.95 else 1
    s = f"{x:.{decimals}f}"
    if decimals and s.endswith("." + "0" * decimals):
        s = s.split(".")[0]
    return "0" if s in ("-0", "+0") else s


def describe_difference(
    metric: str,
    result: Mapping[str, Any],
    *,
    a_name: str,
    b_name: str,
    per: int = 100,
    level: float = 0.95,
) -> str:
    """One sentence saying how model B differs from model A on one metric.

    The numbers are written exactly as the tables write them (:func:`medrobust.intervals.format_difference`):
    B − A, signed, with the interval in the same direction, so a reader can match the sentence to its
    table row character for character. The words after the colon say what it means.

    Parameters
    ----------
    metric : str
        A metric name as used by :func:`paired_cluster_bootstrap`.
    result : mapping
        That metric's entry of :func:`paired_cluster_bootstrap`'s result, with at least
        ``difference`` (B - A) and ``ci`` (``[lower, upper]``).
    a_name, b_name : str
        What to call model A (the reference) and model B.
    per : int, default 100
        Fractions of images (accuracy, sensitivity, specificity, positive rate,
        balanced accuracy) are put into words as counts out of ``per`` images.
    level : float, default 0.95
        The interval's coverage, as passed to :func:`paired_cluster_bootstrap`; named in the
        sentence only when it is not 95 %.

    Returns
    -------
    str
        ``"B − A = d [lo, hi]unit: meaning"``; the meaning is ``"no clear difference"`` when the
        interval includes 0.

    Raises
    ------
    ValueError
        On an unknown metric, a ``result`` without ``difference`` and ``ci``, or
        ``per < 1``.

    Examples
    --------
    >>> r = {"a": 0.70, "b": 0.82, "difference": 0.12, "ci": [0.05, 0.19], "p_value": 0.002}
    >>> describe_difference("accuracy", r, a_name="standard", b_name="robust")
    'robust − standard = +12.0 [+5.0, +19.0] pts: robust keeps 12 more of 100 images correct than standard'
    >>> r = {"a": 0.86, "b": 0.84, "difference": -0.019, "ci": [-0.068, 0.034], "p_value": 0.4}
    >>> describe_difference("auroc", r, a_name="standard", b_name="robust")
    'robust − standard = −0.019 [−0.068, +0.034]: no clear difference'
    >>> r = {"a": 0.90, "b": 0.85, "difference": -0.05, "ci": [-0.08, -0.02], "p_value": 0.004}
    >>> describe_difference("sensitivity", r, a_name="standard", b_name="robust")
    'robust − standard = −5.0 [−8.0, −2.0] pts: robust detects 5 fewer of 100 COVID-19 images than standard'
    """
    from medrobust.intervals import MINUS, format_difference, includes_zero

    if metric not in _NOUNS:
        raise ValueError(f"unknown metric {metric!r}; supported: {', '.join(_NOUNS)}")
    if isinstance(per, bool) or not isinstance(per, (int, np.integer)) or per < 1:
        raise ValueError(f"per must be a positive integer, got {per!r}")
    try:
        diff = float(result["difference"])
        lo, hi = (float(v) for v in result["ci"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            "result must be one metric's entry of paired_cluster_bootstrap, with "
            f"'difference' and 'ci' = [lower, upper]; got {result!r}"
        ) from exc
    noun = _NOUNS[metric]
    if math.isnan(diff) or math.isnan(lo) or math.isnan(hi):
        return f"no estimate: {noun} is undefined on these data, so {b_name} and {a_name} cannot be compared"
    numbers = f"{b_name} {MINUS} {a_name} = {format_difference(metric, diff, (lo, hi))}"
    if abs(level - 0.95) > 1e-9:
        numbers += f" ({_fmt(100.0 * level, 1)} % CI)"
    if includes_zero((lo, hi)):
        return f"{numbers}: no clear difference"
    counted = metric in _COUNT_PHRASES
    if counted:
        phrase = _COUNT_PHRASES[metric].format(x=_fmt(abs(diff) * per, None), dir="more" if diff > 0 else "fewer",
                                               per=per)
        return f"{numbers}: {b_name} {phrase} than {a_name}"
    article_noun, decimals, unit = _SCALE_PHRASES[metric]
    direction = "higher" if diff > 0 else "lower"
    return f"{numbers}: {b_name} has {article_noun} {_fmt(abs(diff), decimals)}{unit} {direction} than {a_name}"
