"""Apply a :class:`~medrobust.dashboard.perturbation.Perturbation` and re-predict with every model.

Noise and clinical corruptions are applied at each model's own size; L2 PGD / APGD-CE attack each model on its own or
are crafted on one model and shown to all. All randomness comes from ``torch.Generator`` objects seeded from the
user's seed, so the same settings give the same picture.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks import apgd, pgd, scale_eps, worst_case
from medrobust.choices import CLASS_NAMES
from medrobust.clinical import clinical_corrupt
from medrobust.corruptions import apply_corruption
from medrobust.gradcam import gradcam
from medrobust.models import Bf16Twin
from medrobust.trust import REFER, Decision
from medrobust.dashboard.camdepth import cam_layer_for
from medrobust.dashboard.captions import REFER_TEXT
from medrobust.dashboard.batching import predict_many
from medrobust.dashboard.clean_analysis import CleanState, cam_gate
from medrobust.dashboard.modelset import ModelSet
from medrobust.dashboard.perturbation import ATTACK_METHODS, CLINICAL_KINDS, NOISE_KINDS, Perturbation


_POOL = None


def pmap(fn, items: Sequence[Any], *, on_done=None) -> list[Any]:
    """``[fn(i) for i in items]`` on a small thread pool (torch releases the GIL inside its kernels).

    The models are shared read-only, so attacking four models at once is safe; with one intra-op
    thread each, this uses the machine's cores across models. Results keep the input order and
    every task seeds its own generator, so the outcome does not depend on scheduling.
    ``on_done(k, n)`` is called in the calling thread as tasks finish.
    """
    global _POOL
    items = list(items)
    n = len(items)
    if n <= 1 or (os.cpu_count() or 1) <= 1:
        out = []
        for k, i in enumerate(items):
            out.append(fn(i))
            if on_done is not None:
                on_done(k + 1, n)
        return out
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="medrobust-stress")
    from concurrent.futures import as_completed

    futures = [_POOL.submit(fn, i) for i in items]
    for k, _ in enumerate(as_completed(futures)):
        if on_done is not None:
            on_done(k + 1, n)
    return [f.result() for f in futures]


def _generator(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + salt)


def add_noise(x: torch.Tensor, kind: str, severity: float, seed: int) -> torch.Tensor:
    """Seeded noise: the same (image, kind, severity, seed) always gives the same pixels."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown noise {kind!r}; choose one of {NOISE_KINDS}.")
    salt = NOISE_KINDS.index(kind) + 1
    return apply_corruption(x, name=kind, severity=float(severity), generator=_generator(seed, salt))


def add_clinical(x: torch.Tensor, corruption: str, level: int, seed: int) -> torch.Tensor:
    """Seeded clinical corruption at the model's own size, as the benchmark applies it."""
    salt = 100 + CLINICAL_KINDS.index(corruption)
    return clinical_corrupt(x, name=corruption, level=int(level), generator=_generator(seed, salt))


def perturb_input(x: torch.Tensor, pert: Perturbation) -> torch.Tensor:
    """The image after a noise or clinical corruption (the attacks need a model: see :func:`attack`)."""
    if pert.kind == "clinical":
        return add_clinical(x, pert.corruption, pert.level, pert.seed)
    if pert.kind in NOISE_KINDS:
        return add_noise(x, pert.kind, pert.severity, pert.seed)
    raise ValueError(f"perturb_input handles noise and clinical corruptions, not {pert.kind!r}.")


