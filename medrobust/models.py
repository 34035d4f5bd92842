"""torchvision networks for chest X-rays in [0, 1], normalising inside ``forward`` (RobustBench style).

:class:`XrayNet` wraps any network of the registry (:class:`medrobust.choices.Arch`): its first
convolution takes 1 (grey) or 3 (the grey image repeated to RGB) channels, its head gives
``num_classes`` logits, and the normalisation is a pair of buffers, so attacks and corruptions
work in pixel units and never see it. The paper's model is the default: ResNet-18, 1 channel, 2
classes, whose state dict (``net.*``, ``mean``, ``std``) is the one the shipped checkpoints hold.

Every architecture is also described as a stem, four feature stages and a head
(:func:`stages`, :func:`head`), so Grad-CAM can replay the forward pass without hooks:

============================  ==========================================  ===============================
arch                          stages (output stride 4, 8, 16, 32)         torchvision modules
============================  ==========================================  ===============================
resnet18/34/50                ``layer1`` .. ``layer4``                    ``layer1`` .. ``layer4``
densenet121                   ``denseblock1`` .. ``denseblock4``          transition i-1 + denseblock i
                                                                          (``denseblock4`` ends with
                                                                          ``norm5`` and the ReLU that
                                                                          torchvision's forward applies)
efficientnet_b0               ``stage1`` .. ``stage4``                    ``features[1:3]``, ``[3:4]``,
                                                                          ``[4:6]``, ``[6:9]``
mobilenet_v3_large            ``stage1`` .. ``stage4``                    ``features[1:4]``, ``[4:7]``,
                                                                          ``[7:13]``, ``[13:17]``
convnext_tiny                 ``stage1`` .. ``stage4``                    ``features[1:2]``, ``[2:4]``,
                                                                          ``[4:6]``, ``[6:8]`` (each
                                                                          with its downsampling)
============================  ==========================================  ===============================

Networks built by timm, MONAI or torchxrayvision are :class:`medrobust.external.ExternalNet`, an
XrayNet whose ``library`` is not torchvision: :func:`stages`, :func:`head`, :func:`cam_layers` and
:func:`model_spec` ask the model itself for them (its card's ``stage_modules``), and this module never
imports those libraries.
"""

from __future__ import annotations

import copy
import math
import operator
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medrobust.choices import Arch, parse_choice

#: ImageNet's channel statistics averaged over RGB, so summed ImageNet conv1 weights see familiar inputs.
GREY_MEAN = 0.449
GREY_STD = 0.226
#: ImageNet's RGB statistics, the default normalisation of a 3-channel model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 2
DEFAULT_ARCH = Arch.RESNET18.value

#: Module paths inside ``XrayNet.net``: the first convolution and the final Linear (the head).
_FIRST_CONV = {"densenet121": "features.conv0", "efficientnet_b0": "features.0.0",
               "mobilenet_v3_large": "features.0.0", "convnext_tiny": "features.0.0"}
_HEAD = {"densenet121": "classifier", "efficientnet_b0": "classifier.1",
         "mobilenet_v3_large": "classifier.3", "convnext_tiny": "classifier.2"}
#: ``features`` index bounds of the stem and the four stages (stem = features[0:b[0]]).
_BOUNDS = {"efficientnet_b0": (1, 3, 4, 6, 9), "mobilenet_v3_large": (1, 4, 7, 13, 17),
           "convnext_tiny": (1, 2, 4, 6, 8)}
_RESNETS = ("resnet18", "resnet34", "resnet50")


def first_conv_name(arch: str | Arch) -> str:
    """Module path of the first convolution inside ``XrayNet.net`` (e.g. ``conv1``, ``features.conv0``)."""
    arch = parse_choice(Arch, arch).value
    return "conv1" if arch in _RESNETS else _FIRST_CONV[arch]


def head_name(arch: str | Arch) -> str:
    """Module path of the final Linear inside ``XrayNet.net`` (e.g. ``fc``, ``classifier.1``)."""
    arch = parse_choice(Arch, arch).value
    return "fc" if arch in _RESNETS else _HEAD[arch]


