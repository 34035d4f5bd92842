"""Grad-CAM for every architecture: a hook-free replay that reproduces the model and leaves it alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.choices import Arch
from medrobust.gradcam import LAYERS, cam_grid, gradcam
from medrobust.models import build_model, cam_layers, fold_batchnorm

ARCHS = [a.value for a in Arch]

#: The module whose output each stage ends with (for the hook-based reference).
_LAST = {
    "densenet121": ("features.denseblock1", "features.denseblock2", "features.denseblock3", None),
    "efficientnet_b0": ("features.2", "features.3", "features.5", "features.8"),
    "mobilenet_v3_large": ("features.3", "features.6", "features.12", "features.16"),
    "convnext_tiny": ("features.1", "features.3", "features.5", "features.7"),
}


def _last_module(arch: str, i: int) -> str:
    return f"layer{i + 1}" if arch.startswith("resnet") else _LAST[arch][i]


def _model(arch: str, *, in_channels: int = 1, seed: int = 0) -> nn.Module:
    """An eval-mode model with non-trivial BatchNorm (a random net is otherwise nearly flat)."""
    torch.manual_seed(seed)
    model = build_model(arch=arch, num_classes=3, in_channels=in_channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval().requires_grad_(False)


def _hooked_reference(model, x, module_name, class_index):
    """Grad-CAM with a forward hook and a tensor hook, on a private copy of the model."""
    model = copy.deepcopy(model).requires_grad_(True)
    store = {}

    def keep(mod, inp, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    if module_name is None:  # DenseNet's last stage ends with torchvision's in-place F.relu: written out
        net = model.net
        keep(None, None, torch.relu(net.features(model.normalise(x))))
        logits = net.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(store["a"], 1), 1))
    else:
        handle = model.net.get_submodule(module_name).register_forward_hook(keep)
        logits = model(x)
        handle.remove()
    logits[0, class_index].backward()
    w = store["g"].mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * store["a"]).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).detach().numpy() if cam.max() > 1e-12 else np.zeros(x.shape[-2:], np.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcam_replays_every_arch_exactly_and_matches_hooks(arch):
    model = _model(arch)
    x = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    names = cam_layers(model)
    assert len(names) == 4
    tops = []
    for i, layer in enumerate(names):
        for c in range(3) if i == 3 else (i % 3,):
            cam, logits = gradcam(model, x, layer=layer, class_index=c)
            assert logits.shape == (1, 3) and not logits.requires_grad
            assert torch.equal(logits, expected), f"{arch}/{layer}: the replay is not the model's forward pass"
            assert cam.shape == (64, 48) and cam.dtype == np.float32
            assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() in (0.0, 1.0)
            ref = _hooked_reference(model, x, _last_module(arch, i), c)
            np.testing.assert_allclose(cam, ref, atol=1e-4, err_msg=f"{arch}/{layer}/class {c}")
            tops.append(cam.max())
    assert sum(tops) >= 3, f"{arch}: too many all-zero maps for the comparison to mean much"
    # Default: the deepest stage and the predicted class.
    cam_default, _ = gradcam(model, x)
    cam_deepest, _ = gradcam(model, x, layer=names[-1], class_index=int(expected.argmax()))
    np.testing.assert_array_equal(cam_default, cam_deepest)
    # The shared model is left alone: no hooks, no parameter gradients, no train mode, same tensors.
    assert not model.training
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "convnext_tiny"])
def test_gradcam_of_a_three_channel_model(arch):
    model = _model(arch, in_channels=3)
    x = torch.rand(1, 64, 64)  # (1, H, W) works too
    cam, logits = gradcam(model, x)
    with torch.no_grad():
        assert torch.equal(logits, model(x[None]))
    assert cam.shape == (64, 64) and 0.0 <= cam.min() and cam.max() <= 1.0


def test_resnet_layer_names_and_folded_models_are_kept():
    assert cam_layers(build_model()) == LAYERS == ("layer1", "layer2", "layer3", "layer4")
    model = _model("resnet18")
    folded = fold_batchnorm(model)  # what the dashboard shares
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    for layer in ("layer4", "layer3", "layer2"):
        cam, logits = gradcam(model, x, layer=layer)
        cam_f, logits_f = gradcam(folded, x, layer=layer)
        torch.testing.assert_close(logits_f, logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(cam_f, cam, atol=1e-3)


def test_bad_layers_classes_and_inputs_are_refused():
    model = _model("densenet121")
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="Unknown Grad-CAM layer 'layer4' for densenet121; choose one of "
                                         "denseblock1, denseblock2, denseblock3, denseblock4"):
        gradcam(model, x, layer="layer4")
    with pytest.raises(ValueError, match="class_index must be in 0..2"):
        gradcam(model, x, class_index=3)
    with pytest.raises(ValueError, match="one image"):
        gradcam(model, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="eval mode"):
        gradcam(copy.deepcopy(model).train(), x)
    with pytest.raises(TypeError, match="XrayNet"):
        gradcam(nn.Linear(2, 2), x)


# --------------------------------------------------------------------------- several layers, native grid


def test_several_layers_give_the_mean_of_their_peak_scaled_maps_and_cam_grid_names_their_size():
    model = _model("resnet18")
    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    assert cam_grid(model, size=128) == ((4, 4),)
    assert cam_grid(model, ("layer4", "layer3"), size=128) == ((8, 8), (4, 4))  # shallow -> deep, whatever the order
    assert cam_grid(model, "layer2", size=(64, 48)) == ((8, 6),)
    for c in range(3):
        both, logits = gradcam(model, x, layer=("layer4", "layer3"), class_index=c)
        l3, logits3 = gradcam(model, x, layer="layer3", class_index=c)
        l4, _ = gradcam(model, x, layer="layer4", class_index=c)
        assert torch.equal(logits, logits3)
        mean = (l3 + l4) / 2
        expected = mean / mean.max() if mean.max() > 0 else mean
        np.testing.assert_allclose(both, expected, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown Grad-CAM layer 'layer5'"):
        gradcam(model, x, layer=("layer3", "layer5"))
    with pytest.raises(ValueError, match="at least one"):
        gradcam(model, x, layer=())


# --------------------------------------------------------------------------- the grad-cam package as an oracle


def _minmax(cam: np.ndarray) -> np.ndarray:
    cam = cam.astype(np.float64) - cam.min()
    return cam / cam.max() if cam.max() > 0 else cam


@pytest.mark.parametrize("arch, size", [("resnet18", (128, 128)), ("efficientnet_b0", (96, 80))])
def test_gradcam_equals_the_grad_cam_package_on_the_same_model_layer_and_class(arch, size):
    """Our hook-free Grad-CAM against pytorch-grad-cam (``pip install grad-cam``), which hooks the module.

    Both take the class logit's gradient (``ClassifierOutputTarget(c)`` is ``logits[c]``), average it
    over space for the channel weights and keep the ReLU of the weighted sum. They differ only in how
    the map is scaled: pytorch-grad-cam min-max scales the native map, resizes it with cv2 (bilinear,
    half-pixel centres, like ``F.interpolate(align_corners=False)``) and min-max scales again; we
    upsample and divide by the peak, so that 0 keeps meaning "no evidence". Bilinear upsampling is
    linear, so the two maps are the same up to an offset and a scale; min-max scaling both compares
    their shapes exactly (to float rounding), at 1e-4. (Both, not only ours: the package divides by
    ``max + 1e-7``, which shrinks its top below 1 where the raw map is tiny, ~1e-11 for a random-init
    EfficientNet.)

    For several layers pytorch-grad-cam averages the layers' min-max scaled maps where we average
    peak-scaled ones: the same where each map's minimum is 0, close otherwise (correlation > 0.999,
    within 0.05 everywhere).
    """
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model(arch)
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(4))
    hooked = copy.deepcopy(model).requires_grad_(True)  # the package hooks modules: never on the shared model
    names = cam_layers(model)

    def oracle(stage_indices, c):
        mods = [hooked.net.get_submodule(_last_module(arch, i)) for i in stage_indices]
        with GradCAM(model=hooked, target_layers=mods) as cam:
            return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c)])[0]

    compared = 0
    for i, layer in enumerate(names):
        for c in range(3):
            ours, _ = gradcam(model, x, layer=layer, class_index=c)
            ref = oracle([i], c)
            assert ref.shape == ours.shape == size
            if ours.max() == 0:  # the gradient vanished: both maps are all zero
                assert ref.max() == 0, f"{arch}/{layer}/class {c}"
                continue
            np.testing.assert_allclose(_minmax(ours), _minmax(ref), atol=1e-4, err_msg=f"{arch}/{layer}/class {c}")
            compared += 1
    assert compared >= 6, f"{arch}: too many all-zero maps for the comparison to mean much"  # of 12
    for c in range(3):  # the dashboard's default: the two deepest stages together
        ours, _ = gradcam(model, x, layer=names[2:], class_index=c)
        ref = oracle([2, 3], c)
        if ours.max() == 0:
            assert ref.max() == 0, f"{arch}/layers 3+4/class {c}"
            continue
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999, f"{arch}/class {c}"
        np.testing.assert_allclose(_minmax(ours), _minmax(ref), atol=0.05, err_msg=f"{arch}/layers 3+4/class {c}")
    # The package hooked only its own copy.
    assert all(not mod._forward_hooks for mod in model.modules())
