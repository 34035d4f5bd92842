"""Networks built by timm, MONAI or torchxrayvision, with the interface of :class:`~medrobust.models.XrayNet`.

``python -m medrobust import-model --from {timm,monai,torchxrayvision}`` lets the library build the
architecture (timm: ``timm.create_model(name, in_chans=C, num_classes=K, **args)``; MONAI: a network of
``monai.networks.nets`` with its arguments, ``DenseNet121 spatial_dims=2 in_channels=1 out_channels=K``;
torchxrayvision: a weights name such as ``densenet121-res224-all``, built without its weights), loads
the user's safetensors weights into it and wraps it as an :class:`ExternalNet`: grey images in [0, 1]
go in (every attack radius is in pixel units), the library's normalisation happens inside ``forward``
as ``(x - mean) / std``, and K logits come out. The card records the library, its version, the builder
name and arguments, the normalisation, the stages and (torchxrayvision) the label map, so
:func:`build_external` rebuilds the same network. The libraries are optional extras
(``pip install ".[timm]"``, ``".[monai]"``, ``".[torchxrayvision]"``), imported only here and only when
such a model is built; without one the error names the extra in one line.

Stages (Grad-CAM, :mod:`medrobust.gradcam`)
    Each network is described as a stem, four stages and the library's head, without hooks, and the
    four stages are named after the module each ends with. timm: the deepest module of each of the four
    deepest strides in the model's ``feature_info`` (``layer1`` .. ``layer4`` for a ResNet,
    ``stages.0`` .. ``stages.3`` for a ConvNeXt, ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6`` for
    an EfficientNet), the children of the model in order (``nn.Sequential`` flattened one level, as
    timm's own feature wrapper does), and whatever ``forward_features`` applies after the last stage
    (``conv_head``, ``norm``) joined to the fourth stage. MONAI: DenseNet (``features.denseblock1`` ..
    ``features.denseblock4``, the fourth with ``norm5``), ResNet and SENet (``layer1`` .. ``layer4``).
    torchxrayvision: DenseNet (as MONAI's) and ResNet (``model.layer1`` .. ``model.layer4``).
    ``import-model`` replays the stages and head on a probe image and refuses a network whose replay is
    not its forward pass (a vision transformer, whose forward is no sequence of its children).

torchxrayvision's outputs and the label map
    A torchxrayvision model gives 18 independent sigmoid outputs (``model_urls[name]["labels"]``;
    ``op_threshs`` stays off, so they are raw logits, never rescaled to its operating points). A label
    map makes them a K-class task: ``--classes non-COVID,COVID-19 --label-map COVID-19=Pneumonia``
    reads class COVID-19 from the Pneumonia output and the one class the map leaves out (or maps to
    ``rest``) as "none of them". Class k's logit is its output's logit z_k and the rest class's is 0
    (all then shifted by their mean, which no softmax sees), so medrobust's softmax gives, for two
    classes, P(COVID-19) = sigmoid(z) exactly; for more, the probability that exactly that finding is
    present (or, for the rest class, none), were the outputs independent and at most one present.
    See :func:`resolve_label_map` and :meth:`ExternalNet.select`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.choices import Library, parse_choice
from medrobust.models import IMAGENET_MEAN, IMAGENET_STD, XrayNet, normalisation_stats

#: The word a label map uses for the class that is none of the mapped outputs.
REST = "rest"
#: torchxrayvision's scale: its ``datasets.normalize(img, maxval)`` maps [0, maxval] to [-1024, 1024], i.e. a
#: grey image x in [0, 1] to (2x - 1) * 1024 = (x - 0.5) / (1 / 2048).
XRV_MEAN, XRV_STD = 0.5, 1.0 / 2048.0


class ExternalModelError(ValueError):
    """A network of another library cannot be built or used as asked; one line that says why."""


class MissingLibrary(ExternalModelError):
    """The library a model needs is not installed; the message names the extra that installs it."""


# ----------------------------------------------------------------------------- the libraries


def _library(value: str | Library) -> str:
    try:
        lib = parse_choice(Library, value).value
    except ValueError as exc:
        raise ExternalModelError(str(exc)) from None
    if lib == Library.TORCHVISION.value:
        raise ExternalModelError("torchvision networks are medrobust.models.XrayNet, not external ones.")
    return lib


def install_hint(library: str) -> str:
    """How to install ``library`` as medrobust's extra of the same name (one sentence)."""
    return (f'pip install -c constraints.txt ".[{library}]" in a medrobust checkout '
            f'(or pip install "medrobust[{library}]")')


