"""Stress-testing one X-ray against a set of models: the science behind the dashboard's Stress test.

Everything the page shows is computed here, so the page only lays it out:

* :func:`load_model_set`: load every checkpoint of a folder; a model that fails to load (bad
  sha256, missing card, wrong tensors) becomes an entry with an error and the others keep working.
* :func:`analyse_clean`: clean prediction (and Grad-CAM) of one image for every model.
* :func:`run_stress`: apply a :class:`Perturbation` (noise, or L2 PGD per model or transferred from
  one model to all) and report, per model, the prediction, its change, the perturbation and
  Grad-CAM maps.
* :func:`smallest_flip_eps`: the smallest L2 radius (stated at 224 px) whose PGD flips a model's
  prediction, by bisection.
* :func:`snapshot` / :func:`snapshot_zip`: what the user downloads.

Rules kept here: models are only ever in eval mode and are never hooked or given parameter
gradients (they are shared by every browser session); predictions run under ``torch.no_grad``;
all randomness comes from ``torch.Generator`` objects seeded from the user's seed, so the same
settings give the same picture.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medrobust import __version__, settings
from medrobust.attacks import REFERENCE_SIDE, apgd, pgd, scale_eps, worst_case
from medrobust.checkpoints import CheckpointError, classes_of, load_checkpoint
from medrobust.clinical import clinical_corrupt
from medrobust.clinical_scale import CLINICAL, DISPLAY_NAMES, LEVELS, level_label, level_meaning
from medrobust.choices import CLASS_NAMES
from medrobust.corruptions import CORRUPTIONS, apply_corruption
from medrobust.gradcam import cam_grid, cam_layers, gradcam
from medrobust.imaging import to_square
from medrobust.models import XrayNet, fold_batchnorm
from medrobust.trust import REFER, Decision, decision_for
from medrobust.dashboard.hosting import SHUTTING_DOWN
from medrobust.dashboard.palette import assign_colours
from medrobust.dashboard.resultsets import ModelFile, discover_models

NOISE_KINDS = tuple(CORRUPTIONS)  # gaussian, salt_and_pepper, speckle: the paper's scale
#: The default is the clinical suite (nine corruptions at five graded levels, as the benchmark runs them).
KINDS = ("clinical", "none", *NOISE_KINDS, "pgd")
KIND_LABELS = {"clinical": "clinical corruption (graded 1–5)", "none": "none",
               "gaussian": "Gaussian noise (paper scale)", "salt_and_pepper": "salt & pepper (paper scale)",
               "speckle": "speckle noise (paper scale)", "pgd": "PGD attack (L2)"}
#: The nine clinical corruptions, in the order the page lists them, and their names there.
CLINICAL_KINDS = tuple(CLINICAL)
MAX_EPS = 5.0  # L2, stated at 224 px, as in the benchmark
#: What the attack slider can run: one attack, or the benchmark's worst case over both.
ATTACK_METHODS = {"pgd": "PGD", "apgd": "APGD-CE", "ensemble": "worst case of PGD and APGD-CE"}
MAX_STEPS = 50
REFER_TEXT = "uncertain — refer"
#: The labels of a card's answer: at the operating point, the same for an image the input check flagged, and the most
#: probable class of a model without a fitted rule.
VERDICT_LABEL = "Verdict at the operating point"
OUTSIDE_LABEL = "Verdict (outside what this model was trained on)"
RAW_LABEL = "Most probable class (no fitted operating point)"
VERDICT_LABELS = (VERDICT_LABEL, OUTSIDE_LABEL, RAW_LABEL)


@dataclass(frozen=True)
class Limits:
    """What one visitor may ask of the server: PGD steps per attack, and the flip search's steps and tolerance."""

    max_steps: int = MAX_STEPS
    max_flip_steps: int = MAX_STEPS
    flip_tol: float = 0.05  # bisection stops when the interval is this narrow (eps at 224 px)


#: Demo mode (``MEDROBUST_DEMO=1``): one 20-step attack of four 128 px models is about 1 s here, and the flip
#: search's bisection at tolerance 0.1 needs at most 7 attacks of 10 steps per model.
DEMO_LIMITS = Limits(max_steps=20, max_flip_steps=10, flip_tol=0.1)


