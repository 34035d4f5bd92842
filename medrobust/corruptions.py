"""Pixel-noise corruptions with :func:`skimage.util.random_noise` semantics, batched in torch.

Images are float tensors of shape ``(N, C, H, W)`` with values in ``[0, 1]``. Every function
here draws all of its randomness from the ``generator`` argument, so a seeded generator repeats
a corruption exactly; the generator must live on the same device as the images.

Only the unsigned-image branch of ``random_noise`` is reproduced: the output is clipped to
``[0, 1]`` and pepper is ``0``. (skimage switches to ``[-1, 1]`` when it sees a negative pixel,
which never happens for valid inputs here.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "CorruptionFn",
    "apply_corruption",
    "gaussian_noise",
    "salt_and_pepper",
    "speckle_noise",
]

CorruptionFn = Callable[[Tensor, float, torch.Generator | None], Tensor]
"""Registry signature: ``f(x, severity, generator) -> corrupted x``."""

# Rounded so that e.g. 0.3 is the literal 0.3 rather than 3 * 0.1 = 0.30000000000000004; the
# severities end up in result tables and file names, where the long form is a nuisance.
SEVERITIES: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))


def _check_images(x: Tensor, generator: torch.Generator | None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"x must have shape (N, C, H, W) (4 dims), got {x.ndim} dims with shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point image tensor in [0, 1], got dtype {x.dtype}; "
            "convert integer images with x.float() / 255 (or the appropriate maximum)"
        )
    # torch's own error for this ("Expected a 'cuda' device type for generator") does not say
    # which argument is wrong, so catch the common mistake here.
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on device {generator.device} but x is on {x.device}; create it with "
            f"torch.Generator(device=x.device)"
        )


def _check_real(value: float, name: str) -> float:
    # bool is an int subclass; True as a variance is almost certainly a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_variance(var: float) -> float:
    var = _check_real(var, "var")
    if var < 0:
        raise ValueError(f"var is a variance and must be >= 0, got {var}")
    return var


def _check_probability(value: float, name: str) -> float:
    value = _check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability and must lie in [0, 1], got {value}")
    return value


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half-precision noise is visibly wrong: bf16 has 8 bits of mantissa, so `rand() <= amount`
    # would be biased and Gaussian tails quantised. Draw and add in at least float32.
    return torch.promote_types(x.dtype, torch.float32)


def gaussian_noise(
    x: Tensor, *, var: float, generator: torch.Generator | None = None
) -> Tensor:
    """Add zero-mean Gaussian noise and clip to ``[0, 1]``.

    Equivalent in distribution to ``skimage.util.random_noise(x, mode="gaussian", var=var)``
    for images in ``[0, 1]``.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, C, H, W)``, floating point, values in ``[0, 1]``.
    var : float
        Variance of the noise (the standard deviation is ``sqrt(var)``); must be ``>= 0``.
    generator : torch.Generator, optional
        Source of all randomness; must be on ``x.device``. ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor
        ``clip(x + N(0, var), 0, 1)`` with the shape and dtype of ``x``. For ``var == 0`` a
        copy of ``x``.

    Raises
    ------
    ValueError
        If ``var`` is negative or not finite, ``x`` is not 4-D, or ``generator`` is on another
        device.
    """
    _check_images(x, generator)
    var = _check_variance(var)
    if var == 0.0:
        return x.clone()
    dtype = _compute_dtype(x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
    out = x.to(dtype) + noise * math.sqrt(var)
    return out.clamp_(0.0, 1.0).to(x.dtype)


def speckle_noise(
    x: Tensor, *, var: float, generator: torch.Generator | None = None
) -> Tensor:
    """Add multiplicative Gaussian (speckle) noise and clip to ``[0, 1]``.

    Equivalent in distribution to ``skimage.util.random_noise(x, mode="speckle", var=var)``
    for images in ``[0, 1]``.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, C, H, W)``, floating point, values in ``[0, 1]``.
    var : float
        Variance of the multiplicative noise ``n``; must be ``>= 0``.
    generator : torch.Generator, optional
        Source of all randomness; must be on ``x.device``. ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor
        ``clip(x + x * n, 0, 1)`` with ``n ~ N(0, var)``, with the shape and dtype of ``x``.
        For ``var == 0`` a copy of ``x``.

    Raises
    ------
    ValueError
        If ``var`` is negative or not finite, ``x`` is not 4-D, or ``generator`` is on another
        device.
    """
    _check_images(x, generator)
    var = _check_variance(var)
    if var == 0.0:
        return x.clone()
    dtype = _compute_dtype(x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
    x_c = x.to(dtype)
    out = x_c + x_c * (noise * math.sqrt(var))
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _bernoulli(
    p: float,
    shape: torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    # Mirrors skimage's _bernoulli: p == 0 and p == 1 are exact and draw nothing. Without the
    # p == 0 case `rand() <= 0` would still fire whenever rand() returns exactly 0.
    if p == 0.0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    if p == 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype) <= p


def salt_and_pepper(
    x: Tensor,
    *,
    amount: float,
    salt_vs_pepper: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace random pixels with salt (``1``) or pepper (``0``).

    Follows ``skimage.util.random_noise(x, mode="s&p", amount=amount,
    salt_vs_pepper=salt_vs_pepper)`` (skimage 0.26): every element is independently flipped with
    probability ``amount``; a flipped element becomes ``1`` with probability ``salt_vs_pepper``
    and ``0`` otherwise; the result is clipped to ``[0, 1]``. As in skimage, the flip mask and the
    salt mask are two independent full-size draws, in that order, and a probability of exactly
    0 or 1 draws nothing.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, C, H, W)``, floating point, values in ``[0, 1]``.
    amount : float
        Probability in ``[0, 1]`` that an element is replaced.
    salt_vs_pepper : float, default 0.5
        Probability in ``[0, 1]`` that a replaced element is salt rather than pepper.
    generator : torch.Generator, optional
        Source of all randomness; must be on ``x.device``. ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor
        The corrupted images, with the shape and dtype of ``x``. For ``amount == 0`` a copy of
        ``x``.

    Raises
    ------
    ValueError
        If ``amount`` or ``salt_vs_pepper`` lies outside ``[0, 1]``, ``x`` is not 4-D, or
        ``generator`` is on another device.
    """
    _check_images(x, generator)
    amount = _check_probability(amount, "amount")
    salt_vs_pepper = _check_probability(salt_vs_pepper, "salt_vs_pepper")
    if amount == 0.0:
        return x.clone()
    dtype = _compute_dtype(x)
    kwargs = dict(generator=generator, device=x.device, dtype=dtype)
    flipped = _bernoulli(amount, x.shape, **kwargs)
    salted = _bernoulli(salt_vs_pepper, x.shape, **kwargs)
    out = x.to(dtype)
    out = torch.where(flipped & salted, 1.0, out)
    out = torch.where(flipped & ~salted, 0.0, out)
    # skimage clips after s&p too; a no-op for valid inputs, kept so out-of-range inputs behave
    # the same as there.
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _gaussian_entry(x: Tensor, severity: float, generator: torch.Generator | None) -> Tensor:
    return gaussian_noise(x, var=severity, generator=generator)


