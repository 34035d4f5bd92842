"""Grad-CAM (Selvaraju et al.) for every medrobust architecture, without module hooks.

The dashboard shares one cached model between all browser sessions, so nothing here may mutate a
model: no forward/backward hooks, no ``.grad`` on parameters, no train mode. Instead the forward
pass is replayed stage by stage (:func:`medrobust.models.stages`, then
:func:`medrobust.models.head`); the activation of the target stage is cut from the graph and made a
leaf that requires grad, and ``torch.autograd.grad`` gives the gradient of the class logit with
respect to it alone. Concurrent calls on the same model are therefore safe.

The layer names are :func:`medrobust.models.cam_layers` (shallow -> deep): ``layer1`` ..
``layer4`` for ResNets, ``denseblock1`` .. ``denseblock4`` for DenseNet-121, ``stage1`` ..
``stage4`` for EfficientNet-B0, MobileNetV3-Large and ConvNeXt-Tiny.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.models import XrayNet, cam_layers, head, stages

#: The ResNet layer names (kept for callers of the ResNet-only version; see :func:`cam_layers`).
LAYERS = ("layer1", "layer2", "layer3", "layer4")

__all__ = ["LAYERS", "cam_layers", "gradcam"]


def gradcam(model: XrayNet, x: torch.Tensor, *, class_index: int | None = None, layer: str | None = None,
            ) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of one image.

    Parameters
    ----------
    model
        An :class:`~medrobust.models.XrayNet` of any architecture, in eval mode (it is not changed;
        a BatchNorm-folded copy works too).
    x
        One image, (1, 1, H, W) or (1, H, W), in [0, 1].
    class_index
        The class whose logit is explained (0 <= class_index < K); default the predicted class.
    layer
        Which stage's output to explain, one of ``cam_layers(model)``; default (None) the deepest
        (``layer4`` for ResNets: standard, coarsest).

    Returns
    -------
    (cam, logits)
        ``cam`` is float32 (H, W) in [0, 1] (all zeros when the gradient vanishes), upsampled
        bilinearly to the input size; ``logits`` are the model's (1, K) logits, detached.

    Raises
    ------
    ValueError
        An unknown layer (the message names the valid ones), a model in train mode, not one image,
        or a class index out of range.
    """
    if not isinstance(model, XrayNet):
        raise TypeError(f"gradcam expects an XrayNet, got {type(model).__name__}.")
    names = cam_layers(model)
    if layer is None:
        layer = names[-1]
    if layer not in names:
        raise ValueError(f"Unknown Grad-CAM layer {layer!r} for {model.arch}; choose one of {', '.join(names)}.")
    if model.training:
        raise ValueError("Grad-CAM expects a model in eval mode; the dashboard never trains shared models.")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"Expected one image (1, 1, H, W), got shape {tuple(x.shape)}.")
    if class_index is not None and not 0 <= int(class_index) < model.num_classes:
        raise ValueError(f"class_index must be in 0..{model.num_classes - 1}, got {class_index}.")
    x = x.float().to(model.mean.device)
    seq = [m for _, m in stages(model)]
    cut = 1 + names.index(layer)  # seq[0] is the stem
    with torch.no_grad():
        a = model.normalise(x)
        for stage in seq[: cut + 1]:
            a = stage(a)
    with torch.enable_grad():
        act = a.detach().requires_grad_(True)
        h = act
        for stage in seq[cut + 1 :]:
            h = stage(h)
        logits = head(model, h)
        c = int(logits.argmax(1)) if class_index is None else int(class_index)
        (grad,) = torch.autograd.grad(logits[0, c], act)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 1e-12 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32), logits.detach()
