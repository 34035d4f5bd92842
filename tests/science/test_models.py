"""Model helpers: the architecture registry (XrayNet), its spec, BatchNorm folding, ImageNet weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.choices import Arch, parse_choice
from medrobust.models import (
    Bf16Twin,
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    XrayNet,
    XrayResNet,
    build_from_spec,
    build_model,
    cam_layers,
    fold_batchnorm,
    head,
    inference_copy,
    load_imagenet_into,
    model_spec,
    stages,
)

ARCHS = [a.value for a in Arch]


def _busy_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a random net is otherwise nearly flat)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


# ----------------------------------------------------------------------------- the registry

def test_arch_choice_names_the_registry():
    assert ARCHS == ["resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0",
                     "mobilenet_v3_large", "convnext_tiny"]
    with pytest.raises(ValueError, match=r"Unknown architecture 'vgg'; choose one of resnet18, .*convnext_tiny\."):
        parse_choice(Arch, "vgg")


def test_default_model_is_the_papers_resnet18_with_the_old_state_dict():
    """Shipped checkpoints hold exactly this state dict; a seeded build gives the same initial weights."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    old = resnet18(weights=None, num_classes=2)  # the former XrayResNet, written out
    old.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.manual_seed(0)
    model = build_model()
    assert XrayResNet is XrayNet and isinstance(model, XrayResNet)
    assert (model.arch, model.num_classes, model.in_channels) == ("resnet18", 2, 1)
    state = model.state_dict()
    expected = {f"net.{k}": v for k, v in old.state_dict().items()}
    assert sorted(state) == sorted([*expected, "mean", "std"])
    for k, v in expected.items():
        assert state[k].shape == v.shape and state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert state["mean"].shape == state["std"].shape == (1, 1, 1, 1)
    assert float(state["mean"]) == pytest.approx(GREY_MEAN) and float(state["std"]) == pytest.approx(GREY_STD)
    x = torch.rand(2, 1, 32, 32)
    old.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), old((x - state["mean"]) / state["std"]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_arch_builds_and_trains_at_64px(arch, in_channels):
    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=3, in_channels=in_channels)
    assert (model.arch, model.num_classes, model.in_channels) == (arch, 3, in_channels)
    assert model.mean.shape == model.std.shape == (1, in_channels, 1, 1)
    first_conv = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    model.train()
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_and_head_replay_the_forward_pass_exactly(arch):
    torch.manual_seed(0)
    model = _busy_batchnorm(build_model(arch=arch, num_classes=3)).eval()
    names = [n for n, _ in stages(model)]
    assert names == ["stem", *cam_layers(model)] and cam_layers(model) == cam_layers(arch)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        h = model.normalise(x)
        sides = []
        for _, stage in stages(model):
            h = stage(h)
            sides.append(h.shape[-1])
        assert torch.equal(head(model, h), model(x))
    assert sides[1:] == [16, 8, 4, 2]  # stage i ends at output stride 2 ** (i + 1)


def test_cam_layer_names():
    assert cam_layers("resnet50") == ("layer1", "layer2", "layer3", "layer4")
    assert cam_layers("densenet121") == ("denseblock1", "denseblock2", "denseblock3", "denseblock4")
    for arch in ("efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"):
        assert cam_layers(arch) == ("stage1", "stage2", "stage3", "stage4")


def test_three_channel_model_repeats_the_grey_image_then_normalises():
    torch.manual_seed(0)
    model = build_model(arch="resnet18", num_classes=4, in_channels=3).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(model.mean, mean) and torch.equal(model.std, std)
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), model.net((x.repeat(1, 3, 1, 1) - mean) / std))
        assert torch.equal(model(x), model(x.repeat(1, 3, 1, 1)))  # an RGB input is taken as is


