"""Is this image plausibly a frontal chest X-ray of the kind the models learnt from? Asked before any verdict.

Two layers, each answering with plain sentences a clinician understands:

* **Cheap checks** (:func:`cheap_checks`) on the decoded image at its own resolution: too small, an
  implausible aspect ratio, colour (:attr:`~medrobust.image_types.DecodedImage.colourfulness` and
  :attr:`~medrobust.image_types.DecodedImage.colour_beyond_tint`, measured while decoding), nearly
  uniform. Their limits live in :class:`CheapLimits`, each with how it was chosen.
* **A learned check** (:class:`InputCheck`) on the image as the models see it (``to_square`` at the
  feature model's size). Features: the feature model's stage-2 and stage-3 outputs (``layer2``,
  ``layer3`` of a ResNet), each average-pooled to a 2x2 grid, so the layout of the picture counts,
  not only its texture. Two scores:

  - *distance*: the log squared Mahalanobis distance of the stage-2 features to the TRAINING
    X-rays (and their mirror images: the models were trained with horizontal flips), with a
    Ledoit-Wolf shrunk covariance. It catches photographs, noise, screenshots, other body parts.
  - *orientation*: a multinomial logistic regression on both stages' features, trained
    self-supervised on the TRAINING X-rays only, that tells an upright X-ray (as filed, mirrored,
    or mildly cropped / re-exposed) from the same X-ray rotated by 90°, 180° or 270°, vertically
    flipped, in negative, or zoomed into a 20-40 % part (sides). The score is the log-odds of "not upright".
    Rotated and inverted X-rays keep the texture statistics of an X-ray, so a pure distance misses
    many of them; this classifier does not.

  Each score is standardised by its mean and standard deviation on the VALIDATION X-rays; the learned
  score of an image is the larger of the two (in validation standard deviations) and it is flagged
  above :attr:`InputCheck.threshold`: the Gaussian quantile for the requested pass rate (Bonferroni
  over the two scores), or the validation quantile if that is higher. Nothing is fitted on test
  images or on any out-of-scope image.

Nothing is fitted when the dashboard starts: :func:`fit_input_check` runs once
(``scripts/fit_input_check.py``) and :meth:`InputCheck.save` writes ``input_check.safetensors`` (the
arrays) and ``input_check.json`` (the card: feature model name and sha256, split hash, image counts,
threshold, date, measured rates) beside the checkpoints. :meth:`InputCheck.load` refuses, in one line,
a feature model whose sha256 is not the one the check was fitted with.

    from medrobust.imaging import decode_image
    from medrobust.input_check import InputCheck, check_decoded, default_input_check_path

    checker = InputCheck.load(default_input_check_path())
    verdict = check_decoded(decode_image(data), checker=checker)
    if not verdict.ok:
        print(" ".join(verdict.reasons))
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust import settings
from medrobust.checkpoints import CheckpointError, image_size_of, load_checkpoint, sha256_file
from medrobust.fileio import atomic_write_bytes, atomic_write_text
from medrobust.image_types import DecodedImage
from medrobust.imaging import to_square
from medrobust.models import XrayNet, cam_layers, stages

FORMAT = "medrobust-input-check"
FORMAT_VERSION = 1

#: What each code of :class:`InputVerdict` means.
CODES = {
    "too_small": "the image has too few pixels",
    "aspect": "the image is far from square",
    "colour": "the image is in colour",
    "uniform": "the image is (nearly) one flat grey level",
    "unlike_training": "the learned distance to the training X-rays is too large",
    "orientation": "the image looks like a rotated or upside-down X-ray",
    "inverted": "the image looks like an X-ray in negative (inverted grey levels)",
    "cropped": "the image looks like a zoomed-in part of an X-ray",
    "no_learned_check": "only the cheap checks ran (no fitted learned check was given)",
}

#: The orientation classifier's classes, index = output; the first is the in-scope one.
ORIENTATION_CLASSES = ("upright", "rotated_90", "rotated_180", "rotated_270", "inverted", "zoomed")
_CLASS_CODE = {"rotated_90": "orientation", "rotated_180": "orientation", "rotated_270": "orientation",
               "inverted": "inverted", "zoomed": "cropped"}
_NOT_UPRIGHT = "The image does not look like an upright frontal chest X-ray: it looks most like "
_CLASS_REASON = {
    "rotated_90": _NOT_UPRIGHT + "one turned on its side; upload X-rays upright, as they are read.",
    "rotated_270": _NOT_UPRIGHT + "one turned on its side; upload X-rays upright, as they are read.",
    "rotated_180": _NOT_UPRIGHT + "one upside down; upload X-rays upright, as they are read.",
    "inverted": _NOT_UPRIGHT + "one in negative (bones dark, lungs white); upload it with the usual grey levels.",
    "zoomed": _NOT_UPRIGHT + "a zoomed-in part of one; upload the whole frontal chest X-ray.",
}
UNLIKE_TRAINING_REASON = ("The image does not look like the frontal chest X-rays the models learnt from, so their "
                          "answer would mean nothing.")
NO_LEARNED_REASON = "The learned check is unavailable, so only size, shape, colour and contrast were checked."


class InputCheckError(ValueError):
    """A fitted input check cannot be used; the message says which file and why, in one line."""


# ----------------------------------------------------------------------------- verdict and cheap checks

@dataclass(frozen=True)
class InputVerdict:
    """Whether an image may be given to the models, and why not.

    ``reasons`` are plain sentences, one per check that fired (empty when ``ok``); ``codes`` name them
    for programs (see :data:`CODES`), plus ``no_learned_check`` when only the cheap checks ran, which
    is informational: it has no sentence in ``reasons`` and does not make ``ok`` False. ``score`` is
    the learned score (how far beyond typical validation X-rays, in validation standard deviations, on
    the worse of the two learned measures) and ``threshold`` the score above which an image is
    flagged; both are None when no learned check ran.
    """

    ok: bool
    reasons: tuple[str, ...]
    codes: tuple[str, ...]
    score: float | None
    threshold: float | None


@dataclass(frozen=True)
class CheapLimits:
    """The limits of the cheap checks, measured on the TRAINING X-rays' files at their stored resolution.

    The 390 training files (downsized upstream data, at most 512 px on the long side) were decoded with
    :func:`medrobust.imaging.decode_image`; ``scripts/fit_input_check.py`` prints the same statistics
    for the training, validation and test patients, and the card records them.
    """

    #: Shorter side, px. The smallest training X-ray is 156 px; below 64 px (half the models' 128 px
    #: input) a chest X-ray's lung markings cannot be resolved, whatever the source.
    min_side: int = 64
    #: Long side / short side. Training X-rays reach 1.72, validation 2.24 (a cropped upper chest);
    #: 2.5 leaves a margin above every in-scope image seen.
    max_aspect: float = 2.5
    #: Hasler & Süsstrunk colourfulness. The training set holds purple- and blue-tinted scans of grey
    #: films up to 46.6; 60 ("quite colourful") is that maximum plus ~30 %.
    max_colourfulness: float = 60.0
    #: Colour that no tint explains (:func:`medrobust.imaging.colour_measures`, 75th percentile of the
    #: residual chroma). The training maximum is 15.5 (purple-tinted film scans whose tint is not quite
    #: proportional to brightness); 19 is that maximum plus ~25 %.
    max_colour_beyond_tint: float = 19.0
    #: Spread of the grey levels, 99th minus 1st percentile, as a fraction of the full range. The
    #: flattest training X-ray spans 0.24; below half of that (0.12) there is no X-ray to read.
    min_spread: float = 0.12


DEFAULT_LIMITS = CheapLimits()
#: Percentiles are taken on at most this many pixels (a regular sub-grid): milliseconds for any upload.
_SPREAD_SAMPLE_PIXELS = 1 << 18


def grey_spread(pixels: np.ndarray) -> float:
    """99th minus 1st percentile of a grey (H, W) image in [0, 1] (large images on a regular sub-grid)."""
    a = np.asarray(pixels)
    h, w = a.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / _SPREAD_SAMPLE_PIXELS)))
    lo, hi = np.percentile(a[::step, ::step], [1.0, 99.0])
    return float(hi - lo)


def cheap_checks(decoded: DecodedImage, *, limits: CheapLimits = DEFAULT_LIMITS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The cheap checks of :mod:`medrobust.input_check` on a decoded image: (codes, reasons), empty when all pass."""
    if not isinstance(decoded, DecodedImage):
        raise TypeError(f"cheap_checks expects a DecodedImage (from medrobust.imaging.decode_image), got "
                        f"{type(decoded).__name__}.")
    px = np.asarray(decoded.pixels)
    if px.ndim != 2 or px.size == 0:
        raise ValueError(f"Expected a non-empty 2-D grey image, got shape {px.shape}.")
    h, w = px.shape
    codes: list[str] = []
    reasons: list[str] = []
    if min(h, w) < limits.min_side:
        codes.append("too_small")
        reasons.append(f"The image is only {w}x{h} pixels; a chest X-ray needs at least {limits.min_side} pixels "
                       "on its shorter side to be read.")
    aspect = max(h, w) / min(h, w)
    if aspect > limits.max_aspect:
        codes.append("aspect")
        reasons.append(f"The image is {aspect:.1f} times as {'wide' if w > h else 'tall'} as it is "
                       f"{'tall' if w > h else 'wide'}; a frontal chest X-ray is roughly square "
                       f"(at most {limits.max_aspect:g}:1).")
    if decoded.colourfulness > limits.max_colourfulness or decoded.colour_beyond_tint > limits.max_colour_beyond_tint:
        codes.append("colour")
        reasons.append("The image is in colour; chest X-rays are grey, so this looks like a photograph, a "
                       "coloured figure or a screenshot.")
    spread = grey_spread(px)
    if spread < limits.min_spread:
        codes.append("uniform")
        reasons.append(f"The image is almost one flat grey level (its brightness varies by only {spread:.0%} of "
                       "the full range); there is no X-ray to read.")
    return tuple(codes), tuple(reasons)


