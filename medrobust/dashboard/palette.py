"""One colour per model, defined once and used by every plot and card of the dashboard.

The four methods get Okabe-Ito colours (distinguishable with the common colour-vision
deficiencies). Any other model (a trained run, an imported network, a model of another task) takes
a colour from the same palette: :func:`assign_colours` hands out distinct colours to a whole set at
once (no two models share a colour until the palette is used up), and :func:`colour_for` gives a
single model a stable colour from a hash of its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from medrobust.choices import METHOD_NAMES

METHOD_COLOURS: dict[str, str] = {
    "standard": "#0072B2",  # blue
    "robust": "#D55E00",  # vermillion
    "augmix": "#009E73",  # bluish green
    "robustaugmix": "#CC79A7",  # reddish purple
}
METHOD_ORDER: tuple[str, ...] = METHOD_NAMES
EXTRA_COLOURS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#8C6D1F", "#000000", "#F0E442", "#7F7F7F",
                                  # after Okabe-Ito: Paul Tol's muted scheme (also colour-blind safe)
                                  "#332288", "#88CCEE", "#117733", "#DDCC77", "#AA4499", "#882255")
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


def assign_colours(models: Sequence[tuple[str, str | None, bool]]) -> dict[str, str]:
    """Distinct colours for a set of ``(name, method, shipped)`` models, stable for the same set.

    Method models keep their method's colour; every other model takes the first extra colour not
    yet used (its hash colour if free), so up to 12 further models all differ; beyond that the
    palette repeats.

    Examples
    --------
    >>> c = assign_colours([("standard", "standard", True), ("densenet", "imported", True),
    ...                     ("mobilenet", "imported", True)])
    >>> c["standard"], len(set(c.values()))
    ('#0072B2', 3)
    """
    out: dict[str, str] = {}
    rest = []
    for name, method, shipped in models:
        if name in METHOD_COLOURS or (shipped and method in METHOD_COLOURS):
            out[name] = colour_for(name, method, shipped=shipped)
        else:
            rest.append(name)
    used = set(out.values())
    for name in sorted(rest):
        preferred = colour_for(name, None, shipped=False)
        free = [c for c in EXTRA_COLOURS if c not in used]
        colour = preferred if preferred in free else (free[0] if free else preferred)
        out[name] = colour
        used.add(colour)
    return out


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def rgba(colour: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(colour)
    return f"rgba({r},{g},{b},{alpha})"
