"""Classification, calibration and degeneracy metrics for K-class predictions (K >= 2).

Probabilities are accepted either as an ``(n, K)`` array with ``K >= 2`` columns whose
rows sum to 1 (the number of classes is the number of columns) or, for a binary task,
as an ``(n,)`` array holding P(class 1). Labels are integer class indices in
``0..K-1``; in the binary COVID-19 task label 1 is COVID-19 and label 0 is non-COVID.
The predicted class is ``argmax`` over the columns, so an exact tie goes to the lowest
class index, as ``np.argmax`` does.

With two classes every metric keeps its binary definition (AUROC of P(class 1),
sensitivity, specificity, rate of class-1 predictions). With more classes AUROC is the
macro one-vs-rest average over the classes present, balanced accuracy the mean recall
over the classes present, calibration is top-label, and the binary notions
``sensitivity``, ``specificity`` and ``positive_rate`` are nan (use
:func:`per_class_recall` and :func:`confusion_matrix` instead).

Everything here is plain NumPy so that evaluation code can run without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEGENERATE_THRESHOLD",
    "bootstrap_ci",
    "classification_metrics",
    "confusion_matrix",
    "is_degenerate",
    "per_class_recall",
    "predictive_entropy",
    "reliability_bins",
]

DEGENERATE_THRESHOLD = 0.95
"""A model whose most frequent predicted class covers at least this fraction of the
samples is flagged as degenerate: under attack or heavy noise, collapsed classifiers
can still post a high accuracy on an imbalanced test set."""

_N_CALIBRATION_BINS = 15
_NLL_CLIP = 1e-12
# Softmax outputs computed in float16/float32 do not sum to exactly 1; anything looser
# than this is more likely logits or unnormalised scores passed by mistake.
_ROW_SUM_ATOL = 1e-3
# Resamples are evaluated in blocks of about this many (resample, sample) cells, so the
# float work arrays (16 MB each) stay around 100 MB in all however large n_boot * n gets.
_BLOCK_CELLS = 1 << 21

_BOOTSTRAP_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "auroc",
    "nll",
    "brier",
    "entropy",
    "positive_rate",
)


# --------------------------------------------------------------------------- validation


def _as_probs2d(probs: ArrayLike) -> NDArray[np.float64]:
    """``probs`` as an ``(n, K)`` float array, ``K >= 2``; a 1-D P(class 1) gets K = 2."""
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"probs must be numeric, got {type(probs).__name__}: {exc}") from exc
    if p.ndim == 1:
        p2 = np.stack([1.0 - p, p], axis=1)
    elif p.ndim == 2 and p.shape[1] >= 2:
        p2 = p
    else:
        raise ValueError(
            "probs must have shape (n, K) with K >= 2 (one column per class) or (n,) "
            f"(P(class 1) of a binary task); got shape {p.shape}"
        )
    if p2.shape[0] == 0:
        raise ValueError("probs is empty; at least one sample is needed")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{p.min():.6g}, {p.max():.6g}]; "
            "pass softmax probabilities, not logits"
        )
    if p.ndim == 2:
        row_err = np.abs(p.sum(axis=1) - 1.0)
        if row_err.max() > _ROW_SUM_ATOL:
            bad = int(np.argmax(row_err))
            raise ValueError(
                f"each row of probs must sum to 1; row {bad} sums to {p[bad].sum():.6g}"
            )
    return p2


def _as_class_indices(
    values: ArrayLike, *, name: str, k: int, n: int, n_source: str
) -> NDArray[np.int64]:
    """``values`` as int64 class indices in ``0..k-1``, checked to hold ``n`` entries.

    ``n_source`` names what fixes ``n`` in the length message ("probs has 4 rows").
    """
    y = np.asarray(values)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but {n_source}")
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must be numeric class indices in 0..{k - 1}, got dtype {y.dtype}"
        )
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    # nan fails every comparison, so it is caught here without a warning.
    valid = (y >= 0) & (y <= k - 1)
    if y.dtype.kind == "f":
        valid &= np.floor(y) == y
    if not np.all(valid):
        bad = np.unique(y[~valid])[:5]
        if name == "labels" and k == 2:
            what = "labels must be integers in 0..1, i.e. 0 (non-COVID) or 1 (COVID-19)"
        else:
            what = f"{name} must be integers in 0..K-1 = 0..{k - 1} (K = {k} classes)"
        raise ValueError(f"{what}; found {bad.tolist()}")
    return y.astype(np.int64)


def _check_inputs(
    labels: ArrayLike, probs: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validated labels, shape ``(n,)``, and probabilities, shape ``(n, K)``."""
    p2 = _as_probs2d(probs)
    y = _as_class_indices(
        labels, name="labels", k=p2.shape[1], n=p2.shape[0],
        n_source=f"probs has {p2.shape[0]} rows",
    )
    return y, p2


