"""Temperature scaling: one scalar that makes a classifier's softmax honest about its confidence.

Guo et al. (2017), "On Calibration of Modern Neural Networks": divide the logits by a single
temperature ``T > 0`` fitted on held-out (validation) data by minimising the negative
log-likelihood. ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an
under-confident one; the argmax, hence accuracy, sensitivity and specificity at the 0.5
operating point of a binary model, never changes.

* :func:`fit_temperature` -- the NLL-optimal temperature on validation logits.
* :func:`apply_temperature` -- ``softmax(logits / T)``, numerically stable, in float64.

Fit on a validation split and apply to the test split: a temperature fitted on the test
data makes the test calibration look better than it will be on new patients.

Everything here is plain NumPy, in float64, and deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medrobust.metrics import _as_class_indices

__all__ = ["apply_temperature", "fit_temperature"]

_DEFAULT_BOUNDS = (0.05, 20.0)
# The optimum of the inverse temperature is found to this relative precision (far below
# anything that changes a probability in the float32 a model produces).
_BETA_RTOL = 1e-12
_MAX_ITER = 200


# --------------------------------------------------------------------------- validation


def _as_logits(logits: ArrayLike) -> NDArray[np.float64]:
    """``logits`` as a finite ``(n, K)`` float64 array, ``K >= 2``."""
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"logits must be numeric, got {type(logits).__name__}: {exc}") from exc
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(
            f"logits must have shape (n, K) with K >= 2 (one column per class); got shape {z.shape}"
        )
    if z.shape[0] == 0:
        raise ValueError("logits is empty; at least one sample is needed")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contains NaN or infinite values")
    return z


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bounds must be a pair (lower, upper) of temperatures, got {bounds!r}") from exc
    if not (0.0 < lo < hi < math.inf):
        raise ValueError(f"bounds must satisfy 0 < lower < upper < inf, got {bounds!r}")
    return lo, hi


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}") from exc
    if not (0.0 < t < math.inf):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


# --------------------------------------------------------------------------- numerics


def _softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _nll(z: NDArray[np.float64], y: NDArray[np.int64], beta: float) -> float:
    """Mean NLL of ``softmax(beta * z)`` (log-sum-exp form, no overflow)."""
    s = beta * z
    m = s.max(axis=1)
    lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
    return float(np.mean(lse - s[np.arange(s.shape[0]), y]))


def _derivatives(
    z: NDArray[np.float64], y: NDArray[np.int64], beta: float
) -> tuple[float, float]:
    """First and second derivative in ``beta`` of the mean NLL of ``softmax(beta * z)``.

    ``d/dbeta = mean(E_p[z] - z_y)`` and ``d2/dbeta2 = mean(Var_p[z]) >= 0`` with
    ``p = softmax(beta * z)`` row by row: the NLL is convex in the inverse temperature.
    """
    p = _softmax(beta * z)
    mean_z = np.sum(p * z, axis=1)
    grad = float(np.mean(mean_z - z[np.arange(z.shape[0]), y]))
    var_z = np.sum(p * (z - mean_z[:, None]) ** 2, axis=1)
    return grad, float(np.mean(var_z))


def _argmin_beta(z: NDArray[np.float64], y: NDArray[np.int64], lo: float, hi: float) -> float:
    """The minimiser of the convex NLL over ``beta`` in ``[lo, hi]``.

    Safeguarded Newton on the (non-decreasing) derivative: a Newton step is taken when it
    stays inside the current bracket, bisection otherwise, so it cannot diverge and ends
    within ``_BETA_RTOL`` of the root. A derivative that does not change sign puts the
    optimum on the nearer bound.
    """
    g_lo, _ = _derivatives(z, y, lo)
    if g_lo >= 0.0:
        return lo
    g_hi, _ = _derivatives(z, y, hi)
    if g_hi <= 0.0:
        return hi
    a, b = lo, hi
    beta = min(max(1.0, a), b)
    for _ in range(_MAX_ITER):
        g, h = _derivatives(z, y, beta)
        if g == 0.0:
            return beta
        if g < 0.0:
            a = beta
        else:
            b = beta
        step = beta - g / h if h > 0.0 else math.nan
        new = step if a < step < b else 0.5 * (a + b)
        if abs(new - beta) <= _BETA_RTOL * max(1.0, abs(new)) or b - a <= _BETA_RTOL * b:
            return new
        beta = new
    return beta


# --------------------------------------------------------------------------- public API


def fit_temperature(
    *,
    logits: ArrayLike,
    labels: ArrayLike,
    bounds: tuple[float, float] = _DEFAULT_BOUNDS,
) -> float:
    """The temperature ``T`` that minimises the mean NLL of ``softmax(logits / T)``.

    The NLL is convex in the inverse temperature ``1 / T`` (its second derivative is the
    mean variance of the logits under the softmax), so the optimum is unique; it is found
    in float64 by a safeguarded Newton iteration on ``1 / T``, deterministically.

    Parameters
    ----------
    logits : array_like, shape (n, K)
        Pre-softmax outputs of a classifier on held-out (validation) data, ``K >= 2``.
        For a binary model with one output ``z`` (P(class 1) = sigmoid(z)), pass
        ``np.stack([np.zeros_like(z), z], axis=1)``.
    labels : array_like, shape (n,)
        True class indices in ``0..K-1``.
    bounds : tuple of float, default (0.05, 20.0)
        Lower and upper temperature searched, ``0 < lower < upper``. When the NLL keeps
        falling towards a bound (e.g. every validation sample is classified correctly, so
        sharpening without end lowers the NLL), that bound is returned.

    Returns
    -------
    float
        The fitted temperature ``T > 0``: above 1 for an over-confident model, below 1
        for an under-confident one. 1.0 when every row of ``logits`` is constant (the
        softmax is uniform whatever ``T``).

    Raises
    ------
    ValueError
        If ``logits`` is not a finite ``(n, K)`` array with ``K >= 2``, there are fewer
        than two samples, ``labels`` does not hold ``n`` class indices in ``0..K-1``, or
        ``bounds`` is not ``0 < lower < upper < inf``.

    Examples
    --------
    Four identical confident calls (logit margin 2), of which three are right: the
    temperature that minimises the NLL makes P(top class) exactly 3/4, i.e.
    ``2 / T = ln 3``.

    >>> import math
    >>> logits = [[2.0, 0.0]] * 4
    >>> t = fit_temperature(logits=logits, labels=[0, 0, 0, 1])
    >>> round(t, 6), round(2.0 / math.log(3.0), 6)
    (1.820478, 1.820478)
    >>> round(float(apply_temperature(logits=logits, temperature=t)[0, 0]), 6)
    0.75

    Every call right: sharpening always lowers the NLL, so the lower bound comes back.

    >>> fit_temperature(logits=[[2.0, 0.0], [0.0, 2.0]], labels=[0, 1])
    0.05
    """
    z = _as_logits(logits)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"at least 2 samples are needed to fit a temperature, got {n}")
    y = _as_class_indices(
        labels, name="labels", k=z.shape[1], n=n, n_source=f"logits has {n} rows"
    )
    lo, hi = _check_bounds(bounds)
    if np.all(z == z[:, :1]):
        return 1.0
    beta = _argmin_beta(z, y, 1.0 / hi, 1.0 / lo)
    return float(min(max(1.0 / beta, lo), hi))


def apply_temperature(*, logits: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """Temperature-scaled probabilities ``softmax(logits / temperature)``.

    Parameters
    ----------
    logits : array_like, shape (n, K)
        Pre-softmax outputs, ``K >= 2``.
    temperature : float
        ``T > 0``, e.g. from :func:`fit_temperature`.

    Returns
    -------
    numpy.ndarray of float64, shape (n, K)
        Rows sum to 1; the row-wise argmax is that of ``logits``. Computed with the row
        maximum subtracted first, so large logits do not overflow.

    Raises
    ------
    ValueError
        If ``logits`` is not a finite ``(n, K)`` array with ``K >= 2`` or ``temperature``
        is not a positive finite number.

    Examples
    --------
    >>> p = apply_temperature(logits=[[2.0, 0.0], [1000.0, 0.0]], temperature=2.0)
    >>> p.round(4).tolist()
    [[0.7311, 0.2689], [1.0, 0.0]]
    """
    z = _as_logits(logits)
    t = _check_temperature(temperature)
    return _softmax(z / t)
