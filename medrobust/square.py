"""Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020) and a gradient-masking check.

Square is a score-based black-box attack: it only reads the model's logits, never its gradients. It
does random search on the margin loss ``z_y - max_{k != y} z_k`` (lower is better, <= 0 fools the
model), accepting a random, localised change of the perturbation only when it lowers the loss. A
white-box attack (PGD, APGD) that follows gradients should be at least as strong as Square at the
same budget; when Square breaks *more* images, the gradients the white-box attacks followed were
uninformative (zero, shattered, obfuscated) and their robust accuracy overstates the model's true
robustness. :func:`gradient_masking_check` runs that comparison.

The port follows the authors' code (``auto-attack/autoattack/square.py``, which ``torchattacks.Square``
copies): the L2 initialisation with a 5x5 grid of ``meta_pseudo_gaussian_pert`` windows of random
sign, the piece-wise constant schedule for the window's share ``p`` of the image, and the L2 update
that moves the mass of a second random window into the first (so the perturbation stays on the eps
sphere, before clipping to [0, 1]). One window position is drawn per iteration for the whole batch, as
in the reference. Differences: all randomness comes from a ``torch.Generator`` (the reference seeds
the global RNG), eps may differ per sample, every forward is fp32 with autocast off, success is
``argmax != y`` (the reference stops at margin <= 0, the same except for exact ties), and for images
with several channels the L2 update divides the budget per channel as the authors' original
``square_attack_l2`` does (identical for the single-channel images of this package).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from medrobust.attacks import Norm, _check_norm, _fp32_logits, _l2_norm as _l2, _per_sample, eval_mode, logit_margin

__all__ = ["square", "gradient_masking_check", "p_selection"]


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The share of the image a Square window covers at iteration ``it`` of ``n_queries``.

    The reference's piece-wise constant schedule, rescaled to ``n_queries`` (``resc_schedule``): the
    iteration is mapped to ``int(it / n_queries * 10000)`` and ``p`` halves at 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 of those 10 000 steps (``p_init`` down to ``p_init / 512``).
    """
    it = int(it / n_queries * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8),
                       (50, 4), (10, 2)):
        if it > bound:
            return p_init / div
    return p_init


def _rand(shape: list[int], generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the generator's device, returned on the CPU (as the reference's torch.rand(shape)): with a
    # CPU generator (the default) a seed repeats on every device; a CUDA generator works too.
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).cpu()


