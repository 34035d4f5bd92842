"""What the Stress test does to an image: the choices offered, their limits, and one :class:`Perturbation`.

The page's controls build a :class:`Perturbation`; :mod:`medrobust.dashboard.stress_run` applies it. Nothing here
needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from medrobust import settings
from medrobust.clinical_scale import CLINICAL, LEVELS, level_label
from medrobust.corruptions import CORRUPTIONS


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
