"""AugMix (Hendrycks et al., ICLR 2020), batched on tensors, and its Jensen-Shannon consistency loss.

For each image ``x`` in a batch, :func:`augmix` returns

    mixed = (1 - m) * x + m * sum_i w_i * chain_i(x),   w ~ Dirichlet([alpha] * width),
                                                         m ~ Beta(alpha, alpha),

where each of the ``width`` chains applies ``depth`` operations (``depth == -1``: uniformly 1 to
3, drawn per image and chain), each drawn uniformly from ``ops``. This is the reference
``augment_and_mix`` with the PIL operations replaced by tensor operations from
:data:`AUGMIX_OPS`. The default operations are the horizontal and vertical flip, the
operation set the reproduced paper (Martínez-Martínez & Nabavi) uses for chest X-rays; the
others in the registry are there for ablations.

All randomness comes from the ``generator`` argument, including that of the Dirichlet and Beta
draws (``torch.distributions`` cannot take a generator). For ``alpha == 1``, the default, they
are sampled in torch on the images' device: ``Dirichlet(1, ..., 1)`` is a vector of ``Exp(1)``
draws divided by its sum and ``Beta(1, 1)`` is ``Uniform(0, 1)``. For any other ``alpha`` a NumPy
``Generator`` is seeded with a 62-bit integer drawn from ``generator`` and samples them on the CPU.
Either way a seeded generator repeats a batch exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMIX_OPS",
    "AugMixConfig",
    "AugOp",
    "JSD_WEIGHT",
    "augmix",
    "jsd_loss",
    "jsd_per_sample",
]

AugOp = Callable[[Tensor, torch.Generator | None], Tensor]
"""An AugMix operation ``op(x, generator) -> y``: ``x`` of shape ``(N, C, H, W)`` in ``[0, 1]``,
``y`` the same shape and range. Random operations draw an independent parameter per image from
``generator``; deterministic ones ignore it."""

JSD_WEIGHT: float = 12.0
"""Weight of the Jensen-Shannon consistency term in the AugMix reference training loss."""

_MAX_ROTATION_DEG = 15.0
_MAX_TRANSLATION = 0.1  # fraction of the image side
_MAX_RANDOM_DEPTH = 3
_MIXTURE_EPS = 1e-7  # the reference clamps the mixture distribution to [1e-7, 1] before log


def _hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x.flip(-1)


def _vflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x.flip(-2)


def _uniform(
    n: int, bound: float, x: Tensor, generator: torch.Generator | None
) -> Tensor:
    """``n`` draws from ``U(-bound, bound)`` with the dtype and device of ``x``."""
    u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
    return (2.0 * u - 1.0) * bound


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Border padding: zero padding would paint black corners and edges, which on a radiograph
    # look like collimation and are a shortcut a classifier can learn.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rotate(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    n, _, h, w = x.shape
    angle = _uniform(n, math.radians(_MAX_ROTATION_DEG), x, generator)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(angle)
    # affine_grid works in coordinates normalised to [-1, 1] per axis; the aspect factors keep
    # the rotation rigid in pixel space when H != W.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), zero], dim=-1),
            torch.stack([sin * (w / h), cos, zero], dim=-1),
        ],
        dim=-2,
    )
    return _warp(x, theta)


def _translate(x: Tensor, generator: torch.Generator | None, axis: int) -> Tensor:
    n = x.shape[0]
    # A shift of t image widths is 2 t in normalised coordinates.
    shift = 2.0 * _uniform(n, _MAX_TRANSLATION, x, generator)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, axis, 2] = shift
    return _warp(x, theta)


def _translate_x(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return _translate(x, generator, axis=0)


def _translate_y(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return _translate(x, generator, axis=1)


def _autocontrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    flat = span <= 0
    # Constant images have nothing to stretch (PIL leaves them alone too); the where() avoids
    # a 0/0 that would otherwise poison the result with NaN.
    return torch.where(flat, x, (x - lo) / torch.where(flat, torch.ones_like(span), span))


AUGMIX_OPS: dict[str, AugOp] = {
    "hflip": _hflip,
    "vflip": _vflip,
    "rotate": _rotate,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
    "autocontrast": _autocontrast,
}
"""AugMix operation registry. ``rotate``: uniform angle in ±15°; ``translate_x`` /
``translate_y``: uniform shift in ±10 % of the side; both bilinear with border padding.
``autocontrast``: per image and channel, stretch ``[min, max]`` to ``[0, 1]``."""


@dataclass(frozen=True)
class AugMixConfig:
    """AugMix hyper-parameters; the field names match the keywords of :func:`augmix`.

    Attributes
    ----------
    ops : tuple of str
        Names of operations in :data:`AUGMIX_OPS`, drawn uniformly at each step.
    width : int
        Number of augmentation chains mixed per image, ``>= 1``.
    depth : int
        Operations per chain, ``>= 1``; ``-1`` draws it uniformly from 1 to 3 per image and chain.
    alpha : float
        Concentration of the Dirichlet chain weights and of the Beta mixing weight, ``> 0``.

    Examples
    --------
    >>> cfg = AugMixConfig(width=2)
    >>> cfg.validate()
    >>> # augmix(x, **dataclasses.asdict(cfg), generator=g)
    """

    ops: tuple[str, ...] = ("hflip", "vflip")
    width: int = 3
    depth: int = -1
    alpha: float = 1.0

    def validate(self) -> None:
        """Check the configuration.

        Raises
        ------
        ValueError
            If ``ops`` is empty, a bare string, or names an operation not in
            :data:`AUGMIX_OPS`; ``width < 1``; ``depth`` is 0 or below -1; ``alpha`` is not a
            finite number ``> 0``.
        """
        if isinstance(self.ops, str):
            raise ValueError(
                f"ops must be a sequence of operation names, got the string {self.ops!r}; "
                f"write ({self.ops!r},) for a single operation"
            )
        if len(self.ops) == 0:
            raise ValueError(f"ops must name at least one operation from {sorted(AUGMIX_OPS)}")
        unknown = [op for op in self.ops if op not in AUGMIX_OPS]
        if unknown:
            raise ValueError(
                f"unknown AugMix operation(s) {unknown}; valid names are {sorted(AUGMIX_OPS)}"
            )
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        if (
            isinstance(self.depth, bool)
            or not isinstance(self.depth, int)
            or self.depth == 0
            or self.depth < -1
        ):
            raise ValueError(
                f"depth must be an integer >= 1, or -1 for a random depth in 1..3, "
                f"got {self.depth!r}"
            )
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")


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
            f"x must be a floating-point image tensor in [0, 1], got dtype {x.dtype}"
        )
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on device {generator.device} but x is on {x.device}; create it with "
            f"torch.Generator(device=x.device)"
        )


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(2**62, (1,), generator=generator, device=device)
    return np.random.default_rng(int(seed.item()))


def _sample_mixing_weights(
    n: int,
    *,
    width: int,
    alpha: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Per-image chain weights ``w`` of shape ``(n, width)`` and mixing weights ``m`` of shape
    ``(n,)``: rows of ``w`` are ``Dirichlet([alpha] * width)``, ``m`` is ``Beta(alpha, alpha)``."""
    if alpha == 1.0:
        exp = torch.empty(n, width, device=device, dtype=dtype).exponential_(generator=generator)
        w = exp / exp.sum(dim=1, keepdim=True)
        m = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return w, m
    rng = _numpy_rng(generator)
    w_np = rng.dirichlet([alpha] * width, size=n)
    m_np = rng.beta(alpha, alpha, size=n)
    return (
        torch.as_tensor(w_np, dtype=dtype, device=device),
        torch.as_tensor(m_np, dtype=dtype, device=device),
    )