# ----------------------------------------------------------------------------- features

def _stage_names(model: XrayNet) -> list[str]:
    return [name for name, _ in stages(model)]


def default_feature_stages(model: XrayNet) -> tuple[str, str]:
    """The stages the learned check reads: the second and third of :func:`medrobust.models.cam_layers`."""
    names = cam_layers(model)
    return names[1], names[2]


@torch.no_grad()
def _features(model: XrayNet, x: torch.Tensor, names: tuple[str, ...], grid: int) -> dict[str, torch.Tensor]:
    """Each named stage's output average-pooled to ``grid`` x ``grid`` and flattened: {name: (N, C * grid²)}."""
    seq = stages(model)
    last = max(i for i, (n, _) in enumerate(seq) if n in names)
    h = model.normalise(x)
    out = {}
    for name, module in seq[: last + 1]:
        h = module(h)
        if name in names:
            out[name] = F.adaptive_avg_pool2d(h, grid).flatten(1).float()
    return out


def _batched_features(model: XrayNet, x: torch.Tensor, names: tuple[str, ...], grid: int,
                      batch: int = 64) -> dict[str, torch.Tensor]:
    parts = [_features(model, x[i : i + batch], names, grid) for i in range(0, x.shape[0], batch)]
    return {n: torch.cat([p[n] for p in parts]) for n in names}


