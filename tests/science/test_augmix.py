"""Tests for medrobust.augmix: JSD loss properties and reference agreement, AugMix properties."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medrobust.augmix import (
    AUGMIX_OPS,
    JSD_WEIGHT,
    AugMixConfig,
    _sample_mixing_weights,
    augmix,
    jsd_loss,
    jsd_per_sample,
)

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------- JSD


def _reference_jsd(logits: list[torch.Tensor]) -> torch.Tensor:
    """The AugMix reference loss term (without the factor 12), generalised to n views."""
    probs = [F.softmax(v, dim=1) for v in logits]
    p_mixture = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()
    return sum(F.kl_div(p_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def _reference_jsd_three_views(clean, aug1, aug2) -> torch.Tensor:
    """Verbatim from the AugMix repository's training loop (``loss += 12 * ...`` without 12)."""
    p_clean, p_aug1, p_aug2 = (
        F.softmax(clean, dim=1),
        F.softmax(aug1, dim=1),
        F.softmax(aug2, dim=1),
    )
    p_mixture = torch.clamp((p_clean + p_aug1 + p_aug2) / 3.0, 1e-7, 1).log()
    return (
        F.kl_div(p_mixture, p_clean, reduction="batchmean")
        + F.kl_div(p_mixture, p_aug1, reduction="batchmean")
        + F.kl_div(p_mixture, p_aug2, reduction="batchmean")
    ) / 3.0


@st.composite
def view_logits(draw, min_views: int = 2, max_views: int = 4) -> list[torch.Tensor]:
    n_views = draw(st.integers(min_views, max_views))
    n = draw(st.integers(1, 6))
    k = draw(st.integers(2, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    seed = draw(st.integers(0, 2**32))
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g) * scale for _ in range(n_views)]


@PROPERTY_SETTINGS
@given(logits=view_logits(), data=st.data())
def test_jsd_symmetric_under_permutation_of_views(logits, data) -> None:
    perm = data.draw(st.permutations(range(len(logits))))
    a = jsd_per_sample(logits)
    b = jsd_per_sample([logits[i] for i in perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@PROPERTY_SETTINGS
@given(logits=view_logits())
def test_jsd_between_zero_and_log_n_views(logits) -> None:
    jsd = jsd_per_sample(logits)
    assert jsd.shape == (logits[0].shape[0],)
    assert (jsd >= -1e-6).all()
    assert (jsd <= math.log(len(logits)) + 1e-5).all()


def test_jsd_upper_bound_is_attained_by_disjoint_one_hot_views() -> None:
    logits = [torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([[0.0, 100.0, 0.0]]),
              torch.tensor([[0.0, 0.0, 100.0]])]
    torch.testing.assert_close(jsd_per_sample(logits), torch.tensor([math.log(3)]), atol=1e-5, rtol=0)


@PROPERTY_SETTINGS
@given(logits=view_logits(), n_views=st.integers(2, 4))
def test_jsd_zero_for_identical_views(logits, n_views) -> None:
    jsd = jsd_per_sample([logits[0]] * n_views)
    torch.testing.assert_close(jsd, torch.zeros_like(jsd), rtol=0, atol=1e-6)


@PROPERTY_SETTINGS
@given(logits=view_logits())
def test_jsd_loss_matches_reference_batchmean(logits) -> None:
    torch.testing.assert_close(jsd_loss(logits), _reference_jsd(logits), rtol=1e-5, atol=1e-7)


@PROPERTY_SETTINGS
@given(logits=view_logits(min_views=3, max_views=3))
def test_jsd_loss_matches_verbatim_reference_for_three_views(logits) -> None:
    expected = _reference_jsd_three_views(*logits)
    torch.testing.assert_close(jsd_loss(logits), expected, rtol=1e-5, atol=1e-7)


@PROPERTY_SETTINGS
@given(logits=view_logits())
def test_all_ones_sample_weight_equals_unweighted(logits) -> None:
    ones = torch.ones(logits[0].shape[0])
    torch.testing.assert_close(
        jsd_loss(logits, sample_weight=ones), jsd_loss(logits), rtol=1e-6, atol=1e-7
    )
    # Weights are normalised, so their scale does not matter.
    torch.testing.assert_close(
        jsd_loss(logits, sample_weight=3.5 * ones), jsd_loss(logits), rtol=1e-6, atol=1e-7
    )


def test_one_hot_sample_weight_selects_that_sample() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, generator=g) for _ in range(3)]
    weight = torch.tensor([0.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(jsd_loss(logits, sample_weight=weight), jsd_per_sample(logits)[2])


def test_jsd_float32_under_autocast_and_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, generator=g).bfloat16().requires_grad_() for _ in range(3)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        jsd = jsd_per_sample(logits)
        loss = JSD_WEIGHT * jsd_loss(logits)
    assert jsd.dtype == torch.float32
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in logits)


def test_jsd_weight_constant() -> None:
    assert JSD_WEIGHT == 12.0


@pytest.mark.parametrize(
    "logits",
    [
        [torch.randn(2, 3)],  # one view
        [torch.randn(2, 3), torch.randn(2, 4)],  # mismatched classes
        [torch.randn(2, 3, 1), torch.randn(2, 3, 1)],  # not (N, K)
        torch.randn(3, 2, 4),  # stacked tensor instead of a sequence
    ],
)
def test_jsd_bad_logits_raise(logits) -> None:
    with pytest.raises(ValueError):
        jsd_per_sample(logits)


def test_jsd_bad_sample_weight_shape_raises() -> None:
    logits = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match="sample_weight"):
        jsd_loss(logits, sample_weight=torch.ones(3))