def augmix(
    x: Tensor,
    *,
    ops: Sequence[str] = ("hflip", "vflip"),
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """AugMix a batch of images, each with its own weights, depths and operations.

    Parameters
    ----------
    x : Tensor
        Images of shape ``(N, C, H, W)``, floating point, values in ``[0, 1]``.
    ops : sequence of str, default ("hflip", "vflip")
        Operation names from :data:`AUGMIX_OPS`; each chain step draws one uniformly, per image.
    width : int, default 3
        Number of augmentation chains, ``>= 1``.
    depth : int, default -1
        Operations per chain; ``-1`` draws it uniformly from 1 to 3 per image and chain.
    alpha : float, default 1.0
        Dirichlet and Beta concentration, ``> 0``.
    generator : torch.Generator, optional
        Source of all randomness; must be on ``x.device``. ``None`` uses torch's global RNG.

    Returns
    -------
    Tensor
        The mixed images, with the shape and dtype of ``x``, in ``[0, 1]``.

    Raises
    ------
    ValueError
        For an invalid configuration (see :meth:`AugMixConfig.validate`), if ``x`` is not 4-D,
        or if ``generator`` is on another device.

    Notes
    -----
    Every output image is a convex combination of images produced by the operations, so the
    result stays in ``[0, 1]``; it is clamped only to remove rounding overshoot. With only flips
    the mean intensity of each image is preserved. Each operation runs on the whole batch and
    each image keeps the result it drew, so the cost is ``width * depth * len(ops)`` batched
    operations with no Python loop over images. Computation is in at least float32.
    """
    config = AugMixConfig(
        ops=tuple(ops) if not isinstance(ops, str) else ops,
        width=width,
        depth=depth,
        alpha=alpha,
    )
    config.validate()
    _check_images(x, generator)

    dtype = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(dtype)
    n = x.shape[0]
    device = x.device
    op_fns = [AUGMIX_OPS[name] for name in config.ops]

    w, m = _sample_mixing_weights(
        n, width=width, alpha=float(alpha), generator=generator, device=device, dtype=dtype
    )
    steps = depth if depth > 0 else _MAX_RANDOM_DEPTH
    mix = torch.zeros_like(xc)
    for chain in range(width):
        # A chain of depth d for image i is the first d steps; later steps leave it as is.
        chain_depth = (
            torch.randint(1, _MAX_RANDOM_DEPTH + 1, (n,), generator=generator, device=device)
            if depth == -1
            else None
        )
        img = xc
        for step in range(steps):
            choice = torch.randint(len(op_fns), (n,), generator=generator, device=device)
            active = (
                torch.ones(n, dtype=torch.bool, device=device)
                if chain_depth is None
                else step < chain_depth
            )
            out = img
            for k, op in enumerate(op_fns):
                selected = (active & (choice == k)).view(n, 1, 1, 1)
                out = torch.where(selected, op(img, generator), out)
            img = out
        mix = mix + w[:, chain].view(n, 1, 1, 1) * img

    m = m.view(n, 1, 1, 1)
    mixed = (1.0 - m) * xc + m * mix
    return mixed.clamp_(0.0, 1.0).to(x.dtype)


def _check_logits(logits: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(logits, Tensor):
        raise ValueError(
            "logits must be a sequence of (N, K) tensors, one per view, not a single tensor; "
            "for a stacked (V, N, K) tensor pass list(logits) or logits.unbind(0)"
        )
    views = list(logits)
    if len(views) < 2:
        raise ValueError(f"JSD needs at least 2 views, got {len(views)}")
    shape = views[0].shape
    if len(shape) != 2:
        raise ValueError(f"each view's logits must have shape (N, K), got {tuple(shape)}")
    for i, view in enumerate(views):
        if view.shape != shape:
            raise ValueError(
                f"all views must have the same shape; view 0 is {tuple(shape)} but view {i} is "
                f"{tuple(view.shape)}"
            )
    return views


def jsd_per_sample(logits: Sequence[Tensor]) -> Tensor:
    """Per-sample Jensen-Shannon divergence between the softmax distributions of several views.

    With ``p_i = softmax(logits[i])`` and ``M = log(clamp(mean_i p_i, 1e-7, 1))`` this is
    ``mean_i KL(p_i || M)``, exactly as in the AugMix reference (which clamps the mixture
    before taking its log).

    Parameters
    ----------
    logits : sequence of Tensor
        ``V >= 2`` tensors of shape ``(N, K)``: class logits of the same ``N`` samples under
        ``V`` views (typically clean, augmix 1, augmix 2).

    Returns
    -------
    Tensor
        Shape ``(N,)``, in ``[0, ln V]`` up to rounding. Computed with autocast disabled in at
        least float32, so it is float32 for half-precision logits.

    Raises
    ------
    ValueError
        Fewer than 2 views, views not 2-D, or views of different shapes.
    """
    views = _check_logits(logits)
    dtype = torch.promote_types(views[0].dtype, torch.float32)
    # log of a half-precision mixture loses most of the signal once views agree; the reference
    # trains in float32, so do the same regardless of the caller's autocast region.
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        probs = [F.softmax(v.to(dtype), dim=1) for v in views]
        log_mixture = torch.clamp(sum(probs) / len(probs), _MIXTURE_EPS, 1.0).log()
        kl = [F.kl_div(log_mixture, p, reduction="none").sum(dim=1) for p in probs]
        return torch.stack(kl).mean(dim=0)


def jsd_loss(logits: Sequence[Tensor], *, sample_weight: Tensor | None = None) -> Tensor:
    """Jensen-Shannon consistency loss, averaged over the batch.

    Without ``sample_weight`` this equals the reference
    ``mean_i F.kl_div(M, p_i, reduction="batchmean")``; multiply by :data:`JSD_WEIGHT` for the
    reference training loss.

    Parameters
    ----------
    logits : sequence of Tensor
        ``V >= 2`` tensors of shape ``(N, K)``, one per view.
    sample_weight : Tensor, optional
        Shape ``(N,)`` non-negative weights with a positive sum; the loss is
        ``sum(w * jsd) / sum(w)``. ``None`` weights all samples equally. Not checked for sign,
        which would cost a device synchronisation every step.

    Returns
    -------
    Tensor
        Scalar loss, at least float32.

    Raises
    ------
    ValueError
        Invalid ``logits`` (see :func:`jsd_per_sample`) or ``sample_weight`` of the wrong shape.
    """
    per_sample = jsd_per_sample(logits)
    if sample_weight is None:
        return per_sample.mean()
    if not isinstance(sample_weight, Tensor) or sample_weight.shape != per_sample.shape:
        got = tuple(sample_weight.shape) if isinstance(sample_weight, Tensor) else sample_weight
        raise ValueError(
            f"sample_weight must be a tensor of shape {tuple(per_sample.shape)}, got {got!r}"
        )
    weight = sample_weight.to(per_sample)
    return (weight * per_sample).sum() / weight.sum()