def _check_images(images: torch.Tensor, size: int, what: str = "images", *, exact: bool = True) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{what} must be a tensor of shape (N, 1, S, S), got {shape}.")
    n, _, h, w = images.shape
    if h != w or (h != size if exact else h < size):
        need = f"{size}x{size}" if exact else f"square and at least {size}x{size}"
        raise ValueError(f"{what} must be {need} pixels (the feature model's size), got {h}x{w}.")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if n and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} hold NaN or infinite values.")
    if n and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
        raise ValueError(f"{what} must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}].")
    return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- the learned check

@dataclass
class InputCheck:
    """A fitted learned input check (see the module docstring); make one with :func:`fit_input_check` or :meth:`load`."""

    model: XrayNet
    image_size: int
    distance_stage: str
    orientation_stages: tuple[str, ...]
    grid: int
    tensors: dict[str, torch.Tensor]
    threshold: float
    card: dict[str, Any] = field(default_factory=dict)
    limits: CheapLimits = DEFAULT_LIMITS

    # -- scoring

    def scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores of (N, 1, S, S) images in [0, 1]: (distance (N,), orientation logits (N, K)).

        ``distance`` is log of the squared Mahalanobis distance to the training features; the logits
        are the orientation classifier's over :data:`ORIENTATION_CLASSES`.
        """
        x = _check_images(images, self.image_size)
        if x.shape[0] == 0:
            return torch.zeros(0), torch.zeros(0, len(ORIENTATION_CLASSES))
        names = tuple(dict.fromkeys((self.distance_stage, *self.orientation_stages)))
        feats = _batched_features(self.model, x, names, self.grid)
        t = self.tensors
        d = feats[self.distance_stage].double() - t["distance.mean"].double()
        d2 = ((d @ t["distance.precision"].double()) * d).sum(1).clamp_min(1e-12)
        z = torch.cat([feats[n] for n in self.orientation_stages], 1)
        z = (z - t["orientation.mean"]) / t["orientation.scale"]
        logits = z @ t["orientation.weight"].T + t["orientation.bias"]
        return d2.log().float(), logits

    def standardised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both learned scores in validation standard deviations, (N, 2): [distance, orientation], and the logits."""
        dist, logits = self.scores(images)
        return _standardise(dist, logits, self.tensors["score.mean"], self.tensors["score.std"]), logits

    def check_images(self, images: torch.Tensor) -> list[InputVerdict]:
        """The learned check of a batch: (N, 1, S, S) images in [0, 1] at :attr:`image_size` -> N verdicts.

        A verdict's ``score`` is the larger standardised score, ``codes`` say which measure fired:
        ``unlike_training`` (distance) and/or the orientation classifier's most likely other class
        (``orientation``, ``inverted`` or ``cropped``).
        """
        z, logits = self.standardised(images)
        out = []
        for zi, li in zip(z.tolist(), logits):
            codes, reasons = [], []
            if zi[0] > self.threshold:
                codes.append("unlike_training")
                reasons.append(UNLIKE_TRAINING_REASON)
            if zi[1] > self.threshold:
                cls = ORIENTATION_CLASSES[1 + int(li[1:].argmax())]
                if _CLASS_CODE[cls] not in codes:
                    codes.append(_CLASS_CODE[cls])
                    reasons.append(_CLASS_REASON[cls])
            score = max(zi)
            out.append(InputVerdict(ok=not codes, reasons=tuple(reasons), codes=tuple(codes), score=float(score),
                                    threshold=float(self.threshold)))
        return out

    # -- files

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``STEM.safetensors`` (arrays) and ``STEM.json`` (card) for ``path`` = stem, .json or .safetensors.

        Returns (arrays, card) paths. The card records the arrays' sha256; both are written atomically,
        the card last.
        """
        from safetensors.torch import save as save_tensors

        arrays, card_file = _paths(path)
        arrays.parent.mkdir(parents=True, exist_ok=True)
        data = save_tensors({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()},
                            metadata={"format": FORMAT})
        card = dict(self.card)
        card.update(format=FORMAT, format_version=FORMAT_VERSION, arrays_file=arrays.name,
                    sha256=hashlib.sha256(data).hexdigest(), image_size=self.image_size,
                    distance_stage=self.distance_stage, orientation_stages=list(self.orientation_stages),
                    grid=self.grid, orientation_classes=list(ORIENTATION_CLASSES), threshold=self.threshold,
                    cheap_limits=asdict(self.limits), torch_version=torch.__version__)
        atomic_write_bytes(arrays, data)
        atomic_write_text(card_file, json.dumps(card, indent=1, default=str))
        self.card = card
        return arrays, card_file

    @classmethod
    def load(cls, path: str | Path, *, feature_model: tuple[XrayNet, dict[str, Any]] | None = None,
             feature_model_path: str | Path | None = None) -> "InputCheck":
        """Load a fitted check written by :meth:`save` (``path``: stem, .json or .safetensors).

        The feature model is ``feature_model`` (a model and its card, as :func:`~medrobust.checkpoints.load_checkpoint`
        returns them, to share one already loaded), else the checkpoint at ``feature_model_path``, else
        the file the card names, beside the card.

        Raises
        ------
        InputCheckError
            One line: a file missing or unreadable, the arrays' sha256 not the card's, or a feature model
            whose sha256 is not the one the check was fitted with (tampered, retrained or another model).
        """
        from safetensors import safe_open

        arrays, card_file = _paths(path)
        if not card_file.is_file():
            raise InputCheckError(f"{card_file} is missing: a fitted input check needs its JSON card.")
        try:
            card = json.loads(card_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputCheckError(f"The input check card {card_file} is not valid JSON ({exc}).") from None
        if card.get("format") != FORMAT or int(card.get("format_version", 0)) > FORMAT_VERSION:
            raise InputCheckError(f"{card_file.name} is not a medrobust input check card (format version "
                                  f"{FORMAT_VERSION} or older).")
        arrays = card_file.with_name(card.get("arrays_file") or arrays.name)
        if not arrays.is_file():
            raise InputCheckError(f"{arrays} is missing: the input check's arrays must lie beside its card.")
        if sha256_file(arrays) != card.get("sha256"):
            raise InputCheckError(f"{arrays.name}: its sha256 does not match its card; the file is truncated, "
                                  "corrupted or not the one the card describes.")
        try:
            with safe_open(str(arrays), framework="pt", device="cpu") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:
            raise InputCheckError(f"{arrays.name} is not a readable safetensors file ({type(exc).__name__}).") from None
        fm = card.get("feature_model") or {}
        want = fm.get("sha256")
        if feature_model is None:
            where = Path(feature_model_path) if feature_model_path else card_file.with_name(str(fm.get("file", "")))
            try:
                model, mcard = load_checkpoint(where)
            except CheckpointError as exc:
                raise InputCheckError(f"The input check's feature model cannot be loaded: {exc}") from None
        else:
            model, mcard = feature_model
        if not want or mcard.get("sha256") != want:
            raise InputCheckError(
                f"The feature model ({mcard.get('name') or fm.get('file')}, sha256 {str(mcard.get('sha256'))[:12]}…) is "
                f"not the one this input check was fitted with ({fm.get('name')}, sha256 {str(want)[:12]}…); refit "
                "the check for this model (scripts/fit_input_check.py).")
        names = set(_stage_names(model))
        needed = {card.get("distance_stage"), *card.get("orientation_stages", ())}
        if not needed <= names:
            raise InputCheckError(f"{card_file.name} reads stages {sorted(map(str, needed))} that the feature model "
                                  "does not have.")
        limits = CheapLimits(**{k: v for k, v in (card.get("cheap_limits") or {}).items()
                                if k in CheapLimits.__dataclass_fields__})
        model.eval()
        return cls(model=model, image_size=int(card["image_size"]), distance_stage=card["distance_stage"],
                   orientation_stages=tuple(card["orientation_stages"]), grid=int(card["grid"]), tensors=tensors,
                   threshold=float(card["threshold"]), card=card, limits=limits)


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _standardise(dist: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, 2) scores in validation standard deviations: [log distance², log-odds of not upright]."""
    not_upright = torch.logsumexp(logits[:, 1:], 1) - logits[:, 0]
    raw = torch.stack([dist.double(), not_upright.double()], 1)
    return ((raw - mean) / std).float()


