"""How medrobust writes a number with its interval: one way, for every table and every sentence.

A difference is always written B − A, signed, with its interval in the same direction and the same
digits wherever it appears ("robust − standard = −0.019 [−0.068, +0.034]"), so a sentence and the
table row it describes show the same characters. Fractions of images (accuracy, sensitivity, ...)
are written in percent, their differences in percentage points ("pts"); AUROC, RMSCE, ECE, NLL and
Brier keep their own scale. p-values below 0.001 are written "< 0.001", never "0.000".

Examples
--------
>>> format_interval(-0.0193, (-0.0681, 0.0342), decimals=3, signed=True)
'−0.019 [−0.068, +0.034]'
>>> format_difference("balanced_accuracy", -0.002, (-0.035, 0.033))
'−0.2 [−3.5, +3.3] pts'
>>> format_value("accuracy", 0.785, (0.741, 0.823))
'78.5 [74.1, 82.3]'
>>> format_p(0.0004), format_p(0.0123)
('< 0.001', '0.012')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["MINUS", "MetricStyle", "STYLES", "format_number", "format_interval", "format_value",
           "format_difference", "format_p", "includes_zero"]

#: The minus sign of every formatted number (U+2212, not the hyphen).
MINUS = "\u2212"
#: What a missing or undefined number is written as.
MISSING = "–"


@dataclass(frozen=True)
class MetricStyle:
    """How one metric is written: ``scale`` x value with ``decimals`` digits; ``unit`` follows a difference."""

    scale: float
    decimals: int
    unit: str


_PERCENT = MetricStyle(100.0, 1, " pts")
#: The one place that decides how each metric is written.
STYLES: dict[str, MetricStyle] = {
    "accuracy": _PERCENT, "balanced_accuracy": _PERCENT, "sensitivity": _PERCENT, "specificity": _PERCENT,
    "positive_rate": _PERCENT, "ppv": _PERCENT, "npv": _PERCENT, "coverage": _PERCENT,
    "auroc": MetricStyle(1.0, 3, ""), "rmsce": MetricStyle(1.0, 3, ""), "rmsce_plugin": MetricStyle(1.0, 3, ""),
    "ece": MetricStyle(1.0, 3, ""), "brier": MetricStyle(1.0, 3, ""), "nll": MetricStyle(1.0, 3, " nats"),
    "entropy": MetricStyle(1.0, 3, " nats"), "aurc": MetricStyle(1.0, 3, ""),
}


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def format_number(x: float | None, *, decimals: int, signed: bool = False, scale: float = 1.0) -> str:
    """``scale * x`` with ``decimals`` digits, a true minus sign, ``+`` when ``signed``; "–" when missing.

    A value that rounds to zero is written without a sign ("0.000", "+0.000" signed), never "−0.000".
    """
    if _missing(x):
        return MISSING
    v = scale * float(x)
    s = f"{v:.{decimals}f}"
    if float(s) == 0.0:
        s = s.lstrip("-")
        return f"+{s}" if signed else s
    if signed and v > 0:
        s = "+" + s
    return s.replace("-", MINUS)


def format_interval(value: float | None, ci: Sequence[float | None] | None, *, decimals: int,
                    signed: bool = False, scale: float = 1.0, unit: str = "") -> str:
    """``"value [lower, upper]unit"``; just the value when the interval is missing or undefined."""
    v = format_number(value, decimals=decimals, signed=signed, scale=scale)
    if v == MISSING:
        return MISSING
    if not ci or len(ci) != 2 or any(_missing(c) for c in ci):
        return v + unit
    lo, hi = (format_number(c, decimals=decimals, signed=signed, scale=scale) for c in ci)
    return f"{v} [{lo}, {hi}]{unit}"


def _style(metric: str) -> MetricStyle:
    try:
        return STYLES[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(STYLES)}") from None


def format_value(metric: str, value: float | None, ci: Sequence[float | None] | None = None) -> str:
    """A metric's value with its interval, unsigned, in its own style (percent for fractions of images)."""
    st = _style(metric)
    return format_interval(value, ci, decimals=st.decimals, scale=st.scale)


def format_difference(metric: str, difference: float | None, ci: Sequence[float | None] | None = None) -> str:
    """A difference B − A of one metric with its interval, signed, with its unit (pts for percentages)."""
    st = _style(metric)
    return format_interval(difference, ci, decimals=st.decimals, signed=True, scale=st.scale, unit=st.unit)


def format_p(p: float | None) -> str:
    """A p-value: "< 0.001" below 0.001, else three decimals; "–" when there is none."""
    if _missing(p):
        return MISSING
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def includes_zero(ci: Sequence[float]) -> bool:
    """Whether an interval [lower, upper] includes 0 (decides nothing about the sign)."""
    lo, hi = ci
    return lo <= 0.0 <= hi
