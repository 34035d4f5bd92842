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
import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medrobust import settings
from medrobust.choices import Norm as NormChoice, Schedule, parse_choice

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


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator, *, surface: bool = False) -> torch.Tensor:
    """A random point of the eps-ball (``surface=False``) or of its surface (``surface=True``)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        d = 2 * u - 1
        if surface:  # a corner direction scaled so its largest entry reaches eps, as auto-attack starts
            d = d / d.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        return d * eps
    # Uniform direction; radius uniform in [0, eps] (as torchattacks.PGDL2 does) or exactly eps.
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    r = torch.rand((x.shape[0],), generator=generator, device=x.device).view(-1, *([1] * (x.ndim - 1)))
    return d / (_l2_norm(d) + 1e-12) * (1.0 if surface else r) * eps


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
    start: str = "ball",
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
        updating it (never weaker than returning the last iterate, and cheaper). Whether a sample is
        misclassified is decided by an fp32 forward pass, also when the iterations run under bf16
        autocast (``use_autocast`` on a CPU with native bf16, or CUDA).

    start
        Where the random start lies: ``"ball"`` (uniform radius, the default) or ``"sphere"`` (on the
        ball's surface); restarts alternate the two.

    Returns
    -------
    torch.Tensor
        Adversarial images, detached, same shape and dtype as ``x``, inside the eps-ball and [0, 1].
    """
    return _pgd_run(model, x, y, eps=eps, steps=steps, norm=norm, step_size=step_size, random_start=random_start,
                    generator=generator, keep_first_success=keep_first_success, use_autocast=use_autocast,
                    channels_last=channels_last, start=start)[0]


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int,
    norm: Norm,
    step_size: float | None,
    random_start: bool,
    generator: torch.Generator | None,
    keep_first_success: bool,
    use_autocast: bool,
    channels_last: bool,
    start: str,
    screen: "_Screen | None" = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`pgd`, and with ``keep_first_success`` the fp32 logits of each returned example.

    Those logits are the verdict forwards the attack ran anyway: of the first fooling iterate, or of
    the last iterate (checked after the last step), so a caller needs no further forward pass to
    know how damaging each example is. ``None`` without ``keep_first_success`` or when no step ran.
    ``screen`` carries the bf16-vs-fp32 gap measured by earlier runs on the same images (:class:`_Screen`).
    """
    _check_norm(norm)
    if start not in ("ball", "sphere"):
        raise ValueError(f"start must be 'ball' or 'sphere', got {start!r}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        return x.clone(), None
    e = _per_sample(eps, x)
    alpha = (2.5 * e / max(steps, 1)) if step_size is None else torch.full_like(e, float(step_size))
    x0 = x.detach().float()
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    delta = _random_start(x0, e, norm, generator, surface=start == "sphere") if random_start else torch.zeros_like(x0)
    x_adv = (x0 + delta).clamp_(0.0, 1.0)
    if steps == 0 or bool((e == 0).all()):
        # x0 may share storage with x: return a copy so callers can edit the result in place.
        out = x0 if bool((e == 0).all()) else x_adv
        return out.to(x.dtype).contiguous().clone(), None
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    result = x_adv.clone()
    result_logits: torch.Tensor | None = None  # (N, K) fp32 logits of ``result``, allocated at the first check
    with autocast_for(x.device, use_autocast):
        mixed = torch.is_autocast_enabled(x.device.type)
    screen = screen or _Screen()
    with eval_mode(model):
        active = torch.arange(x.shape[0], device=x.device)
        for step in range(steps + (1 if keep_first_success else 0)):
            if mixed and keep_first_success and step == steps:
                # The last iterate only needs its fp32 verdict: no bf16 forward, no graph.
                check = _fp32_logits(model, x_adv[active])
                xa = x_adv[active]
            else:
                xa = x_adv[active].clone().requires_grad_(True)
                with autocast_for(x.device, use_autocast):
                    logits = model(xa)
                if keep_first_success:
                    # Success is decided in fp32: under bf16 autocast, an fp32 forward (no graph) of the iterates
                    # the bf16 logits leave near the boundary (_Screen), so bf16 rounding cannot stop an attack early.
                    check = screen.verdict(model, xa.detach(), logits, y[active])[0] if mixed else logits.detach().float()
            if keep_first_success:
                if result_logits is None:
                    result_logits = torch.zeros((x.shape[0], check.shape[1]), device=x.device)
                fooled = check.argmax(1) != y[active]
                if fooled.any():
                    idx = active[fooled]
                    result[idx] = xa.detach()[fooled]
                    result_logits[idx] = check[fooled]
                    done[idx] = True
                keep = ~fooled
                if step == steps or not keep.any():
                    if step == steps:  # the samples still standing keep their last iterate, checked just now
                        result_logits[active[keep]] = check[keep]
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
        return result.to(x.dtype).contiguous(), result_logits
    return x_adv.detach().to(x.dtype).contiguous(), None


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


# ----------------------------------------------------------------------------- APGD-CE


def _no_autocast(device: torch.device):
    """A context in which autocast is off, whatever an enclosing region asked for."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class _IeeeFp32:
    """Process-wide TF32 switch for :func:`ieee_fp32`: off while any caller is inside, restored after the last."""

    lock = threading.Lock()
    depth = 0
    restore: Callable[[], None] | None = None

    @staticmethod
    def tf32_off() -> Callable[[], None]:
        """Turn TF32 off for cuDNN convolutions and CUDA matmuls; return what puts the settings back.

        Each setting is changed through the API its current value can be read with: the legacy one
        (``cudnn.allow_tf32``, ``get_float32_matmul_precision``) unless the per-operator API (torch >= 2.9)
        has set values the legacy getters refuse to read, which then is used instead.
        """
        b, undo = torch.backends, []
        try:
            conv = b.cudnn.allow_tf32
            b.cudnn.allow_tf32 = False
            undo.append(lambda: setattr(b.cudnn, "allow_tf32", conv))
        except RuntimeError:  # conv and rnn set apart through the per-operator API
            conv_op = b.cudnn.conv.fp32_precision
            b.cudnn.conv.fp32_precision = "ieee"
            undo.append(lambda: setattr(b.cudnn.conv, "fp32_precision", conv_op))
        matmul_op = getattr(b.cuda.matmul, "fp32_precision", None)  # torch >= 2.9: its exact value comes back
        if matmul_op is not None:  # ... last, after the legacy setter below has been undone
            undo.append(lambda: setattr(b.cuda.matmul, "fp32_precision", matmul_op))
        try:
            matmul = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("highest")
            undo.append(lambda: torch.set_float32_matmul_precision(matmul))
        except RuntimeError:  # matmul set through the per-operator API
            b.cuda.matmul.fp32_precision = "ieee"

        def restore() -> None:
            for step in reversed(undo):
                step()

        return restore