def normalisation_stats(name: str, value: float | Sequence[float] | torch.Tensor | None, default: Sequence[float],
                        in_channels: int) -> list[float]:
    """``mean`` or ``std`` (``name``) as ``in_channels`` finite floats (std > 0); ``default`` when ``value`` is None.

    Raises ValueError with one line naming what is wrong.
    """
    if value is None:
        return list(default)
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    elif isinstance(value, (int, float)):
        value = [value]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {in_channels} number(s), got {value!r}.") from None
    if len(out) != in_channels:
        raise ValueError(f"{name} needs {in_channels} value(s) for {in_channels} input channel(s), got {len(out)}: {out}.")
    if not all(math.isfinite(v) for v in out) or (name == "std" and min(out) <= 0):
        raise ValueError(f"{name} must be finite{' and positive' if name == 'std' else ''}, got {out}.")
    return out


def _count(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}.") from None


class XrayNet(nn.Module):
    """A torchvision network for grey chest X-rays, with the normalisation inside.

    Parameters
    ----------
    arch
        A registry name (:class:`medrobust.choices.Arch`), default ``resnet18`` (the paper's).
    num_classes
        Number of logits (>= 2).
    in_channels
        1: the first convolution takes the grey image; 3: the grey image is repeated to RGB first
        (for networks trained on RGB images).
    mean, std
        Per-channel normalisation (``in_channels`` values each); default :data:`GREY_MEAN` /
        :data:`GREY_STD` for 1 channel, ImageNet's RGB statistics for 3.

    Notes
    -----
    Inputs are (N, 1, H, W) in [0, 1] (a 3-channel model also accepts (N, 3, H, W)); outputs are
    (N, ``num_classes``) logits. The torchvision network is ``self.net`` (built with
    ``weights=None``; see :func:`load_imagenet_into`); buffers ``mean`` and ``std`` have shape
    (1, ``in_channels``, 1, 1). For resnet18 / 1 channel / 2 classes the state dict is exactly
    the one of the earlier ``XrayResNet``, so its checkpoints load unchanged.
    """

    #: Which library built ``net``: torchvision here; timm, MONAI or torchxrayvision in
    #: :class:`medrobust.external.ExternalNet`, which describes its own stages and head.
    library = "torchvision"

    def __init__(self, *, arch: str | Arch = DEFAULT_ARCH, num_classes: int = NUM_CLASSES, in_channels: int = 1,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None) -> None:
        super().__init__()
        arch = parse_choice(Arch, arch).value
        num_classes = _count("num_classes", num_classes)
        in_channels = _count("in_channels", in_channels)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (grey repeated to RGB), got {in_channels}.")
        grey = in_channels == 1
        mean_v = normalisation_stats("mean", mean, [GREY_MEAN] if grey else IMAGENET_MEAN, in_channels)
        std_v = normalisation_stats("std", std, [GREY_STD] if grey else IMAGENET_STD, in_channels)

        from torchvision.models import get_model

        net = get_model(arch, weights=None, num_classes=num_classes)
        if in_channels != 3:
            parent_name, _, child = first_conv_name(arch).rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            old = getattr(parent, child)
            setattr(parent, child, nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                                             stride=old.stride, padding=old.padding, dilation=old.dilation,
                                             groups=old.groups, bias=old.bias is not None,
                                             padding_mode=old.padding_mode))
        self._init_io(net=net, arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean_v, std=std_v)

    def _init_io(self, *, net: nn.Module, arch: str, num_classes: int, in_channels: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        """Keep ``net`` and the interface every caller relies on: ``arch``, ``num_classes``, ``in_channels``
        and the normalisation buffers ``mean``/``std`` (shape (1, ``in_channels``, 1, 1)); shared with
        :class:`medrobust.external.ExternalNet`."""
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, in_channels, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1] -> the network's input (N, ``in_channels``, H, W), normalised."""
        if self.in_channels != 1 and x.shape[1] == 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, ``num_classes``) of images (N, 1, H, W) in [0, 1]."""
        return self.net(self.normalise(x))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, in_channels={self.in_channels}"


#: The earlier name (ResNet-18 only); ``XrayResNet()`` still builds the paper's model.
XrayResNet = XrayNet


def build_model(*, arch: str | Arch = DEFAULT_ARCH, num_classes: int = NUM_CLASSES, in_channels: int = 1,
                mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None) -> XrayNet:
    """A freshly initialised :class:`XrayNet` (torchvision's default init); no arguments: the paper's model.

    Raises
    ------
    ValueError
        Unknown ``arch``, ``num_classes`` < 2, ``in_channels`` not 1 or 3, or ``mean``/``std`` of the
        wrong length (``std`` must be positive).
    """
    return XrayNet(arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


def _short(v: float) -> float:
    """The shortest decimal that round-trips through float32 (0.449, not 0.44900000095367432)."""
    import numpy as np

    return float(str(np.float32(v)))


def model_spec(model: XrayNet) -> dict[str, Any]:
    """What rebuilds ``model``'s architecture: ``{"arch", "num_classes", "in_channels", "mean", "std"}``.

    JSON-ready (``mean``/``std`` are lists of ``in_channels`` floats); :func:`build_from_spec` inverts it.
    """
    if not isinstance(model, XrayNet):
        raise TypeError(f"model_spec expects an XrayNet, got {type(model).__name__}.")
    if model.library != XrayNet.library:
        return model.spec()  # the library, its version, builder, stages (medrobust.external)
    return {"arch": model.arch, "num_classes": model.num_classes, "in_channels": model.in_channels,
            "mean": [_short(v) for v in model.mean.detach().flatten().tolist()],
            "std": [_short(v) for v in model.std.detach().flatten().tolist()]}


def build_from_spec(spec: dict[str, Any]) -> XrayNet:
    """A fresh :class:`XrayNet` as described by ``spec`` (e.g. a checkpoint card; other keys are ignored).

    Missing keys take the paper's defaults: resnet18, 2 classes, 1 channel, grey statistics (the
    default statistics of the channel count when ``mean``/``std`` are missing). A spec of a network built
    by another library (``library``: timm, monai, torchxrayvision) is :func:`medrobust.external.build_external`'s,
    and is refused here with a ValueError.
    """
    if spec.get("library") not in (None, XrayNet.library):
        raise ValueError(f"a {spec['library']} network is built by medrobust.external.build_external, not here.")
    return XrayNet(arch=spec.get("arch") or DEFAULT_ARCH, num_classes=spec.get("num_classes", NUM_CLASSES),
                   in_channels=spec.get("in_channels", 1), mean=spec.get("mean"), std=spec.get("std"))


# ----------------------------------------------------------------------------- stages and head

def _check(model: Any, what: str) -> XrayNet:
    if not isinstance(model, XrayNet):
        raise TypeError(f"{what} expects an XrayNet (XrayResNet), got {type(model).__name__}.")
    return model


def stages(model: XrayNet) -> list[tuple[str, nn.Module]]:
    """The feature extractor of ``model.net`` as ordered ``(name, module)`` pairs: ``stem``, then four stages.

    Applying them in turn to ``model.normalise(x)`` and then :func:`head` computes ``model(x)``
    exactly. Stage names are those of :func:`cam_layers` (see the module docstring); composite
    stages are fresh ``nn.Sequential`` containers around the model's own modules, so nothing in
    ``model`` is changed (safe on a model shared between threads).
    """
    net = _check(model, "stages").net
    if model.library != XrayNet.library:
        return model.stages()
    arch = model.arch
    if arch in _RESNETS:
        return [("stem", nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)),
                *((f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5))]
    f = net.features
    if arch == "densenet121":
        return [("stem", nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)),
                ("denseblock1", f.denseblock1),
                ("denseblock2", nn.Sequential(f.transition1, f.denseblock2)),
                ("denseblock3", nn.Sequential(f.transition2, f.denseblock3)),
                ("denseblock4", nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU()))]
    b = _BOUNDS[arch]
    return [("stem", f[: b[0]]), *((f"stage{i + 1}", f[b[i] : b[i + 1]]) for i in range(4))]


def head(model: XrayNet, h: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) from the last stage's output ``h`` (N, C, h, w), as torchvision's forward goes on.

    Pooling, flattening and the classifier; never in place (``h`` may be a leaf that requires grad).
    """
    net = _check(model, "head").net
    if model.library != XrayNet.library:
        return model.head(h)
    arch = model.arch
    if arch in _RESNETS:
        return net.fc(torch.flatten(net.avgpool(h), 1))
    if arch == "densenet121":  # torchvision's F.relu after norm5 is the end of stage denseblock4
        return net.classifier(torch.flatten(F.adaptive_avg_pool2d(h, (1, 1)), 1))
    if arch == "convnext_tiny":
        return net.classifier(net.avgpool(h))
    return net.classifier(torch.flatten(net.avgpool(h), 1))


