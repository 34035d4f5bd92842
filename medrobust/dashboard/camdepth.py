"""Which Grad-CAM depth the page offers, and what it is on each network: its own stage(s) and native grid."""

from __future__ import annotations

import torch

from medrobust.gradcam import cam_grid, cam_layers
from medrobust.models import XrayNet


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