# --------------------------------------------------------------------------- AugMix

images = st.tuples(
    st.integers(1, 4), st.integers(1, 2), st.integers(2, 12), st.integers(2, 12)
).flatmap(
    lambda shape: st.integers(0, 2**31 - 1).map(
        lambda seed: torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    )
)
op_sets = st.lists(st.sampled_from(sorted(AUGMIX_OPS)), min_size=1, max_size=4, unique=True).map(
    tuple
)
configs = st.builds(
    AugMixConfig,
    ops=op_sets,
    width=st.integers(1, 4),
    depth=st.sampled_from([-1, 1, 2, 3]),
    alpha=st.sampled_from([1.0, 0.5, 2.0]),
)


@PROPERTY_SETTINGS
@given(
    x=images,
    config=configs,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**32),
)
def test_augmix_shape_dtype_range(x, config, dtype, seed) -> None:
    x = x.to(dtype)
    y = augmix(x, **dataclasses.asdict(config), generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


@PROPERTY_SETTINGS
@given(x=images, config=configs, seed=st.integers(0, 2**32))
def test_augmix_seeded_repeat(x, config, seed) -> None:
    kwargs = dataclasses.asdict(config)
    a = augmix(x, **kwargs, generator=torch.Generator().manual_seed(seed))
    b = augmix(x, **kwargs, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


def test_augmix_different_seeds_differ() -> None:
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a = augmix(x, generator=torch.Generator().manual_seed(1))
    b = augmix(x, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_augmix_samples_in_a_batch_are_mixed_independently() -> None:
    one = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = augmix(one.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    assert len({tuple(img.flatten().tolist()) for img in y}) > 1


@PROPERTY_SETTINGS
@given(
    x=images,
    width=st.integers(1, 4),
    depth=st.sampled_from([-1, 1, 3]),
    alpha=st.sampled_from([1.0, 0.3]),
    seed=st.integers(0, 2**32),
)
def test_flip_only_augmix_preserves_mean_intensity(x, width, depth, alpha, seed) -> None:
    # Each chain output is a flip of x, so the result is a convex combination of images with
    # x's mean: the per-image (and per-channel) mean is preserved up to rounding.
    x = x.double()
    y = augmix(
        x, ops=("hflip", "vflip"), width=width, depth=depth, alpha=alpha,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.testing.assert_close(y.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), rtol=0, atol=1e-12)


def test_flip_only_augmix_leaves_flip_symmetric_images_unchanged() -> None:
    half = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top = torch.cat([half, half.flip(-1)], dim=-1)
    x = torch.cat([top, top.flip(-2)], dim=-2)
    y = augmix(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(AUGMIX_OPS))
def test_each_op_shape_range_and_border_padding(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 12, 20, generator=g)
    y = AUGMIX_OPS[name](x, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    # A constant image stays constant: no zero-padded borders or corners appear.
    c = torch.full((4, 1, 12, 20), 0.7)
    torch.testing.assert_close(AUGMIX_OPS[name](c, g), c, rtol=0, atol=1e-6)


def test_mixing_weights_distribution() -> None:
    # Dirichlet(alpha): each of k components has mean 1/k and variance
    # (1/k)(1 - 1/k)/(k alpha + 1); Beta(alpha, alpha): mean 1/2, variance 1/(4 (2 alpha + 1)).
    n, k = 20000, 3
    for alpha in (1.0, 0.5):
        w, m = _sample_mixing_weights(
            n, width=k, alpha=alpha, generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"), dtype=torch.float64,
        )
        assert w.shape == (n, k) and m.shape == (n,)
        torch.testing.assert_close(w.sum(dim=1), torch.ones(n, dtype=torch.float64))
        assert (w >= 0).all() and (m >= 0).all() and (m <= 1).all()
        w_var = (1 / k) * (1 - 1 / k) / (k * alpha + 1)
        assert (w.mean(dim=0) - 1 / k).abs().max() < 5 * math.sqrt(w_var / n)
        assert (w.var(dim=0) - w_var).abs().max() < 0.05 * w_var
        m_var = 1 / (4 * (2 * alpha + 1))
        assert abs(m.mean().item() - 0.5) < 5 * math.sqrt(m_var / n)
        assert abs(m.var().item() - m_var) < 0.05 * m_var


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ops": ("hflip", "shear")}, "shear"),
        ({"ops": ()}, "at least one"),
        ({"ops": "hflip"}, "sequence"),
        ({"width": 0}, "width"),
        ({"depth": 0}, "depth"),
        ({"depth": -2}, "depth"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
    ],
)
def test_bad_config_raises(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AugMixConfig(**kwargs).validate()
    with pytest.raises(ValueError, match=match):
        augmix(torch.rand(1, 1, 4, 4), **kwargs)


def test_default_config_is_valid_and_matches_augmix_defaults() -> None:
    config = AugMixConfig()
    config.validate()
    assert config == AugMixConfig(ops=("hflip", "vflip"), width=3, depth=-1, alpha=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 2  # type: ignore[misc]


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4)])
def test_augmix_wrong_ndim_raises(shape) -> None:
    with pytest.raises(ValueError, match="4 dims"):
        augmix(torch.rand(shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_augmix_cuda_seeded(alpha: float) -> None:
    x = torch.rand(4, 1, 32, 32, device="cuda")
    kwargs = dict(ops=tuple(AUGMIX_OPS), alpha=alpha)
    a = augmix(x, **kwargs, generator=torch.Generator(device="cuda").manual_seed(0))
    b = augmix(x, **kwargs, generator=torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
