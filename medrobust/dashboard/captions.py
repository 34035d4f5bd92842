"""The Stress test's words: verdict labels, captions of models, maps and changes, with their units.

Every sentence the page shows about a number is built here from that number, so the page only lays text out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medrobust.attacks import REFERENCE_SIDE
from medrobust.dashboard.modelset import STEPS_BF16, STEPS_FP32, LoadedModel


REFER_TEXT = "uncertain — refer"
#: The labels of a card's answer: at the operating point, the same for an image the input check flagged, and the most
#: probable class of a model without a fitted rule.
VERDICT_LABEL = "Verdict at the operating point"
OUTSIDE_LABEL = "Verdict (outside what this model was trained on)"
RAW_LABEL = "Most probable class (no fitted operating point)"
VERDICT_LABELS = (VERDICT_LABEL, OUTSIDE_LABEL, RAW_LABEL)


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


#: What every map explains (said once on the page).
CAM_EXPLAINS = ("Each Grad-CAM explains the class the model finds most probable on that input (named under the "
                "map; it can differ from the verdict at the operating point): bright = regions that raised that "
                "class's score.")


def cam_resolution(cam_layer: str, grids: Sequence[tuple[int, int]], size: int, layers: Sequence[str] = ()) -> str:
    """What a map is made of, for its caption: "layer3 + layer4: 8×8 and 4×4 maps averaged, upsampled to 128 px"."""
    names = " + ".join(layers) if layers else cam_layer.replace("+", " + ")
    cells = " and ".join(f"{h}×{w}" for h, w in grids)
    how = "maps averaged" if len(grids) > 1 else "map"
    return f"{names}: {cells} {how}, upsampled bilinearly to {size} px"


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


def attack_steps(kinds: set[str]) -> str:
    """The sentence on how the attacks behind the cards took their steps ('' when nothing was attacked)."""
    if not kinds:
        return ""
    if kinds == {STEPS_FP32}:
        return " The attack's gradient steps ran in fp32."
    return (" The attack's gradient steps ran on a bf16 copy of " + ("each model" if kinds == {STEPS_BF16}
            else "some models") + " (faster on this CPU); every answer shown is the fp32 model's own.")