def attack(model: nn.Module, x: torch.Tensor, label: int, *, eps: float, steps: int, seed: int,
           keep_first_success: bool = False, method: str = "pgd") -> torch.Tensor:
    """Untargeted L2 attack against ``label`` (the clean prediction); ``eps`` stated at 224 px.

    ``method``: ``"pgd"``, ``"apgd"`` (APGD-CE, keeps its first fooling example) or ``"ensemble"`` (the
    benchmark's worst case of both: the most damaging example either finds).

    ``model`` is what the steps run on (:attr:`LoadedModel.attack_net`): a :class:`~medrobust.models.Bf16Twin`
    takes its gradient steps in bf16 under autocast (every hit an attack acts on is confirmed by an fp32 forward);
    a plain model runs in fp32 throughout (bf16 autocast alone recasts every weight at each step, which a batch of
    one cannot amortise).
    """
    if method not in ATTACK_METHODS:
        raise ValueError(f"Unknown attack {method!r}; choose one of {', '.join(ATTACK_METHODS)}.")
    side = int(x.shape[-1])
    eps_px = scale_eps(float(eps), norm="l2", side=side)
    y = torch.tensor([int(label)], dtype=torch.long)
    g = _generator(seed, 17)
    bf16 = isinstance(model, Bf16Twin)
    if method == "apgd":
        return apgd(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g, use_autocast=bf16)
    if method == "ensemble":
        return worst_case(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g, use_autocast=bf16,
                          schedule="sequential").x_adv  # only the example is shown: APGD need not redo PGD's hits
    return pgd(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g,
               keep_first_success=keep_first_success, use_autocast=bf16)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resample a (1, 1, S, S) image to another model's size (transfer between resolutions)."""
    if int(x.shape[-1]) == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


@dataclass
class Outcome:
    """What one model makes of the perturbed image."""

    name: str
    method: str
    colour: str
    image_size: int
    error: str | None = None
    classes: tuple[str, ...] = CLASS_NAMES
    clean_probs: tuple[float, ...] = ()
    clean_pred: int = -1
    probs: tuple[float, ...] = ()
    pred: int = -1
    x_clean: np.ndarray | None = field(default=None, repr=False)
    x_pert: np.ndarray | None = field(default=None, repr=False)
    cam_clean: np.ndarray | None = field(default=None, repr=False)
    cam_pert: np.ndarray | None = field(default=None, repr=False)
    l2: float = 0.0
    linf: float = 0.0
    eps_pixels: float | None = None
    warning: str | None = None
    decision: Decision | None = field(default=None, repr=False)
    true_class: int | None = None  # the image's label, when known (examples, test-split samples)
    #: For an attack: how the model that crafted the example took its steps (:attr:`LoadedModel.attack_steps`).
    attack_steps: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def delta(self) -> np.ndarray | None:
        """The perturbation ``x_pert - x_clean`` (S, S), computed when asked: a session's cached outcomes do not hold it."""
        if self.x_pert is None or self.x_clean is None:
            return None
        return self.x_pert - self.x_clean

    def decided(self, which: str = "perturbed") -> dict[str, Any] | None:
        """The decision rule applied to the clean or perturbed probabilities: calibrated ``probs``, ``answer``
        (class at the operating point), ``verdict`` (the answer, or :data:`medrobust.trust.REFER`), ``confidence``
        and the conformal ``sets``; None without a fitted rule."""
        probs = self.probs if which == "perturbed" else self.clean_probs
        if self.decision is None or not probs:
            return None
        d = self.decision.apply(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))[None])
        return {"probs": d["probs"][0], "answer": int(d["answer"][0]), "verdict": int(d["verdict"][0]),
                "confidence": float(d["confidence"][0]), "sets": {m: v[0] for m, v in d["sets"].items()}}

    def verdict_text(self, which: str = "perturbed") -> str:
        """What the card states: the class at the operating point, "uncertain — refer", or the most probable
        class (marked uncalibrated) for a model without a fitted rule."""
        d = self.decided(which)
        if d is None:
            return self._name(self.pred if which == "perturbed" else self.clean_pred)
        return REFER_TEXT if d["verdict"] == REFER else self._name(d["answer"])

    def answer_index(self, which: str = "perturbed") -> int:
        d = self.decided(which)
        if d is None:
            return self.pred if which == "perturbed" else self.clean_pred
        return d["answer"]

    @property
    def change(self) -> str:
        """How the perturbation moved the answer: "right → wrong", "wrong → right", "changed" (label unknown or
        wrong both times), or "unchanged"."""
        before, after = self.answer_index("clean"), self.answer_index("perturbed")
        if before == after:
            return "unchanged"
        if self.true_class is None:
            return "changed"
        if before == self.true_class:
            return "right → wrong"
        if after == self.true_class:
            return "wrong → right"
        return "changed"

    @property
    def flipped(self) -> bool:
        return self.ok and self.pred != self.clean_pred

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def p_covid(self) -> float:
        """P(second class) after the perturbation (P(COVID-19) for the COVID task); nan for K > 2."""
        return float(self.probs[1]) if self.binary and self.probs else math.nan

    @property
    def clean_p(self) -> float:
        return float(self.clean_probs[1]) if self.binary and self.clean_probs else math.nan

    @property
    def tracked_class(self) -> int:
        """The class whose probability the card follows: the second (COVID-19) for K = 2, else the clean answer."""
        return 1 if self.binary else max(self.clean_pred, 0)

    @property
    def p_tracked(self) -> float:
        return float(self.probs[self.tracked_class]) if self.probs else math.nan

    @property
    def delta_p(self) -> float:
        """Change of the tracked class's probability (P(COVID-19) for the COVID task)."""
        if not self.probs or not self.clean_probs:
            return math.nan
        return self.p_tracked - float(self.clean_probs[self.tracked_class])

    def _name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else "–"

    @property
    def label(self) -> str:
        return self._name(self.pred)

    @property
    def clean_label(self) -> str:
        return self._name(self.clean_pred)

    @property
    def confidence(self) -> float:
        return max(self.probs) if self.probs else math.nan

    def summary(self) -> dict[str, Any]:
        def probs(p):
            return {c: float(v) for c, v in zip(self.classes, p)}

        def decided(which):
            d = self.decided(which)
            return None if d is None else {"verdict": self.verdict_text(which),
                                           "calibrated": probs(d["probs"]), "confidence": d["confidence"]}

        return {"model": self.name, "method": self.method, "image_size": self.image_size, "error": self.error,
                "classes": list(self.classes),
                "clean": {"class": self.clean_label, "p_covid": self.clean_p, "probabilities": probs(self.clean_probs)},
                "perturbed": {"class": self.label, "p_covid": self.p_covid, "probabilities": probs(self.probs)},
                "flipped": self.flipped, "delta_p_covid": self.delta_p if self.ok and self.binary else None,
                "delta_p_tracked": self.delta_p if self.ok else None,
                "perturbation_l2": self.l2, "perturbation_linf": self.linf, "eps_pixels": self.eps_pixels,
                "attack_steps": self.attack_steps,
                "warning": self.warning, "change": self.change if self.ok else None,
                "decision": {"clean": decided("clean"), "perturbed": decided("perturbed"),
                             "rule": self.decision.describe() if self.decision else None}}


