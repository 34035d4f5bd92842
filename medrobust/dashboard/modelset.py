"""The models a Stress test runs: every checkpoint of a folder, loaded once and shared read-only.

A model that fails to load (bad sha256, missing card, wrong tensors) becomes an entry with an error and the others
keep working. Models are only ever in eval mode and are never hooked or given parameter gradients: they are shared by
every browser session.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medrobust import settings
from medrobust.attacks import cpu_bf16_is_fast
from medrobust.checkpoints import CheckpointError, classes_of, load_checkpoint
from medrobust.models import Bf16Twin, XrayNet, inference_copy
from medrobust.trust import Decision, decision_for
from medrobust.dashboard.palette import assign_colours
from medrobust.dashboard.resultsets import ModelFile, discover_models




_TWIN_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    """One model of the set, or the reason it could not be loaded."""

    name: str
    method: str
    path: str
    image_size: int
    colour: str
    shipped: bool
    card: dict[str, Any] = field(repr=False, default_factory=dict)
    model: XrayNet | None = field(repr=False, default=None)
    error: str | None = None
    #: Whether this model's attacks step on its :class:`~medrobust.models.Bf16Twin` (:func:`bf16_steps_pay`, decided at
    #: load); the twin itself is made at the first attack (:attr:`attack_net`), so a server nobody attacks never holds
    #: it (22 MB per ResNet-18). Verdicts and predictions always come from ``model``.
    bf16_steps: bool = False
    twin: Bf16Twin | None = field(repr=False, default=None)
    decision: Decision | None = field(repr=False, default=None)  # fitted on its validation patients, if any

    @property
    def ok(self) -> bool:
        return self.model is not None and self.error is None

    @property
    def attack_net(self) -> nn.Module | None:
        """What the attacks take their gradient steps on: the bf16 twin where :attr:`bf16_steps`, else ``model``."""
        if not self.bf16_steps or self.model is None:
            return self.model
        with _TWIN_LOCK:
            if self.twin is None:
                self.twin = Bf16Twin(self.model)
            return self.twin

    @property
    def attack_steps(self) -> str:
        """How this model's attacks take their steps, as recorded with their outcomes."""
        return STEPS_BF16 if self.bf16_steps else STEPS_FP32

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index = output (from the card; the COVID task's two for older cards)."""
        return tuple(classes_of(self.card))

    @property
    def collapsed_warning(self) -> str | None:
        """The card's training-collapse warning, if the model answers one class for most images."""
        if self.card.get("collapsed"):
            return str(self.card.get("warning") or "This model collapsed to one class during training.")
        return None


@dataclass
class ModelSet:
    folder: str
    models: list[LoadedModel]
    message: str | None = None  # set when the folder holds no usable model

    @property
    def ok_models(self) -> list[LoadedModel]:
        return [m for m in self.models if m.ok]

    def only(self, names: Sequence[str]) -> "ModelSet":
        """The same set restricted to ``names`` (in the set's order)."""
        keep = set(names)
        return ModelSet(folder=self.folder, models=[m for m in self.models if m.name in keep], message=self.message)

    def get(self, name: str) -> LoadedModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"No model called {name!r} in the set.")


def _freeze(model: XrayNet) -> XrayNet:
    """:func:`medrobust.models.inference_copy` with no parameter gradients; once, before sharing."""
    model = inference_copy(model)
    model.requires_grad_(False)
    return model


#: How a model's attacks take their gradient steps (:attr:`LoadedModel.attack_steps`).
STEPS_FP32, STEPS_BF16 = "fp32", "bf16 (fp32 verdicts)"

#: A bf16 twin costs a second copy of the weights (22 MB for a ResNet-18): it is kept only where its gradient steps
#: take at most this share of the fp32 ones' time.
TWIN_MAX_TIME_SHARE = 0.85


def _step_seconds(net: nn.Module, x: torch.Tensor, *, bf16: bool) -> float:
    """Wall time of one attack step (forward and input gradient) of ``net`` on ``x``."""
    start = time.perf_counter()
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(net(xa).float(), torch.zeros(1, dtype=torch.long))
    torch.autograd.grad(loss, xa)
    return time.perf_counter() - start