def _salt_and_pepper_entry(
    x: Tensor, severity: float, generator: torch.Generator | None
) -> Tensor:
    return salt_and_pepper(x, amount=severity, generator=generator)


def _speckle_entry(x: Tensor, severity: float, generator: torch.Generator | None) -> Tensor:
    return speckle_noise(x, var=severity, generator=generator)


CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian": _gaussian_entry,
    "salt_and_pepper": _salt_and_pepper_entry,
    "speckle": _speckle_entry,
}
"""Corruption registry. ``severity`` is the variance for ``"gaussian"`` and ``"speckle"`` and
the replaced fraction (``amount``, equal salt and pepper) for ``"salt_and_pepper"``."""


def apply_corruption(
    x: Tensor,
    *,
    name: str,
    severity: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply the registered corruption ``name`` at ``severity``.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, C, H, W)``, floating point, values in ``[0, 1]``.
    name : str
        A key of :data:`CORRUPTIONS`.
    severity : float
        Noise variance (``"gaussian"``, ``"speckle"``) or replaced fraction
        (``"salt_and_pepper"``); usually one of :data:`SEVERITIES`. ``0`` returns a copy of ``x``.
    generator : torch.Generator, optional
        Source of all randomness; must be on ``x.device``. ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor
        The corrupted images, with the shape and dtype of ``x``.

    Raises
    ------
    ValueError
        If ``name`` is not registered, or ``severity`` is invalid for that corruption.
    """
    try:
        fn = CORRUPTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown corruption {name!r}; valid names are {sorted(CORRUPTIONS)}"
        ) from None
    return fn(x, severity, generator)
