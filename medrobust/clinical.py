"""Clinically graded corruptions: nine acquisition and transmission faults, five severity levels each.

The algorithms and the parameter semantics are those of MedMNIST-C (Di Salvo et al., 2024; PyPI
``medmnistc`` 0.1.0, ``medmnistc/corruptions/*.py``), reimplemented in torch on float images of
shape ``(N, 1, H, W)`` in ``[0, 1]``, batched, with all randomness drawn from a ``torch.Generator``.
A level value from :data:`CLINICAL` can be passed unchanged to the matching MedMNIST-C class
(``tests/science/test_clinical.py`` compares the two at the same parameter). Name: parameter, in
MedMNIST-C's units -> MedMNIST-C class (its registry key):

- ``gaussian_noise``: std ``sigma`` in pixel units, ``clip(x + sigma * N(0, 1))``
  -> ``noise.GaussianNoise`` (``gaussian_noise``).
- ``speckle_noise``: std ``sigma`` of the multiplicative noise, ``clip(x + x * sigma * N(0, 1))``
  -> ``noise.SpeckleNoise`` (``speckle_noise``).
- ``salt_and_pepper``: ``amount``, the probability that a pixel becomes 0 or 1 (half each),
  ``skimage.util.random_noise(mode="s&p")`` -> ``noise.ImpulseNoise`` (``impulse_noise``).
- ``poisson_noise``: photon count at full white ``mult`` (fewer is noisier),
  ``clip(Poisson(x * mult) / mult)`` -> ``noise.ShotNoise`` (``shot_noise``).
- ``gaussian_blur``: odd kernel size ``k``, sigma ``0.15 k + 0.35``, reflect padding
  (torchvision's ``gaussian_blur``) -> ``filter.GaussianBlur`` (``gaussian_blur``).
- ``contrast_reduction``: factor ``f`` (1 is clean), ``mean + f * (x - mean)`` per image (PIL's
  ``ImageEnhance.Contrast``) -> ``enhance.Contrast`` (``contrast_down``).
- ``gamma_shift``: exponent ``gamma`` (1 is clean), ``x ** gamma`` (torchvision's ``adjust_gamma``)
  -> ``enhance.GammaCorrection`` (``gamma_corr_up``).
- ``jpeg_compression``: JPEG ``quality``, an integer 1..100 (PIL's encoder)
  -> ``compression.JPEGCompression`` (``jpeg_compression``).
- ``resolution_loss``: resize ``factor`` in (0, 1]; PIL BOX resize to ``int(side * factor)`` and
  back -> ``compression.Pixelate`` (``pixelate``).

Differences from MedMNIST-C, all deliberate:

* Float in, float out. MedMNIST-C works on 8-bit PIL images and returns ``uint8``, truncating
  (``astype(np.uint8)``) rather than rounding in the noises, the contrast blend and the gamma
  table; here nothing is quantised except by JPEG, which is 8-bit by nature (the input is rounded
  to 8 bits before encoding). The deterministic corruptions therefore agree with MedMNIST-C's
  output to within its quantisation: 0.5/255 for blur (torchvision rounds), 1/255 for gamma and
  resolution loss (PIL rounds after each resampling pass), 1.5/255 for contrast (below), and
  exactly for JPEG on 8-bit images. The noises agree in distribution.
* Contrast blends towards the exact per-image mean, not the mean rounded to an 8-bit level.
* Randomness comes from ``generator`` (MedMNIST-C uses NumPy's global state for the Gaussian,
  speckle and shot noises and an ``rng`` attribute for the impulse noise); every pixel of every
  image of a batch gets an independent draw.
* Gaussian blur keeps reflecting (the periodic extension of torch's "reflect" padding) where the
  kernel is more than twice the image size, where torchvision raises.
* Resolution loss keeps at least one pixel per side (``max(1, int(side * factor))``), where PIL
  raises on a zero size. The BOX resampling is Pillow's (the plain mean of the input pixels whose
  centres fall in an output pixel), written as one matrix per axis, not ``F.interpolate(mode="area")``,
  which weights the edge pixels differently when the factor is not an integer.

Examples
--------
>>> import torch
>>> from medrobust.clinical import CLINICAL, clinical_corrupt
>>> CLINICAL["gaussian_blur"]
(11, 25, 41, 61, 81)
>>> x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
>>> y = clinical_corrupt(x, name="gaussian_noise", level=3, generator=torch.Generator().manual_seed(1))
>>> y.shape, y.dtype, bool(((y >= 0) & (y <= 1)).all())
(torch.Size([2, 1, 32, 32]), torch.float32, True)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from medrobust.clinical_scale import CLINICAL, LEVELS

__all__ = [
    "CLINICAL",
    "LEVELS",
    "ClinicalCorruption",
    "clinical_corrupt",
    "corrupt_with_param",
]


class ClinicalCorruption(str, Enum):
    """The nine clinical corruptions; ``name=`` accepts a member or its string value."""

    GAUSSIAN_NOISE = "gaussian_noise"
    SPECKLE_NOISE = "speckle_noise"
    SALT_AND_PEPPER = "salt_and_pepper"
    POISSON_NOISE = "poisson_noise"
    GAUSSIAN_BLUR = "gaussian_blur"
    CONTRAST_REDUCTION = "contrast_reduction"
    GAMMA_SHIFT = "gamma_shift"
    JPEG_COMPRESSION = "jpeg_compression"
    RESOLUTION_LOSS = "resolution_loss"


# The ladders (CLINICAL, LEVELS) and what each level means physically live in medrobust.clinical_scale,
# which needs no torch (the Overview and the report describe levels without importing this module).


# --------------------------------------------------------------------------------------------
# Validation


def _parse_name(name: str | ClinicalCorruption) -> ClinicalCorruption:
    if isinstance(name, ClinicalCorruption):
        return name
    for member in ClinicalCorruption:
        if member.value == name:
            return member
    valid = ", ".join(m.value for m in ClinicalCorruption)
    raise ValueError(f"unknown clinical corruption {name!r}; choose one of {valid}")


def _check_images(x: Tensor, generator: torch.Generator | None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(
            f"x must have shape (N, 1, H, W) (4 dims, one channel), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point image tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        if bool(x.isnan().any()):
            raise ValueError("x must hold values in [0, 1], but it contains NaN")
        raise ValueError(
            f"x must hold values in [0, 1], got min {float(x.min()):.4g} and max {float(x.max()):.4g}"
        )
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on device {generator.device} but x is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )


def _real(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _int_param(value: float, what: str, *, lo: int, hi: int | None = None, odd: bool = False) -> int:
    v = _real(value, what)
    if v != int(v) or v < lo or (hi is not None and v > hi) or (odd and int(v) % 2 == 0):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{what} must be an {'odd ' if odd else ''}integer {rng}, got {value}")
    return int(v)


# --------------------------------------------------------------------------------------------
# The corruptions, on validated float32 (N, 1, H, W) tensors in [0, 1]


def _gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    # GaussianNoise: clip(x + N(0, sigma^2), 0, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def _speckle_noise(x: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    # SpeckleNoise: clip(x + x * N(0, sigma^2), 0, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + x * (sigma * noise)


def _salt_and_pepper(x: Tensor, amount: float, generator: torch.Generator | None) -> Tensor:
    # ImpulseNoise: skimage.util.random_noise(mode="s&p", amount=amount), salt_vs_pepper 0.5. As in
    # skimage 0.26 (and medrobust.corruptions): a flip mask, then a salt mask, full-size draws.
    if amount == 0.0:
        return x.clone()
    flipped = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) <= amount
    salted = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) <= 0.5
    return torch.where(flipped, salted.to(x.dtype), x)


def _poisson_noise(x: Tensor, mult: float, generator: torch.Generator | None) -> Tensor:
    # ShotNoise: clip(Poisson(x * mult) / mult, 0, 1)
    return torch.poisson(x * mult, generator=generator) / mult


def _gaussian_kernel1d(kernel_size: int) -> Tensor:
    # torchvision.transforms.functional.gaussian_blur with sigma=None, in float32 like torchvision.
    sigma = kernel_size * 0.15 + 0.35
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    return pdf / pdf.sum()


def _reflect_pad(x: Tensor, pad: int, dim: int) -> Tensor:
    """Reflect-pad (no edge repeat, as torch's "reflect") by ``pad`` on both sides of ``dim``
    (-1 or -2), reflecting again as often as needed when ``pad`` exceeds the size - 1."""
    while pad > 0:
        n = x.shape[dim]
        if n == 1:  # one pixel reflects onto itself
            return x.repeat_interleave(2 * pad + 1, dim=dim)
        step = min(pad, n - 1)
        x = F.pad(x, (step, step, 0, 0) if dim == -1 else (0, 0, step, step), mode="reflect")
        pad -= step
    return x


def _gaussian_blur(x: Tensor, kernel_size: float, generator: torch.Generator | None) -> Tensor:
    # GaussianBlur: torchvision gaussian_blur(img, kernel_size=k): sigma 0.15 k + 0.35, reflect
    # padding; done separably (torchvision convolves with the outer product of the same kernels).
    k = int(kernel_size)
    if k == 1:
        return x.clone()
    w = _gaussian_kernel1d(k).to(device=x.device, dtype=x.dtype)
    pad = k // 2
    x = F.conv2d(_reflect_pad(x, pad, -1), w.view(1, 1, 1, k))
    return F.conv2d(_reflect_pad(x, pad, -2), w.view(1, 1, k, 1))


def _contrast_reduction(x: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    # Contrast: PIL ImageEnhance.Contrast(img).enhance(factor) = blend(mean grey, img, factor).
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def _gamma_shift(x: Tensor, gamma: float, generator: torch.Generator | None) -> Tensor:
    # GammaCorrection: torchvision adjust_gamma(img, gamma, gain=1) = x ** gamma.
    return x.pow(gamma)


def _jpeg_compression(x: Tensor, quality: float, generator: torch.Generator | None) -> Tensor:
    # JPEGCompression: PIL save(format="JPEG", quality=q) and decode, one 8-bit grey image at a time.
    u8 = x.mul(255.0).round_().to(torch.uint8).cpu().numpy()
    out = np.empty_like(u8)
    for i in range(u8.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(u8[i, 0]).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i, 0] = np.asarray(decoded)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype).div_(255.0)


def _box_weights(in_size: int, out_size: int) -> np.ndarray:
    """PIL's BOX resampling as an (out_size, in_size) matrix (Pillow's ``precompute_coeffs``): output
    pixel ``i`` is the plain mean of the input pixels whose centres lie in its footprint."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        t = (taps - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if w.sum() > 0:
            weights[i, lo:hi] = w / w.sum()
    return weights