def _attacks(model_set: ModelSet, clean: CleanState, pert: Perturbation) -> tuple[dict[int, torch.Tensor],
                                                                                   dict[str, torch.Tensor]]:
    """The adversarial inputs ``pert`` asks for: crafted on one model (by size, to resample for the others) or on
    each model itself (by name), the models attacked in parallel."""
    transferred: dict[int, torch.Tensor] = {}
    attacked: dict[str, torch.Tensor] = {}
    if pert.kind == "pgd" and pert.mode == "transfer":
        src = next((m for m in model_set.ok_models if m.name == pert.source), None)
        if src is None:
            raise ValueError(f"The source model {pert.source!r} is not available for a transfer attack.")
        sv = clean.views[src.name]
        x_src = attack(src.attack_net, sv.x, sv.pred, eps=pert.eps, steps=pert.steps, seed=pert.seed, method=pert.method)
        transferred[src.image_size] = x_src
    if pert.kind == "pgd" and pert.mode == "own":
        todo = [m for m in model_set.ok_models if m.name in clean.views]
        advs = pmap(lambda m: attack(m.attack_net, clean.views[m.name].x, clean.views[m.name].pred, eps=pert.eps, method=pert.method,
                                      steps=pert.steps, seed=pert.seed), todo)
        attacked = {m.name: a for m, a in zip(todo, advs)}
    return transferred, attacked


