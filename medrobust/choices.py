"""The text choices of medrobust as enums, each checked once at the boundary with one clear message.

This module imports nothing heavy (no torch), so the dashboard's landing page and the report can
name the methods without loading a model library.

Examples
--------
>>> parse_choice(Norm, "l2").value
'l2'
>>> parse_choice(Norm, "l3")
Traceback (most recent call last):
ValueError: Unknown norm 'l3'; choose one of l2, linf.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar


class Method(str, Enum):
    """The four training methods (the paper's order)."""

    STANDARD = "standard"
    ROBUST = "robust"
    AUGMIX = "augmix"
    ROBUSTAUGMIX = "robustaugmix"


class Norm(str, Enum):
    """Threat model of an attack: L2 (budgets stated at 224 px) or L-inf (per pixel)."""

    L2 = "l2"
    LINF = "linf"


class Schedule(str, Enum):
    """How the attacks of the worst-case ensemble share the images.

    ``independent``: every attack attacks every image it has not fooled itself, so each attack's own
    accuracy is known. ``sequential`` (AutoAttack's and RobustBench's rule): PGD attacks every image,
    APGD-CE only the images PGD left standing; the worst case is the same rule ("robust only if no
    attack fools it") at less cost, PGD's own accuracy stays known and APGD's is what it adds.
    """

    INDEPENDENT = "independent"
    SEQUENTIAL = "sequential"


class Noise(str, Enum):
    """The paper's three noises (``skimage.util.random_noise`` modes)."""

    GAUSSIAN = "gaussian"
    SALT_AND_PEPPER = "salt_and_pepper"
    SPECKLE = "speckle"


class Arch(str, Enum):
    """The torchvision networks medrobust can build, train, load and explain (value = torchvision's name)."""

    RESNET18 = "resnet18"
    RESNET34 = "resnet34"
    RESNET50 = "resnet50"
    DENSENET121 = "densenet121"
    EFFICIENTNET_B0 = "efficientnet_b0"
    MOBILENET_V3_LARGE = "mobilenet_v3_large"
    CONVNEXT_TINY = "convnext_tiny"


class Library(str, Enum):
    """Where ``import-model`` gets an architecture from (value = the library's import name).

    ``torchvision`` builds the registry networks (:class:`Arch`) inside :class:`medrobust.models.XrayNet`;
    the others are optional extras (``pip install ".[timm]"`` etc.) whose networks
    :mod:`medrobust.external` wraps with the same interface.
    """

    TORCHVISION = "torchvision"
    TIMM = "timm"
    MONAI = "monai"
    TORCHXRAYVISION = "torchxrayvision"


class ThresholdRule(str, Enum):
    """How :func:`medrobust.decision.choose_threshold` picks a binary operating point."""

    YOUDEN = "youden"
    SENSITIVITY = "sensitivity"


class ConformalMethod(str, Enum):
    """Nonconformity score of split conformal prediction sets (:mod:`medrobust.decision`)."""

    LAC = "lac"
    APS = "aps"


#: The method names in the paper's order; every table and plot lists methods in this order.
METHOD_NAMES: tuple[str, ...] = tuple(m.value for m in Method)
#: Class names of the binary COVID task, index = label.
CLASS_NAMES: tuple[str, str] = ("non-COVID", "COVID-19")

E = TypeVar("E", bound=Enum)

_WHAT = {
    Method: "method", Norm: "norm", Noise: "noise", Arch: "architecture", Library: "model library",
    ThresholdRule: "threshold rule", ConformalMethod: "conformal method", Schedule: "attack schedule",
}


def parse_choice(kind: type[E], value: str | E, *, what: str | None = None) -> E:
    """``value`` as a member of ``kind`` (exact spelling); anything else raises one clear ValueError."""
    if isinstance(value, kind):
        return value
    for member in kind:
        if member.value == value:
            return member
    label = what or _WHAT.get(kind, kind.__name__.lower())
    raise ValueError(f"Unknown {label} {value!r}; choose one of {', '.join(m.value for m in kind)}.")
