"""Tests for medrobust.calibrate: temperature scaling against netcal, plus properties."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medrobust import calibrate
from medrobust.calibrate import apply_temperature, fit_temperature


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = apply_temperature(logits=logits, temperature=t)
    return float(-np.mean(np.log(p[np.arange(y.size), y])))


def make_logits(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); the model reports ``scale`` times them.

    ``scale > 1`` is an over-confident model (best temperature near ``scale``), ``scale < 1``
    an under-confident one.
    """
    rng = np.random.default_rng([n, k, seed, int(scale * 100)])
    true = rng.normal(0.0, 1.5, size=(n, k)) + rng.normal(0.0, 0.5, size=(1, k))
    p = softmax(true)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return scale * true, y.astype(np.int64)


GOLDEN = [
    (2, 3.0, 0), (2, 0.3, 1), (2, 1.0, 2),
    (3, 2.5, 0), (3, 0.4, 1),
    (4, 1.7, 2), (4, 0.6, 3),
    (5, 3.0, 4), (5, 0.5, 5),
]


# --------------------------------------------------------------------------- golden values


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pyro, inside netcal
@pytest.mark.parametrize(("k", "scale", "seed"), GOLDEN)
def test_matches_netcal_temperature_scaling(k, scale, seed):
    """netcal 1.4.0's TemperatureScaling (MLE, scipy L-BFGS-B) finds the same optimum.

    netcal takes probabilities, not logits: binary input is the 1-D P(class 1), turned into
    logit(p1) = z1 - z0; multiclass input is (n, K) softmax output, turned into log p =
    z - logsumexp(z), a per-row shift the softmax ignores. Its fitted parameter
    (``.temperature``, an alias of ``.weights``) *multiplies* those logits, so it is the
    inverse temperature 1 / T, unbounded.
    """
    pytest.importorskip("netcal")
    from netcal.scaling import TemperatureScaling

    logits, y = make_logits(600, k, scale, seed)
    probs = softmax(logits)
    ref = TemperatureScaling(method="mle")
    ref.fit(probs[:, 1] if k == 2 else probs, y)
    t_ref = 1.0 / float(np.asarray(ref.temperature).ravel()[0])

    t = fit_temperature(logits=logits, labels=y)
    assert t == pytest.approx(t_ref, rel=1e-3)
    # Ours is the exact optimum: never a worse NLL than the reference's.
    assert nll(logits, y, t) <= nll(logits, y, t_ref) + 1e-12
    # Over-/under-confidence is detected in the right direction.
    if scale > 1.5:
        assert t > 1.0
    elif scale < 0.7:
        assert t < 1.0


def test_optimum_is_the_grid_minimum():
    """A fine grid search in log T does not find a lower NLL than the fitted T."""
    logits, y = make_logits(400, 4, 2.0, 7)
    t = fit_temperature(logits=logits, labels=y)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 4001))
    best = min(nll(logits, y, g) for g in grid)
    assert nll(logits, y, t) <= best + 1e-12
    # and the derivative in 1/T vanishes there
    h = 1e-6
    beta = 1.0 / t
    slope = (nll(logits, y, 1.0 / (beta + h)) - nll(logits, y, 1.0 / (beta - h))) / (2 * h)
    assert abs(slope) < 1e-6


def test_binary_single_logit_equals_logistic_fit():
    """For a one-output binary model, [0, z] logits give the 1-parameter logistic MLE."""
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 3.0, size=300)
    y = (rng.uniform(size=300) < 1.0 / (1.0 + np.exp(-z / 2.5))).astype(int)
    t = fit_temperature(logits=np.stack([np.zeros_like(z), z], axis=1), labels=y)
    # First-order condition of the logistic likelihood in beta = 1/T.
    p = 1.0 / (1.0 + np.exp(-z / t))
    assert abs(np.mean((p - y) * z)) < 1e-9