@contextlib.contextmanager
def ieee_fp32(device: torch.device | str):
    """A context in which fp32 means IEEE fp32 on CUDA: TF32 off for cuDNN convolutions and matmuls.

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later GPUs by
    default, so an "fp32" verdict there would not be one. Inside this context both are IEEE fp32. The
    settings are process-wide: they are switched off when the first caller (of any thread) enters and
    restored when the last one leaves, so overlapping callers never see TF32 come back early; other GPU
    work that runs meanwhile is also IEEE fp32 (slower, never less exact). On other devices it changes
    nothing.

    Examples
    --------
    >>> with ieee_fp32("cpu"):
    ...     pass
    """
    if torch.device(device).type != "cuda":
        yield
        return
    with _IeeeFp32.lock:
        if _IeeeFp32.depth == 0:
            _IeeeFp32.restore = _IeeeFp32.tf32_off()
        _IeeeFp32.depth += 1
    try:
        yield
    finally:
        with _IeeeFp32.lock:
            _IeeeFp32.depth -= 1
            if _IeeeFp32.depth == 0 and _IeeeFp32.restore is not None:
                _IeeeFp32.restore()
                _IeeeFp32.restore = None


def _fp32_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of an IEEE fp32 forward pass (no autocast, no TF32, no graph): the forward that decides success."""
    with torch.no_grad(), _no_autocast(x.device), ieee_fp32(x.device):
        return model(x.float()).float()


class _Screen:
    """Which bf16 iterates need an fp32 verdict forward (bf16 autocast only).

    Success is decided in fp32. Under bf16 autocast the iteration's own forward already gives each
    iterate's logits, off from the fp32 ones by bf16 rounding, so an iterate whose bf16 margin
    (true-class logit minus the best other) is comfortably positive cannot be misclassified in fp32:
    it needs no fp32 forward. The first call of an attack run checks every iterate in fp32 and
    measures the gap between the two margins; later calls send to fp32 only the iterates whose bf16
    margin is at most ``factor`` times the largest gap seen so far (and at least ``floor`` times the
    iterate's largest logit), and keep measuring the gap on those. A hit is therefore always an fp32
    hit; a hit could go unseen at an intermediate step only if bf16 rounding moved a margin by more
    than four times anything measured on that batch, and the attack goes on from such an iterate (its
    last iterate is always judged in fp32). DenseNet-121 at 128 px, 2 cores: a third of the attack
    stage was these fp32 forwards.
    """

    def __init__(self, *, factor: float = 4.0, floor: float = 0.02) -> None:
        self.factor, self.floor = factor, floor
        self.gap: float | None = None  # the largest |bf16 margin - fp32 margin| measured

    def verdict(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, exact)``: fp32 logits where ``exact`` (N,), the bf16 ones (as float) elsewhere, where the
        bf16 margin is too large for the image to be misclassified in fp32."""
        logits = logits.detach().float()
        margin = logit_margin(logits, y)
        if self.gap is None:
            need = torch.ones_like(margin, dtype=torch.bool)
        else:
            slack = torch.maximum(torch.full_like(margin, self.factor * self.gap),
                                  self.floor * logits.abs().amax(1))
            need = margin <= slack
        if need.any():
            idx = need.nonzero().squeeze(1)
            exact = _fp32_logits(model, x[idx])
            gap = float((logit_margin(exact, y[idx]) - margin[idx]).abs().max())
            self.gap = gap if self.gap is None else max(self.gap, gap)
            logits = logits.clone()
            logits[idx] = exact
        return logits, need


def _apgd_checkpoints(steps: int) -> list[int]:
    """The step counts ``w_j`` after which APGD checks its step sizes: ``w_j = p_j * steps``.

    The fractions of Croce & Hein, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    with the intervals rounded down to whole steps (at least one) as the reference implementations
    (auto-attack, torchattacks) do: 100 steps give 22, 41, 57, 70, 80, 87, 93, 99.
    """
    interval, min_interval, decrement = (max(int(0.22 * steps), 1), max(int(0.06 * steps), 1),
                                         max(int(0.03 * steps), 1))
    checks, w = [], interval
    while w <= steps:
        checks.append(w)
        interval = max(interval - decrement, min_interval)
        w += interval
    return checks


def _apgd_run(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    e: torch.Tensor,
    *,
    steps: int,
    norm: Norm,
    rho: float,
    generator: torch.Generator | None,
    use_autocast: bool,
    keep_first_success: bool,
    memory_format: torch.memory_format,
    screen: "_Screen",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One APGD-CE run from a random start on the boundary of the ball; the model is in eval mode.

    Returns ``(x_max, loss_max, fooled, x_fooled, logits_max, logits_fooled)``: the point of highest
    loss and its loss, and (only tracked with ``keep_first_success``) whether an iterate fooled the
    model in an fp32 forward pass, the first such iterate, and the fp32 logits of ``x_max`` and
    ``x_fooled`` (from the verdict forwards; ``None`` without ``keep_first_success``). Under bf16 autocast the
    step-size rule reads fp32 losses near the boundary and bf16 ones elsewhere (:class:`_Screen`).
    """
    n = x0.shape[0]
    dev = x0.device
    view = (-1, *([1] * (x0.ndim - 1)))

    def to_ball(v: torch.Tensor, x_0: torch.Tensor, e_: torch.Tensor) -> torch.Tensor:
        return (x_0 + _project(v - x_0, e_, norm)).clamp_(0.0, 1.0)

    # Random start on the boundary of the ball (as auto-attack and torchattacks.APGD do).
    if norm == "linf":
        t = 2 * torch.rand(x0.shape, generator=generator, device=dev, dtype=torch.float32) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
    else:
        t = torch.randn(x0.shape, generator=generator, device=dev, dtype=torch.float32)
        t = t / (_l2_norm(t) + 1e-12)
    x = (x0 + e * t).clamp_(0.0, 1.0).contiguous(memory_format=memory_format)

    x_prev = x.clone()
    grad = torch.zeros_like(x)
    x_best, grad_best = x.clone(), torch.zeros_like(x)
    loss_best = torch.full((n,), -float("inf"), device=dev)
    loss_hist = torch.zeros((steps + 1, n), device=dev)  # loss_hist[m] = loss at iterate m
    eta = 2.0 * e.expand(n, *([1] * (x0.ndim - 1))).clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=dev)
    loss_best_last = loss_best.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=dev)
    x_fooled = x.clone()
    active = torch.arange(n, device=dev)
    # The fp32 logits of x_best and x_fooled (only with keep_first_success: the verdict forwards).
    tracked: dict[str, torch.Tensor] = {}
    best_exact = torch.ones(n, dtype=torch.bool, device=dev)  # whether tracked["best"] holds fp32 logits
    with autocast_for(dev, use_autocast):
        mixed = torch.is_autocast_enabled(dev.type)

    def evaluate(m: int, need_grad: bool) -> None:
        """Loss, gradient and (fp32) success of the active iterates; keep the best and the first success."""
        nonlocal active
        xa = x[active].contiguous(memory_format=memory_format)
        ya = y[active]
        exact = torch.ones(xa.shape[0], dtype=torch.bool, device=dev)  # which logits are fp32 ones
        if keep_first_success and mixed and not need_grad:
            # Only the fp32 verdict (and its loss) is used: skip the bf16 forward.
            logits = _fp32_logits(model, xa)
            loss = F.cross_entropy(logits, ya, reduction="none")
        else:
            xg = xa.clone().requires_grad_(need_grad)
            with torch.enable_grad() if need_grad else torch.no_grad():
                with autocast_for(dev, use_autocast):
                    logits = model(xg)
                loss = F.cross_entropy(logits.float(), ya, reduction="none")
                if need_grad:
                    # Sum of per-sample losses: each sample's gradient is its own.
                    (g,) = torch.autograd.grad(loss.sum(), xg)
                    grad[active] = g.float()
            loss = loss.detach()
            if keep_first_success and mixed:
                # Success is decided in fp32: under autocast, an fp32 forward of the iterates the bf16 logits
                # leave near the boundary (_Screen); their fp32 loss also drives the step size.
                logits, exact = screen.verdict(model, xa, logits, ya)
                loss = torch.where(exact, F.cross_entropy(logits, ya, reduction="none"), loss)
        if keep_first_success:
            logits = logits.detach().float()
            hit = logits.argmax(1) != ya
            if not tracked:
                tracked["best"] = torch.zeros((n, logits.shape[1]), device=dev)
                tracked["fooled"] = torch.zeros((n, logits.shape[1]), device=dev)
        loss_hist[m, active] = loss
        better = loss > loss_best[active]
        if better.any():
            idx = active[better]
            x_best[idx] = xa[better]
            loss_best[idx] = loss[better]
            if need_grad:
                grad_best[idx] = grad[idx]
            if keep_first_success:
                tracked["best"][idx] = logits[better]
                best_exact[idx] = exact[better]
        if keep_first_success and hit.any():
            idx = active[hit]
            fooled[idx] = True
            x_fooled[idx] = xa[hit]
            tracked["fooled"][idx] = logits[hit]
            active = active[~hit]

    evaluate(0, need_grad=True)
    checks = set(_apgd_checkpoints(steps))
    last_check = 0
    for i in range(steps):
        if active.numel() == 0:
            break
        a = active
        xa, ea, x0a = x[a], e[a], x0[a]
        ga = grad[a]
        if norm == "linf":
            step = ga.sign()
        else:
            step = ga / (_l2_norm(ga) + 1e-12)
        z = to_ball(xa + eta[a] * step, x0a, ea)
        # Momentum 0.75 (the paper's alpha); the first step has no previous one.
        x_new = z if i == 0 else to_ball(xa + 0.75 * (z - xa) + 0.25 * (xa - x_prev[a]), x0a, ea)
        x_prev[a] = xa
        x[a] = x_new
        m, last = i + 1, i == steps - 1  # m: iterations done
        evaluate(m, need_grad=not last)  # the last iterate needs no gradient
        if m in checks and not last:
            a = active
            interval, last_check = m - last_check, m
            # Condition 1: the loss went up at fewer than rho * interval of the steps since the last
            # checkpoint. Condition 2: the step size was kept at the last checkpoint and the best
            # loss has not improved since.
            ups = (loss_hist[m - interval + 1 : m + 1, a] > loss_hist[m - interval : m, a]).sum(0)
            cond1 = ups < rho * interval
            cond2 = ~reduced_last[a] & (loss_best_last[a] >= loss_best[a])
            reduce = cond1 | cond2
            reduced_last[a] = reduce
            loss_best_last[a] = loss_best[a]
            if reduce.any():
                idx = a[reduce]
                eta[idx] /= 2.0
                # Restart from the best point, with its gradient and no momentum.
                x[idx] = x_best[idx]
                x_prev[idx] = x_best[idx]
                grad[idx] = grad_best[idx]
    if tracked:
        # x_best of a sample left standing may have been judged by its bf16 logits only: its fp32 ones.
        redo = (~fooled & ~best_exact).nonzero().squeeze(1)
        if redo.numel():
            tracked["best"][redo] = _fp32_logits(model, x_best[redo])
    return x_best, loss_best, fooled, x_fooled, tracked.get("best"), tracked.get("fooled")


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int = 100,
    norm: Norm = "l2",
    restarts: int = 1,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    use_autocast: bool = True,
    channels_last: bool = True,
    keep_first_success: bool = True,
    return_success: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Untargeted APGD-CE (Croce & Hein, ICML 2020): step-size-free PGD with momentum.

    Maximises the cross-entropy of ``model(x_adv)`` w.r.t. ``y`` inside the eps-ball around ``x``.
    Every sample has its own step size, starting at ``2 * eps``. The first step is
    ``x_1 = P(x_0 + eta * s(grad))``; later steps use momentum 0.75,
    ``z = P(x_k + eta * s(grad))``, ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``, where
    ``P`` projects onto the ball and clamps to [0, 1], and ``s`` is ``sign`` (L-inf) or ``g / ||g||_2``
    (L2). At checkpoints after 22%, 22+19%, 22+19+16%, ... (intervals shrinking by 3% of the steps to
    at least 6%) a sample's step size is halved, and its attack restarted from its highest-loss point
    ``x_max`` (without momentum), if (1) its loss went up at fewer than ``rho`` of the steps since the
    last checkpoint, or (2) its step size was kept at the last checkpoint and its best loss has not
    improved since. The start is a random point on the boundary of the ball, as in auto-attack and
    ``torchattacks.APGD``. Two details follow the paper rather than those implementations: condition
    (1) is a strict "fewer than" (they halve also at exactly ``rho``), and a restart from ``x_max``
    carries no momentum (they keep ``x_max - x_{k-1}``).

    Parameters
    ----------
    model
        Maps (N, C, H, W) in [0, 1] to (N, K) logits. Put in eval mode for the attack, then restored;
        its parameters are never changed and get no ``.grad`` (gradients are taken w.r.t. the input).
    x, y
        Clean images (N, C, H, W) in [0, 1] and their integer labels (N,).
    eps
        Radius in pixel units (already scaled to the image size, see :func:`scale_eps`), a number or
        one per sample (N,); a sample with radius 0 is returned unchanged.
    steps
        Gradient steps per run (>= 1); each costs one forward and one backward pass.
    norm
        ``"l2"`` or ``"linf"``.
    restarts
        Runs (>= 1). Each run after the first attacks, from a fresh random start, only the samples
        no run has fooled yet (as ``torchattacks.APGD``'s ``n_restarts``).
    rho
        Condition-1 threshold in (0, 1] (the paper's 0.75).
    generator
        Source of the random starts; a seeded generator makes the attack repeat exactly.
    use_autocast
        Run the forward/backward passes of the iterations under bf16 autocast where
        :func:`autocast_for` enables it (CUDA; CPUs with native bf16).
    channels_last
        Run the model on channels-last tensors.
    keep_first_success
        For evaluation (default): a sample misclassified on the clean image, or by any iterate of any
        run, counts as broken at once; the first fooling example is kept and the sample is no longer
        attacked. Whether a point fools the model is always decided by an **fp32** forward pass:
        when autocast is on, the iterates not yet broken whose bf16 margin lies within a measured
        slack of the boundary get one extra fp32 forward (no backward; :class:`_Screen`), so a bf16
        rounding cannot count a sample as broken that is not, and the last iterate is always judged
        in fp32. Without autocast the attack's own forward pass is fp32 and is reused.
        With ``False``, every sample runs all steps and the highest-loss point is returned
        (for CE on two classes that point fools the model if any iterate did; with more classes
        it need not).
    return_success
        Also return the success flags.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        Adversarial images (N, C, H, W), detached, same dtype as ``x``, inside the eps-ball and
        [0, 1]: per sample the first fooling example found, else the point of highest loss. With
        ``return_success``, also a bool (N,) tensor: whether that image is misclassified in an fp32
        forward pass (for the float32 images; a recount may differ only for a sample whose margin
        is at float32 rounding level).

    Raises
    ------
    ValueError
        For a bad ``norm``, ``steps < 1``, ``restarts < 1``, ``rho`` outside (0, 1], a negative or
        misshapen ``eps``, or ``x``/``y`` of the wrong shape.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from medrobust.attacks import apgd
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(1 * 8 * 8, 2))
    >>> x = torch.rand(4, 1, 8, 8)
    >>> y = model(x).argmax(1)  # labels the model gets right
    >>> adv, broken = apgd(model, x, y, eps=2.0, steps=10, norm="l2", use_autocast=False,
    ...                    generator=torch.Generator().manual_seed(0), return_success=True)
    >>> adv.shape, bool((adv - x).flatten(1).norm(dim=1).le(2.0 + 1e-5).all())
    (torch.Size([4, 1, 8, 8]), True)
    >>> torch.equal(broken, model(adv).argmax(1) != y)
    True
    """
    out, success, _ = _apgd(model, x, y, eps=eps, steps=steps, norm=norm, restarts=restarts, rho=rho,
                            generator=generator, use_autocast=use_autocast, channels_last=channels_last,
                            keep_first_success=keep_first_success, need_success=return_success)
    return (out, success) if return_success else out


def _apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int,
    norm: Norm,
    restarts: int,
    rho: float,
    generator: torch.Generator | None,
    use_autocast: bool,
    channels_last: bool,
    keep_first_success: bool,
    need_success: bool = True,
    clean_logits: torch.Tensor | None = None,
    screen: "_Screen | None" = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`apgd`: ``(x_adv, success, logits)``.

    ``logits`` are the fp32 logits of each returned example, taken from the verdict forwards the
    attack ran anyway (``None`` without ``keep_first_success``); ``clean_logits`` (N, K), the fp32
    logits of ``x`` when the caller has them, spare the clean forward pass. ``success`` is ``None``
    when nothing was attacked and ``need_success`` is false. ``screen``: as for :func:`_pgd_run`.
    """
    _check_norm(norm)
    norm = "linf" if norm == "linf" else "l2"
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}.")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}.")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per image, shape ({x.shape[0]},), got {tuple(y.shape)}.")
    e = _per_sample(eps, x)
    n = x.shape[0]
    if n == 0 or bool((e == 0).all()):
        out = x.detach().clone()
        if n == 0:
            return out, torch.zeros(0, dtype=torch.bool, device=x.device), None
        if not need_success and clean_logits is None:
            return out, None, None
        if clean_logits is None:
            with eval_mode(model):
                clean_logits = _fp32_logits(model, x)
        return out, clean_logits.argmax(1) != y, clean_logits
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0 = x.detach().float().contiguous(memory_format=fmt)
    y = y.detach()
    result = x0.clone()
    best_loss = torch.full((n,), -float("inf"), device=x.device)
    run_kw = dict(steps=steps, norm=norm, rho=rho, generator=generator, use_autocast=use_autocast,
                  keep_first_success=keep_first_success, memory_format=fmt, screen=screen or _Screen())
    with eval_mode(model):
        # The clean image lies in the ball: misclassified there, the sample is broken as it is.
        clean = _fp32_logits(model, x0) if clean_logits is None else clean_logits.float()
        success = clean.argmax(1) != y
        logits = clean.clone() if keep_first_success else None  # fp32 logits of ``result`` (the clean image so far)
        unchanged = (e.view(-1) == 0) | (success if keep_first_success else torch.zeros_like(success))
        todo = ~unchanged
        for _ in range(restarts):
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_max, loss_max, fooled, x_fooled, logits_max, logits_fooled = _apgd_run(model, x0[idx], y[idx], e[idx],
                                                                                    **run_kw)
            better = loss_max > best_loss[idx]
            result[idx[better]] = x_max[better]
            best_loss[idx[better]] = loss_max[better]
            if keep_first_success:
                logits[idx[better]] = logits_max[better]
                result[idx[fooled]] = x_fooled[fooled]
                logits[idx[fooled]] = logits_fooled[fooled]
                success[idx[fooled]] = True
            else:
                # The returned point is the highest-loss one: count it in an fp32 forward pass.
                success[idx] = _fp32_logits(model, result[idx]).argmax(1) != y[idx]
            todo = todo & ~success
    out = result.to(x.dtype).contiguous()
    out[unchanged] = x.detach()[unchanged]
    return out, success, logits


# ----------------------------------------------------------------------------- the worst case over an ensemble

#: The white-box attacks of the benchmark's ensemble, in the order they run.
ENSEMBLE = ("pgd", "apgd")


@dataclass
class WorstCase:
    """The per-image worst case over an ensemble of attacks (RobustBench's rule).

    ``x_adv`` holds, per image, the example with the lowest fp32 margin (true-class logit minus the
    best other logit) found by any attack or start: a fooling one wherever any attack fooled the model.
    ``logits`` are its fp32 logits (from the verdict forward pass that judged it).
    ``ok_by_attack`` says, per attack, which images it left correctly classified (all its starts);
    ``pgd_first`` is PGD's first start alone (the benchmark's single-start figure before the ensemble);
    ``ok`` is their conjunction.
    """

    x_adv: torch.Tensor  # (N, C, H, W)
    ok: torch.Tensor  # (N,) bool
    ok_by_attack: dict[str, torch.Tensor]  # name -> (N,) bool
    logits: torch.Tensor | None = None  # (N, K) float32: the fp32 logits of x_adv


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{k != y} z_k`` per sample: negative exactly when the sample is misclassified (ties aside)."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), -float("inf")).amax(1)
    return true - other


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logit_margin(_fp32_logits(model, x), y)


def _check_ensemble(attacks: Sequence[str], pgd_restarts: int, apgd_restarts: int) -> None:
    unknown = [a for a in attacks if a not in ENSEMBLE]
    if unknown or not attacks:
        raise ValueError(f"attacks must be a non-empty subset of {', '.join(ENSEMBLE)}, got {list(attacks)}.")
    if pgd_restarts < 1 or apgd_restarts < 1:
        raise ValueError(f"restarts must be >= 1, got pgd {pgd_restarts}, apgd {apgd_restarts}.")


@dataclass
class _Standing:
    """What the smaller radii of :func:`worst_case_radii` leave to the next one (all per image)."""

    best: torch.Tensor  # the lowest-margin example so far (it lies in every larger ball)
    margin: torch.Tensor
    logits: torch.Tensor
    fooled: dict[str, torch.Tensor]  # attack name ("pgd_first", "pgd", "apgd") -> fooled at a smaller radius
    screen: _Screen = field(default_factory=_Screen)  # the bf16-vs-fp32 margin gap measured so far


def _ensemble(model: nn.Module, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor, *, steps: int, norm: Norm,
              pgd_restarts: int, apgd_restarts: int, attacks: Sequence[str], generator: torch.Generator | None,
              use_autocast: bool, clean_logits: torch.Tensor, standing: _Standing, schedule: str) -> WorstCase:
    """Every member of the ensemble at per-image radius ``e`` (N,); the model is in eval mode.

    ``standing`` carries the smaller radii's findings (updated in place): the best example so far
    starts as this radius' candidate, and an attack skips the images it has already fooled at a
    smaller radius (its fooling example lies in this ball too, so they stay fooled by it). With the
    ``sequential`` schedule APGD also skips the images PGD has fooled, and ``ok_by_attack`` holds
    ``"apgd_after_pgd"`` (what PGD then APGD leave, equal to ``ok``) instead of APGD's own ``"apgd"``.
    """
    best, best_margin, best_logits = standing.best, standing.margin, standing.logits
    ok_by: dict[str, torch.Tensor] = {}

    def offer(cand: torch.Tensor, logits: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        """Keep ``cand`` where its margin is lower; returns which of ``idx`` it leaves correct."""
        if logits is None:  # an attack that ran no verdict forward (no step): judge it here
            logits = _fp32_logits(model, cand)
        m = logit_margin(logits, y[idx])
        better = m < best_margin[idx]
        best[idx[better]] = cand[better].float()
        best_margin[idx[better]] = m[better]
        best_logits[idx[better]] = logits[better]
        return m > 0

    if "pgd" in attacks:
        # The first start runs on every image it has not fooled at a smaller radius, the others on
        # the images no start has fooled (at this radius or a smaller one).
        ok_first = ~standing.fooled["pgd_first"]
        ok = ~standing.fooled["pgd"]
        for r in range(pgd_restarts):
            todo = ok_first if r == 0 else ok
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, logits = _pgd_run(model, x[idx], y[idx], eps=e[idx], steps=steps, norm=norm, step_size=None,
                                   random_start=True, generator=generator, keep_first_success=True,
                                   use_autocast=use_autocast, channels_last=True,
                                   start="sphere" if r % 2 == 1 else "ball", screen=standing.screen)
            stood = offer(adv, logits, idx)
            if r == 0:
                ok_first = ok_first.clone()
                ok_first[idx] = stood
                ok = ok & ok_first
            else:
                ok[idx] = stood
        ok_by["pgd_first"], ok_by["pgd"] = ok_first, ok
    sequential = schedule == Schedule.SEQUENTIAL.value and "pgd" in ok_by
    if "apgd" in attacks:
        # standing.fooled["apgd"]: fooled by APGD (independent), or by PGD or APGD (sequential).
        ok = ~standing.fooled["apgd"] & (ok_by["pgd"] if sequential else True)
        idx = ok.nonzero().squeeze(1)
        if idx.numel():
            adv, _, logits = _apgd(model, x[idx], y[idx], eps=e[idx], steps=steps, norm=norm, restarts=apgd_restarts,
                                   rho=0.75, generator=generator, use_autocast=use_autocast, channels_last=True,
                                   keep_first_success=True, need_success=False, clean_logits=clean_logits[idx],
                                   screen=standing.screen)
            ok[idx] = offer(adv, logits, idx)
        ok_by["apgd"] = ok
    for name, value in ok_by.items():
        standing.fooled[name] = ~value
    ok_all = torch.stack([v for k, v in ok_by.items() if k != "pgd_first"]).all(0)
    if sequential and "apgd" in ok_by:
        ok_by["apgd_after_pgd"] = ok_by.pop("apgd")  # APGD saw PGD's survivors only: not its own accuracy
    return WorstCase(x_adv=best.clone().to(x.dtype), ok=ok_all, ok_by_attack=ok_by, logits=best_logits.clone())


def worst_case(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int,
    norm: Norm = "l2",
    pgd_restarts: int = 1,
    apgd_restarts: int = 1,
    attacks: Sequence[str] = ENSEMBLE,
    generator: torch.Generator | None = None,
    use_autocast: bool = True,
    clean_logits: torch.Tensor | None = None,
    schedule: str | Schedule = Schedule.INDEPENDENT,
) -> WorstCase:
    """Attack every image with every member of the ensemble; an image is robust only if none fools it.

    PGD runs ``pgd_restarts`` random starts (the first uniform in the ball, then alternately on the
    surface and inside it, so both the ball's interior and its surface are covered) and APGD-CE
    ``apgd_restarts``; restarts only attack images still standing. Every decision is an fp32 forward
    pass (the iterations may run under bf16 autocast); each example is judged by the verdict forward
    that found it, so no forward pass is repeated.

    Parameters
    ----------
    model
        (N, C, H, W) in [0, 1] -> logits; attacked in eval mode, its mode restored.
    x, y
        Images (N, C, H, W) in [0, 1] and labels (N,).
    eps
        Radius in pixel units, a number or one per image (N,).
    steps
        Steps of each PGD start and each APGD run.
    clean_logits
        The fp32 logits of ``x`` (N, K) when the caller has them (spares that forward pass).
    schedule
        ``"independent"`` (default): each attack attacks every image, and ``ok_by_attack`` holds each
        attack's own verdict. ``"sequential"`` (AutoAttack's rule): APGD attacks only the images PGD
        left standing; same worst-case rule, fewer passes; ``ok_by_attack`` holds ``"apgd_after_pgd"``
        (what PGD then APGD leave) instead of ``"apgd"``.

    Returns
    -------
    WorstCase
        ``ok_by_attack`` has ``"pgd_first"`` (PGD's first start), ``"pgd"`` (all PGD starts) and
        ``"apgd"`` (``"apgd_after_pgd"`` with the sequential schedule) for the attacks run.

    Examples
    --------
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    >>> x = torch.rand(8, 1, 4, 4); y = net(x).argmax(1)
    >>> wc = worst_case(net, x, y, eps=0.5, steps=5, generator=torch.Generator().manual_seed(0))
    >>> bool((wc.ok <= wc.ok_by_attack["pgd"]).all() and (wc.ok <= wc.ok_by_attack["apgd"]).all())
    True
    """
    schedule = parse_choice(Schedule, schedule).value
    _check_ensemble(attacks, pgd_restarts, apgd_restarts)
    x = x.detach()
    e = _per_sample(eps, x).view(-1)  # (N,): pgd and apgd take one radius per image
    with eval_mode(model):
        clean = _fp32_logits(model, x) if clean_logits is None else clean_logits.float()
        standing = _fresh_standing(x, y, clean)
        return _ensemble(model, x, y, e, steps=steps, norm=norm, pgd_restarts=pgd_restarts,
                         apgd_restarts=apgd_restarts, attacks=attacks, generator=generator,
                         use_autocast=use_autocast, clean_logits=clean, standing=standing, schedule=schedule)


def _fresh_standing(x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor) -> _Standing:
    none = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return _Standing(best=x.clone().float(), margin=logit_margin(clean_logits, y), logits=clean_logits.clone(),
                     fooled={name: none.clone() for name in ("pgd_first", "pgd", "apgd")})


def worst_case_radii(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    radii: Sequence[float],
    steps: int,
    norm: Norm = "l2",
    pgd_restarts: int = 1,
    apgd_restarts: int = 1,
    attacks: Sequence[str] = ENSEMBLE,
    generator: torch.Generator | None = None,
    use_autocast: bool = True,
    clean_logits: torch.Tensor | None = None,
    schedule: str | Schedule = Schedule.INDEPENDENT,
) -> list[WorstCase]:
    """:func:`worst_case` at several radii, using that the balls are nested.

    The radii run from the smallest up. An example found at a smaller radius lies in every larger
    ball, so (1) it is the starting candidate of the larger radii (the reported worst case never
    gets less damaging as the radius grows), and (2) each attack skips, at a larger radius, the
    images it has already fooled: they count as fooled by it there too, with that example. Every
    per-attack verdict therefore reads "fooled by this attack within the ball", at or below what
    running the attack again at the larger radius alone would report; nothing that could fool an
    image is skipped (images still standing are attacked in full at every radius).

    Parameters
    ----------
    radii
        Radii in pixel units (as :func:`scale_eps` gives them), in any order, each >= 0.
    clean_logits
        The fp32 logits of ``x`` (N, K) when the caller has them (spares that forward pass).
    schedule
        As for :func:`worst_case`; with ``"sequential"`` APGD also skips the images PGD fooled at a
        smaller radius.
    (the rest)
        As for :func:`worst_case`.

    Returns
    -------
    list of WorstCase
        One per radius, in the order of ``radii``.

    Examples
    --------
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    >>> x = torch.rand(8, 1, 4, 4); y = net(x).argmax(1)
    >>> small, large = worst_case_radii(net, x, y, radii=[0.2, 2.0], steps=5, generator=torch.Generator().manual_seed(0))
    >>> bool((large.ok <= small.ok).all())  # nested balls: robust at 2.0 only if robust at 0.2
    True
    """
    schedule = parse_choice(Schedule, schedule).value
    _check_ensemble(attacks, pgd_restarts, apgd_restarts)
    if any(float(r) < 0 for r in radii):
        raise ValueError(f"radii must be >= 0, got {list(radii)}.")
    x = x.detach()
    out: dict[int, WorstCase] = {}
    with eval_mode(model):
        clean = _fp32_logits(model, x) if clean_logits is None else clean_logits.float()
        standing = _fresh_standing(x, y, clean)
        for i in sorted(range(len(radii)), key=lambda j: float(radii[j])):
            e = torch.full((x.shape[0],), float(radii[i]), dtype=torch.float32, device=x.device)
            out[i] = _ensemble(model, x, y, e, steps=steps, norm=norm, pgd_restarts=pgd_restarts,
                               apgd_restarts=apgd_restarts, attacks=attacks, generator=generator,
                               use_autocast=use_autocast, clean_logits=clean, standing=standing, schedule=schedule)
    return [out[i] for i in range(len(radii))]