def _random_choice(shape: list[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Random signs (the reference's ``random_choice``: ``sign(2 u - 1)``)."""
    return torch.sign(2 * _rand(shape, generator) - 1).to(device)


def _random_int(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer in [low, high) (the reference's ``random_int``; ``low`` when ``high <= low``)."""
    return int((low + (high - low) * _rand([1], generator)).long())


def _eta_rectangles(x: int, y: int) -> torch.Tensor:
    """The reference's ``eta_rectangles``: nested centred rectangles of weight 1 / (k + 1)^2, unit L2 norm."""
    delta = torch.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0) : min(c0 + (2 * counter + 1), x), max(0, c1) : min(c1 + (2 * counter + 1), y)] += (
            1.0 / (torch.tensor([counter + 1], dtype=torch.float32).view(1, 1) ** 2))
        c0 -= 1
        c1 -= 1
    delta /= (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()
    return delta


@functools.lru_cache(maxsize=64)
def _eta_base(s: int) -> torch.Tensor:
    delta = torch.zeros([s, s])
    delta[: s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2 :] = -1.0 * _eta_rectangles(s - s // 2, s)
    delta /= (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()
    return delta


def _eta(s: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The reference's ``eta`` (the authors' ``meta_pseudo_gaussian_pert``): an (s, s) window, a positive
    bump on one half and a negative one on the other, unit L2 norm, transposed with probability 1/2."""
    delta = _eta_base(s).clone()  # the cached pattern is never handed out
    if _rand([1], generator) > 0.5:
        delta = delta.permute([1, 0])
    return delta.to(device)


def _normalize_l2(t: torch.Tensor) -> torch.Tensor:
    norm = (t**2).view(t.shape[0], -1).sum(-1).sqrt()
    return t / (norm.view(-1, 1, 1, 1) + 1e-12)


def _query(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One query: fp32 logits (no autocast, no graph) -> (margin, misclassified)."""
    logits = _fp32_logits(model, x)
    return logit_margin(logits, y), logits.argmax(1) != y


def _square_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    e: torch.Tensor,
    *,
    n_queries: int,
    norm: Norm,
    p_init: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Square run on samples the model gets right; the model is in eval mode, no grad is recorded.

    Returns ``(x_best, fooled)``: per sample the point of lowest margin found (the first fooling one
    once it fools the model; such a sample gets no more queries), and whether it fools the model.
    """
    n, c, h, w = x.shape
    dev = x.device
    n_features = c * h * w

    if norm == "linf":
        x_best = torch.clamp(x + e * _random_choice([n, c, 1, w], generator, dev), 0.0, 1.0)
    else:
        # A grid of pseudo-Gaussian windows of side h // 5 with random signs, scaled to the sphere.
        # (For square images this is the reference's grid; the guards only matter for tiny or
        # non-square ones, where the reference fails.)
        delta_init = torch.zeros_like(x)
        s = max(min(h, w) // 5, 1)
        sp_h, sp_w = max((h - s * 5) // 2, 0), max((w - s * 5) // 2, 0)
        vh = sp_h
        for _ in range((h - sp_h) // s):
            vw = sp_w
            for _ in range((w - sp_w) // s):
                delta_init[:, :, vh : vh + s, vw : vw + s] += (
                    _eta(s, generator, dev).view(1, 1, s, s) * _random_choice([n, c, 1, 1], generator, dev))
                vw += s
            vh += s
        x_best = torch.clamp(x + _normalize_l2(delta_init) * e, 0.0, 1.0)
    margin_min, fooled = _query(model, x_best, y)

    for i_iter in range(n_queries):
        idx = (~fooled).nonzero().flatten()
        if idx.numel() == 0:
            break
        x_curr, x_best_curr, y_curr, e_curr = x[idx], x_best[idx], y[idx], e[idx]
        margin_min_curr = margin_min[idx]
        m = idx.numel()
        p = p_selection(p_init, i_iter, n_queries)

        if norm == "linf":
            s = min(max(int(round(math.sqrt(p * n_features / c))), 1), h, w)
            vh = _random_int(0, h - s, generator)
            vw = _random_int(0, w - s, generator)
            new_deltas = torch.zeros([c, h, w], device=dev)
            new_deltas[:, vh : vh + s, vw : vw + s] = _random_choice([c, 1, 1], generator, dev)
            x_new = x_best_curr + 2.0 * e_curr * new_deltas
            x_new = torch.min(torch.max(x_new, x_curr - e_curr), x_curr + e_curr)
            x_new = torch.clamp(x_new, 0.0, 1.0)
        else:
            delta_curr = x_best_curr - x_curr
            s = max(int(round(math.sqrt(p * n_features / c))), 3)
            if s % 2 == 0:
                s += 1
            s = min(s, h, w)
            # Window 1 receives the new bump plus its old content (rescaled), window 2 is emptied,
            # and the freed budget (plus whatever the sphere has left) goes to window 1.
            vh = _random_int(0, h - s, generator)
            vw = _random_int(0, w - s, generator)
            norms_window_1 = (delta_curr[:, :, vh : vh + s, vw : vw + s] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
            vh2 = _random_int(0, h - s, generator)
            vw2 = _random_int(0, w - s, generator)
            norms_image = _l2(delta_curr)
            mask_image = torch.zeros_like(x_curr)  # the union of the two windows
            mask_image[:, :, vh : vh + s, vw : vw + s] = 1.0
            mask_image[:, :, vh2 : vh2 + s, vw2 : vw2 + s] = 1.0
            # Per channel (the authors' square_attack_l2); for one channel the reference's whole-image norm.
            norms_windows = ((delta_curr * mask_image) ** 2).view(m, c, -1).sum(-1).sqrt().view(m, c, 1, 1)

            new_deltas = torch.ones([m, c, s, s], device=dev)
            new_deltas *= _eta(s, generator, dev).view(1, 1, s, s) * _random_choice([m, c, 1, 1], generator, dev)
            old_deltas = delta_curr[:, :, vh : vh + s, vw : vw + s] / (1e-12 + norms_window_1)
            new_deltas += old_deltas
            new_deltas = new_deltas / (1e-12 + (new_deltas**2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
                torch.max((e_curr * torch.ones_like(new_deltas)) ** 2 - norms_image**2, torch.zeros_like(new_deltas))
                / c + norms_windows**2).sqrt()
            delta_curr[:, :, vh2 : vh2 + s, vw2 : vw2 + s] = 0.0
            delta_curr[:, :, vh : vh + s, vw : vw + s] = new_deltas + 0
            x_new = torch.clamp(x_curr + _normalize_l2(delta_curr) * e_curr, 0.0, 1.0)

        margin, miscl = _query(model, x_new, y_curr)
        # Accept an improvement, or a point that fools the model.
        improved = (margin < margin_min_curr) | (margin <= 0.0) | miscl
        margin_min[idx] = torch.where(improved, margin, margin_min_curr)
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_curr)
        fooled[idx] = improved & miscl
    return x_best, fooled


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    n_queries: int = 1000,
    norm: Norm = "l2",
    p_init: float = 0.8,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted Square attack (score-based black-box random search) on the margin loss.

    Every query is one fp32 forward pass (autocast off) under ``torch.no_grad``: the attack reads
    logits only. Per sample, the margin ``z_y - max_{k != y} z_k`` of the current best point is
    lowered by random search: L2 starts from a grid of 5 x 5 pseudo-Gaussian windows of random sign
    scaled onto the eps sphere; each iteration moves the mass of one random window into another one,
    adds a fresh pseudo-Gaussian bump of random sign there and rescales to the sphere (L-inf: sets a
    random square to +-eps). The window covers a share ``p`` of the image that shrinks from ``p_init``
    on the schedule of :func:`p_selection`. A candidate is kept only when it lowers the margin (or fools
    the model); a sample stops being queried as soon as it is fooled.

    Parameters
    ----------
    model
        Maps (N, C, H, W) in [0, 1] to (N, K) logits. Put in eval mode for the attack and restored
        afterwards (also when it raises); never changed.
    x, y
        Clean images (N, C, H, W) in [0, 1] and their integer labels (N,).
    eps
        Radius in pixel units (already scaled to the image size, see
        :func:`medrobust.attacks.scale_eps`), a number or one per sample (N,). A sample with radius 0
        is not attacked.
    n_queries
        Iterations of random search (>= 0). As in the reference, the random initialisation is one more
        query, so a sample costs at most ``n_queries + 1`` forward passes, besides the one batched
        clean pass that decides which samples are attacked.
    norm
        ``"l2"`` (the case that matters here) or ``"linf"``.
    p_init
        Initial share of the image a window covers, in (0, 1] (the reference's 0.8).
    generator
        The source of all randomness (window positions, signs, orientations), drawn on the generator's
        device whatever the device of ``x``: a seeded CPU generator repeats exactly on every device (a
        CUDA generator works too, with its own draws); the global RNG is left alone; ``None`` draws from
        torch's global CPU generator.
    batch_size
        Attack at most this many images at a time (memory); ``None`` attacks all at once. As in the
        reference, one window position is drawn per iteration for the whole batch, so results depend
        on ``batch_size`` (not on the seed's repeatability).

    Returns
    -------
    x_adv : torch.Tensor
        (N, C, H, W), detached, same dtype as ``x``, within ``eps`` of ``x`` in the chosen norm and
        in [0, 1]: for a fooled sample the first fooling point found, else the point of lowest margin.
        Samples misclassified on the clean image (and samples with radius 0) are returned unchanged.
    fooled : torch.Tensor
        Bool (N,): the model misclassifies ``x_adv`` (``argmax != y``) in an fp32 forward pass; True
        for samples misclassified on the clean image. (A recount on a differently batched forward may
        differ only for a margin at float32 rounding level.)

    Raises
    ------
    ValueError
        For a bad ``norm``, ``n_queries < 0``, ``p_init`` outside (0, 1], ``batch_size < 1``, a
        negative or misshapen ``eps``, or ``x``/``y`` of the wrong shape.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from medrobust.square import square
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
    >>> x = torch.rand(4, 1, 16, 16)
    >>> y = model(x).argmax(1)  # labels the model gets right
    >>> adv, fooled = square(model, x, y, eps=2.0, n_queries=100, generator=torch.Generator().manual_seed(0))
    >>> adv.shape, bool((adv - x).flatten(1).norm(dim=1).le(2.0 + 1e-5).all())
    (torch.Size([4, 1, 16, 16]), True)
    >>> torch.equal(fooled, model(adv).argmax(1) != y)
    True
    """
    _check_norm(norm)
    norm = "linf" if norm == "linf" else "l2"
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or n_queries < 0:
        raise ValueError(f"n_queries must be an integer >= 0, got {n_queries!r}.")
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per image, shape ({x.shape[0]},), got {tuple(y.shape)}.")
    e = _per_sample(eps, x)
    n = x.shape[0]
    if n == 0:
        return x.detach().clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    x0 = x.detach().float().contiguous()
    y = y.detach().long()
    result = x0.clone()
    with torch.no_grad(), eval_mode(model):
        fooled = _fp32_logits(model, x0).argmax(1) != y
        todo = (~fooled & (e.view(-1) > 0)).nonzero().flatten()
        step = todo.numel() if batch_size is None else batch_size
        for start in range(0, todo.numel(), max(step, 1)):
            idx = todo[start : start + step]
            x_best, hit = _square_run(model, x0[idx], y[idx], e[idx], n_queries=n_queries, norm=norm,
                                      p_init=p_init, generator=generator)
            result[idx] = x_best
            fooled[idx] = hit
    out = result.to(x.dtype)
    # Untouched samples come back bit for bit (also when x is not float32).
    untouched = torch.ones(n, dtype=torch.bool, device=x.device)
    untouched[todo] = False
    out[untouched] = x.detach()[untouched]
    return out, fooled


def gradient_masking_check(
    *,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    white_box_correct: torch.Tensor,
    n_queries: int = 1000,
    norm: Norm = "l2",
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Compare Square (black-box) with white-box attacks at the same radius: a gradient-masking check.

    A white-box attack reads the exact gradient, so on a model whose gradients are informative it is
    at least as strong as a black-box random search with the same budget. If Square leaves *fewer*
    images correctly classified than the white-box attacks did, their gradients misled them (masked,
    shattered or obfuscated gradients) and their robust accuracy is not trustworthy.

    **Definition.** ``masking_suspected`` is ``square_correct < white_box_correct_count``, i.e.
    ``square_accuracy < white_box_accuracy`` compared as integer counts over the same N images: Square
    broke at least one image more in total. Both counts use the robust-accuracy convention: an image
    misclassified on the clean input counts as broken for both (so ``white_box_correct`` is and-ed
    with clean correctness, which this check recomputes). ``found_by_square_only`` (images the
    white-box attacks left standing but Square broke) is reported separately: it can be > 0 without
    masking being suspected when the white-box attacks broke still more other images (random search
    wins a few borderline images by luck); it is >= 1 whenever masking is suspected.

    Parameters
    ----------
    model
        Maps (N, C, H, W) in [0, 1] to (N, K) logits; eval mode for the check, restored afterwards.
    x, y
        Images (N, C, H, W) in [0, 1], N >= 1, and labels (N,).
    eps
        The radius in pixel units the white-box attacks used.
    white_box_correct
        Bool (N,): whether each image was still classified correctly after the white-box attacks at
        ``eps`` (per image, the worst case over the attacks run).
    n_queries, norm, generator
        Passed to :func:`square`.

    Returns
    -------
    dict
        JSON-friendly: ``n`` (int), ``norm`` (str), ``eps_pixels`` (float), ``n_queries`` (int),
        ``clean_accuracy``, ``square_accuracy``, ``white_box_accuracy`` (floats in [0, 1]),
        ``found_by_square_only`` (int), ``masking_suspected`` (bool) and ``note`` (a plain-language
        sentence).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from medrobust.attacks import pgd
    >>> from medrobust.square import gradient_masking_check
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
    >>> x = torch.rand(8, 1, 16, 16)
    >>> y = model(x).argmax(1)
    >>> adv = pgd(model, x, y, eps=0.5, steps=20, keep_first_success=True, use_autocast=False,
    ...           generator=torch.Generator().manual_seed(0))
    >>> wb = model(adv).argmax(1) == y
    >>> report = gradient_masking_check(model=model, x=x, y=y, eps=0.5, white_box_correct=wb,
    ...                                 n_queries=100, generator=torch.Generator().manual_seed(0))
    >>> report["n"], report["masking_suspected"]
    (8, False)
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (N, C, H, W) batch, got shape {tuple(x.shape)}.")
    n = x.shape[0]
    if not isinstance(white_box_correct, torch.Tensor) or white_box_correct.dtype != torch.bool:
        raise TypeError("white_box_correct must be a bool tensor (one flag per image).")
    if white_box_correct.shape != (n,):
        raise ValueError(f"white_box_correct must have shape ({n},), got {tuple(white_box_correct.shape)}.")
    if isinstance(eps, torch.Tensor):
        if eps.numel() != 1:
            raise ValueError("eps must be a single radius for the check.")
        eps = float(eps)
    eps = float(eps)
    _, fooled = square(model, x, y, eps=eps, n_queries=n_queries, norm=norm, generator=generator)
    with eval_mode(model):
        clean_correct = (_fp32_logits(model, x.detach()).argmax(1) == y).cpu()
    fooled = fooled.cpu()
    wb = white_box_correct.detach().cpu() & clean_correct
    sq = ~fooled & clean_correct
    n_sq, n_wb = int(sq.sum()), int(wb.sum())
    only = int((wb & ~sq).sum())
    suspected = n_sq < n_wb
    name = "L2" if norm == "l2" else "L-inf"
    if suspected:
        note = (f"Square, a black-box attack that never reads gradients ({n_queries} queries), left {n_sq} of {n} "
                f"images correct at {name} eps {eps:g}, fewer than the {n_wb} the white-box attacks left; it broke "
                f"{only} image(s) they missed. Their gradients are misleading (gradient masking is suspected), "
                f"so the white-box robust accuracy overstates robustness: report the lower number.")
    else:
        note = (f"Square ({n_queries} queries) left {n_sq} of {n} images correct at {name} eps {eps:g}, not fewer "
                f"than the {n_wb} the white-box attacks left, so there is no sign of gradient masking at this "
                f"budget" + (f" (it broke {only} image(s) they missed, but they broke more others)." if only else ".")
                + " Passing this check does not prove the absence of masking.")
    return {
        "n": n,
        "norm": norm,
        "eps_pixels": eps,
        "n_queries": int(n_queries),
        "clean_accuracy": float(clean_correct.float().mean()),
        "square_accuracy": n_sq / n,
        "white_box_accuracy": n_wb / n,
        "found_by_square_only": only,
        "masking_suspected": bool(suspected),
        "note": note,
    }