def require(library: str | Library, *, what: str = "this model") -> ModuleType:
    """Import ``library`` (timm, monai, torchxrayvision) now; :class:`MissingLibrary` names the extra if absent.

    torchxrayvision calls ``warnings.filterwarnings("ignore")`` when imported, which would silence every
    warning in the process; the import runs inside ``warnings.catch_warnings()`` so the filters are restored.
    """
    lib = _library(library)
    if importlib.util.find_spec(lib) is None:
        raise MissingLibrary(f"{what} needs {lib}, which is not installed: {install_hint(lib)}.")
    with warnings.catch_warnings():
        try:
            module = importlib.import_module(lib)
            if lib == Library.MONAI.value:
                importlib.import_module("monai.networks.nets")
        except ImportError as exc:
            raise MissingLibrary(f"{what} needs {lib}, which could not be imported ({type(exc).__name__}: "
                                 f"{str(exc)[:160]}); reinstall it: {install_hint(lib)}.") from None
    return module


def library_version(library: str | Library) -> str:
    """The installed version of ``library`` (from its metadata; nothing is imported)."""
    return importlib.metadata.version(_library(library))


def _json_ready(kwargs: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(kwargs)))
    except (TypeError, ValueError):
        raise ExternalModelError(f"{where}: builder arguments must be JSON values (numbers, text, true/false, "
                                 f"lists), got {dict(kwargs)!r}.") from None


def _fill(kwargs: dict[str, Any], key: str, value: Any, *, option: str, where: str) -> None:
    """Set ``kwargs[key] = value`` unless the user gave the same value; another value is refused."""
    if key in kwargs and kwargs[key] != value:
        raise ExternalModelError(f"{where}: {key}={kwargs[key]!r} contradicts {option} ({value!r}); leave {key} out.")
    kwargs[key] = value


# ----------------------------------------------------------------------------- families: stages and head


@dataclass(frozen=True)
class Family:
    """How medrobust replays one kind of network: its stem and four stages (module paths) and its head.

    ``plan(net, probe)`` gives ``{"stem": [...], stage name: [...], ...}`` (five entries, module paths of
    ``net`` in forward order); ``head(net, h)`` maps the last stage's output to the network's outputs,
    never in place (``h`` may be a leaf that requires grad).
    """

    label: str
    plan: Callable[[nn.Module, torch.Tensor], dict[str, list[str]]]
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _children(module: nn.Module, prefix: str = "", *, ends: Sequence[str] = ()) -> list[str]:
    """Paths of ``module``'s children in registration order; an ``nn.Sequential`` that holds one of the
    stage ends (``blocks`` for ``blocks.1``) is flattened one level, as timm's feature wrapper does."""
    out = []
    for name, child in module.named_children():
        path = prefix + name
        if isinstance(child, nn.Sequential) and any(e.startswith(path + ".") for e in ends):
            out += [f"{path}.{sub}" for sub, _ in child.named_children()]
        else:
            out.append(path)
    return out


def _cut(paths: Sequence[str], ends: Sequence[str]) -> dict[str, list[str]]:
    """Stem = the paths before the first stage; stage i = the paths after stage i-1's end through its own
    end (the last stage takes every remaining path). Stages are named after their end modules."""
    idx = [paths.index(e) for e in ends]
    if idx != sorted(idx) or len(set(idx)) != len(idx):
        raise ExternalModelError(f"the stage modules {', '.join(ends)} are not in forward order.")
    plan = {"stem": list(paths[: idx[0]])}
    for i, end in enumerate(ends):
        start = idx[i - 1] + 1 if i else idx[0]
        plan[end] = list(paths[start : idx[i] + 1] if i < len(ends) - 1 else paths[start:])
    return plan


