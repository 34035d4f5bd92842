"""Projected gradient descent (Madry et al.) in L2 and L-inf, as pure functions on batches.

Conventions: inputs in [0, 1], random start, step size ``2.5 * eps / steps``, projection onto the
eps-ball around the clean input and clamping to [0, 1] after every step. The model is put in eval
mode for the attack and restored to its previous mode afterwards. All randomness comes from
``generator``, so a seeded attack repeats.

Budgets are usually stated at 224x224. An L2 radius grows with the square root of the pixel count,
i.e. with the side, so :func:`scale_eps` multiplies L2 budgets by ``side / 224``; L-inf budgets are
per pixel and are not scaled.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medrobust import settings
from medrobust.choices import Norm as NormChoice, parse_choice

Norm = Literal["l2", "linf"]
REFERENCE_SIDE = 224


def scale_eps(eps: float, *, norm: Norm, side: int, reference_side: int = REFERENCE_SIDE) -> float:
    """Convert a budget stated at ``reference_side`` px to an image of ``side`` px (L2 only)."""
    _check_norm(norm)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    return float(eps) * side / reference_side if norm == "l2" else float(eps)


def _check_norm(norm: str) -> None:
    parse_choice(NormChoice, norm)


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """The hardware fact (cached: it cannot change within a process)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_is_fast() -> bool:
    """Whether to run bf16 autocast on this CPU: native bf16 (AVX-512 BF16 / AMX) for oneDNN.

    Measured here: on Zen 4 with AVX-512 BF16, channels_last + bf16 autocast trained ResNet-18 3x
    faster than fp32; on an AVX2-only Zen 3, bf16 autocast ran 16x *slower* (1.9 vs 31 img/s at
    128 px), because bf16 is emulated. ``MEDROBUST_CPU_BF16=1``/``0`` overrides the detection; it is
    read on every call (only the hardware probe is cached), so changing it takes effect at once.
    """
    override = settings.cpu_bf16_override()
    return _cpu_has_native_bf16() if override is None else override


def autocast_for(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA, and on CPUs with native bf16; a no-op elsewhere."""
    device = torch.device(device)
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if device.type == "cpu" and not cpu_bf16_is_fast():
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _per_sample(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=torch.float32, device=x.device)
    if e.ndim == 0:
        e = e.expand(x.shape[0])
    if e.shape != (x.shape[0],):
        raise ValueError(f"eps must be a number or one value per sample, got shape {tuple(e.shape)}.")
    if (e < 0).any():
        raise ValueError("eps must be >= 0.")
    return e.view(-1, *([1] * (x.ndim - 1)))


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        return (2 * u - 1) * eps
    # Uniform direction, radius uniform in [0, eps] (as torchattacks.PGDL2 does).
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    r = torch.rand((x.shape[0],), generator=generator, device=x.device).view(-1, *([1] * (x.ndim - 1)))
    return d / (_l2_norm(d) + 1e-12) * r * eps


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    n = _l2_norm(delta)
    return delta * torch.clamp(eps / (n + 1e-12), max=1.0)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put the model in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int,
    norm: Norm = "l2",
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    keep_first_success: bool = False,
    use_autocast: bool = True,
    channels_last: bool = True,
) -> torch.Tensor:
    """Untargeted PGD maximising the cross-entropy of ``model(x_adv)`` w.r.t. ``y``.

    Parameters
    ----------
    model
        Maps (N, C, H, W) in [0, 1] to logits. Put in eval mode for the attack, then restored.
    x, y
        Clean images in [0, 1] and their integer labels.
    eps
        Radius in pixel units (already scaled to the image size), a number or one per sample.
    steps
        Number of gradient steps; 0 returns the (random-started) input.
    step_size
        Defaults to ``2.5 * eps / steps`` per sample.
    keep_first_success
        For evaluation: once a sample is misclassified, keep that fooling example and stop
        updating it (never weaker than returning the last iterate, and cheaper).

    Returns
    -------
    torch.Tensor
        Adversarial images, detached, same shape and dtype as ``x``, inside the eps-ball and [0, 1].
    """
    _check_norm(norm)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        return x.clone()
    e = _per_sample(eps, x)
    alpha = (2.5 * e / max(steps, 1)) if step_size is None else torch.full_like(e, float(step_size))
    x0 = x.detach().float()
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    delta = _random_start(x0, e, norm, generator) if random_start else torch.zeros_like(x0)
    x_adv = (x0 + delta).clamp_(0.0, 1.0)
    if steps == 0 or bool((e == 0).all()):
        # x0 may share storage with x: return a copy so callers can edit the result in place.
        out = x0 if bool((e == 0).all()) else x_adv
        return out.to(x.dtype).contiguous().clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    result = x_adv.clone()
    with eval_mode(model):
        active = torch.arange(x.shape[0], device=x.device)
        for step in range(steps + (1 if keep_first_success else 0)):
            xa = x_adv[active].clone().requires_grad_(True)
            with autocast_for(x.device, use_autocast):
                logits = model(xa)
            if keep_first_success:
                fooled = logits.argmax(1) != y[active]
                if fooled.any():
                    idx = active[fooled]
                    result[idx] = xa.detach()[fooled]
                    done[idx] = True
                keep = ~fooled
                if step == steps or not keep.any():
                    break
            loss = F.cross_entropy(logits.float(), y[active], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            grad = grad.float()
            if keep_first_success:
                active, xa, grad = active[keep], xa[keep], grad[keep]
            a, ea = alpha[active], e[active]
            if norm == "l2":
                step_vec = grad / (_l2_norm(grad) + 1e-12)
            else:
                step_vec = grad.sign()
            new = xa.detach() + a * step_vec
            new = (x0[active] + _project(new - x0[active], ea, norm)).clamp_(0.0, 1.0)
            x_adv[active] = new
    if keep_first_success:
        still = ~done
        result[still] = x_adv[still]
        return result.to(x.dtype).contiguous()
    return x_adv.detach().to(x.dtype).contiguous()


def pgd_multi_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps_list: Sequence[float],
    steps: int,
    norm: Norm = "l2",
    generator: torch.Generator | None = None,
    keep_first_success: bool = True,
    use_autocast: bool = True,
) -> dict[float, torch.Tensor]:
    """Attack one batch at several radii in a single batched PGD run.

    The batch is repeated once per radius with a per-sample eps, so the model sees larger, more
    efficient batches. Returns ``{eps: x_adv}`` with eps as given (already in pixel units).
    """
    if not eps_list:
        return {}
    k = len(eps_list)
    xs = x.repeat(k, *([1] * (x.ndim - 1)))
    ys = y.repeat(k)
    es = torch.tensor([float(e) for e in eps_list], device=x.device).repeat_interleave(x.shape[0])
    adv = pgd(model, xs, ys, eps=es, steps=steps, norm=norm, generator=generator,
              keep_first_success=keep_first_success, use_autocast=use_autocast)
    return {float(e): adv[i * x.shape[0] : (i + 1) * x.shape[0]] for i, e in enumerate(eps_list)}
