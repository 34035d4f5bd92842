"""Grad-CAM (Selvaraju et al.) for the medrobust ResNet-18, without module hooks.

The dashboard shares one cached model between all browser sessions, so nothing here may mutate a
model: no forward/backward hooks, no ``.grad`` on parameters, no train mode. Instead the forward
pass is replayed layer by layer through ``model.net``; the activation of the target layer is cut
from the graph and made a leaf that requires grad, and ``torch.autograd.grad`` gives the gradient
of the class logit with respect to it alone. Concurrent calls on the same model are therefore safe.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.models import XrayResNet

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _stem(net, x: torch.Tensor) -> torch.Tensor:
    return net.maxpool(net.relu(net.bn1(net.conv1(x))))


def gradcam(model: XrayResNet, x: torch.Tensor, *, class_index: int | None = None, layer: str = "layer4",
            ) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of one image.

    Parameters
    ----------
    model
        An :class:`XrayResNet` in eval mode (it is not changed).
    x
        One image, (1, 1, H, W) or (1, H, W), in [0, 1].
    class_index
        The class whose logit is explained; default the predicted class.
    layer
        Which residual stage's output to explain: ``layer4`` (standard, coarsest) to ``layer1``.

    Returns
    -------
    (cam, logits)
        ``cam`` is float32 (H, W) in [0, 1] (all zeros when the gradient vanishes), upsampled
        bilinearly to the input size; ``logits`` are the model's (1, 2) logits, detached.
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}.")
    if model.training:
        raise ValueError("Grad-CAM expects a model in eval mode; the dashboard never trains shared models.")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"Expected one image (1, 1, H, W), got shape {tuple(x.shape)}.")
    net = model.net
    x = x.float().to(model.mean.device)
    stages = [getattr(net, name) for name in LAYERS]
    cut = LAYERS.index(layer)
    with torch.no_grad():
        a = _stem(net, (x - model.mean) / model.std)
        for stage in stages[: cut + 1]:
            a = stage(a)
    with torch.enable_grad():
        act = a.detach().requires_grad_(True)
        h = act
        for stage in stages[cut + 1 :]:
            h = stage(h)
        logits = net.fc(torch.flatten(net.avgpool(h), 1))
        c = int(logits.argmax(1)) if class_index is None else int(class_index)
        (grad,) = torch.autograd.grad(logits[0, c], act)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 1e-12 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32), logits.detach()