# --------------------------------------------------------------------------- per-sample


def predictive_entropy(*, probs: ArrayLike) -> NDArray[np.float64]:
    """Per-sample entropy of the predictive distribution.

    Parameters
    ----------
    probs : array_like, shape (n, K) or (n,)
        Class probabilities (``K >= 2`` columns), or P(class 1) when 1-D.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Entropy in nats, between 0 (one-hot) and ``ln K`` (uniform).

    Raises
    ------
    ValueError
        If ``probs`` is empty, has the wrong shape or lies outside [0, 1].
    """
    p2 = _as_probs2d(probs)
    # 0 * log 0 is 0 by continuity; substituting 1 avoids the log(0) warning and nan.
    logp = np.log(np.where(p2 > 0.0, p2, 1.0))
    return -np.sum(p2 * logp, axis=1)


def is_degenerate(*, preds: ArrayLike) -> bool:
    """Whether one predicted class covers at least ``DEGENERATE_THRESHOLD`` of samples.

    Parameters
    ----------
    preds : array_like, shape (n,)
        Predicted class indices.

    Returns
    -------
    bool
        True if the most frequent class makes up ``>= DEGENERATE_THRESHOLD`` of
        ``preds``.

    Raises
    ------
    ValueError
        If ``preds`` is empty, not 1-D, or not integer class indices.
    """
    return _majority_fraction(preds) >= DEGENERATE_THRESHOLD


def _majority_fraction(preds: ArrayLike) -> float:
    a = np.asarray(preds)
    if a.ndim != 1:
        raise ValueError(f"preds must be 1-D class indices, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("preds is empty; at least one prediction is needed")
    if a.dtype.kind not in "biuf" or (
        a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a)))
    ):
        raise ValueError(
            "preds must be integer class indices (e.g. probs.argmax(axis=1)), "
            f"got dtype {a.dtype}"
        )
    _, counts = np.unique(a, return_counts=True)
    return float(counts.max() / a.size)


# --------------------------------------------------------------------------- calibration