def limits() -> Limits:
    """The limits in force: :data:`DEMO_LIMITS` in demo mode, else the full range."""
    return DEMO_LIMITS if settings.demo_mode() else Limits()


# --------------------------------------------------------------------------- model sets


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
    decision: Decision | None = field(repr=False, default=None)  # fitted on its validation patients, if any

    @property
    def ok(self) -> bool:
        return self.model is not None and self.error is None

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


def models_caption(models: Sequence[LoadedModel]) -> str:
    """Which models the Stress test runs, and why these and not the cross-validated fold models."""
    names = ", ".join(m.name for m in models)
    counts = {tuple(sorted(((m.card or {}).get("split") or {}).get("counts", {}).items())) for m in models}
    split = dict(counts.pop()) if len(counts) == 1 else {}
    if split.get("test"):
        what = (f"the single-split models {names}, each trained on one set of patients ({split.get('train', '?')} "
                f"training images) and tested on {split['test']} images of other patients")
    else:
        what = f"{names}, whose cards record no training split, so what they were tested on is not known here"
    return (f"Runs {what}. The Overview's headline numbers come from cross-validation, whose fold models are not "
            "shipped: a page that answers one image needs one model per method.")


def _freeze(model: XrayNet) -> XrayNet:
    """Eval mode, BatchNorm folded, no parameter gradients, channels-last weights; once, before sharing.

    Channels-last halved the CPU time of a single 64 px image here (forward 11 vs 20 ms, forward +
    backward 30 vs 58 ms, one thread).
    """
    model = fold_batchnorm(model)  # same function, 1.28x faster for one 128 px image here
    model.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


_POOL = None


def _pmap(fn, items: Sequence[Any], *, on_done=None) -> list[Any]:
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


# --------------------------------------------------------------------------- inputs and predictions


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


#: The Grad-CAM depths the dashboard offers, named after ResNet's stages; other networks map them to their
#: own stages counted from the deepest (``layer4`` = the deepest stage, ``layer3`` = one earlier, ...).
#: ``layer3+layer4`` (the default at 128 px) is the mean of the two stages' peak-scaled maps: layer3's 8x8
#: detail with layer4's class evidence. Measured with ``scripts/gradcam_layers.py`` on the four shipped models
#: and their 118 test-split images (predicted class, 472 maps): layer4 alone (4x4) peaks in the outer 16 px
#: frame in 80 % of maps; the pair in 36 % (layer3 alone 30 %); the pair is never all zero (layer3: 6 maps,
#: layer4 for the other class: 99 of 472) and is the most faithful: blurring its top 20 % of pixels costs the
#: answer more than blurring its lowest 20 % in 76 % of maps (layer4 72 %, layer3 67 %, layer2 62 %). No layer
#: puts more of its mass in the lungs than their share of the image (hand-drawn boxes on the six examples).
CAM_DEPTHS = ("layer3+layer4", "layer4", "layer3", "layer2")
CAM_DEPTH_LABELS = {"layer3+layer4": "layer3 + layer4 (8×8 detail at 128 px)", "layer4": "layer4 (deepest, coarsest)",
                    "layer3": "layer3", "layer2": "layer2 (finest, least class-specific)"}
#: What every map explains (said once on the page).
CAM_EXPLAINS = ("Each Grad-CAM explains the class the model finds most probable on that input (named under the "
                "map; it can differ from the verdict at the operating point): bright = regions that raised that "
                "class's score.")


def cam_layer_for(model: torch.nn.Module, cam_layer: str) -> str | tuple[str, ...]:
    """``cam_layer`` as ``model``'s own Grad-CAM stage(s) (see :data:`CAM_DEPTHS`); ``"a+b"`` gives a tuple."""
    if "+" in cam_layer:
        return tuple(cam_layer_for(model, part) for part in cam_layer.split("+"))
    layers = cam_layers(model)
    if cam_layer in layers:
        return cam_layer
    if cam_layer in ("layer1", "layer2", "layer3", "layer4"):
        back = 4 - int(cam_layer[-1])
        return layers[max(0, len(layers) - 1 - back)]
    raise ValueError(f"Unknown Grad-CAM layer {cam_layer!r}; choose one of {', '.join(CAM_DEPTHS)}.")