def bf16_steps_pay(model: XrayNet, image_size: int, *, repeats: int = 3) -> bool:
    """Whether the dashboard's single-image attacks on ``model`` should step on its :class:`~medrobust.models.Bf16Twin`.

    ``MEDROBUST_CPU_BF16`` pins the answer: ``0`` no (fp32 steps, as on AVX2-only machines), ``1`` yes. Unset, a CPU
    with native bf16 (:func:`medrobust.attacks.cpu_bf16_is_fast`) says yes only where, timed here on one image of the
    model's size, the twin's best of ``repeats`` steps takes at most :data:`TWIN_MAX_TIME_SHARE` of fp32's best (after
    one warm-up step each, interleaved, so both see the same load): at batch 1, bf16 pays on some CPU kinds and not
    on others (figures in :class:`~medrobust.models.Bf16Twin`). Only the steps change: every hit is confirmed by an
    fp32 forward of ``model``, and every answer the page shows is one. The answer is recorded with every attacked
    outcome (:attr:`LoadedModel.attack_steps`).
    """
    pinned = settings.cpu_bf16_override()
    if pinned is not None:
        return pinned
    if not cpu_bf16_is_fast():
        return False
    try:
        if next(model.parameters()).device.type != "cpu":
            return False
        twin = Bf16Twin(model)  # for the timing only: the page makes its own at the first attack
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 1, image_size, image_size, generator=g).contiguous(memory_format=torch.channels_last)
        best = {False: math.inf, True: math.inf}
        for k in range(repeats + 1):
            for bf16 in (False, True):
                seconds = _step_seconds(twin, x, bf16=bf16)
                if k:  # the first round warms oneDNN's kernels up
                    best[bf16] = min(best[bf16], seconds)
    except Exception:  # noqa: BLE001 - e.g. an operation with no bf16 kernel here: the steps stay in fp32
        return False
    return best[True] <= TWIN_MAX_TIME_SHARE * best[False]


def decision_dirs(folder: str | Path | None = None) -> list[Path]:
    """Where the models' fitted decision rules are looked up: ``<folder>/results`` and ``$MEDROBUST_RESULTS``."""
    base = Path(folder) if folder is not None else settings.checkpoints_dir()
    return [base / "results", settings.results_dir()]


def load_model_set(folder: str | Path | None = None, *, extra: Sequence[ModelFile] = (),
                   device: str | torch.device = "cpu") -> ModelSet:
    """Load every checkpoint in ``folder`` (default ``$MEDROBUST_CHECKPOINTS``) plus ``extra`` ones.

    Never raises for a bad checkpoint: it becomes a :class:`LoadedModel` with ``error`` set.
    """
    files = list(discover_models(folder)) + list(extra)
    folder_s = str(folder) if folder is not None else "checkpoints"
    models: list[LoadedModel] = []
    colours = assign_colours([(f.name, f.method, f.shipped) for f in files])
    for f in files:
        colour = colours[f.name]
        entry = LoadedModel(name=f.name, method=f.method, path=str(f.path), image_size=int(f.image_size or 64),
                            colour=colour, shipped=f.shipped, card=f.card, error=f.error)
        if entry.error is None:
            try:
                model, card = load_checkpoint(f.path, device=device)
                entry.model, entry.card = _freeze(model), card
                entry.decision = decision_for(card, decision_dirs(folder))
                entry.image_size = int(card.get("image_size") or (card.get("config") or {}).get("image_size") or 64)
                entry.bf16_steps = bf16_steps_pay(entry.model, entry.image_size)
            except CheckpointError as exc:
                entry.error = str(exc)
            except Exception as exc:  # a file that is not even a checkpoint: say so, keep going
                entry.error = f"{Path(f.path).name} could not be loaded ({type(exc).__name__})."
        models.append(entry)
    message = None
    if not files:
        message = (f"No model checkpoints found in {folder_s}. Put the four shipped models there "
                   "(standard/robust/augmix/robustaugmix .safetensors with their .json cards), set "
                   "MEDROBUST_CHECKPOINTS, or train one on the Training page.")
    elif not any(m.ok for m in models):
        message = f"None of the {len(files)} checkpoint(s) in {folder_s} could be loaded; see each card."
    return ModelSet(folder=folder_s, models=models, message=message)


def model_set_key(model_set: ModelSet) -> tuple:
    """Identifies a loaded model set (names and checkpoint hashes) for cache keys."""
    return tuple((m.name, m.card.get("sha256"), m.ok) for m in model_set.models)