def default_input_check_path() -> Path:
    """The shipped input check's card: ``<checkpoints>/input_check.json`` (see :func:`medrobust.settings.checkpoints_dir`)."""
    return settings.checkpoints_dir() / f"{settings.INPUT_CHECK_STEM}.json"


def check_decoded(decoded: DecodedImage, *, checker: InputCheck | None) -> InputVerdict:
    """Check an uploaded image before any model sees it: the cheap checks, then the learned check.

    Parameters
    ----------
    decoded
        What :func:`medrobust.imaging.decode_image` returned for the file (its own resolution).
    checker
        A fitted :class:`InputCheck`, run on ``to_square(decoded.pixels, size=checker.image_size)``. With
        None only the cheap checks run; the verdict then carries the code ``no_learned_check`` (its
        sentence, for a page that wants to say so, is :data:`NO_LEARNED_REASON`) while ``ok`` and
        ``reasons`` are what the cheap checks say.

    Returns
    -------
    InputVerdict
        ``ok`` False when any check fired; ``reasons`` hold a sentence per check that fired.
    """
    limits = checker.limits if checker is not None else DEFAULT_LIMITS
    codes, reasons = cheap_checks(decoded, limits=limits)
    if checker is None:  # the code says so; ``reasons`` stay the failures only (empty when ok)
        return InputVerdict(ok=not codes, reasons=reasons, codes=codes + ("no_learned_check",), score=None,
                            threshold=None)
    learned = checker.check_images(to_square(decoded.pixels, size=checker.image_size)[None])[0]
    codes, reasons = codes + learned.codes, reasons + learned.reasons
    return InputVerdict(ok=not codes, reasons=reasons, codes=codes, score=learned.score, threshold=learned.threshold)