def run_stress(model_set: ModelSet, clean: CleanState, pert: Perturbation, *, with_cam: bool = True,
               true_class: str | None = None) -> list[Outcome]:
    """Apply ``pert`` and re-predict with every model (errors become error outcomes, in set order).

    With ``with_cam`` each model's perturbed prediction comes from its Grad-CAM pass (one forward and backward);
    without, the models' forwards go through :func:`medrobust.dashboard.batching.predict_many` (all queued at once,
    batched with other sessions' requests when ``MEDROBUST_BATCHING`` is on).
    """
    pert.validate()
    outcomes: list[Outcome] = []
    noisy: dict[int, torch.Tensor] = {}
    transferred, attacked = _attacks(model_set, clean, pert)
    inputs: dict[str, torch.Tensor] = {}
    for m in model_set.models:
        out = Outcome(name=m.name, method=m.method, colour=m.colour, image_size=m.image_size, error=m.error,
                      warning=m.collapsed_warning, classes=m.classes if m.card else CLASS_NAMES,
                      decision=m.decision)
        if true_class is not None and true_class in out.classes:
            out.true_class = out.classes.index(true_class)
        outcomes.append(out)
        if not m.ok or m.name not in clean.views:
            out.error = out.error or "This model could not be loaded."
            continue
        x = clean.views[m.name].x
        if pert.kind == "none":
            xp = x
        elif pert.kind == "clinical" or pert.kind in NOISE_KINDS:
            if m.image_size not in noisy:
                noisy[m.image_size] = perturb_input(x, pert)
            xp = noisy[m.image_size]
        elif pert.mode == "own":
            xp = attacked[m.name]
            out.eps_pixels = scale_eps(pert.eps, norm="l2", side=m.image_size)
            out.attack_steps = m.attack_steps
        else:
            src_x = next(iter(transferred.values()))
            xp = transferred.setdefault(m.image_size, resize_to(src_x, m.image_size))
            out.eps_pixels = scale_eps(pert.eps, norm="l2", side=int(src_x.shape[-1]))
            out.attack_steps = model_set.get(pert.source).attack_steps
        inputs[m.name] = xp
    cams, probs = ({}, {}) if pert.kind == "none" else _perturbed_predictions(model_set, clean, inputs,
                                                                              with_cam=with_cam)
    for out in outcomes:
        if out.name not in inputs:
            continue
        v, xp = clean.views[out.name], inputs[out.name]
        x = v.x
        p = probs[out.name] if pert.kind != "none" else torch.as_tensor(v.probs)
        d = (xp - x)[0, 0]
        out.clean_probs, out.clean_pred = tuple(float(q) for q in v.probs), v.pred
        out.probs, out.pred = tuple(float(q) for q in p), int(p.argmax())
        out.x_clean, out.x_pert = x[0, 0].numpy(), xp[0, 0].numpy()
        out.cam_clean = v.cam
        out.cam_pert = v.cam if pert.kind == "none" else cams.get(out.name)
        out.l2, out.linf = float(d.norm()), float(d.abs().max())
    return outcomes


def _perturbed_predictions(model_set: ModelSet, clean: CleanState, inputs: dict[str, torch.Tensor], *,
                           with_cam: bool) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Each model's Grad-CAM (with ``with_cam``) and probabilities ``(K,)`` on its perturbed input, by name."""
    models = {m.name: m.model for m in model_set.models if m.name in inputs}
    cams: dict[str, np.ndarray] = {}
    probs: dict[str, torch.Tensor] = {}
    if with_cam:
        for name, model in models.items():
            with cam_gate():
                cams[name], logits = gradcam(model, inputs[name], layer=cam_layer_for(model, clean.cam_layer))
            probs[name] = torch.softmax(logits.float(), 1)[0]
        return cams, probs
    answers = predict_many([(model, inputs[name]) for name, model in models.items()])
    return cams, {name: p[0] for name, p in zip(models, answers)}