_GRIDS: dict[tuple, tuple[tuple[int, int], ...]] = {}


def cam_grid_of(model: XrayNet, cam_layer: str, size: int) -> tuple[tuple[int, int], ...]:
    """The native (rows, columns) of each map behind ``cam_layer`` at ``size`` px (cached per architecture)."""
    own = cam_layer_for(model, cam_layer)
    key = (model.arch, int(size), own)
    if key not in _GRIDS:
        _GRIDS[key] = cam_grid(model, own, size=int(size))
    return _GRIDS[key]


def cam_resolution(cam_layer: str, grids: Sequence[tuple[int, int]], size: int, layers: Sequence[str] = ()) -> str:
    """What a map is made of, for its caption: "layer3 + layer4: 8×8 and 4×4 maps averaged, upsampled to 128 px"."""
    names = " + ".join(layers) if layers else cam_layer.replace("+", " + ")
    cells = " and ".join(f"{h}×{w}" for h, w in grids)
    how = "maps averaged" if len(grids) > 1 else "map"
    return f"{names}: {cells} {how}, upsampled bilinearly to {size} px"


def cam_caption(o: "Outcome", which: str, flat: bool = False) -> str:
    """The caption of one Grad-CAM tile: the class it explains and which input ("clean" / "perturbed" / "")."""
    idx = o.clean_pred if which in ("clean", "") else o.pred
    cls = o.classes[idx] if 0 <= idx < len(o.classes) else "?"
    where = {"clean": ", clean input", "perturbed": ", perturbed input", "": ""}[which]
    return f"Grad-CAM for {cls}{where}" + (" (flat: the map marks no region)" if flat else "")


def analyse_clean(model_set: ModelSet, pixels: np.ndarray, *, cam_layer: str = "layer4",
                  with_cam: bool = True) -> CleanState:
    """Clean prediction and Grad-CAM of one decoded image for every loadable model.

    Each map explains the model's most probable class (``pred``); ``cam_layer`` is one of :data:`CAM_DEPTHS`.
    """
    inputs: dict[int, torch.Tensor] = {}
    views = {}
    for m in model_set.ok_models:
        x = inputs.setdefault(m.image_size, prepare_input(pixels, m.image_size))
        own, grid = (), ()
        if with_cam:
            own = cam_layer_for(m.model, cam_layer)
            cam, logits = gradcam(m.model, x, layer=own)
            p = torch.softmax(logits.float(), 1)[0]
            own, grid = ((own,) if isinstance(own, str) else own), cam_grid_of(m.model, cam_layer, m.image_size)
        else:
            cam, p = None, predict_probs(m.model, x)[0]
        views[m.name] = CleanView(name=m.name, x=x, probs=p.numpy().astype(np.float64), pred=int(p.argmax()), cam=cam,
                                  cam_layers=own, cam_grid=grid)
    return CleanState(digest=image_digest(pixels), views=views, cam_layer=cam_layer)


# --------------------------------------------------------------------------- perturbations