@lru_cache(maxsize=64)
def _pixelate_matrix(size: int, factor: float) -> Tensor:
    """``up @ down`` for one axis: BOX-downsample to ``int(size * factor)`` and BOX-upsample back."""
    small = max(1, int(size * factor))  # int() truncates exactly as MedMNIST-C's Pixelate does
    m = _box_weights(small, size) @ _box_weights(size, small)
    return torch.from_numpy(m).to(torch.float32)


def _resolution_loss(x: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    # Pixelate: PIL resize((int(w f), int(h f)), BOX) then resize((w, h), BOX). Each PIL resize is
    # separable (rows, then columns), so the pair is one matrix per axis: M_h @ x @ M_w^T.
    m_h = _pixelate_matrix(x.shape[-2], factor).to(device=x.device, dtype=x.dtype)
    m_w = _pixelate_matrix(x.shape[-1], factor).to(device=x.device, dtype=x.dtype)
    return m_h @ x @ m_w.T


@dataclass(frozen=True)
class _Spec:
    fn: Callable[[Tensor, float, torch.Generator | None], Tensor]
    check: Callable[[float], float]  # validates a parameter, returns it as the value fn gets


def _nonneg(what: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        v = _real(value, what)
        if v < 0:
            raise ValueError(f"{what} must be >= 0, got {value}")
        return v

    return check


def _positive(what: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        v = _real(value, what)
        if v <= 0:
            raise ValueError(f"{what} must be > 0, got {value}")
        return v

    return check


def _probability(value: float) -> float:
    v = _real(value, "salt_and_pepper amount")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"salt_and_pepper amount is a probability and must lie in [0, 1], got {value}")
    return v


def _factor(value: float) -> float:
    v = _real(value, "resolution_loss factor")
    if not 0.0 < v <= 1.0:
        raise ValueError(f"resolution_loss factor must lie in (0, 1], got {value}")
    return v


_SPECS: dict[ClinicalCorruption, _Spec] = {
    ClinicalCorruption.GAUSSIAN_NOISE: _Spec(_gaussian_noise, _nonneg("gaussian_noise sigma")),
    ClinicalCorruption.SPECKLE_NOISE: _Spec(_speckle_noise, _nonneg("speckle_noise sigma")),
    ClinicalCorruption.SALT_AND_PEPPER: _Spec(_salt_and_pepper, _probability),
    ClinicalCorruption.POISSON_NOISE: _Spec(_poisson_noise, _positive("poisson_noise photon count")),
    ClinicalCorruption.GAUSSIAN_BLUR: _Spec(
        _gaussian_blur, lambda v: _int_param(v, "gaussian_blur kernel size", lo=1, odd=True)
    ),
    ClinicalCorruption.CONTRAST_REDUCTION: _Spec(_contrast_reduction, _nonneg("contrast_reduction factor")),
    ClinicalCorruption.GAMMA_SHIFT: _Spec(_gamma_shift, _nonneg("gamma_shift gamma")),
    ClinicalCorruption.JPEG_COMPRESSION: _Spec(
        _jpeg_compression, lambda v: _int_param(v, "jpeg_compression quality", lo=1, hi=100)
    ),
    ClinicalCorruption.RESOLUTION_LOSS: _Spec(_resolution_loss, _factor),
}


# --------------------------------------------------------------------------------------------
# Public API


def corrupt_with_param(
    x: Tensor,
    *,
    name: str | ClinicalCorruption,
    param: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply the clinical corruption ``name`` with an explicit MedMNIST-C parameter value.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, 1, H, W)``, floating point, values in ``[0, 1]``.
    name : str or ClinicalCorruption
        One of :class:`ClinicalCorruption` (the keys of :data:`CLINICAL`).
    param : float
        The corruption's parameter in MedMNIST-C's units (see the module docstring): noise std
        (``>= 0``), salt & pepper probability (``[0, 1]``), photons at white (``> 0``), odd kernel
        size (``>= 1``), contrast factor (``>= 0``), gamma (``>= 0``), JPEG quality (integer
        ``1..100``) or resize factor (``(0, 1]``).
    generator : torch.Generator, optional
        Source of all randomness (the four noises); on ``x.device``. ``None`` uses torch's global
        RNG. Ignored by the deterministic corruptions.

    Returns
    -------
    Tensor
        Float32 tensor of shape ``(N, 1, H, W)`` in ``[0, 1]``, on ``x.device``.

    Raises
    ------
    ValueError
        Unknown ``name``; ``param`` outside its range; ``x`` not ``(N, 1, H, W)`` or outside
        ``[0, 1]``; ``generator`` on another device.
    TypeError
        ``x`` not a floating-point tensor, or ``param`` not a real number.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    >>> corrupt_with_param(x, name="gamma_shift", param=2.0)[0, 0, 0]
    tensor([0.0000, 0.0044, 0.0178, 0.0400])
    """
    spec = _SPECS[_parse_name(name)]
    value = spec.check(param)
    _check_images(x, generator)
    x32 = x.to(torch.float32)
    if x32.shape[0] == 0:
        return x32.clone()
    return spec.fn(x32, value, generator).clamp_(0.0, 1.0)


def clinical_corrupt(
    x: Tensor,
    *,
    name: str | ClinicalCorruption,
    level: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply the clinical corruption ``name`` at severity ``level`` (1 = mild ... 5 = severe).

    The parameter is ``CLINICAL[name][level - 1]``; see :data:`CLINICAL` for the ladders.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, 1, H, W)``, floating point, values in ``[0, 1]``.
    name : str or ClinicalCorruption
        One of :class:`ClinicalCorruption` (the keys of :data:`CLINICAL`).
    level : int
        Severity, an integer from 1 to 5.
    generator : torch.Generator, optional
        Source of all randomness (the four noises); on ``x.device``. ``None`` uses torch's global
        RNG. Each pixel of each image gets an independent draw, so images of a batch get
        different noise; a generator seeded the same way repeats the output exactly.

    Returns
    -------
    Tensor
        Float32 tensor of shape ``(N, 1, H, W)`` in ``[0, 1]``, on ``x.device``.

    Raises
    ------
    ValueError
        Unknown ``name``; ``level`` not an integer in 1..5; ``x`` not ``(N, 1, H, W)`` or outside
        ``[0, 1]``; ``generator`` on another device.
    TypeError
        ``x`` not a floating-point tensor.

    Examples
    --------
    >>> import torch
    >>> x = torch.full((3, 1, 8, 8), 0.5)
    >>> y = clinical_corrupt(x, name="contrast_reduction", level=5)
    >>> torch.equal(y, x)  # a flat image has no contrast to lose
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> y = clinical_corrupt(x, name="salt_and_pepper", level=5, generator=g)
    >>> sorted(set(y.unique().tolist()) - {0.5})
    [0.0, 1.0]
    """
    member = _parse_name(name)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in LEVELS:
        raise ValueError(f"level must be an integer from {LEVELS[0]} to {LEVELS[-1]}, got {level!r}")
    param = CLINICAL[member.value][int(level) - 1]
    return corrupt_with_param(x, name=member, param=param, generator=generator)