def _top_label(
    y: NDArray[np.int64], p2: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    preds = np.argmax(p2, axis=1)
    conf = p2[np.arange(p2.shape[0]), preds]
    correct = (preds == y).astype(np.float64)
    return conf, correct, preds


def _equal_width_edges(n_bins: int) -> NDArray[np.float64]:
    # i / n_bins rather than linspace so the edges are bit-identical to the ones the
    # `calibration` package uses for its ECE, which the tests compare against.
    return np.arange(1, n_bins + 1, dtype=np.float64) / n_bins


def _equal_mass_edges(conf: NDArray[np.float64], n_bins: int) -> NDArray[np.float64]:
    """Upper bin edges as built by ``calibration.get_equal_bins``.

    The sorted confidences are cut into ``min(n_bins, n)`` chunks the way
    ``np.array_split`` does (the first ``n % k`` chunks get one extra element); each
    interior edge is the midpoint between neighbouring chunks, 1.0 closes the last
    bin, and duplicate edges (from tied confidences) are merged, so ties can leave
    fewer bins than requested.
    """
    s = np.sort(conf)
    k = min(n_bins, s.size)
    size, extra = divmod(s.size, k)
    chunk_sizes = np.full(k, size)
    chunk_sizes[:extra] += 1
    ends = np.cumsum(chunk_sizes)[:-1]
    mids = (s[ends - 1] + s[ends]) / 2.0
    return np.unique(np.append(mids, 1.0))


def _bin_sums(
    conf: NDArray[np.float64], correct: NDArray[np.float64], edges: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    # side="left" makes bins right-closed, (lower, upper], matching both Guo et al.'s
    # ECE and the `calibration` package; a confidence equal to an edge goes down.
    idx = np.searchsorted(edges, conf, side="left")
    counts = np.bincount(idx, minlength=edges.size).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=edges.size)
    correct_sum = np.bincount(idx, weights=correct, minlength=edges.size)
    return counts, conf_sum, correct_sum


def _safe_ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    # nan where den == 0, computed without triggering divide-by-zero warnings.
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _ece(conf: NDArray[np.float64], correct: NDArray[np.float64], n_bins: int) -> float:
    counts, conf_sum, correct_sum = _bin_sums(conf, correct, _equal_width_edges(n_bins))
    nonempty = counts > 0
    gaps = np.abs(conf_sum[nonempty] - correct_sum[nonempty]) / counts[nonempty]
    return float(np.sum(counts[nonempty] * gaps) / conf.size)


def _l2_ce(
    conf: NDArray[np.float64], correct: NDArray[np.float64], n_bins: int, *, debias: bool
) -> float:
    """Kumar et al. (2019) top-label L2 calibration error with equal-mass bins.

    Reimplements ``calibration.lower_bound_scaling_ce(..., p=2, binning_scheme=
    get_equal_bins, mode='top-label')``. The debiased estimator subtracts, per bin,
    the sampling variance of the bin's accuracy, ``a (1 - a) / (n_b - 1)``, from the
    squared gap. Bins with fewer than two samples contribute 0 (the variance is
    undefined) but still carry their weight ``n_b / n``. Per-bin terms may be negative;
    only the weighted total is clipped at 0 before the square root, so a
    well-calibrated model on a small test set often scores exactly 0.
    """
    edges = _equal_mass_edges(conf, n_bins)
    counts, conf_sum, correct_sum = _bin_sums(conf, correct, edges)
    weights = counts / conf.size
    mean_conf = _safe_ratio(conf_sum, counts)
    mean_acc = _safe_ratio(correct_sum, counts)
    if debias:
        usable = counts >= 2
        sq_gap = (mean_conf[usable] - mean_acc[usable]) ** 2
        variance = mean_acc[usable] * (1.0 - mean_acc[usable]) / (counts[usable] - 1.0)
        total = float(np.dot(weights[usable], sq_gap - variance))
        return max(total, 0.0) ** 0.5
    usable = counts >= 1
    total = float(np.dot(weights[usable], (mean_conf[usable] - mean_acc[usable]) ** 2))
    return total**0.5


def reliability_bins(
    *, labels: ArrayLike, probs: ArrayLike, n_bins: int = _N_CALIBRATION_BINS
) -> list[dict[str, float]]:
    """Top-label reliability diagram data on equal-width confidence bins.

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class indices in ``0..K-1`` (binary: 0 non-COVID, 1 COVID-19).
    probs : array_like, shape (n, K) or (n,)
        Class probabilities (``K >= 2`` columns), or P(class 1) when 1-D.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1]. Bins are right-closed,
        ``(lower, upper]``, except that the first one also holds confidence 0. The
        top-label confidence is at least ``1/K`` (0.5 with two classes), so the bins
        below it are empty.

    Returns
    -------
    list of dict
        One dict per bin with keys ``lower``, ``upper``, ``count``, ``confidence``
        (mean top-label probability), ``accuracy`` (fraction correct) and ``gap``
        (``confidence - accuracy``; positive means over-confident). ``confidence``,
        ``accuracy`` and ``gap`` are nan for empty bins.

    Raises
    ------
    ValueError
        On invalid inputs or ``n_bins < 1``.
    """
    y, p2 = _check_inputs(labels, probs)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf, correct, _ = _top_label(y, p2)
    edges = _equal_width_edges(int(n_bins))
    counts, conf_sum, correct_sum = _bin_sums(conf, correct, edges)
    mean_conf = _safe_ratio(conf_sum, counts)
    mean_acc = _safe_ratio(correct_sum, counts)
    lowers = np.concatenate([[0.0], edges[:-1]])
    return [
        {
            "lower": float(lowers[i]),
            "upper": float(edges[i]),
            "count": float(counts[i]),
            "confidence": float(mean_conf[i]),
            "accuracy": float(mean_acc[i]),
            "gap": float(mean_conf[i] - mean_acc[i]),
        }
        for i in range(edges.size)
    ]


# --------------------------------------------------------------------------- resampled metrics


def _auroc_weighted(
    counts: NDArray[np.float64], score: NDArray[np.float64], y: NDArray[np.int64]
) -> NDArray[np.float64]:
    """AUROC of each row's weighted sample (Mann-Whitney U with ties counted as 1/2).

    ``counts[b, i]`` is how often sample ``i`` appears in resample ``b``. Sorting the
    original samples once and grouping tied scores lets every resample share one
    ranking, so no per-resample sort is needed.
    """
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    c = counts[:, order]
    pos = y[order].astype(np.float64)
    pos_w = np.add.reduceat(c * pos, starts, axis=1)
    neg_w = np.add.reduceat(c * (1.0 - pos), starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
    pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    return _safe_ratio(wins, pairs)


def _multiplicities(idx: NDArray[np.intp], n: int) -> NDArray[np.float64]:
    """How often each of ``n`` items occurs in each row of ``idx``, shape ``(rows, n)``.

    One bincount over row-offset indices counts all rows at once.
    """
    n_rows = idx.shape[0]
    offsets = (np.arange(n_rows) * n)[:, None]
    flat = np.bincount((idx + offsets).ravel(), minlength=n_rows * n)
    return flat.reshape(n_rows, n).astype(np.float64)


def _row_blocks(n_rows: int, n: int, block_cells: int) -> Iterator[slice]:
    """Consecutive row slices of about ``block_cells`` cells of an ``(n_rows, n)`` matrix."""
    rows = max(1, block_cells // max(1, n))
    for start in range(0, n_rows, rows):
        yield slice(start, start + rows)


def _percentile_interval(values: NDArray[np.float64], level: float) -> tuple[float, float]:
    """Percentile interval of the defined (non-nan) replicates; (nan, nan) if none."""
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        # np.nanpercentile would warn on an all-nan slice; the answer is known.
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(kept, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _class_weights(
    y: NDArray[np.int64],
    k: int,
    hit: NDArray[np.float64],
    weighted_sum: Callable[[NDArray[np.float64]], NDArray[np.float64]],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Weighted size and weighted number of hits of each class, each ``(rows, k)``."""
    sizes = []
    hits = []
    for c in range(k):
        member = (y == c).astype(np.float64)
        sizes.append(weighted_sum(member))
        hits.append(weighted_sum(member * hit))
    return np.stack(sizes, axis=1), np.stack(hits, axis=1)


def _mean_over_present(
    values: NDArray[np.float64], present: NDArray[np.bool_], min_present: int
) -> NDArray[np.float64]:
    """Row means of ``values`` over the present classes; nan with fewer than ``min_present``."""
    n_present = present.sum(axis=1)
    total = np.where(present, values, 0.0).sum(axis=1)
    out = np.full(n_present.shape, np.nan)
    np.divide(total, n_present, out=out, where=n_present >= min_present)
    return out


def _resampled_metrics(
    y: NDArray[np.int64],
    p2: NDArray[np.float64],
    names: Sequence[str],
    weights: NDArray[np.float64] | None,
) -> dict[str, NDArray[np.float64]]:
    """Metrics of the sample reweighted by each row of ``weights``.

    The one definition of the resampled metrics: point estimates
    (:func:`classification_metrics`), the per-sample bootstrap (:func:`bootstrap_ci`)
    and the patient bootstrap (:mod:`medrobust.stats`) all evaluate it. Every metric
    except AUROC is a ratio of weighted per-sample sums, so one matrix-vector product
    per sum evaluates it for all rows at once; AUROC uses the weights as tie-aware
    pair counts (:func:`_auroc_weighted`), once per class for the one-vs-rest AUROCs
    of more than two classes. Each row is computed independently of the others, so
    splitting the rows into blocks gives bit-identical results.

    Parameters
    ----------
    y : numpy.ndarray of int64, shape (n,)
        Labels, already validated as class indices in ``0..K-1``.
    p2 : numpy.ndarray of float64, shape (n, K)
        Class probabilities, ``K >= 2``, already validated.
    names : sequence of str
        Metric names, each one of ``_BOOTSTRAP_METRICS``.
    weights : numpy.ndarray of float64, shape (rows, n), or None
        ``weights[b, i]`` is the multiplicity of sample ``i`` in resample ``b``: how
        often it was drawn (non-negative; whole numbers for bootstrap draws). Rows
        need not sum to ``n``. ``None`` means the sample itself, one row with every
        sample counted once.

    Returns
    -------
    dict of str to numpy.ndarray, shape (rows,)
        One value per row of ``weights`` (shape ``(1,)`` when it is ``None``), with the
        definitions of :func:`classification_metrics` applied to the reweighted
        sample: class and hit counts are weighted sums, and means (accuracy, NLL,
        Brier, entropy, positive rate) divide by the row's total weight, the
        resample's size. A class is present in a row if its samples' weights sum to
        more than 0. nan where a metric is undefined: sensitivity, specificity or
        AUROC with fewer than two classes present in the row, anything in a row of
        total weight 0, and sensitivity, specificity and positive rate whenever
        ``K > 2``.

    Raises
    ------
    ValueError
        On a name that is not a supported metric.

    Examples
    --------
    Weight 2 on a sample is the same as listing it twice:

    >>> y = np.array([0, 1, 1])
    >>> p2 = np.array([[0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    >>> w = _resampled_metrics(y, p2, ("accuracy", "nll"), np.array([[2.0, 0.0, 1.0]]))
    >>> rep = _resampled_metrics(y[[0, 0, 2]], p2[[0, 0, 2]], ("accuracy", "nll"), None)
    >>> bool(w["accuracy"][0] == rep["accuracy"][0] == 1.0)
    True
    >>> bool(np.isclose(w["nll"][0], rep["nll"][0]))
    True
    """
    n, k = p2.shape
    if weights is None:
        total = np.array([float(n)])

        def weighted_sum(v: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.array([np.sum(v)])
    else:
        total = weights.sum(axis=1)

        def weighted_sum(v: NDArray[np.float64]) -> NDArray[np.float64]:
            # einsum rather than ``weights @ v``: BLAS gemv rounds differently with the
            # number of rows (so the blocking would change results) and, multithreaded
            # on a busy machine, was up to 100x slower. einsum sums each row on its own.
            return np.einsum("ij,j->i", weights, v)

    def weighted_mean(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return _safe_ratio(weighted_sum(v), total)

    preds = np.argmax(p2, axis=1)
    hit = (preds == y).astype(np.float64)
    if k == 2:
        pos = (y == 1).astype(np.float64)
        n_pos = weighted_sum(pos)
        n_neg = total - n_pos
        tp = weighted_sum(hit * pos)
        tn = weighted_sum(hit * (1.0 - pos))
        sens = _safe_ratio(tp, n_pos)
        spec = _safe_ratio(tn, n_neg)
    else:
        # Per-class sizes and hits, only computed when a metric needs them.
        per_class: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None

        def class_weights() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
            nonlocal per_class
            if per_class is None:
                per_class = _class_weights(y, k, hit, weighted_sum)
            return per_class

    out: dict[str, NDArray[np.float64]] = {}
    for name in names:
        if name == "accuracy":
            out[name] = _safe_ratio(tp + tn, total) if k == 2 else weighted_mean(hit)
        elif name == "sensitivity":
            out[name] = sens if k == 2 else np.full(total.shape, np.nan)
        elif name == "specificity":
            out[name] = spec if k == 2 else np.full(total.shape, np.nan)
        elif name == "balanced_accuracy":
            # Mean recall over the classes present; with one class present that
            # class's recall. sklearn.metrics.balanced_accuracy_score does the same.
            if k == 2:
                out[name] = np.where(
                    (n_pos > 0) & (n_neg > 0),
                    (sens + spec) / 2.0,
                    np.where(n_pos > 0, sens, spec),
                )
            else:
                sizes, hits = class_weights()
                out[name] = _mean_over_present(_safe_ratio(hits, sizes), sizes > 0, 1)
        elif name == "auroc":
            counts = np.ones((1, n)) if weights is None else weights
            if k == 2:
                out[name] = _auroc_weighted(counts, p2[:, 1], y)
            else:
                # Macro one-vs-rest: class c against all others, averaged over the
                # classes present. An absent class has no positives and no AUROC.
                sizes, _ = class_weights()
                ovr = np.stack(
                    [_auroc_weighted(counts, p2[:, c], (y == c).astype(np.int64))
                     for c in range(k)],
                    axis=1,
                )
                out[name] = _mean_over_present(ovr, sizes > 0, 2)
        elif name == "nll":
            p_true = np.clip(p2[np.arange(n), y], _NLL_CLIP, 1.0)
            out[name] = weighted_mean(-np.log(p_true))
        elif name == "brier":
            onehot = np.zeros((n, k))
            onehot[np.arange(n), y] = 1.0
            out[name] = weighted_mean(np.sum((p2 - onehot) ** 2, axis=1))
        elif name == "entropy":
            out[name] = weighted_mean(predictive_entropy(probs=p2))
        elif name == "positive_rate":
            out[name] = (
                weighted_mean((preds == 1).astype(np.float64))
                if k == 2
                else np.full(total.shape, np.nan)
            )
        else:
            raise ValueError(
                f"unknown metric {name!r}; supported: {', '.join(_BOOTSTRAP_METRICS)}"
            )
    return out


# --------------------------------------------------------------------------- public API


def classification_metrics(*, labels: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """Discrimination, calibration and degeneracy metrics of K-class predictions.

    The keys are the same for every number of classes ``K >= 2``; with ``K = 2`` every
    value is the binary one (P(class 1) is the score, class 1 the positive class).

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class indices in ``0..K-1``; for the binary task 0 (non-COVID) or 1
        (COVID-19). Whole-number floats are accepted.
    probs : array_like, shape (n, K) or (n,)
        Class probabilities, ``K >= 2`` columns with rows summing to 1 (``K`` is the
        number of columns), or P(class 1) of a binary task when 1-D.

    Returns
    -------
    dict of str to float
        ``n``
            Number of samples.
        ``accuracy``
            Fraction of ``argmax`` predictions equal to the label (ties go to the lower
            class index).
        ``balanced_accuracy``
            Mean recall over the classes present in ``labels``, equal to
            ``sklearn.metrics.balanced_accuracy_score``. Binary: the mean of
            sensitivity and specificity, or the recall of the only class present.
        ``sensitivity``, ``specificity``
            Binary only: recall of class 1 and of class 0; nan if that class is
            absent. Always nan for ``K > 2`` (see :func:`per_class_recall`).
        ``auroc``
            Binary: area under the ROC curve of P(class 1), equal to
            ``sklearn.metrics.roc_auc_score``. ``K > 2``: macro one-vs-rest AUROC,
            the mean over the classes present in ``labels`` of the AUROC of
            ``probs[:, c]`` for class ``c`` against all others; equal to
            ``roc_auc_score(labels, probs, multi_class="ovr", average="macro")`` when
            every class is present. A class absent from ``labels`` has no one-vs-rest
            AUROC and is left out of the mean (scikit-learn raises instead). nan if
            fewer than two classes are present.
        ``nll``
            Mean negative log-likelihood of the true class in nats, probabilities
            clipped below at 1e-12.
        ``brier``
            Mean over samples of the squared error summed over the ``K`` classes
            against the one-hot label (range [0, 2]).
        ``ece``
            Top-label expected calibration error, 15 equal-width confidence bins,
            weighted by bin counts.
        ``rmsce``
            Debiased top-label L2 calibration error of Kumar et al. (2019) with 15
            equal-mass bins; equals ``calibration.lower_bound_scaling_ce(probs2d,
            labels, p=2, debias=True, num_bins=15, binning_scheme=get_equal_bins,
            mode='top-label')`` for any ``K``. Exactly 0 when the estimated squared
            error is negative, which is common on small, well-calibrated test sets.
        ``rmsce_plugin``
            The same without the debiasing term (``debias=False``).
        ``entropy``
            Mean predictive entropy in nats, at most ``ln K``.
        ``positive_rate``
            Binary only: fraction of samples predicted COVID-19 (class 1). nan for
            ``K > 2``.
        ``majority_fraction``
            Fraction of samples in the most frequently predicted class.
        ``degenerate``
            1.0 if ``majority_fraction >= DEGENERATE_THRESHOLD`` (0.95), else 0.0.

    Raises
    ------
    ValueError
        If the inputs are empty, their lengths differ, ``probs`` has the wrong shape,
        lies outside [0, 1] or has rows not summing to 1, or ``labels`` holds values
        that are not class indices in ``0..K-1``.

    Examples
    --------
    Four X-rays, two of each class; the second non-COVID one is misclassified:

    >>> m = classification_metrics(labels=[0, 0, 1, 1], probs=[0.1, 0.6, 0.7, 0.9])
    >>> {k: round(v, 4) for k, v in m.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'n': 4.0, 'accuracy': 0.75, 'balanced_accuracy': 0.75, 'sensitivity': 1.0,
     'specificity': 0.5, 'auroc': 1.0, 'nll': 0.3709, 'brier': 0.235, 'ece': 0.275,
     'rmsce': 0.0707, 'rmsce_plugin': 0.3428, 'entropy': 0.4835, 'positive_rate': 0.75,
     'majority_fraction': 0.75, 'degenerate': 0.0}

    The top-label confidences are 0.9, 0.6 (wrong), 0.7 and 0.9, so
    ``nll = -mean(ln [0.9, 0.4, 0.7, 0.9])`` and ``brier = 2 * mean([0.1, 0.6, 0.3,
    0.1] ** 2)``. ECE puts each distinct confidence in its own width-1/15 bin:
    ``(0.6 + 0.3 + 2 * 0.1) / 4``. The equal-mass bins for ``rmsce`` are {0.6}, {0.7}
    and {0.9, 0.9} (tied edges merge); one-sample bins add nothing to the debiased
    estimate, so ``rmsce = sqrt(2/4 * (0.9 - 1) ** 2)`` while
    ``rmsce_plugin = sqrt(0.36/4 + 0.09/4 + 2/4 * 0.01)``.

    Three classes; the binary-only metrics are nan:

    >>> m = classification_metrics(
    ...     labels=[0, 0, 1, 1, 2, 2],
    ...     probs=[[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.6, 0.2],
    ...            [0.1, 0.8, 0.1], [0.4, 0.0, 0.6], [0.1, 0.3, 0.6]])
    >>> {k: round(v, 4) for k, v in m.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'n': 6.0, 'accuracy': 0.8333, 'balanced_accuracy': 0.8333, 'sensitivity': nan,
     'specificity': nan, 'auroc': 0.9583, 'nll': 0.5527, 'brier': 0.3, 'ece': 0.3667,
     'rmsce': 0.2828, 'rmsce_plugin': 0.3786, 'entropy': 0.832, 'positive_rate': nan,
     'majority_fraction': 0.5, 'degenerate': 0.0}

    Only the second sample is wrong, so the recalls are 1/2, 1 and 1. The one-vs-rest
    AUROCs are 7/8 for class 0 (the class-2 sample with P(class 0) = 0.4 outranks the
    second class-0 sample, 0.3) and 1 for classes 1 and 2.
    """
    y, p2 = _check_inputs(labels, probs)
    n = y.size
    counted = _resampled_metrics(
        y,
        p2,
        ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc",
         "nll", "brier"),
        weights=None,
    )
    conf, correct, preds = _top_label(y, p2)
    majority = _majority_fraction(preds)
    return {
        "n": float(n),
        "accuracy": float(counted["accuracy"][0]),
        "balanced_accuracy": float(counted["balanced_accuracy"][0]),
        "sensitivity": float(counted["sensitivity"][0]),
        "specificity": float(counted["specificity"][0]),
        "auroc": float(counted["auroc"][0]),
        "nll": float(counted["nll"][0]),
        "brier": float(counted["brier"][0]),
        "ece": _ece(conf, correct, _N_CALIBRATION_BINS),
        "rmsce": _l2_ce(conf, correct, _N_CALIBRATION_BINS, debias=True),
        "rmsce_plugin": _l2_ce(conf, correct, _N_CALIBRATION_BINS, debias=False),
        "entropy": float(np.mean(predictive_entropy(probs=p2))),
        "positive_rate": float(np.mean(preds == 1)) if p2.shape[1] == 2 else float("nan"),
        "majority_fraction": majority,
        "degenerate": 1.0 if majority >= DEGENERATE_THRESHOLD else 0.0,
    }


def _check_bootstrap_options(metrics: Sequence[str], n_boot: int, level: float) -> tuple[str, ...]:
    """The metric names, after checking them, ``n_boot`` and ``level`` (shared by every bootstrap)."""
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a sequence of names, e.g. ({metrics!r},)")
    names = tuple(metrics)
    if not names:
        raise ValueError(
            f"metrics is empty; name at least one of {', '.join(_BOOTSTRAP_METRICS)}"
        )
    unknown = [m for m in names if m not in _BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}; supported: {', '.join(_BOOTSTRAP_METRICS)}"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not (
        0.0 < level < 1.0
    ):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return names


def bootstrap_ci(
    *,
    labels: ArrayLike,
    probs: ArrayLike,
    metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "sensitivity", "specificity"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over samples.

    All resamples are drawn at once as an ``(n_boot, n)`` index matrix; each one is
    evaluated as the original samples weighted by how often they were drawn, with
    array operations over blocks of resamples, so 1000 resamples of ~100 samples take
    about 10 ms. Memory is the ``O(n_boot * n)`` integer index matrix plus float work
    arrays for a bounded block of resamples (around 100 MB at most).

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class indices in ``0..K-1`` (binary: 0 non-COVID, 1 COVID-19).
    probs : array_like, shape (n, K) or (n,)
        Class probabilities (``K >= 2`` columns), or P(class 1) when 1-D.
    metrics : sequence of str
        Any of ``accuracy``, ``balanced_accuracy``, ``sensitivity``, ``specificity``,
        ``auroc``, ``nll``, ``brier``, ``entropy``, ``positive_rate``; each has the
        definition used by :func:`classification_metrics` (so ``sensitivity``,
        ``specificity`` and ``positive_rate`` give ``(nan, nan)`` for ``K > 2``).
    n_boot : int, default 1000
        Number of resamples.
    seed : int, default 0
        Seed for ``numpy.random.default_rng``; equal seeds give identical intervals.
    level : float, default 0.95
        Coverage of the two-sided interval, in (0, 1).

    Returns
    -------
    dict of str to (float, float)
        ``(lower, upper)`` percentiles per requested metric. Resamples in which a
        metric is undefined (sensitivity, specificity or AUROC when a class is missing
        from the resample, AUROC with fewer than two classes in it) are left out; if it
        is undefined in every resample the interval is ``(nan, nan)``. Balanced
        accuracy and the macro AUROC of a resample average over the classes present
        in it, as the point estimates do.

    Raises
    ------
    ValueError
        On invalid inputs, an unknown metric name, ``n_boot < 1`` or ``level`` outside
        (0, 1).
    """
    y, p2 = _check_inputs(labels, probs)
    names = _check_bootstrap_options(metrics, n_boot, level)

    n = y.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    blocks = [
        _resampled_metrics(y, p2, names, weights=_multiplicities(idx[rows], n))
        for rows in _row_blocks(idx.shape[0], n, _BLOCK_CELLS)
    ]
    return {
        name: _percentile_interval(np.concatenate([b[name] for b in blocks]), level)
        for name in names
    }


def confusion_matrix(*, labels: ArrayLike, preds: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class indices in ``0..num_classes-1``.
    preds : array_like, shape (n,)
        Predicted class indices in ``0..num_classes-1``, e.g. ``probs.argmax(axis=1)``.
    num_classes : int
        Number of classes ``K >= 2``; classes that occur in neither array still get a
        row and a column.

    Returns
    -------
    numpy.ndarray of int64, shape (K, K)
        ``out[i, j]`` is the number of samples of true class ``i`` predicted as class
        ``j``: rows are true classes, columns predictions, as in
        ``sklearn.metrics.confusion_matrix(labels, preds, labels=range(K))``.

    Raises
    ------
    ValueError
        If ``num_classes`` is not an integer >= 2, the arrays are not 1-D, differ in
        length or hold values outside ``0..num_classes-1``.

    Examples
    --------
    >>> confusion_matrix(labels=[0, 0, 1, 2, 2, 2], preds=[0, 1, 1, 2, 2, 0], num_classes=3)
    array([[1, 1, 0],
           [0, 1, 0],
           [1, 0, 2]])
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    k = int(num_classes)
    y_arr = np.asarray(labels)
    if y_arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y_arr.shape}")
    n = y_arr.shape[0]
    y = _as_class_indices(y_arr, name="labels", k=k, n=n, n_source="")
    pred = _as_class_indices(preds, name="preds", k=k, n=n, n_source=f"labels has {n}")
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_recall(*, labels: ArrayLike, probs: ArrayLike) -> NDArray[np.float64]:
    """Recall (sensitivity) of each class: the fraction of its samples predicted as it.

    Parameters
    ----------
    labels : array_like, shape (n,)
        True class indices in ``0..K-1``.
    probs : array_like, shape (n, K) or (n,)
        Class probabilities (``K >= 2`` columns), or P(class 1) when 1-D. The
        prediction is ``argmax`` (ties go to the lower class index).

    Returns
    -------
    numpy.ndarray of float64, shape (K,)
        Recall of classes ``0..K-1``, equal to ``sklearn.metrics.recall_score(labels,
        preds, average=None, labels=range(K))`` for the classes present; nan for a class
        absent from ``labels`` (scikit-learn reports 0 with a warning). For ``K = 2``
        it is ``[specificity, sensitivity]``; its mean over the non-nan entries is the
        ``balanced_accuracy`` of :func:`classification_metrics`.

    Raises
    ------
    ValueError
        On invalid inputs, as for :func:`classification_metrics`.

    Examples
    --------
    >>> probs = [[0.7, 0.2, 0.1, 0.0], [0.3, 0.5, 0.2, 0.0], [0.2, 0.6, 0.1, 0.1],
    ...          [0.2, 0.1, 0.6, 0.1], [0.1, 0.3, 0.5, 0.1], [0.5, 0.2, 0.2, 0.1]]
    >>> per_class_recall(labels=[0, 0, 1, 2, 2, 2], probs=probs).round(4).tolist()
    [0.5, 1.0, 0.6667, nan]
    """
    y, p2 = _check_inputs(labels, probs)
    k = p2.shape[1]
    hit = (np.argmax(p2, axis=1) == y).astype(np.float64)
    sizes = np.bincount(y, minlength=k).astype(np.float64)
    hits = np.bincount(y, weights=hit, minlength=k)
    return _safe_ratio(hits, sizes)