@dataclass(frozen=True)
class Perturbation:
    """What to do to the image. ``eps`` is an L2 radius stated at 224 px (scaled to each model's size)."""

    kind: str = "none"
    severity: float = 0.0
    eps: float = 0.0
    steps: int = 20
    mode: str = "own"  # "own": attack each model itself; "transfer": attack ``source`` and show it to all
    source: str | None = None
    seed: int = 0
    method: str = "pgd"  # see ATTACK_METHODS
    corruption: str = "gaussian_noise"  # for kind "clinical": one of CLINICAL_KINDS
    level: int = 2  # for kind "clinical": 1 (barely visible) .. 5

    def validate(self) -> "Perturbation":
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        if self.corruption not in CLINICAL:
            raise ValueError(f"corruption must be one of {', '.join(CLINICAL)}, got {self.corruption!r}.")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}.")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity must lie in [0, 1], got {self.severity}.")
        if not 0.0 <= self.eps <= MAX_EPS:
            raise ValueError(f"eps must lie in [0, {MAX_EPS}], got {self.eps}.")
        cap = limits().max_steps
        if not 1 <= self.steps <= cap:
            raise ValueError(f"steps must lie in [1, {cap}], got {self.steps}.")
        if self.mode not in ("own", "transfer"):
            raise ValueError(f"mode must be 'own' or 'transfer', got {self.mode!r}.")
        if self.method not in ATTACK_METHODS:
            raise ValueError(f"method must be one of {', '.join(ATTACK_METHODS)}, got {self.method!r}.")
        return self

    def describe(self) -> str:
        if self.kind == "none":
            return "no perturbation"
        if self.kind == "clinical":
            return f"{level_label(self.corruption, self.level)} (seed {self.seed})"
        if self.kind in NOISE_KINDS:
            return f"{KIND_LABELS[self.kind]}, severity {self.severity:g} (seed {self.seed})"
        how = "each model attacked on its own" if self.mode == "own" else f"crafted on {self.source}, shown to all"
        name = "L2 PGD" if self.method == "pgd" else f"L2 {ATTACK_METHODS[self.method]}"
        return f"{name}, eps {self.eps:g} (at 224 px), {self.steps} steps, {how} (seed {self.seed})"


def grey_levels(v: float) -> str:
    """A pixel change on the [0, 1] scale in grey levels of an 8-bit display: "3 of 255 grey levels"."""
    return f"{255 * v:.0f} of 255 grey levels" if 255 * v >= 0.5 else f"{255 * v:.1f} of 255 grey levels"


def eps_meaning(eps: float) -> str:
    """What an L2 radius (stated at 224 px) means for one pixel if spread evenly."""
    per_pixel = eps / REFERENCE_SIDE
    return (f"eps is the L2 length of the whole change (pixels on a 0–1 scale) for a {REFERENCE_SIDE} px image: eps "
            f"{eps:g} spread evenly is {per_pixel:.4f} per pixel, {grey_levels(per_pixel)}; an attack concentrates "
            "it where the model is most sensitive.")


def paper_noise_meaning(kind: str, severity: float) -> str:
    """The paper's noise severity in grey levels: variance for Gaussian and speckle, fraction of pixels for S&P."""
    if kind == "salt_and_pepper":
        return f"{100 * severity:g} % of pixels turned black or white."
    sd = float(np.sqrt(severity))
    where = "" if kind == "gaussian" else " at full white (multiplicative: less in dark lungs)"
    return (f"Variance {severity:g}: σ {sd:.2f}, {grey_levels(sd)}{where}. Far stronger than a detector's noise: the "
            "clinical suite's Gaussian noise stops at σ 0.26.")


def delta_meaning(l2: float, linf: float, size: int) -> str:
    """The size of the change the model saw, with units."""
    return (f"Change: ‖δ‖₂ = {l2:.2f} (L2 length, pixels on a 0–1 scale, at {size} px); largest single-pixel change "
            f"{linf:.3f} = {grey_levels(linf)}.")


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


def attack(model: XrayNet, x: torch.Tensor, label: int, *, eps: float, steps: int, seed: int,
           keep_first_success: bool = False, method: str = "pgd") -> torch.Tensor:
    """Untargeted L2 attack against ``label`` (the clean prediction); ``eps`` stated at 224 px.

    ``method``: ``"pgd"``, ``"apgd"`` (APGD-CE, keeps its first fooling example) or ``"ensemble"`` (the
    benchmark's worst case of both: the most damaging example either finds).
    """
    if method not in ATTACK_METHODS:
        raise ValueError(f"Unknown attack {method!r}; choose one of {', '.join(ATTACK_METHODS)}.")
    side = int(x.shape[-1])
    eps_px = scale_eps(float(eps), norm="l2", side=side)
    y = torch.tensor([int(label)], dtype=torch.long)
    g = _generator(seed, 17)
    if method == "apgd":
        return apgd(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g)
    if method == "ensemble":
        return worst_case(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g).x_adv
    return pgd(model, x, y, eps=eps_px, steps=int(steps), norm="l2", generator=g,
               keep_first_success=keep_first_success)


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
    delta: np.ndarray | None = field(default=None, repr=False)
    cam_clean: np.ndarray | None = field(default=None, repr=False)
    cam_pert: np.ndarray | None = field(default=None, repr=False)
    l2: float = 0.0
    linf: float = 0.0
    eps_pixels: float | None = None
    warning: str | None = None
    decision: Decision | None = field(default=None, repr=False)
    true_class: int | None = None  # the image's label, when known (examples, test-split samples)

    @property
    def ok(self) -> bool:
        return self.error is None

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
                "warning": self.warning, "change": self.change if self.ok else None,
                "decision": {"clean": decided("clean"), "perturbed": decided("perturbed"),
                             "rule": self.decision.describe() if self.decision else None}}