def cam_layers(model: XrayNet | str | Arch) -> tuple[str, ...]:
    """Names of the Grad-CAM layers (the four stages), shallow -> deep; a model or an arch name.

    ``("layer1", .., "layer4")`` for ResNets, ``("denseblock1", .., "denseblock4")`` for DenseNet,
    ``("stage1", .., "stage4")`` for EfficientNet, MobileNetV3 and ConvNeXt; stage i ends at output
    stride 2**(i+1) in every architecture. A network built by timm, MONAI or torchxrayvision
    (:class:`medrobust.external.ExternalNet`) names its stages after the library's module each ends with
    (``layer4``, ``stages.3``, ``features.denseblock4``, ...), as its card records them.
    """
    if isinstance(model, XrayNet) and model.library != XrayNet.library:
        return model.cam_layers()
    arch = model.arch if isinstance(model, XrayNet) else parse_choice(Arch, model).value
    if arch in _RESNETS:
        return ("layer1", "layer2", "layer3", "layer4")
    if arch == "densenet121":
        return ("denseblock1", "denseblock2", "denseblock3", "denseblock4")
    return ("stage1", "stage2", "stage3", "stage4")


# ----------------------------------------------------------------------------- BatchNorm folding

def fold_batchnorm(model: XrayNet) -> XrayNet:
    """An inference-only copy of ``model`` with every BatchNorm that follows a conv folded into it.

    In eval mode a BatchNorm is a fixed affine map, so the copy computes the same function (to
    float rounding, ~1e-6) and the same input gradients, which is all attacks need. Measured here
    (ResNet-18, 128 px, one thread, forward + input backward): 1.20x faster for a batch of 32,
    1.28x for one image. Folding is implemented for torchvision's ResNet family (resnet18/34/50,
    basic and bottleneck blocks: every BatchNorm) and DenseNet-121 (the stem's and each dense
    layer's second BatchNorm; the others come after a concatenation, before a ReLU, and stay);
    for any other network the result is an unchanged eval-mode copy. The copy is in eval mode and
    must not be trained; ``model`` is left untouched.

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`XrayNet`.
    """
    if not isinstance(model, XrayNet):
        raise TypeError(f"fold_batchnorm expects an XrayNet (XrayResNet), got {type(model).__name__}.")
    folded = copy.deepcopy(model).eval()
    if folded.library == "torchvision" and folded.arch == "densenet121":
        return _fold_densenet(folded)
    if folded.library != "torchvision" or folded.arch not in _RESNETS:
        return folded
    net = folded.net
    if isinstance(net.bn1, nn.Identity):
        return folded  # folded already
    net.conv1, net.bn1 = fuse_conv_bn_eval(net.conv1, net.bn1), nn.Identity()
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            for i in (1, 2, 3):  # BasicBlock: conv1, conv2; Bottleneck: conv1..conv3
                conv = getattr(block, f"conv{i}", None)
                if conv is not None:
                    setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, getattr(block, f"bn{i}")))
                    setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None:
                block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return folded


