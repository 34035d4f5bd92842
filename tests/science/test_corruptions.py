"""Tests for medrobust.corruptions: agreement with skimage in distribution, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.util import random_noise

from medrobust.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    apply_corruption,
    gaussian_noise,
    salt_and_pepper,
    speckle_noise,
)

# Keep the file well under a minute on a busy 2-core machine.
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None)

# Several identical 256 x 256 images: ~0.5 M pixels keep the standard errors of the compared
# statistics around 1e-3 while each call stays in the millisecond range.
N_IMAGES, SIDE = 8, 256
Z = 5.0  # tolerance in standard errors; the seeds are fixed, so the tests are deterministic


def _gradient_image() -> np.ndarray:
    row = np.linspace(0.0, 1.0, SIDE)
    return np.broadcast_to(row, (N_IMAGES, SIDE, SIDE)).copy()


def _constant_image() -> np.ndarray:
    return np.full((N_IMAGES, SIDE, SIDE), 0.5)


IMAGES = {"gradient": _gradient_image, "constant": _constant_image}


def _torch_noise(image: np.ndarray, mode: str, param: float, seed: int) -> np.ndarray:
    x = torch.from_numpy(image).float().unsqueeze(1)
    g = torch.Generator().manual_seed(seed)
    if mode == "gaussian":
        y = gaussian_noise(x, var=param, generator=g)
    elif mode == "speckle":
        y = speckle_noise(x, var=param, generator=g)
    else:
        y = salt_and_pepper(x, amount=param, generator=g)
    return y.squeeze(1).double().numpy()


def _skimage_noise(image: np.ndarray, mode: str, param: float, seed: int) -> np.ndarray:
    if mode == "s&p":
        return random_noise(image, mode="s&p", amount=param, rng=seed)
    return random_noise(image, mode=mode, var=param, rng=seed)


def _assert_same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    """Means, standard deviations and fractions of exact 0s and 1s agree within Z standard
    errors (of the difference between the two independent estimates)."""
    a, b = a.ravel(), b.ravel()
    n = a.size

    def mean_sampling_var(v: np.ndarray) -> float:
        return v.var() / n

    def std_sampling_var(v: np.ndarray) -> float:
        # Var(sample variance) ~ (mu4 - sigma^4) / n; delta method: Var(s) ~ that / (4 sigma^2).
        c = v - v.mean()
        var_of_var = max((c**4).mean() - v.var() ** 2, 0.0) / n
        return var_of_var / max(4 * v.var(), 1e-300)

    tol_mean = Z * math.sqrt(mean_sampling_var(a) + mean_sampling_var(b))
    assert abs(a.mean() - b.mean()) <= tol_mean + 1e-12, (a.mean(), b.mean(), tol_mean)
    tol_std = Z * math.sqrt(std_sampling_var(a) + std_sampling_var(b))
    assert abs(a.std() - b.std()) <= tol_std + 1e-12, (a.std(), b.std(), tol_std)

    for value in (0.0, 1.0):
        pa, pb = (a == value).mean(), (b == value).mean()
        se = math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n)
        assert abs(pa - pb) <= Z * se + 1e-12, (value, pa, pb)


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("mode", ["gaussian", "speckle"])
@pytest.mark.parametrize("var", [0.01, 0.1, 0.5, 1.0])
def test_additive_and_speckle_match_skimage_in_distribution(
    image: str, mode: str, var: float
) -> None:
    img = IMAGES[image]()
    ours = _torch_noise(img, mode, var, seed=0)
    ref = _skimage_noise(img, mode, var, seed=0)
    _assert_same_distribution(ours, ref)


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("amount", [0.05, 0.3, 0.7, 1.0])
def test_salt_and_pepper_matches_skimage_in_distribution(image: str, amount: float) -> None:
    img = IMAGES[image]()
    ours = _torch_noise(img, "s&p", amount, seed=0)
    ref = _skimage_noise(img, "s&p", amount, seed=0)
    _assert_same_distribution(ours, ref)


@pytest.mark.parametrize("salt_vs_pepper", [0.0, 0.25, 1.0])
def test_salt_vs_pepper_matches_skimage(salt_vs_pepper: float) -> None:
    img = _constant_image()
    x = torch.from_numpy(img).float().unsqueeze(1)
    g = torch.Generator().manual_seed(1)
    ours = salt_and_pepper(x, amount=0.4, salt_vs_pepper=salt_vs_pepper, generator=g)
    ours = ours.squeeze(1).double().numpy()
    ref = random_noise(img, mode="s&p", amount=0.4, salt_vs_pepper=salt_vs_pepper, rng=1)
    _assert_same_distribution(ours, ref)
    # Pixels that were not replaced are untouched, as in skimage.
    assert set(np.unique(ours)) <= {0.0, 0.5, 1.0}


def test_salt_and_pepper_rates_on_constant_image() -> None:
    x = torch.full((N_IMAGES, 1, SIDE, SIDE), 0.5)
    g = torch.Generator().manual_seed(2)
    y = salt_and_pepper(x, amount=0.2, salt_vs_pepper=0.3, generator=g)
    n = y.numel()
    for value, p in ((1.0, 0.2 * 0.3), (0.0, 0.2 * 0.7), (0.5, 0.8)):
        frac = (y == value).float().mean().item()
        assert abs(frac - p) <= Z * math.sqrt(p * (1 - p) / n)


def test_severities_are_exact_rounded_floats() -> None:
    assert SEVERITIES == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_registry_names() -> None:
    assert set(CORRUPTIONS) == {"gaussian", "salt_and_pepper", "speckle"}


def test_registry_entries_use_severity_as_parameter() -> None:
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    direct = {
        "gaussian": lambda g: gaussian_noise(x, var=0.3, generator=g),
        "speckle": lambda g: speckle_noise(x, var=0.3, generator=g),
        "salt_and_pepper": lambda g: salt_and_pepper(x, amount=0.3, generator=g),
    }
    for name, fn in direct.items():
        a = apply_corruption(x, name=name, severity=0.3, generator=torch.Generator().manual_seed(5))
        b = fn(torch.Generator().manual_seed(5))
        assert torch.equal(a, b), name


images = st.tuples(
    st.integers(1, 3), st.integers(1, 2), st.integers(1, 12), st.integers(1, 12)
).flatmap(
    lambda shape: st.integers(0, 2**31 - 1).map(
        lambda seed: torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    )
)
names = st.sampled_from(sorted(CORRUPTIONS))
severities = st.floats(0.0, 1.0, allow_nan=False)
float_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@PROPERTY_SETTINGS
@given(x=images, name=names, severity=severities, dtype=float_dtypes, seed=st.integers(0, 2**32))
def test_output_in_unit_interval_same_shape_and_dtype(
    x: torch.Tensor, name: str, severity: float, dtype: torch.dtype, seed: int
) -> None:
    x = x.to(dtype)
    y = apply_corruption(
        x, name=name, severity=severity, generator=torch.Generator().manual_seed(seed)
    )
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


@PROPERTY_SETTINGS
@given(x=images, name=names, severity=severities, seed=st.integers(0, 2**32))
def test_seeded_runs_repeat_exactly(
    x: torch.Tensor, name: str, severity: float, seed: int
) -> None:
    a = apply_corruption(x, name=name, severity=severity, generator=torch.Generator().manual_seed(seed))
    b = apply_corruption(x, name=name, severity=severity, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@PROPERTY_SETTINGS
@given(
    name=names,
    severity=st.sampled_from(SEVERITIES),
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2, unique=True),
)
def test_different_seeds_differ(name: str, severity: float, seeds: list[int]) -> None:
    # Seeds stay below 2**32: the CPU generator (mt19937) keeps only the low 32 bits, so 0 and 2**32 coincide.
    # 1024 pixels of a mid-grey image: a coincidence between seeds has negligible probability.
    x = torch.full((1, 1, 32, 32), 0.5)
    a, b = (
        apply_corruption(x, name=name, severity=severity, generator=torch.Generator().manual_seed(s))
        for s in seeds
    )
    assert not torch.equal(a, b)


@PROPERTY_SETTINGS
@given(x=images, name=names)
def test_severity_zero_is_identity_copy(x: torch.Tensor, name: str) -> None:
    y = apply_corruption(x, name=name, severity=0.0)
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("fn", [gaussian_noise, speckle_noise])
@pytest.mark.parametrize("var", [-0.1, -1e-12, math.nan, math.inf])
def test_bad_variance_raises(fn, var: float) -> None:
    with pytest.raises(ValueError, match="var"):
        fn(torch.rand(1, 1, 4, 4), var=var)


@pytest.mark.parametrize("amount", [-0.01, 1.01, math.nan])
def test_bad_amount_raises(amount: float) -> None:
    with pytest.raises(ValueError, match="amount"):
        salt_and_pepper(torch.rand(1, 1, 4, 4), amount=amount)


@pytest.mark.parametrize("salt_vs_pepper", [-0.5, 2.0])
def test_bad_salt_vs_pepper_raises(salt_vs_pepper: float) -> None:
    with pytest.raises(ValueError, match="salt_vs_pepper"):
        salt_and_pepper(torch.rand(1, 1, 4, 4), amount=0.1, salt_vs_pepper=salt_vs_pepper)


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 1, 1, 4, 4)])
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_wrong_ndim_raises(shape: tuple[int, ...], name: str) -> None:
    with pytest.raises(ValueError, match="4 dims"):
        apply_corruption(torch.rand(shape), name=name, severity=0.1)


def test_integer_images_rejected() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_noise(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), var=0.1)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="gaussian.*salt_and_pepper.*speckle"):
        apply_corruption(torch.rand(1, 1, 4, 4), name="poisson", severity=0.1)


def test_negative_severity_via_registry_raises() -> None:
    with pytest.raises(ValueError):
        apply_corruption(torch.rand(1, 1, 4, 4), name="gaussian", severity=-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_cuda_seeded_and_in_range(name: str) -> None:
    x = torch.rand(2, 1, 64, 64, device="cuda")
    a, b = (
        apply_corruption(
            x, name=name, severity=0.5, generator=torch.Generator(device="cuda").manual_seed(3)
        )
        for _ in range(2)
    )
    assert a.device == x.device
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_generator_on_wrong_device_raises() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="device"):
        gaussian_noise(torch.rand(1, 1, 4, 4), var=0.1, generator=torch.Generator(device="cuda"))