def test_spec_round_trip_and_defaults():
    model = build_model(arch="mobilenet_v3_large", num_classes=5, in_channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    spec = model_spec(model)
    assert spec == {"arch": "mobilenet_v3_large", "num_classes": 5, "in_channels": 3,
                    "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    rebuilt = build_from_spec({**spec, "name": "ignored"})
    assert model_spec(rebuilt) == spec
    assert sorted(rebuilt.state_dict()) == sorted(model.state_dict())
    assert model_spec(build_from_spec({})) == {"arch": "resnet18", "num_classes": 2, "in_channels": 1,
                                               "mean": [0.449], "std": [0.226]}
    assert model_spec(build_model(arch=Arch.DENSENET121))["arch"] == "densenet121"
    with pytest.raises(TypeError, match="XrayNet"):
        model_spec(nn.Linear(2, 2))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arch": "vgg16"}, "Unknown architecture 'vgg16'"),
    ({"num_classes": 1}, "num_classes must be at least 2"),
    ({"num_classes": 2.5}, "num_classes must be an integer"),
    ({"in_channels": 2}, "in_channels must be 1 .* or 3"),
    ({"in_channels": 3, "mean": [0.5]}, "mean needs 3 value"),
    ({"std": [0.0]}, "std must be finite and positive"),
    ({"mean": [float("nan")]}, "mean must be finite"),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_model(**kwargs)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- BatchNorm folding

def _same_function_and_input_gradients(model: nn.Module, folded: nn.Module, *, n: int) -> None:
    """Assert that ``folded`` gives ``model``'s logits and input gradients on ``n`` random images."""
    x = torch.rand(n, 1, 64, 64, requires_grad=True)
    xf = x.detach().clone().requires_grad_(True)
    out, out_f = model(x), folded(xf)
    torch.testing.assert_close(out_f, out, atol=1e-4, rtol=1e-4)
    out[:, 1].sum().backward()
    out_f[:, 1].sum().backward()
    torch.testing.assert_close(xf.grad, x.grad, atol=1e-4, rtol=1e-3)


def test_folded_model_computes_the_same_function_and_input_gradients():
    torch.manual_seed(0)
    model = build_model()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(8, 1, 64, 64))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not folded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    _same_function_and_input_gradients(model, folded, n=4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fold_batchnorm changed the original model"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(folded)(x), folded(x))


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_fold_batchnorm_of_deeper_resnets(arch):
    torch.manual_seed(0)
    model = _busy_batchnorm(build_model(arch=arch, num_classes=3)).eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.arch == arch and folded.num_classes == 3
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_of_densenet121_folds_what_follows_a_conv():
    torch.manual_seed(0)
    model = _busy_batchnorm(build_model(arch="densenet121", num_classes=2)).eval()
    folded = fold_batchnorm(model)
    layers = [m for m in folded.modules() if hasattr(m, "norm2")]
    assert len(layers) == 58  # 6 + 12 + 24 + 16 dense layers
    assert all(isinstance(m.norm2, nn.Identity) and m.conv1.bias is not None for m in layers)
    assert isinstance(folded.net.features.norm0, nn.Identity)
    # The pre-activation BatchNorms (after a concatenation, before a ReLU) stay.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 58 + 3 + 1  # norm1s, transitions, norm5
    _same_function_and_input_gradients(model, folded, n=2)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(folded)(x), folded(x))


def test_fold_batchnorm_leaves_other_architectures_unchanged():
    model = build_model(arch="efficientnet_b0", num_classes=3).train()
    folded = fold_batchnorm(model)
    assert folded is not model and not folded.training and model.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


def test_fold_batchnorm_rejects_other_modules():
    with pytest.raises(TypeError, match="XrayResNet"):
        fold_batchnorm(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- bf16 twin

def test_bf16_twin_is_the_model_outside_autocast_and_its_bf16_copy_inside():
    torch.manual_seed(0)
    model = inference_copy(_busy_batchnorm(build_model()).eval()).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = Bf16Twin(model)
    assert twin.model is model and all(p.dtype == torch.bfloat16 for p in twin.low.parameters())
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))  # outside autocast: the fp32 model itself
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = twin(x)
        with torch.autocast("cpu", dtype=torch.float16):  # another autocast dtype: the model under it, as it was
            assert torch.equal(twin(x), model(x))
    assert low.dtype == torch.bfloat16
    exact = model(x)
    torch.testing.assert_close(low.float(), exact, atol=0.05 * float(exact.abs().max()) + 0.05, rtol=0.05)
    # Gradients reach the fp32 input through the cast and point where the fp32 ones do.
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        twin(xa)[:, 1].sum().backward()
    xe = x.clone().requires_grad_(True)
    model(xe)[:, 1].sum().backward()
    assert xa.grad.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(xa.grad.flatten(1), xe.grad.flatten(1))
    assert bool((cos > 0.9).all()), cos
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the twin changed its model"


def test_a_bf16_twin_stays_in_eval_mode_and_never_trains_its_shared_model():
    from medrobust.attacks import eval_mode

    model = inference_copy(build_model()).requires_grad_(False)
    twin = Bf16Twin(model)
    assert not twin.training and not model.training and not twin.low.training
    with eval_mode(twin):  # what every attack does; restoring the twin's mode must not train the shared model
        pass
    assert not twin.training and not any(m.training for m in model.modules())
    with pytest.raises(RuntimeError, match="inference only"):
        twin.train()
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="eval mode"):
        Bf16Twin(build_model().train())


# ----------------------------------------------------------------------------- ImageNet weights

def _patch_weights(monkeypatch, fake):
    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake)


@pytest.mark.parametrize("arch", ["resnet34", "densenet121"])
def test_load_imagenet_sums_the_first_conv_and_keeps_the_fresh_head(monkeypatch, arch):
    from torchvision.models import get_model

    torch.manual_seed(3)
    imagenet = get_model(arch, weights=None).state_dict()  # 3 channels, 1000 classes
    served = dict(imagenet)
    if arch == "densenet121":  # the file torchvision downloads uses the old DenseNet key names
        k = "features.denseblock1.denselayer1.norm1.weight"
        served["features.denseblock1.denselayer1.norm.1.weight"] = served.pop(k)
    _patch_weights(monkeypatch, lambda self, *a, **kw: served)
    model = build_model(arch=arch, num_classes=3)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("net.fc.", "net.classifier."))}
    load_imagenet_into(model)
    state = model.state_dict()
    conv = "conv1.weight" if arch == "resnet34" else "features.conv0.weight"
    assert torch.equal(state[f"net.{conv}"], imagenet[conv].sum(dim=1, keepdim=True))
    for k, v in imagenet.items():  # everything else is ImageNet's, except the 1000-class head
        if k != conv and not k.startswith(("fc.", "classifier.")):
            assert torch.equal(state[f"net.{k}"], v), k
    assert all(torch.equal(state[k], v) for k, v in head_before.items())


def test_load_imagenet_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    def offline(self, *a, **kw):
        raise OSError("no network")

    _patch_weights(monkeypatch, offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="offline") as info:
        load_imagenet_into(build_model(arch="convnext_tiny"))
    msg = str(info.value)
    assert "convnext_tiny-983f1562.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(RuntimeError, match="resnet18-f37072fd.pth"):
        load_imagenet_into(build_model())