def _run(net: nn.Module, paths: Sequence[str], h: torch.Tensor) -> torch.Tensor:
    for p in paths:
        h = net.get_submodule(p)(h)
    return h


def _timm_plan(net: nn.Module, probe: torch.Tensor) -> dict[str, list[str]]:
    """The four deepest strides of ``feature_info``; the modules ``forward_features`` applies after the
    last one are found by replaying the following children until the output equals it exactly."""
    deepest: dict[int, str] = {}
    for d in getattr(net, "feature_info", None) or []:
        deepest[int(d["reduction"])] = str(d["module"])
    ends = [deepest[r] for r in sorted(deepest)][-4:]
    if len(ends) < 4:
        raise ExternalModelError(f"it has feature maps at {len(deepest)} stride(s) ({', '.join(map(str, sorted(deepest)))}); "
                                 "Grad-CAM needs four stages of increasing stride (a convolutional network)")
    paths = _children(net, ends=ends)
    lost = [e for e in ends if e not in paths]
    if lost:
        raise ExternalModelError(f"its stage module(s) {', '.join(lost)} are not children of the model")
    last = paths.index(ends[-1])
    with torch.no_grad():
        want = net.forward_features(probe)
        h = _run(net, paths[: last + 1], probe)
        for k in range(len(paths) - last):
            if k:
                h = net.get_submodule(paths[last + k])(h)
            if h.shape == want.shape and torch.equal(h, want):
                return _cut(paths[: last + k + 1], ends)
    raise ExternalModelError("its forward_features is not the sequence of its children")


def _timm_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return net.forward_head(h)


def _densenet_plan(net: nn.Module, probe: torch.Tensor) -> dict[str, list[str]]:
    return _cut([f"features.{name}" for name, _ in net.features.named_children()],
                [f"features.denseblock{i}" for i in range(1, 5)])


def _monai_densenet_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return net.class_layers(h.clone())  # its first ReLU is in place


def _xrv_densenet_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    # torchxrayvision's features2 + classifier, without its in-place ReLU
    return net.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(h), (1, 1)), 1))


def _resnet_plan(prefix: str, act: str) -> Callable[[nn.Module, torch.Tensor], dict[str, list[str]]]:
    def plan(net: nn.Module, probe: torch.Tensor) -> dict[str, list[str]]:
        body = net.get_submodule(prefix[:-1]) if prefix else net
        pool = [] if getattr(body, "no_max_pool", False) else [prefix + "maxpool"]
        paths = [prefix + "conv1", prefix + "bn1", prefix + act, *pool, *(f"{prefix}layer{i}" for i in range(1, 5))]
        return _cut(paths, [f"{prefix}layer{i}" for i in range(1, 5)])
    return plan


def _monai_resnet_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return net.fc(net.avgpool(h).flatten(1))


def _senet_plan(net: nn.Module, probe: torch.Tensor) -> dict[str, list[str]]:
    return _cut(["layer0", "layer1", "layer2", "layer3", "layer4"], [f"layer{i}" for i in range(1, 5)])


def _senet_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return net.logits(h)