def inference_copy(model: XrayNet) -> XrayNet:
    """The copy every inference path runs: :func:`fold_batchnorm` with channels-last weights.

    Inputs are passed channels-last; weights left NCHW lose most of oneDNN's gain (DenseNet-121 at 128
    px, 2 cores: fp32 forward 15.3 -> 11.1 ms per image, bf16 forward + input gradient 22.1 -> 14.2 ms;
    ResNet-18 fp32 6.4 -> 4.6 ms; a single 64 px image on one thread: forward 11 vs 20 ms).
    Same function as ``model``, which is left untouched; eval mode, not for training.
    """
    return fold_batchnorm(model).to(memory_format=torch.channels_last)


class Bf16Twin(nn.Module):
    """``model`` beside a copy of it cast to bf16 once, which stands in for it inside CPU bf16 autocast.

    Outside autocast (and on any device but the CPU) the twin *is* ``model``: the same forward in fp32,
    so predictions and the attacks' fp32 verdict forwards (which switch autocast off) come from
    ``model``. Inside a CPU bf16 autocast region it runs the bf16 copy instead, so autocast does not
    cast every weight again at every call; its logits come back in bf16, as autocast's do, and
    gradients flow to the fp32 input through the cast. For single images this is what makes bf16
    gradient steps pay where they pay at all. ResNet-18 at 128 px, one image, forward + input gradient:
    AMD Zen 4 (AVX-512 BF16), one thread: fp32 38 ms, autocast 24-28 ms, the twin 22.6 ms per step;
    two such attacks on two cores at once, 20 steps each: fp32 825 ms, autocast 748 ms, the twin
    514 ms. On an Intel Xeon with AMX, one thread: fp32 34.8 ms, autocast 36.1 ms (the twin was not
    measured there), which is why the dashboard times both before it keeps a twin.

    Parameters
    ----------
    model : nn.Module
        An eval-mode inference model (e.g. :func:`inference_copy`); it is kept, not copied.

    Examples
    --------
    >>> import torch
    >>> from medrobust.models import XrayNet, Bf16Twin, inference_copy
    >>> net = inference_copy(XrayNet(arch="resnet18")).requires_grad_(False)
    >>> twin = Bf16Twin(net)
    >>> x = torch.rand(1, 1, 32, 32)
    >>> torch.equal(twin(x), net(x))
    True
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     twin(x).dtype
    torch.bfloat16
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if model.training:
            raise ValueError("Bf16Twin is for inference: put the model in eval mode first.")
        self.model = model
        self.low = copy.deepcopy(model).to(torch.bfloat16)
        self.train(False)  # a new Module starts in training mode: the twin is in eval mode, as its model is

    def train(self, mode: bool = True) -> "Bf16Twin":
        """Eval mode only: the model may be shared (``eval_mode`` restoring a mode must never train it)."""
        if mode:
            raise RuntimeError("Bf16Twin is for inference only: it cannot be put in training mode.")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                return self.low(x.to(torch.bfloat16))
        return self.model(x)


def _fold_densenet(folded: XrayNet) -> XrayNet:
    """:func:`fold_batchnorm` for torchvision's DenseNet: ``conv0 -> norm0`` and each layer's ``conv1 -> norm2``."""
    features = folded.net.features
    if isinstance(features.norm0, nn.Identity):
        return folded  # folded already
    features.conv0, features.norm0 = fuse_conv_bn_eval(features.conv0, features.norm0), nn.Identity()
    for module in features.modules():
        if isinstance(getattr(module, "norm2", None), nn.BatchNorm2d) and isinstance(getattr(module, "conv1", None), nn.Conv2d):
            module.conv1, module.norm2 = fuse_conv_bn_eval(module.conv1, module.norm2), nn.Identity()
    return folded


# ----------------------------------------------------------------------------- ImageNet weights

IMAGENET_WEIGHTS_FILE = "resnet18-f37072fd.pth"
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def fix_legacy_keys(arch: str | Arch, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with torchvision's old DenseNet key names (``norm.1.weight``) renamed (``norm1.weight``)."""
    if parse_choice(Arch, arch).value != "densenet121":
        return state
    out = {}
    for k, v in state.items():
        m = _DENSENET_LEGACY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_imagenet_into(model: XrayNet) -> None:
    """Copy torchvision's ImageNet weights of ``model.arch`` into ``model.net``, dropping the classifier.

    Uses the architecture's default weights (``torchvision.models.get_model_weights(arch).DEFAULT``;
    for resnet18 ``IMAGENET1K_V1``). For a 1-channel model the first convolution is summed over
    RGB (the grey statistics are ImageNet's averaged over RGB, so it sees familiar inputs). The
    final Linear keeps its fresh initialisation. Uses the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``); offline, place the file there.

    Raises
    ------
    RuntimeError
        If the weights cannot be had (the message says where to put the file) or do not fit.
    """
    from torchvision.models import get_model_weights

    model = _check(model, "load_imagenet_into")
    weights = get_model_weights(model.arch).DEFAULT
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:
        raise RuntimeError(
            f"Cannot get torchvision's ImageNet weights for {model.arch} ({type(exc).__name__}); offline, "
            f"download {weights.url} and put it at {hub / Path(urlparse(weights.url).path).name}."
        ) from None
    state = fix_legacy_keys(model.arch, dict(state))
    head_prefix, conv_key = head_name(model.arch) + ".", first_conv_name(model.arch) + ".weight"
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    if model.in_channels == 1 and conv_key in state:
        state[conv_key] = state[conv_key].sum(dim=1, keepdim=True)
    try:
        missing, unexpected = model.net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise RuntimeError(f"ImageNet weights do not fit the {model.arch}: {str(exc)[:300]}") from None
    if unexpected or set(missing) - {head_prefix + "weight", head_prefix + "bias"}:
        raise RuntimeError(f"ImageNet weights do not fit the model: missing {missing}, unexpected {unexpected}.")
