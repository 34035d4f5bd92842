"""Grad-CAM (Selvaraju et al.) for every medrobust architecture, without module hooks.

The dashboard shares one cached model between all browser sessions, so nothing here may mutate a
model: no forward/backward hooks, no ``.grad`` on parameters, no train mode. Instead the forward
pass is replayed stage by stage (:func:`medrobust.models.stages`, then
:func:`medrobust.models.head`); the activation of the target stage is cut from the graph and made a
leaf that requires grad, and ``torch.autograd.grad`` gives the gradient of the class logit with
respect to it alone. Concurrent calls on the same model are therefore safe.

The layer names are :func:`medrobust.models.cam_layers` (shallow -> deep): ``layer1`` ..
``layer4`` for ResNets, ``denseblock1`` .. ``denseblock4`` for DenseNet-121, ``stage1`` ..
``stage4`` for EfficientNet-B0, MobileNetV3-Large and ConvNeXt-Tiny. A network built by timm, MONAI
or torchxrayvision (:class:`medrobust.external.ExternalNet`) is replayed the same way through the
stages its card records, named after the library's modules (``layer4``, ``stages.3``,
``features.denseblock4``); for a torchxrayvision label map the explained logit is the class's own.

Several layers at once (``layer=("layer3", "layer4")``) give the mean of the layers' maps, each
upsampled and scaled to a peak of 1 first: the map keeps the finer layer's detail (8x8 for layer3 at
128 px instead of layer4's 4x4) and the deepest layer's class evidence. pytorch-grad-cam combines
several target layers the same way (it min-max scales where this scales by the peak; see
``tests/science/test_gradcam.py``, which checks both against it). :func:`cam_grid` gives a layer's
native resolution, which a caption should state: everything finer than it is bilinear upsampling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.models import XrayNet, cam_layers, head, stages

#: The ResNet layer names (kept for callers of the ResNet-only version; see :func:`cam_layers`).
LAYERS = ("layer1", "layer2", "layer3", "layer4")

__all__ = ["LAYERS", "cam_grid", "cam_layers", "gradcam"]


def _layer_list(model: XrayNet, layer: str | Sequence[str] | None) -> list[str]:
    names = cam_layers(model)
    wanted = [names[-1]] if layer is None else [layer] if isinstance(layer, str) else list(layer)
    if not wanted:
        raise ValueError(f"Name at least one Grad-CAM layer for {model.arch}: {', '.join(names)}.")
    for name in wanted:
        if name not in names:
            raise ValueError(f"Unknown Grad-CAM layer {name!r} for {model.arch}; choose one of {', '.join(names)}.")
    return sorted(set(wanted), key=names.index)


def cam_grid(model: XrayNet, layer: str | Sequence[str] | None = None, *, size: int | tuple[int, int] = 128,
             ) -> tuple[tuple[int, int], ...]:
    """The native (rows, columns) of each Grad-CAM layer's map for a ``size`` input, shallow -> deep.

    E.g. ``((8, 8), (4, 4))`` for ``("layer3", "layer4")`` of a ResNet at 128 px. Runs the stages once
    on a blank image under ``torch.no_grad`` (the model is not changed).
    """
    if not isinstance(model, XrayNet):
        raise TypeError(f"cam_grid expects an XrayNet, got {type(model).__name__}.")
    wanted = _layer_list(model, layer)
    h, w = (size, size) if isinstance(size, int) else size
    names = cam_layers(model)
    out = {}
    with torch.no_grad():
        a = model.normalise(torch.zeros(1, 1, h, w, device=model.mean.device))
        for i, (_, stage) in enumerate(stages(model)[: 2 + names.index(wanted[-1])]):
            a = stage(a)
            if i >= 1 and names[i - 1] in wanted:
                out[names[i - 1]] = (int(a.shape[-2]), int(a.shape[-1]))
    return tuple(out[n] for n in wanted)


def gradcam(model: XrayNet, x: torch.Tensor, *, class_index: int | None = None,
            layer: str | Sequence[str] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of one image.

    Parameters
    ----------
    model
        An :class:`~medrobust.models.XrayNet` of any architecture (an imported timm, MONAI or
        torchxrayvision network too), in eval mode (it is not changed; a BatchNorm-folded copy works too).
    x
        One image, (1, 1, H, W) or (1, H, W), in [0, 1].
    class_index
        The class whose logit is explained (0 <= class_index < K); default the predicted class.
    layer
        Which stage's output to explain, one of ``cam_layers(model)``; default (None) the deepest
        (``layer4`` for ResNets: standard, coarsest). Several names: the mean of their maps, each
        upsampled and scaled to a peak of 1 (a layer whose map is all zero adds zeros), scaled again to a
        peak of 1. All layers explain the same class, from one forward and one backward pass.

    Returns
    -------
    (cam, logits)
        ``cam`` is float32 (H, W) in [0, 1] (all zeros when the gradient vanishes), upsampled
        bilinearly to the input size (see :func:`cam_grid` for the native size); ``logits`` are the
        model's (1, K) logits, detached.

    Raises
    ------
    ValueError
        An unknown layer (the message names the valid ones), a model in train mode, not one image,
        or a class index out of range.
    """
    if not isinstance(model, XrayNet):
        raise TypeError(f"gradcam expects an XrayNet, got {type(model).__name__}.")
    names = cam_layers(model)
    wanted = _layer_list(model, layer)
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
    cuts = [1 + names.index(name) for name in wanted]  # seq[0] is the stem
    with torch.no_grad():
        a = model.normalise(x)
        for stage in seq[: cuts[0] + 1]:
            a = stage(a)
    with torch.enable_grad():
        acts = [a.detach().requires_grad_(True)]  # a leaf: the graph starts here, not at the parameters
        h = acts[0]
        for i in range(cuts[0] + 1, len(seq)):
            h = seq[i](h)
            if i in cuts:
                acts.append(h)
        logits = head(model, h)
        c = int(logits.argmax(1)) if class_index is None else int(class_index)
        grads = torch.autograd.grad(logits[0, c], acts)
    maps = []
    for act, grad in zip(acts, grads):
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        top = float(cam.max())
        maps.append(cam / top if top > 1e-12 else torch.zeros_like(cam))
    cam = maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)
    if len(maps) > 1:
        top = float(cam.max())
        cam = cam / top if top > 1e-12 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32), logits.detach()
