"""The smallest L2 radius (stated at 224 px) whose PGD flips each model's prediction, by bisection."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from medrobust.attacks import REFERENCE_SIDE, scale_eps
from medrobust.dashboard.clean_analysis import CleanState, predict_probs
from medrobust.dashboard.hosting import SHUTTING_DOWN
from medrobust.dashboard.modelset import LoadedModel, ModelSet
from medrobust.dashboard.perturbation import MAX_EPS, limits
from medrobust.dashboard.stress_run import pmap, attack


@dataclass
class FlipSearch:
    """Result of :func:`smallest_flip_eps` for one model."""

    name: str
    eps: float | None  # stated at 224 px; None: not flipped even at max_eps
    eps_pixels: float | None
    max_eps: float
    evaluations: int
    seconds: float
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return self.error
        if self.eps is None:
            return f"not flipped up to eps {self.max_eps:g}"
        return f"eps ≈ {self.eps:.2f} (L2 at 224 px; {self.eps_pixels:.3f} at this size)"


def _flip_witness(model: nn.Module, x: torch.Tensor, label: int, eps: float, *, steps: int,
                  seed: int) -> float | None:
    """Attack at radius ``eps`` (at 224 px); the L2 size (at 224 px) of the first fooling example, or None."""
    if eps <= 0:
        return None
    x_adv = attack(model, x, label, eps=eps, steps=steps, seed=seed, keep_first_success=True)
    if int(predict_probs(model, x_adv)[0].argmax()) == int(label):
        return None
    side = int(x.shape[-1])
    return float((x_adv - x).flatten().norm()) * REFERENCE_SIDE / side


def smallest_flip_eps(model: nn.Module, x: torch.Tensor, *, label: int | None = None, max_eps: float = MAX_EPS,
                      steps: int = 20, tol: float = 0.05, seed: int = 0, name: str = "") -> FlipSearch:
    """Bisection for the smallest L2 radius (stated at 224 px) at which PGD flips the prediction.

    Every successful attack is a witness: the upper end of the interval drops to the witness's own
    size, which is never more than the radius tried, so the search usually needs fewer attacks than
    plain bisection. PGD success is not exactly monotone in eps (the random start), so the result
    is the boundary the seeded attack finds: a flipping example of that size exists, while the
    attack found none at ``eps - tol``. ``model`` may be a :class:`~medrobust.models.Bf16Twin`: its steps run in
    bf16 and every hit is confirmed by an fp32 forward.
    """
    t0 = time.time()
    if label is None:
        label = int(predict_probs(model, x)[0].argmax())
    n = 1
    w = _flip_witness(model, x, label, max_eps, steps=steps, seed=seed)
    if w is None:
        return FlipSearch(name, None, None, max_eps, n, time.time() - t0)
    lo, hi = 0.0, min(float(max_eps), w)
    while hi - lo > tol and not SHUTTING_DOWN.is_set():  # the server is stopping: keep the interval found so far
        mid = 0.5 * (lo + hi)
        n += 1
        w = _flip_witness(model, x, label, mid, steps=steps, seed=seed)
        if w is not None:
            hi = min(mid, w)
        else:
            lo = mid
    side = int(x.shape[-1])
    return FlipSearch(name, hi, scale_eps(hi, norm="l2", side=side), max_eps, n, time.time() - t0)


def flip_search_all(model_set: ModelSet, clean: CleanState, *, steps: int = 20, seed: int = 0,
                    max_eps: float = MAX_EPS, tol: float = 0.05, on_model=None) -> list[FlipSearch]:
    """:func:`smallest_flip_eps` for every model, in parallel; ``on_model(done, n)`` reports progress from
    the calling thread (so a Streamlit page may update a progress bar in it). ``steps`` and ``tol`` are held
    to :func:`limits` (demo mode caps them)."""
    lim = limits()
    steps, tol = min(int(steps), lim.max_flip_steps), max(float(tol), lim.flip_tol)

    def one(m: LoadedModel) -> FlipSearch:
        if not m.ok or m.name not in clean.views:
            return FlipSearch(m.name, None, None, max_eps, 0, 0.0, error=m.error or "not loaded")
        v = clean.views[m.name]
        return smallest_flip_eps(m.attack_net, v.x, label=v.pred, max_eps=max_eps, steps=steps, tol=tol, seed=seed,
                                 name=m.name)

    return pmap(one, model_set.models, on_done=on_model)