def run_stress(model_set: ModelSet, clean: CleanState, pert: Perturbation, *, with_cam: bool = True,
               true_class: str | None = None) -> list[Outcome]:
    """Apply ``pert`` and re-predict with every model (errors become error outcomes, in set order)."""
    pert.validate()
    outcomes: list[Outcome] = []
    noisy: dict[int, torch.Tensor] = {}
    transferred: dict[int, torch.Tensor] = {}
    if pert.kind == "pgd" and pert.mode == "transfer":
        src = next((m for m in model_set.ok_models if m.name == pert.source), None)
        if src is None:
            raise ValueError(f"The source model {pert.source!r} is not available for a transfer attack.")
        sv = clean.views[src.name]
        x_src = attack(src.model, sv.x, sv.pred, eps=pert.eps, steps=pert.steps, seed=pert.seed, method=pert.method)
        transferred[src.image_size] = x_src
    attacked: dict[str, torch.Tensor] = {}
    if pert.kind == "pgd" and pert.mode == "own":
        todo = [m for m in model_set.ok_models if m.name in clean.views]
        advs = _pmap(lambda m: attack(m.model, clean.views[m.name].x, clean.views[m.name].pred, eps=pert.eps, method=pert.method,
                                      steps=pert.steps, seed=pert.seed), todo)
        attacked = {m.name: a for m, a in zip(todo, advs)}
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
        v = clean.views[m.name]
        x = v.x
        if pert.kind == "none":
            xp = x
        elif pert.kind == "clinical" or pert.kind in NOISE_KINDS:
            if m.image_size not in noisy:
                noisy[m.image_size] = perturb_input(x, pert)
            xp = noisy[m.image_size]
        elif pert.mode == "own":
            xp = attacked[m.name]
            out.eps_pixels = scale_eps(pert.eps, norm="l2", side=m.image_size)
        else:
            src_x = next(iter(transferred.values()))
            xp = transferred.setdefault(m.image_size, resize_to(src_x, m.image_size))
            out.eps_pixels = scale_eps(pert.eps, norm="l2", side=int(src_x.shape[-1]))
        if with_cam and pert.kind != "none":
            cam_p, logits = gradcam(m.model, xp, layer=cam_layer_for(m.model, clean.cam_layer))
            p = torch.softmax(logits.float(), 1)[0]
        elif pert.kind == "none":
            cam_p, p = v.cam, torch.as_tensor(v.probs)
        else:
            cam_p, p = None, predict_probs(m.model, xp)[0]
        d = (xp - x)[0, 0]
        out.clean_probs, out.clean_pred = tuple(float(q) for q in v.probs), v.pred
        out.probs, out.pred = tuple(float(q) for q in p), int(p.argmax())
        out.x_clean, out.x_pert, out.delta = x[0, 0].numpy(), xp[0, 0].numpy(), d.numpy()
        out.cam_clean, out.cam_pert = v.cam, cam_p
        out.l2, out.linf = float(d.norm()), float(d.abs().max())
    return outcomes


# --------------------------------------------------------------------------- smallest flipping eps


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


def _flip_witness(model: XrayNet, x: torch.Tensor, label: int, eps: float, *, steps: int,
                  seed: int) -> float | None:
    """Attack at radius ``eps`` (at 224 px); the L2 size (at 224 px) of the first fooling example, or None."""
    if eps <= 0:
        return None
    x_adv = attack(model, x, label, eps=eps, steps=steps, seed=seed, keep_first_success=True)
    if int(predict_probs(model, x_adv)[0].argmax()) == int(label):
        return None
    side = int(x.shape[-1])
    return float((x_adv - x).flatten().norm()) * REFERENCE_SIDE / side


