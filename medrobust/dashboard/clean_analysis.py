"""The unperturbed image through every model: its input at each model's size, prediction and Grad-CAM.

Predictions run under ``torch.no_grad`` on the shared models (see :mod:`medrobust.dashboard.modelset`).
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from medrobust import settings
from medrobust.gradcam import gradcam
from medrobust.imaging import to_square
from medrobust.models import XrayNet
from medrobust.dashboard.batching import predict_many
from medrobust.dashboard.camdepth import cam_grid_of, cam_layer_for
from medrobust.dashboard.modelset import ModelSet


def prepare_input(pixels: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """A decoded grey image (H, W) in [0, 1] as the model's (1, 1, size, size) input."""
    return to_square(pixels, size=size).unsqueeze(0)


def image_digest(pixels: np.ndarray) -> str:
    """A short content hash of the decoded pixels (for cache keys and snapshots; not reversible)."""
    a = np.ascontiguousarray(pixels, dtype=np.float32)
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


def predict_probs(model: XrayNet, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, K) under ``torch.no_grad``; the model stays in eval mode."""
    with torch.no_grad():
        return torch.softmax(model(x).float(), dim=1)


@dataclass
class CleanView:
    """A model's view of the unperturbed image."""

    name: str
    x: torch.Tensor  # (1, 1, S, S)
    probs: np.ndarray  # (K,)
    pred: int
    cam: np.ndarray | None
    #: The model's own stage(s) behind ``cam`` and their native (rows, columns): everything finer is upsampling.
    cam_layers: tuple[str, ...] = ()
    cam_grid: tuple[tuple[int, int], ...] = ()

    @property
    def p_covid(self) -> float:
        """P(second class): P(COVID-19) for the COVID task; nan for K > 2."""
        return float(self.probs[1]) if self.probs.shape[0] == 2 else math.nan


@dataclass
class CleanState:
    digest: str
    views: dict[str, CleanView]  # by model name
    cam_layer: str


_GATE: tuple[int, threading.BoundedSemaphore] | None = None
_GATE_LOCK = threading.Lock()


def cam_gate() -> threading.BoundedSemaphore:
    """The process-wide limit on concurrent Grad-CAMs (:func:`medrobust.settings.cam_slots`).

    Every visitor's first look at an image runs four Grad-CAMs (a forward and a backward pass each). A hundred
    visitors arriving together would otherwise compute a hundred of them at once on a machine with two cores.
    Measured with ``benchmarks/load_test.py`` (100 x 3, 2 cores): p95 17-19 s -> 5.9 s, peak RSS about the same
    (1.54 GiB). Waiting for a slot costs no throughput while the slots match the cores.
    """
    global _GATE
    slots = settings.cam_slots()
    with _GATE_LOCK:
        if _GATE is None or _GATE[0] != slots:
            _GATE = (slots, threading.BoundedSemaphore(slots))
        return _GATE[1]


def analyse_clean(model_set: ModelSet, pixels: np.ndarray, *, cam_layer: str = "layer4",
                  with_cam: bool = True) -> CleanState:
    """Clean prediction and Grad-CAM of one decoded image for every loadable model.

    Each map explains the model's most probable class (``pred``); ``cam_layer`` is one of :data:`CAM_DEPTHS`.
    """
    inputs: dict[int, torch.Tensor] = {}
    views = {}
    models = model_set.ok_models
    for m in models:
        inputs.setdefault(m.image_size, prepare_input(pixels, m.image_size))
    if not with_cam:  # the models' forwards at once (batched with other sessions' when batching is on)
        answers = predict_many([(m.model, inputs[m.image_size]) for m in models])
    for k, m in enumerate(models):
        x = inputs[m.image_size]
        own, grid = (), ()
        if with_cam:
            own = cam_layer_for(m.model, cam_layer)
            with cam_gate():
                cam, logits = gradcam(m.model, x, layer=own)
            p = torch.softmax(logits.float(), 1)[0]
            own, grid = ((own,) if isinstance(own, str) else own), cam_grid_of(m.model, cam_layer, m.image_size)
        else:
            cam, p = None, answers[k][0]
        views[m.name] = CleanView(name=m.name, x=x, probs=p.numpy().astype(np.float64), pred=int(p.argmax()), cam=cam,
                                  cam_layers=own, cam_grid=grid)
    return CleanState(digest=image_digest(pixels), views=views, cam_layer=cam_layer)