# ----------------------------------------------------------------------------- fitting

def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ledoit & Wolf's shrunk covariance of samples ``x`` (N, D): (mean (D,), covariance (D, D), shrinkage).

    The same estimator as :class:`sklearn.covariance.LedoitWolf` (which the tests compare against), in
    float64: (1 - s) S + s (tr S / D) I with the shrinkage s that minimises the expected Frobenius loss.
    """
    x = x.double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"Ledoit-Wolf needs at least 2 samples, got {n}.")
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / n
    mu = float(torch.trace(cov)) / d
    x2 = xc * xc
    beta_ = float((x2.T @ x2).sum())
    delta_ = float((cov * cov).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * float(torch.trace(cov)) + d * mu * mu) / d
    s = 0.0 if delta <= 0 else min(beta, delta) / delta
    shrunk = (1 - s) * cov + s * mu * torch.eye(d, dtype=torch.float64)
    return mean, shrunk, s


def _resize_crop(img: torch.Tensor, top: int, left: int, h: int, w: int, size: int) -> torch.Tensor:
    crop = img[:, top : top + h, left : left + w]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _augment(x: torch.Tensor, size: int, g: torch.Generator, *, lo: float, hi: float, jitter: bool) -> torch.Tensor:
    """A random crop of ``lo``-``hi`` of each side of each image (N, 1, S', S') resized to ``size``; with
    ``jitter`` also a gamma of 0.7-1.4, a contrast of 0.8-1.2 and a horizontal flip half of the time."""
    out = torch.empty(x.shape[0], 1, size, size)
    s = x.shape[-1]
    u = torch.rand(x.shape[0], 6, generator=g)
    for i in range(x.shape[0]):
        f = lo + (hi - lo) * float(u[i, 0])
        c = max(2, int(round(s * f)))
        top, left = int(float(u[i, 1]) * (s - c + 1)), int(float(u[i, 2]) * (s - c + 1))
        y = _resize_crop(x[i], min(top, s - c), min(left, s - c), c, c, size).clamp(0, 1)
        if jitter:
            y = y ** (0.7 + 0.7 * float(u[i, 3]))
            m = y.mean()
            y = ((y - m) * (0.8 + 0.4 * float(u[i, 4])) + m).clamp(0, 1)
            if float(u[i, 5]) < 0.5:
                y = y.flip(-1)
        out[i] = y
    return out


def _to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, k: int, *, weight_decay: float,
                  max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, balanced class weights, L2 ``weight_decay`` on the weights (LBFGS)."""
    counts = torch.bincount(y, minlength=k).double()
    cw = (y.numel() / (k * counts.clamp_min(1))).float()
    w = torch.zeros(k, x.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y, weight=cw) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def fit_input_check(*, feature_model: XrayNet, card: dict[str, Any], train_images: torch.Tensor,
                    val_images: torch.Tensor, pass_rate: float = 0.99, seed: int = 0, grid: int = 2,
                    feature_stages: tuple[str, str] | None = None, weight_decay: float = 2e-3,
                    copies: int = 2, zoom: tuple[float, float] = (0.2, 0.4), limits: CheapLimits = DEFAULT_LIMITS,
                    progress: bool = False) -> InputCheck:
    """Fit the learned check on a model's training X-rays and set its threshold on its validation X-rays.

    Works for any medrobust checkpoint (trained, imported with a user's manifest, any architecture).

    Parameters
    ----------
    feature_model
        The model whose features are read (eval mode; not changed).
    card
        Its checkpoint card: ``image_size``, ``sha256`` (recorded, and checked when the check is
        loaded), ``name`` / ``weights_file``, and ``split`` (its hash is recorded) when present.
    train_images
        (N, 1, S', S') float in [0, 1] (or uint8) X-rays of the TRAINING patients only, S' >= the
        model's ``image_size``; they are resized to it. Give about 4x ``image_size``
        (``load_dataset(..., image_size=4 * size)``): the zoomed crops are cut from these, and at the
        model's own size they would be blurry, so the classifier would learn blur instead of zoom.
    val_images
        (M, 1, S', S') X-rays of the VALIDATION patients: they set the standardisation and the threshold.
    pass_rate
        The fraction of in-scope X-rays that should pass (0.5-0.9999).
    seed
        Seeds the augmentations (crops, gamma, contrast, flips).
    grid
        Each stage's output is average-pooled to ``grid`` x ``grid``.
    feature_stages
        (distance stage, second orientation stage); default :func:`default_feature_stages`
        (``layer2``, ``layer3`` for a ResNet). The orientation classifier reads both.
    weight_decay
        L2 penalty of the orientation classifier (on standardised features).
    copies
        Augmented copies per training image for each class (4 measured no better than 2 here).
    zoom
        Range of the zoomed crops' side, as a fraction of the X-ray's side. Crops of 40-50 % were left
        out: the validation X-rays hold partial chest views that large (a 2.2:1 upper-chest crop).

    Returns
    -------
    InputCheck
        With ``card`` describing what it was fitted on (save it with :meth:`InputCheck.save`).
    """
    if not isinstance(feature_model, XrayNet):
        raise TypeError(f"feature_model must be an XrayNet (from load_checkpoint), got {type(feature_model).__name__}.")
    if not 0.5 <= pass_rate <= 0.9999:
        raise ValueError(f"pass_rate must lie in [0.5, 0.9999], got {pass_rate}.")
    if grid < 1 or copies < 1:
        raise ValueError(f"grid and copies must be at least 1, got grid={grid}, copies={copies}.")
    size = image_size_of(card, name=str(card.get("name") or "the feature model"))
    xtr = _check_images(train_images, size, "train_images", exact=False)
    xva = _check_images(val_images, size, "val_images", exact=False)
    if xtr.shape[0] < 20 or xva.shape[0] < 10:
        raise ValueError(f"Fitting needs at least 20 training and 10 validation X-rays, got {xtr.shape[0]} and "
                         f"{xva.shape[0]}.")
    if not card.get("sha256"):
        raise ValueError("The feature model's card records no sha256; load it with medrobust.checkpoints.load_checkpoint.")
    model = feature_model.eval()
    names_all = _stage_names(model)
    stages_used = feature_stages or default_feature_stages(model)
    if len(stages_used) != 2 or not set(stages_used) <= set(names_all):
        raise ValueError(f"feature_stages must name two of {names_all}, got {stages_used}.")
    dist_stage, orient_stages = stages_used[0], tuple(stages_used)
    g = torch.Generator().manual_seed(seed)

    def feats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return _batched_features(model, x, orient_stages, grid)

    def log(msg: str) -> None:
        if progress:
            print(f"fit_input_check: {msg}", flush=True)

    base = _to_size(xtr, size)
    upright = [base, base.flip(-1)] + [_augment(xtr, size, g, lo=0.85, hi=1.0, jitter=True) for _ in range(copies)]
    classes: list[list[torch.Tensor]] = [upright, [], [], [], [], []]
    for u in upright[: 2 + copies // 2]:
        for k in (1, 2, 3):
            classes[k].append(torch.rot90(u, k, (2, 3)))
        classes[4].append(1.0 - u)
    classes[2].append(base.flip(-2))  # upside down = rotated 180 + mirrored
    classes[5] = [_augment(xtr, size, g, lo=zoom[0], hi=zoom[1], jitter=False) for _ in range(copies)]
    log(f"features of {sum(t.shape[0] for c in classes for t in c)} training images and their variants")
    fx, fy = [], []
    for label, parts in enumerate(classes):
        for part in parts:
            f = feats(part)
            fx.append(f)
            fy.append(torch.full((part.shape[0],), label, dtype=torch.long))
    y = torch.cat(fy)

    # distance: Ledoit-Wolf on the upright X-rays as filed and mirrored (the models' training inputs)
    n = base.shape[0]
    dist_x = torch.cat([fx[0][dist_stage], fx[1][dist_stage]])
    mean, cov, shrink = ledoit_wolf(dist_x)
    precision = torch.linalg.inv(cov)
    precision = 0.5 * (precision + precision.T)

    # orientation: standardised features of both stages, multinomial logistic regression
    ox = torch.cat([torch.cat([f[s] for s in orient_stages], 1) for f in fx])
    o_mean, o_scale = ox.mean(0), ox.std(0).clamp_min(1e-6)
    log(f"orientation classifier on {ox.shape[0]} x {ox.shape[1]} features")
    w, b = _fit_logistic((ox - o_mean) / o_scale, y, len(ORIENTATION_CLASSES), weight_decay=weight_decay)
    train_acc = float(((((ox - o_mean) / o_scale) @ w.T + b).argmax(1) == y).float().mean())

    tensors = {"distance.mean": mean.float(), "distance.precision": precision.float(), "orientation.mean": o_mean,
               "orientation.scale": o_scale, "orientation.weight": w, "orientation.bias": b}
    checker = InputCheck(model=model, image_size=size, distance_stage=dist_stage, orientation_stages=orient_stages,
                         grid=grid, tensors={**tensors, "score.mean": torch.zeros(2, dtype=torch.float64),
                                             "score.std": torch.ones(2, dtype=torch.float64)},
                         threshold=math.inf, limits=limits)
    # standardisation and threshold on the validation X-rays
    dist_v, logits_v = checker.scores(_to_size(xva, size))
    raw_v = _standardise(dist_v, logits_v, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).double()
    s_mean, s_std = raw_v.mean(0), raw_v.std(0).clamp_min(1e-6)
    z_v = (raw_v - s_mean) / s_std
    gaussian = NormalDist().inv_cdf(1 - (1 - pass_rate) / 2)  # Bonferroni over the two scores
    combined = z_v.max(1).values
    empirical = float(torch.quantile(combined, pass_rate))
    threshold = max(gaussian, empirical)
    checker.tensors["score.mean"], checker.tensors["score.std"] = s_mean, s_std
    checker.threshold = threshold
    split = card.get("split") or {}
    checker.card = {
        "feature_model": {"name": card.get("name") or Path(str(card.get("weights_file", "model"))).stem,
                          "file": card.get("weights_file") or f"{card.get('name', 'model')}.safetensors",
                          "sha256": card["sha256"], "arch": model.arch},
        "fitted_on": {"split_hash": split.get("hash"), "train_images": int(n), "val_images": int(xva.shape[0]),
                      "train_variants": {c: int(sum(t.shape[0] for t in parts))
                                         for c, parts in zip(ORIENTATION_CLASSES, classes)},
                      "input_size": int(xtr.shape[-1])},
        "method": "max of two standardised scores: log squared Mahalanobis distance (Ledoit-Wolf) of "
                  f"{dist_stage} features pooled {grid}x{grid}; log-odds of 'not upright' of a logistic "
                  f"regression on {'+'.join(orient_stages)} features, trained on rotated/flipped/inverted/zoomed "
                  "training X-rays",
        "pass_rate": pass_rate, "threshold_rule": "max(Gaussian quantile with Bonferroni over 2 scores, validation "
                                                  "quantile)",
        "threshold_gaussian": gaussian, "threshold_empirical": empirical,
        "ledoit_wolf_shrinkage": shrink, "orientation_train_accuracy": train_acc,
        "val_pass_rate": float((combined <= threshold).double().mean()),
        "seed": seed, "weight_decay": weight_decay, "copies": copies, "zoom": list(zoom),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return checker