def test_bounds_are_respected_and_returned_at_the_edge():
    separable = np.array([[3.0, 0.0], [0.0, 3.0], [5.0, 1.0], [1.0, 4.0]])
    assert fit_temperature(logits=separable, labels=[0, 1, 0, 1]) == 0.05
    assert fit_temperature(logits=separable, labels=[0, 1, 0, 1], bounds=(0.2, 5.0)) == 0.2
    # labels opposite to every call: flatten as far as allowed
    assert fit_temperature(logits=separable, labels=[1, 0, 1, 0], bounds=(0.2, 5.0)) == 5.0


def test_constant_rows_give_temperature_one():
    assert fit_temperature(logits=np.full((5, 3), 2.0), labels=[0, 1, 2, 0, 1]) == 1.0


def test_deterministic_and_float_input_independent():
    logits, y = make_logits(300, 3, 2.0, 11)
    a = fit_temperature(logits=logits, labels=y)
    b = fit_temperature(logits=logits.tolist(), labels=y.astype(float))
    assert a == b


def test_apply_temperature_is_stable_for_huge_logits():
    p = apply_temperature(logits=[[1e6, 0.0, -1e6], [-800.0, -800.0, -800.0]], temperature=0.1)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


def test_doctests():
    result = doctest.testmod(calibrate, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- properties

logit_grid = st.integers(-1600, 1600).map(lambda i: i / 100.0)  # 0.01 steps in [-16, 16]


@st.composite
def logits_and_labels(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(2, 40))
    z = np.array(draw(st.lists(logit_grid, min_size=n * k, max_size=n * k))).reshape(n, k)
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return z, y


@settings(max_examples=80, deadline=None)
@given(data=logits_and_labels())
def test_fitted_temperature_never_increases_nll(data):
    z, y = data
    t = fit_temperature(logits=z, labels=y)
    assert 0.05 <= t <= 20.0
    assert nll(z, y, t) <= nll(z, y, 1.0) + 1e-9


@settings(max_examples=60, deadline=None)
@given(data=logits_and_labels(), c=st.floats(0.25, 4.0))
def test_scaling_logits_scales_the_temperature(data, c):
    z, y = data
    assume(not np.all(z == z[:, :1]))  # constant rows: every T is optimal (1.0 is returned)
    t = fit_temperature(logits=z, labels=y, bounds=(1e-3, 1e3))
    assume(0.01 < t < 100.0)  # an interior optimum, away from the bounds
    t_c = fit_temperature(logits=c * z, labels=y, bounds=(1e-3, 1e3))
    assert t_c == pytest.approx(c * t, rel=1e-6)


@settings(max_examples=80, deadline=None)
@given(data=logits_and_labels(), t=st.floats(0.05, 20.0))
def test_apply_temperature_rows_sum_to_one_and_keep_argmax(data, t):
    z, _ = data
    p = apply_temperature(logits=z, temperature=t)
    assert p.dtype == np.float64 and p.shape == z.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(p.argmax(axis=1), z.argmax(axis=1))


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": [1.0, 2.0], "labels": [0, 1]}, "shape \\(n, K\\)"),
        ({"logits": [[1.0], [2.0]], "labels": [0, 0]}, "K >= 2"),
        ({"logits": [[1.0, 0.0]], "labels": [0]}, "at least 2 samples"),
        ({"logits": [[1.0, np.nan], [0.0, 1.0]], "labels": [0, 1]}, "NaN or infinite"),
        ({"logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 2]}, "0..1"),
        ({"logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1, 1]}, "3 entries"),
        ({"logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1], "bounds": (0.0, 2.0)}, "0 < lower"),
        ({"logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1], "bounds": (3.0, 2.0)}, "0 < lower"),
        ({"logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1], "bounds": 2.0}, "pair"),
        ({"logits": "abc", "labels": [0, 1]}, "numeric"),
    ],
)
def test_fit_temperature_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        fit_temperature(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, math.nan, "x", True])
def test_apply_temperature_rejects_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature must be a positive finite number") as info:
        apply_temperature(logits=[[1.0, 0.0]], temperature=t)
    assert "\n" not in str(info.value)