def _xrv_resnet_head(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return net.model.fc(torch.flatten(net.model.avgpool(h), 1))


FAMILIES: dict[str, Family] = {
    "timm": Family("timm (stages from feature_info)", _timm_plan, _timm_head),
    "monai.DenseNet": Family("MONAI DenseNet", _densenet_plan, _monai_densenet_head),
    "monai.ResNet": Family("MONAI ResNet", _resnet_plan("", "act"), _monai_resnet_head),
    "monai.SENet": Family("MONAI SENet", _senet_plan, _senet_head),
    "torchxrayvision.DenseNet": Family("torchxrayvision DenseNet", _densenet_plan, _xrv_densenet_head),
    "torchxrayvision.ResNet": Family("torchxrayvision ResNet", _resnet_plan("model.", "relu"), _xrv_resnet_head),
}
MONAI_SUPPORTED = ("DenseNet121, DenseNet169, DenseNet201, DenseNet264, DenseNet, resnet10 .. resnet200, ResNet, "
                   "SEResNet50, SEResNet101, SEResNet152, SEResNext50, SEResNext101, SENet154")


# ----------------------------------------------------------------------------- builders


def _xrv_weights(name: str) -> dict[str, Any]:
    xrv = require(Library.TORCHXRAYVISION, what=f"torchxrayvision {name}")
    names = [k for k in xrv.models.model_urls if k.startswith(("densenet", "resnet"))]
    if name not in names:
        raise ExternalModelError(f"Unknown torchxrayvision model {name!r}; choose one of {', '.join(names)}.")
    return xrv.models.model_urls[name]


def xrv_outputs(name: str) -> tuple[str, ...]:
    """The output names of torchxrayvision's ``name`` in output order ("" for an output its weights never learnt)."""
    return tuple(str(c) for c in _xrv_weights(name)["labels"])


def xrv_native_size(name: str) -> int:
    """The side (px) torchxrayvision's ``name`` was trained at (its forward resizes every input to it)."""
    return int(_xrv_weights(name).get("input_resolution") or 224)


class _XrvResNet(nn.Module):
    """torchxrayvision's ResNet modules (``model`` = torchvision's ResNet with a 1-channel ``conv1``).

    ``xrv.models.ResNet`` downloads its weights in its constructor, so medrobust builds the same modules
    the same way; the state dict keys (``model.*``) are those of ``xrv.models.ResNet(...).state_dict()``.
    """

    def __init__(self, *, depth: str, num_classes: int) -> None:
        super().__init__()
        import torchvision

        self.model = getattr(torchvision.models, depth)(num_classes=num_classes, weights=None)
        self.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _build_timm(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    timm = require(Library.TIMM, what=f"timm model {name}")
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ExternalModelError(f"Unknown timm model {name!r} (timm.list_models('*part*') lists them).") from None
        raise ExternalModelError(f"timm could not build {name} with {kwargs}: {str(exc)[:200]}") from None
    except TypeError as exc:
        raise ExternalModelError(f"timm could not build {name} with {kwargs}: {exc}") from None
    return net, "timm"


def _monai_family(name: str) -> tuple[Callable[..., nn.Module], str]:
    require(Library.MONAI, what=f"MONAI network {name}")
    nets = importlib.import_module("monai.networks.nets")
    obj = getattr(nets, name, None) if not name.startswith("_") else None
    cls = obj if isinstance(obj, type) else nets.ResNet if callable(obj) and name.lower().startswith("resnet") else None
    for base in ("DenseNet", "ResNet", "SENet"):
        if cls is not None and issubclass(cls, getattr(nets, base)):
            return obj, f"monai.{base}"
    what = "Unknown" if obj is None else "Unsupported"
    raise ExternalModelError(f"{what} MONAI network {name!r}; medrobust can split these into stages for Grad-CAM: "
                             f"{MONAI_SUPPORTED}.")


#: The MONAI families' names for the input channels and the number of outputs.
_MONAI_IO = {"monai.DenseNet": ("in_channels", "out_channels"), "monai.ResNet": ("n_input_channels", "num_classes"),
             "monai.SENet": ("in_channels", "num_classes")}


def _build_monai(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    builder, family = _monai_family(name)
    try:
        net = builder(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise ExternalModelError(f"MONAI could not build {name} with {kwargs}: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None
    if family == "monai.ResNet" and getattr(net, "fc", None) is None:
        raise ExternalModelError(f"MONAI {name} was built without a classifier (feed_forward=False); medrobust needs logits.")
    return net, family


def _build_xrv(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    outputs = xrv_outputs(name)
    if kwargs:
        raise ExternalModelError(f"torchxrayvision {name} takes no builder arguments (got {', '.join(kwargs)}).")
    if name.startswith("resnet"):
        return _XrvResNet(depth=name.split("-")[0], num_classes=len(outputs)), "torchxrayvision.ResNet"
    xrv = require(Library.TORCHXRAYVISION)
    net = xrv.models.DenseNet(weights=None, num_classes=len(outputs), op_threshs=None, apply_sigmoid=False,
                              **xrv.models.get_densenet_params(name.split("-")[0]))
    return net, "torchxrayvision.DenseNet"


_BUILDERS = {"timm": _build_timm, "monai": _build_monai, "torchxrayvision": _build_xrv}


def builder_kwargs(library: str | Library, name: str, *, kwargs: Mapping[str, Any] | None, in_channels: int,
                   num_outputs: int | None) -> dict[str, Any]:
    """The full arguments of the library's builder: the user's plus channels, outputs and 2-D filled in.

    timm: ``in_chans``, ``num_classes``; MONAI: ``spatial_dims=2`` and the family's names for channels and
    outputs (DenseNet ``in_channels``/``out_channels``, ResNet ``n_input_channels``/``num_classes``, SENet
    ``in_channels``/``num_classes``); torchxrayvision: none (1 channel, its own outputs). A user value
    that contradicts ``in_channels``/``num_outputs``, ``pretrained`` true, or ``spatial_dims`` other than 2
    is refused.
    """
    lib = _library(library)
    where = f"{lib} {name}"
    out = _json_ready(kwargs or {}, where=where)
    if out.pop("pretrained", False):
        raise ExternalModelError(f"{where}: pretrained=true would download weights; the weights come from your "
                                 "safetensors file, so leave pretrained out.")
    if lib == "torchxrayvision":
        if in_channels != 1:
            raise ExternalModelError(f"{where} takes 1 input channel (grey), not {in_channels}.")
        return out
    if lib == "timm":
        _fill(out, "in_chans", in_channels, option="--in-channels", where=where)
        if num_outputs is not None:
            _fill(out, "num_classes", num_outputs, option="the number of classes", where=where)
        return out
    _, family = _monai_family(name)
    chans, outs = _MONAI_IO[family]
    _fill(out, "spatial_dims", 2, option="2-D X-rays", where=where)
    _fill(out, chans, in_channels, option="--in-channels", where=where)
    if num_outputs is not None:
        _fill(out, outs, num_outputs, option="the number of classes", where=where)
    return out


def build_network(library: str | Library, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str]:
    """``(net, family)``: the library's network ``name`` built with exactly ``kwargs`` (random weights, eval mode)."""
    lib = _library(library)
    net, family = _BUILDERS[lib](str(name), dict(kwargs))
    return net.eval(), family


# ----------------------------------------------------------------------------- label maps


def parse_label_map(text: str) -> dict[str, str]:
    """``"CLASS=OUTPUT[,CLASS=OUTPUT...]"`` as ``{class: output}`` (spaces around names dropped).

    >>> parse_label_map("COVID-19=Pneumonia, non-COVID=rest")
    {'COVID-19': 'Pneumonia', 'non-COVID': 'rest'}
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        cls, eq, output = (s.strip() for s in part.partition("="))
        if not eq or not cls or not output:
            raise ExternalModelError(f"label map entry {part!r} is not CLASS=OUTPUT (e.g. COVID-19=Pneumonia).")
        if cls in out:
            raise ExternalModelError(f"label map names class {cls!r} twice.")
        out[cls] = output
    if not out:
        raise ExternalModelError("the label map is empty; give CLASS=OUTPUT (e.g. COVID-19=Pneumonia).")
    return out


def _near(name: str, names: Sequence[str]) -> str:
    from medrobust.data import similar_names

    sim = similar_names(name, names)
    return f" (did you mean {' or '.join(sim)}?)" if sim else ""


def resolve_label_map(*, classes: Sequence[str], outputs: Sequence[str], label_map: Mapping[str, str] | str,
                      model: str = "the model") -> dict[str, str]:
    """Each class's output, in class order: ``{class: output name or "rest"}``.

    Parameters
    ----------
    classes
        The task's classes in label order (``--classes``).
    outputs
        The model's output names (empty names, outputs its weights never learnt, cannot be chosen).
    label_map
        ``{class: output}`` or its text ``"CLASS=OUTPUT,..."``. A class may map to ``rest`` ("none of the
        mapped outputs"); one class of ``classes`` left out of the map is the rest class.

    Raises
    ------
    ExternalModelError
        One line: a class not in ``classes``, an output the model does not have (the valid names listed),
        an output used twice, more than one rest class, or more than one class left unmapped.
    """
    wanted = parse_label_map(label_map) if isinstance(label_map, str) else {str(k): str(v) for k, v in label_map.items()}
    classes = [str(c) for c in classes]
    valid = [o for o in outputs if o]
    for cls, output in wanted.items():
        if cls not in classes:
            raise ExternalModelError(f"the label map names class {cls!r}{_near(cls, classes)}, which is not among "
                                     f"the classes ({', '.join(classes)}).")
        if output != REST and output not in valid:
            raise ExternalModelError(f"{model} has no output {output!r}{_near(output, valid)}; its outputs: "
                                     f"{', '.join(valid)} (or {REST!r} for none of the mapped ones).")
    left = [c for c in classes if c not in wanted]
    if len(left) > 1:
        raise ExternalModelError(f"the label map leaves classes {', '.join(left)} without an output; map each class "
                                 f"to an output (CLASS=OUTPUT); at most one class may be the rest.")
    resolved = {c: wanted.get(c, REST) for c in classes}
    rest = [c for c, o in resolved.items() if o == REST]
    if len(rest) > 1:
        raise ExternalModelError(f"classes {', '.join(rest)} are all the rest; at most one class may be the rest.")
    used = [o for o in resolved.values() if o != REST]
    twice = sorted({o for o in used if used.count(o) > 1})
    if twice:
        raise ExternalModelError(f"the label map reads output(s) {', '.join(twice)} for more than one class.")
    return resolved


# ----------------------------------------------------------------------------- the wrapper


class ExternalNet(XrayNet):
    """A timm, MONAI or torchxrayvision network for grey chest X-rays, with the normalisation inside.

    Parameters
    ----------
    library, name, kwargs
        The library (:class:`~medrobust.choices.Library`), its builder name (timm model name, MONAI
        network, torchxrayvision weights name) and the builder's full arguments
        (:func:`builder_kwargs`).
    num_classes
        K, the number of logits ``forward`` returns (the network's outputs, or the label map's classes).
    in_channels, mean, std
        As for :class:`~medrobust.models.XrayNet` (``mean``/``std``: ``in_channels`` values each).
    stage_modules
        ``{"stem": [...], stage: [...], ...}`` (module paths, see the module docstring); None: found now
        by :meth:`plan_stages` on ``probe``.
    label_map
        ``{class: output name or "rest"}`` in class order, for a multi-label network (torchxrayvision);
        ``outputs`` names the network's outputs in order.
    probe_size
        Side (px) of the probe image on which :meth:`plan_stages` finds the stages when
        ``stage_modules`` is None (the import's image size).

    Notes
    -----
    The state dict is ``net.*`` (the library's own keys), ``mean`` and ``std``, like XrayNet's. The
    label map is applied after the network: class k's logit is its output's logit, the rest class's 0.
    """

    def __init__(self, *, library: str | Library, name: str, kwargs: Mapping[str, Any], num_classes: int,
                 in_channels: int, mean: Sequence[float], std: Sequence[float],
                 stage_modules: Mapping[str, Sequence[str]] | None = None,
                 label_map: Mapping[str, str] | None = None, outputs: Sequence[str] | None = None,
                 probe_size: int = 64) -> None:
        nn.Module.__init__(self)  # XrayNet.__init__ builds a torchvision network; the library builds this one
        lib = _library(library)
        net, family = build_network(lib, name, kwargs)
        mean_v = normalisation_stats("mean", mean, (), in_channels)
        std_v = normalisation_stats("std", std, (), in_channels)
        self._init_io(net=net, arch=f"{lib}:{name}", num_classes=int(num_classes), in_channels=int(in_channels),
                      mean=mean_v, std=std_v)
        self.library, self.builder_name, self.builder_kwargs = lib, str(name), dict(kwargs)
        self.family = family
        self.outputs = tuple(outputs) if outputs is not None else None
        self.label_map = dict(label_map) if label_map is not None else None
        index, keep = self._selection()
        self.register_buffer("_out_index", index, persistent=False)
        self.register_buffer("_out_keep", keep, persistent=False)
        self.stage_modules: dict[str, list[str]] = {}
        if stage_modules is not None:
            self._set_stages(stage_modules)
        else:
            self.plan_stages(size=probe_size)

    # -- outputs
    def _selection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which network output gives each class's logit (and whether it is kept, or 0 for the rest)."""
        if self.label_map is None:
            return torch.arange(self.num_classes), torch.ones(self.num_classes, dtype=torch.bool)
        if self.outputs is None or len(self.label_map) != self.num_classes:
            raise ExternalModelError(f"a label map needs the network's output names and one entry per class "
                                     f"({self.num_classes}), got {len(self.label_map)}.")
        idx = [self.outputs.index(o) if o != REST else 0 for o in self.label_map.values()]
        keep = [o != REST for o in self.label_map.values()]
        return torch.tensor(idx, dtype=torch.long), torch.tensor(keep, dtype=torch.bool)

    def select(self, z: torch.Tensor) -> torch.Tensor:
        """The K class logits from the network's outputs ``z`` (N, outputs).

        With a label map: class k's mapped output's logit (the rest class: 0), less their mean over the
        classes. The shift leaves every softmax, cross-entropy and margin unchanged (two classes: softmax =
        [1 - sigmoid(z), sigmoid(z)]) and gives the rest class a logit that varies, -z/2, so its Grad-CAM
        shows the evidence against the finding instead of a flat map.
        """
        if self.label_map is None:
            return z
        picked = torch.where(self._out_keep, z.index_select(1, self._out_index), z.new_zeros(()))
        return picked - picked.mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, ``num_classes``) of images (N, 1, H, W) in [0, 1]."""
        return self.select(self.net(self.normalise(x)))

    # -- stages
    def _set_stages(self, stage_modules: Mapping[str, Sequence[str]]) -> None:
        plan = {str(k): [str(p) for p in v] for k, v in stage_modules.items()}
        if len(plan) != 5 or next(iter(plan)) != "stem":
            raise ExternalModelError(f"stage_modules must be the stem and four stages, got {', '.join(plan) or 'none'}.")
        for paths in plan.values():
            for p in paths:
                try:
                    self.net.get_submodule(p)
                except AttributeError:
                    raise ExternalModelError(f"{self.arch} has no module {p!r} (stage_modules); was it built by "
                                             "another version of the library?") from None
        self.stage_modules = plan

    def plan_stages(self, *, size: int = 64) -> None:
        """Find the stem and stages (:class:`Family`) on a probe image of ``size`` px and check their replay."""
        probe = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
        family = FAMILIES[self.family]
        try:
            self._set_stages(family.plan(self.net, self.normalise(probe)))
        except (ExternalModelError, ValueError, RuntimeError) as exc:
            raise ExternalModelError(f"{self.arch}: medrobust cannot split it into a stem, four stages and a head "
                                     f"for Grad-CAM ({str(exc).rstrip('.')}).") from None
        self.check_stages(probe)

    def check_stages(self, probe: torch.Tensor) -> None:
        """Refuse (one line) unless the stages and head replay ``forward`` on ``probe`` (N, 1, S, S)."""
        with torch.no_grad():
            want = self(probe)
            h = self.normalise(probe)
            for _, stage in self.stages():
                h = stage(h)
            got = self.head(h)
        scale = float(want.abs().max()) if want.numel() else 1.0
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
            raise ExternalModelError(f"{self.arch}: replaying its stem, stages ({', '.join(self.cam_layers())}) and "
                                     "head does not give its forward pass, so medrobust cannot explain it with Grad-CAM.")

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` pairs: ``stem`` then the four stages, fresh containers around the net's modules."""
        return [(name, nn.Sequential(*(self.net.get_submodule(p) for p in paths)))
                for name, paths in self.stage_modules.items()]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The K logits from the last stage's output ``h``, as the library's forward goes on (never in place)."""
        return self.select(FAMILIES[self.family].head(self.net, h))

    def cam_layers(self) -> tuple[str, ...]:
        """The four stage names, shallow -> deep."""
        return tuple(list(self.stage_modules)[1:])

    def spec(self) -> dict[str, Any]:
        """What rebuilds this network (:func:`build_external`): a JSON-ready card fragment."""
        from medrobust.models import _short

        out = {"arch": self.arch, "num_classes": self.num_classes, "in_channels": self.in_channels,
               "mean": [_short(v) for v in self.mean.detach().flatten().tolist()],
               "std": [_short(v) for v in self.std.detach().flatten().tolist()],
               "library": self.library, "library_version": library_version(self.library),
               "builder": {"name": self.builder_name, "kwargs": self.builder_kwargs},
               "stage_modules": self.stage_modules}
        if self.label_map is not None:
            out.update(outputs=list(self.outputs or ()), label_map=self.label_map)
        return out

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, in_channels={self.in_channels}"


#: The card keys :meth:`ExternalNet.spec` writes besides XrayNet's.
SPEC_KEYS = ("library", "library_version", "builder", "stage_modules", "outputs", "label_map")


def build_external(spec: Mapping[str, Any]) -> ExternalNet:
    """A fresh :class:`ExternalNet` as a card describes it (random weights; load the state dict next).

    Raises
    ------
    ExternalModelError
        The library is not installed (:class:`MissingLibrary`, naming the extra), or the card does not
        describe a network it can build. A card written with another version of the library is built
        with a RuntimeWarning; loading its weights (strict) then says if the modules differ.
    """
    lib = _library(spec.get("library"))
    builder = spec.get("builder") or {}
    name = str(builder.get("name") or "")
    if not name or not isinstance(builder.get("kwargs", {}), Mapping):
        raise ExternalModelError(f"the card names no {lib} builder (builder.name, builder.kwargs).")
    require(lib, what=f"this {lib} model ({name})")
    made_with, now = spec.get("library_version"), library_version(lib)
    if made_with and made_with != now:
        warnings.warn(f"{lib}:{name} was imported with {lib} {made_with}; {lib} {now} is installed. If its modules "
                      f"changed, loading fails; install {lib}=={made_with} then.", RuntimeWarning, stacklevel=3)
    if not spec.get("stage_modules"):
        raise ExternalModelError(f"the card of {lib}:{name} records no stage_modules; import it again.")
    try:
        return ExternalNet(library=lib, name=name, kwargs=builder.get("kwargs") or {},
                           num_classes=int(spec["num_classes"]), in_channels=int(spec.get("in_channels", 1)),
                           mean=spec["mean"], std=spec["std"], stage_modules=spec["stage_modules"],
                           label_map=spec.get("label_map"), outputs=spec.get("outputs"))
    except ExternalModelError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ExternalModelError(f"the card does not describe a {lib}:{name} medrobust can build "
                                 f"({type(exc).__name__}: {exc}).") from None


# ----------------------------------------------------------------------------- preprocessing defaults


def default_normalisation(library: str | Library, name: str, *, in_channels: int,
                          net: nn.Module | None = None) -> tuple[list[float], list[float], str]:
    """``(mean, std, how)``: the library's own normalisation of a [0, 1] input, and a sentence for the card.

    timm: the model's data config (``timm.data.resolve_model_data_config``), averaged over RGB for one
    channel; MONAI: none (mean 0, std 1: MONAI pipelines usually scale intensities to [0, 1]);
    torchxrayvision: (x - 0.5) * 2048, i.e. ``xrv.datasets.normalize``'s [-1024, 1024].
    """
    lib = _library(library)
    if lib == "torchxrayvision":
        return [XRV_MEAN], [XRV_STD], ("torchxrayvision's xrv.datasets.normalize: a grey image x in [0, 1] becomes "
                                       "(2x - 1) * 1024, in [-1024, 1024]")
    if lib == "monai":
        return [0.0] * in_channels, [1.0] * in_channels, ("none: the [0, 1] image as it is (MONAI's usual "
                                                          "ScaleIntensity); pass --mean/--std if your transforms "
                                                          "normalised otherwise")
    timm = require(Library.TIMM)
    cfg = timm.data.resolve_model_data_config(net) if net is not None else {}
    mean = [float(v) for v in cfg.get("mean", IMAGENET_MEAN)]
    std = [float(v) for v in cfg.get("std", IMAGENET_STD)]
    if in_channels == 1 and len(mean) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
        return mean, std, f"timm's data config of {name}, averaged over RGB for the grey input"
    return mean, std, f"timm's data config of {name}"