def smallest_flip_eps(model: XrayNet, x: torch.Tensor, *, label: int | None = None, max_eps: float = MAX_EPS,
                      steps: int = 20, tol: float = 0.05, seed: int = 0, name: str = "") -> FlipSearch:
    """Bisection for the smallest L2 radius (stated at 224 px) at which PGD flips the prediction.

    Every successful attack is a witness: the upper end of the interval drops to the witness's own
    size, which is never more than the radius tried, so the search usually needs fewer attacks than
    plain bisection. PGD success is not exactly monotone in eps (the random start), so the result
    is the boundary the seeded attack finds: a flipping example of that size exists, while the
    attack found none at ``eps - tol``.
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
        return smallest_flip_eps(m.model, v.x, label=v.pred, max_eps=max_eps, steps=steps, tol=tol, seed=seed,
                                 name=m.name)

    return _pmap(one, model_set.models, on_done=on_model)


# --------------------------------------------------------------------------- pictures (numpy only)

_CAM_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                         [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)  # inferno
_DIV_ANCHORS = np.array([[5, 48, 97], [67, 147, 195], [209, 229, 240], [247, 247, 247], [253, 219, 199],
                         [214, 96, 77], [103, 0, 31]], dtype=np.float64)  # RdBu reversed (blue = darker)


def _colormap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(v).astype(int).clip(0, len(anchors) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * anchors[lo] + t * anchors[lo + 1]).round().astype(np.uint8)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so the model's pixels stay visible as pixels."""
    factor = max(1, int(factor))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def display_factor(size: int, target: int = 256) -> int:
    return max(1, int(round(target / max(size, 1))))


def grey_rgb(x: np.ndarray) -> np.ndarray:
    g = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def diverging_rgb(delta: np.ndarray, vmax: float) -> np.ndarray:
    """Signed perturbation on a diverging scale: white = unchanged, red = brighter, blue = darker."""
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    return _colormap(0.5 + 0.5 * np.asarray(delta, dtype=np.float64) / vmax, _DIV_ANCHORS)


def cam_is_flat(cam: np.ndarray | None) -> bool:
    """A Grad-CAM with no spatial information (absent, all zero, or uniform)."""
    return cam is None or float(np.ptp(cam)) < 1e-6


