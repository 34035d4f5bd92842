"""One colour per model, defined once and used by every plot and card of the dashboard.

The four methods get Okabe-Ito colours (distinguishable with the common colour-vision
deficiencies). Models beyond the four (newly trained runs shown beside the shipped ones) get the
remaining Okabe-Ito colours, chosen by a stable hash of their name so a model keeps its colour on
every page and across reloads.
"""

from __future__ import annotations

import hashlib

from medrobust.choices import METHOD_NAMES

METHOD_COLOURS: dict[str, str] = {
    "standard": "#0072B2",  # blue
    "robust": "#D55E00",  # vermillion
    "augmix": "#009E73",  # bluish green
    "robustaugmix": "#CC79A7",  # reddish purple
}
METHOD_ORDER: tuple[str, ...] = METHOD_NAMES
EXTRA_COLOURS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#8C6D1F", "#000000", "#F0E442", "#7F7F7F")
UNKNOWN_COLOUR = "#7F7F7F"

def colour_for(name: str | None, method: str | None = None, *, shipped: bool = True) -> str:
    """The colour of a model.

    Shipped models (and any model whose name is a method) use their method's colour; other models
    (trained runs) take an extra colour from a stable hash of their name, so a run never borrows
    the colour of the shipped model it is compared with.
    """
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    if shipped and method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    if not name:
        return UNKNOWN_COLOUR
    h = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return EXTRA_COLOURS[h % len(EXTRA_COLOURS)]


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def rgba(colour: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(colour)
    return f"rgba({r},{g},{b},{alpha})"