def cam_overlay(x: np.ndarray, cam: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """The image in grey with the Grad-CAM heat map (inferno) blended on top."""
    base = grey_rgb(x).astype(np.float64)
    if cam_is_flat(cam):  # no spatial information to show
        return base.astype(np.uint8)
    heat = _colormap(cam, _CAM_ANCHORS).astype(np.float64)
    a = alpha * np.clip(cam, 0, 1)[..., None]
    return ((1 - a) * base + a * heat).round().clip(0, 255).astype(np.uint8)


def shared_delta_scale(outcomes: Sequence[Outcome]) -> float:
    """One colour scale for all cards: the largest |perturbation| over the models (0 if none)."""
    vals = [float(np.abs(o.delta).max()) for o in outcomes if o.ok and o.delta is not None]
    return max(vals, default=0.0)


def card_images(o: Outcome, *, vmax: float, target: int = 256) -> dict[str, np.ndarray]:
    """The RGB pictures of one model card, enlarged for display (the model's pixels, not the upload's).

    When the model saw its input unchanged (no perturbation, or one of size 0) there is no perturbation to draw and
    the perturbed map would repeat the clean one: only ``perturbed`` (the input) and ``cam_clean`` are returned.
    """
    f = display_factor(o.image_size, target)
    if not input_changed(o):
        return {"perturbed": upscale(grey_rgb(o.x_pert), f), "cam_clean": upscale(cam_overlay(o.x_clean, o.cam_clean), f)}
    return {
        "perturbed": upscale(grey_rgb(o.x_pert), f),
        "perturbation": upscale(diverging_rgb(o.delta, vmax), f),
        "cam_clean": upscale(cam_overlay(o.x_clean, o.cam_clean), f),
        "cam_perturbed": upscale(cam_overlay(o.x_pert, o.cam_pert), f),
    }


def input_changed(o: Outcome) -> bool:
    """Whether the perturbation changed any pixel the model saw (if not, its maps and answer are the clean ones)."""
    return o.delta is not None and bool(np.any(o.delta != 0))


def magnification(vmax: float) -> float:
    """How much the perturbation picture amplifies the change (the largest change spans the scale)."""
    return 1.0 / vmax if vmax > 0 else 1.0


# --------------------------------------------------------------------------- snapshot


def snapshot(*, model_set: ModelSet, pert: Perturbation, outcomes: Sequence[Outcome],
             flips: Sequence[FlipSearch] | None = None, image: dict[str, Any] | None = None,
             cam_layer: str = "layer4") -> dict[str, Any]:
    """Everything needed to reproduce a stress-test picture, as JSON-able data (no patient data)."""
    return {
        "medrobust_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": image or {},
        "perturbation": {**asdict(pert), "description": pert.describe(), "norm": "l2",
                         "eps_note": "L2 radius stated at 224 px, scaled by side/224"},
        "grad_cam_layer": cam_layer,
        "grad_cam_explains": ("each input's most probable class: models[].clean.class for the clean map, "
                              "models[].perturbed.class for the perturbed one"),
        "models": [{**o.summary(), "checkpoint_sha256": _sha_of(model_set, o.name)} for o in outcomes],
        "smallest_flip_eps": [asdict(f) for f in flips] if flips else None,
    }


def _sha_of(model_set: ModelSet, name: str) -> str | None:
    try:
        return model_set.get(name).card.get("sha256")
    except KeyError:
        return None


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def snapshot_zip(snap: dict[str, Any], outcomes: Sequence[Outcome]) -> bytes:
    """A ZIP with ``snapshot.json`` and, per model, the perturbed image, perturbation and Grad-CAMs (PNG)."""
    buf = io.BytesIO()
    vmax = shared_delta_scale(outcomes)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("snapshot.json", json.dumps(snap, indent=1, default=float))
        for o in outcomes:
            if not o.ok:
                continue
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in o.name)
            for key, rgb in card_images(o, vmax=vmax, target=o.image_size).items():
                zf.writestr(f"{safe}/{key}.png", _png(rgb))
    return buf.getvalue()


# --------------------------------------------------------------------------- test-split samples


@dataclass(frozen=True)
class Sample:
    key: str
    label: int
    path: str
    class_name: str = ""


def test_samples(roots: Sequence[str | Path], card: dict[str, Any], *, limit: int = 200) -> list[Sample]:
    """Images of the test split of a model's card (same seed and fractions), none of its training patients.

    Only images stored as files are offered (MedMNIST arrays have none to show). Raises
    :class:`medrobust.data.DataError` when the folders cannot be read.
    """
    from medrobust.data import read_records, split_from_info

    records, report = read_records([Path(r) for r in roots])
    split_info = card.get("split", {}) or {}
    split = split_from_info(records, split_info)
    train_patients = set(split_info.get("train_patients", []))
    test = set(split.images["test"])
    names = tuple(getattr(report, "classes", CLASS_NAMES))
    out = [Sample(r.key, r.label, r.path, names[r.label]) for r in records
           if r.key in test and r.patient not in train_patients and Path(r.path).is_file()]
    return out[:limit]


test_samples.__test__ = False  # not a pytest test despite its name


# --------------------------------------------------------------------------- per-session memo


class Memo:
    """A small least-recently-used memo for one browser session (kept in its session state).

    Holds the clean analysis and recent perturbation outcomes so that a rerun with unchanged
    settings (e.g. after a download click) costs nothing, and a PGD run is not repeated.
    """

    def __init__(self, max_items: int = 8) -> None:
        from collections import OrderedDict

        self.max_items = max_items
        self._d: "OrderedDict[Any, Any]" = OrderedDict()

    def get(self, key):
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return None

    def put(self, key, value):
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.max_items:
            self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)


def model_set_key(model_set: ModelSet) -> tuple:
    """Identifies a loaded model set (names and checkpoint hashes) for memo keys."""
    return tuple((m.name, m.card.get("sha256"), m.ok) for m in model_set.models)
