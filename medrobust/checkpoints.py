"""Checkpoint I/O: safetensors weights plus a JSON card; loading never unpickles.

A checkpoint ``NAME.safetensors`` has its card beside it as ``NAME.json``: method, full training
config, epochs done, data split hash and training patients, validation metrics, torch version,
the architecture (``arch``, ``num_classes``, ``in_channels``, ``mean``, ``std``), the class names
(``classes``) and the sha256 of the weights file. Loading checks the hash before reading a single
tensor, so a truncated or swapped file is refused with a clear message. Cards written before
architectures were recorded describe the paper's model (resnet18, 1 channel, the two
:data:`~medrobust.choices.CLASS_NAMES`).

:func:`import_model` turns a safetensors state dict of a network that medrobust did not train into
such a checkpoint (method ``imported``), so evaluation and the dashboard can use it: a torchvision
network of the registry, or one that timm, MONAI or torchxrayvision builds (:mod:`medrobust.external`;
its card adds ``library``, ``library_version``, ``builder``, ``stage_modules``, ``preprocessing`` and,
for torchxrayvision, ``outputs`` and ``label_map``, and loading needs that library installed).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from medrobust.choices import CLASS_NAMES, Arch, Library, parse_choice
from medrobust.fileio import atomic_write_bytes, atomic_write_text
from medrobust.models import (
    DEFAULT_ARCH,
    XrayNet,
    build_from_spec,
    first_conv_name,
    fix_legacy_keys,
    head_name,
    model_spec,
    normalisation_stats,
)

CARD_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says which file and why."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def model_tensors(model: torch.nn.Module, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


#: The keys of a card that describe the architecture (see :func:`medrobust.models.model_spec`).
SPEC_KEYS = ("arch", "num_classes", "in_channels", "mean", "std")
#: The keys a network of timm, MONAI or torchxrayvision adds (:meth:`medrobust.external.ExternalNet.spec`,
#: :func:`import_model`); kept in step with ``medrobust.external.SPEC_KEYS`` (which imports nothing optional).
EXTERNAL_KEYS = ("library", "library_version", "builder", "stage_modules", "outputs", "label_map", "preprocessing",
                 "native_size", "dropped_keys")
#: Suffixes of pickled PyTorch files, refused by :func:`import_model` before anything is read.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")
_IMPORT_NEXT = ("then make it evaluable with python -m medrobust import-model {dest} --arch ARCH --classes A,B "
                "--image-size SIZE, and evaluate the checkpoint that writes.")


def _convert_hint(path: Path, *, then: str = "then import {dest}.") -> str:
    """The one-line command that converts the user's pickled ``path`` to ``<path without suffix>.safetensors``."""
    src = str(path) if not set("'\"\\$`") & set(str(path)) else path.name
    dest = Path(src).with_suffix(".safetensors")
    dest = str(dest if str(dest) != src else dest.with_name(f"{dest.stem}-converted.safetensors"))
    return ("convert it once, on a machine where you trust the file: python -c \"import torch; "
            f"from safetensors.torch import save_file; save_file(torch.load('{src}', weights_only=True), "
            f"'{dest}')\" (a checkpoint dict may need ['state_dict'] after torch.load(...)), "
            + then.format(dest=dest))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def classes_of(card: dict[str, Any]) -> tuple[str, ...]:
    """The class names of a checkpoint, index = label.

    ``card["classes"]`` when present; else the paper's :data:`~medrobust.choices.CLASS_NAMES` for a
    2-class model (every card written before classes were recorded), else "0", "1", ...
    """
    names = card.get("classes")
    if names:
        return tuple(str(c) for c in names)
    k = card.get("num_classes", len(CLASS_NAMES))
    return tuple(CLASS_NAMES) if k == len(CLASS_NAMES) else tuple(str(i) for i in range(int(k)))


def image_size_of(card: dict[str, Any], *, name: str = "this checkpoint") -> int:
    """The side (px) a checkpoint's model was trained on: ``card["image_size"]``, else its training config's.

    Raises :class:`CheckpointError` (one line) when the card records none.
    """
    try:
        size = int(card.get("image_size") or (card.get("config") or {}).get("image_size") or 0)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise CheckpointError(f"{name}: its card records no image size (image_size); use models written by "
                              "`medrobust train`, `export` or `import-model`.")
    return size


def _describe(spec: dict[str, Any]) -> str:
    c = spec.get("in_channels", 1)
    return (f"medrobust {spec.get('arch') or DEFAULT_ARCH} ({spec.get('num_classes', len(CLASS_NAMES))} classes, "
            f"{c} channel{'s' if c != 1 else ''})")


def _serialise(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "medrobust"})


def _write(path: Path, data: bytes, card: dict[str, Any], *, weights_dtype: str) -> dict[str, Any]:
    """Write the card (first), then the weights, each atomically; returns the card as written."""
    card = dict(card)
    card.update(card_version=CARD_VERSION, weights_file=path.name, weights_dtype=weights_dtype,
                sha256=hashlib.sha256(data).hexdigest(), torch_version=torch.__version__)
    atomic_write_text(card_path(path), json.dumps(card, indent=1, default=str))
    atomic_write_bytes(path, data)
    return card


def save_checkpoint(path: str | Path, model: torch.nn.Module, card: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Write ``path`` (safetensors) and its card; returns the card with ``sha256`` filled in.

    For an :class:`~medrobust.models.XrayNet` the card also records :func:`~medrobust.models.model_spec`
    (``arch``, ``num_classes``, ``in_channels``, ``mean``, ``std``) unless the given card has them;
    ``classes`` is recorded when the caller puts it in ``card`` (it must name ``num_classes`` classes).

    The card is written first (it knows the sha256 of the serialised weights), then the weights, each
    atomically: a process killed in between leaves at worst a card without new weights, never weights
    without a card or with a card that describes other bytes (on a first save; a resumed run writes
    the same bytes again).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"Checkpoint files end in .safetensors, got {path.name}.")
    card = dict(card)
    if isinstance(model, XrayNet):
        for k, v in model_spec(model).items():
            card.setdefault(k, v)
        if card.get("classes") is not None and len(card["classes"]) != model.num_classes:
            raise CheckpointError(f"{path.name}: the card names {len(card['classes'])} classes "
                                  f"({', '.join(map(str, card['classes']))}) but the model has {model.num_classes} outputs.")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _serialise(model_tensors(model, dtype=dtype))
    return _write(path, data, card, weights_dtype=str(dtype).replace("torch.", ""))


def read_card(path: str | Path) -> dict[str, Any]:
    """The JSON card of a checkpoint (``path`` may be the weights or the card)."""
    cp = card_path(path)
    if not cp.is_file():
        raise CheckpointError(f"{cp} is missing: every checkpoint needs its JSON card beside it (for weights "
                              f"medrobust did not train, write one with python -m medrobust import-model "
                              f"{card_path(path).with_suffix('.safetensors')} --arch ARCH --classes A,B "
                              "--image-size SIZE).")
    try:
        return json.loads(cp.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The card {cp} is not valid JSON ({exc}).") from None


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({type(exc).__name__}).") from None


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> tuple[XrayNet, dict[str, Any]]:
    """Load a checkpoint into a model of the architecture its card records, in eval mode.

    fp16 (or bf16) files are upcast to fp32. A card without architecture keys describes the
    paper's model: resnet18, 2 classes, 1 channel, grey statistics.

    Raises
    ------
    CheckpointError
        If the weights or card are missing, the sha256 differs from the card's, the card describes
        no valid architecture, or the tensors do not fit it.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    _check_weights_file(path, then=_IMPORT_NEXT)  # a pickle is refused before its (absent) card is looked for
    card = read_card(path)
    if verify:
        digest = sha256_file(path)
        if card.get("sha256") != digest:
            raise CheckpointError(
                f"{path.name}: sha256 {digest[:12]}… does not match its card ({str(card.get('sha256'))[:12]}…); "
                "the file is truncated, corrupted or not the one the card describes."
            )
    if card.get("library") not in (None, Library.TORCHVISION.value):  # timm, MONAI, torchxrayvision
        model = _external(lambda x: x.build_external(card), name=path.name)
    else:
        try:
            model = build_from_spec(card)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: its card describes no medrobust model ({exc})") from None
    if card.get("classes") is not None and len(card["classes"]) != model.num_classes:
        raise CheckpointError(f"{path.name}: its card names {len(card['classes'])} classes for "
                              f"{model.num_classes} outputs.")
    state, _ = _read_tensors(path)
    ref = model.state_dict()
    try:
        state = {k: (v.to(ref[k].dtype) if v.is_floating_point() and k in ref else v) for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} does not fit the {_describe(card)}: {str(exc)[:300]}") from None
    model.eval()
    return model.to(device), card


# ----------------------------------------------------------------------------- import

def _refuse_pickle(path: Path, why: str, *, then: str = "then import {dest}.") -> CheckpointError:
    return CheckpointError(f"{path.name} {why}; medrobust never unpickles (a pickle can run code): "
                           f"{_convert_hint(path, then=then)}")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, followed by a JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _check_weights_file(path: Path, *, then: str = "then import {dest}.") -> None:
    """Refuse a missing, pickled or non-safetensors file, reading only its first bytes (no unpickling).

    ``then`` is the conversion hint's last step (``{dest}``: the converted file).
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(path, f"is a pickled PyTorch file ({path.suffix})", then=then)
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist.")
    with open(path, "rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if _looks_like_safetensors(head, size):
        return
    if head.startswith(b"PK\x03\x04"):
        raise _refuse_pickle(path, "is a torch.save zip archive (pickled), whatever its name", then=then)
    if head[:1] == b"\x80":
        raise _refuse_pickle(path, "is a pickle, whatever its name", then=then)
    raise CheckpointError(f"{path.name} is not a safetensors file (its first bytes are no safetensors header).")


def _floats(name: str, value: Sequence[float] | float | None, in_channels: int) -> list[float] | None:
    """``mean``/``std`` checked by the model's own rule (:func:`medrobust.models.normalisation_stats`), as a CheckpointError."""
    if value is None:
        return None
    try:
        return normalisation_stats(name, value, (), in_channels)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _first(keys: Sequence[str], n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def import_model(weights: str | Path, *, arch: str | Arch, classes: Sequence[str], image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, in_channels: int = 1,
                 out_dir: str | Path, name: str | None = None, extra: dict[str, Any] | None = None,
                 library: str | Library = Library.TORCHVISION, builder_args: dict[str, Any] | None = None,
                 label_map: dict[str, str] | str | None = None) -> tuple[Path, dict[str, Any]]:
    """Make a network medrobust did not train into a medrobust checkpoint (method ``imported``).

    Parameters
    ----------
    weights
        A safetensors file. For torchvision: a plain torchvision state dict of ``arch`` (keys such as
        ``conv1.weight`` or ``features.conv0.weight``, ``fc.weight`` / ``classifier.weight``) or a
        medrobust state dict (``net.*``, optionally ``mean`` and ``std``). For timm, MONAI and
        torchxrayvision: the state dict of the library's network as built from ``arch`` and
        ``builder_args`` (torchxrayvision's ``op_threshs`` entry is dropped: outputs stay raw logits).
        Its first convolution must take ``in_channels`` channels and its head give ``len(classes)``
        outputs (torchxrayvision: its own outputs). Pickled files (.pt, .pth, .ckpt, .bin, .pkl, or a
        torch.save archive under any name) are refused before anything is unpickled, with the
        one-line command that converts them.
    arch
        torchvision: a registry name (:class:`medrobust.choices.Arch`); timm: a model name
        (``resnet18``, ``convnext_tiny``); MONAI: a network of ``monai.networks.nets`` (``DenseNet121``,
        ``resnet18``, ``SEResNet50``); torchxrayvision: a weights name (``densenet121-res224-all``).
    classes
        Class names in output order (at least two, distinct).
    image_size
        The side (px, >= 32) the model expects; evaluation resizes test images to it. Required except
        for torchxrayvision (default: the weights' native 224 or 512 px).
    mean, std
        Per-channel normalisation of the model's input (``in_channels`` values each, std > 0);
        default: the file's ``mean``/``std`` for a medrobust file, else the library's own (torchvision:
        grey 0.449/0.226 for 1 channel, ImageNet's RGB statistics for 3; timm: the model's data
        config; MONAI: none). torchxrayvision's scale is fixed: [0, 1] -> [-1024, 1024].
    in_channels
        1 (grey input) or 3 (the grey image is repeated to RGB, then normalised).
    out_dir
        Folder to write ``NAME.safetensors`` and ``NAME.json`` into.
    name
        Checkpoint name (default: the input file's stem); an existing checkpoint of that name with
        other weights is never overwritten.
    extra
        More card entries (e.g. a source URL or licence); they cannot replace the entries below.
    library
        Which library builds ``arch`` (:class:`medrobust.choices.Library`, default torchvision).
        timm, MONAI and torchxrayvision are optional extras (:mod:`medrobust.external`).
    builder_args
        More arguments of the library's builder (``timm.create_model``, the MONAI network), JSON
        values; channels, outputs and MONAI's ``spatial_dims=2`` are filled in.
    label_map
        torchxrayvision only, and required there: ``{class: output}`` or ``"CLASS=OUTPUT,..."``; the
        class left out (or mapped to ``rest``) is "none of them"
        (:func:`medrobust.external.resolve_label_map`).

    Returns
    -------
    (path, card)
        The written weights file (medrobust layout, the source's tensor dtypes kept) and its card:
        name, method "imported", arch, classes, num_classes, in_channels, mean, std, image_size,
        imported_from (file name), imported_sha256 (of the original file), sha256, ... and no data
        split (so no patients are recorded as trained on). An external network's card adds library,
        library_version, builder, stage_modules, preprocessing and (torchxrayvision) outputs,
        label_map and native_size.

    Raises
    ------
    CheckpointError
        A missing, pickled or unreadable file; invalid arguments; a library that is not installed
        (the message names the extra); tensors that do not fit the architecture (the message names
        the first missing/unexpected keys or the shape that differs); or an existing, different
        checkpoint of the same name.
    """
    src = Path(weights)
    _check_weights_file(src)
    try:
        library = parse_choice(Library, library).value
        arch = parse_choice(Arch, arch).value if library == Library.TORCHVISION.value else str(arch)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    classes = [str(c) for c in classes] if not isinstance(classes, str) else [classes]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
        raise CheckpointError(f"classes must be at least two distinct, non-empty names, got {classes}.")
    if image_size is None and library == Library.TORCHXRAYVISION.value:
        image_size = _external(lambda x: x.xrv_native_size(arch))
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise CheckpointError(f"image_size must be an integer of at least 32 (px), got {image_size!r}.")
    if in_channels not in (1, 3) or isinstance(in_channels, bool):
        raise CheckpointError(f"in_channels must be 1 (grey) or 3 (grey repeated to RGB), got {in_channels!r}.")
    mean_v, std_v = _floats("mean", mean, in_channels), _floats("std", std, in_channels)
    name = src.stem if name is None else str(name)
    if not _NAME.match(name):
        raise CheckpointError(f"Checkpoint name {name!r} must be letters, digits, '.', '_', '+' or '-' "
                              "(no path separators), starting with a letter or digit.")
    reserved = {"name", "method", "classes", "image_size", "imported_from", "imported_sha256", "split",
                *SPEC_KEYS, *EXTERNAL_KEYS, "card_version", "weights_file", "weights_dtype", "sha256", "torch_version"}
    clash = sorted(set(extra or {}) & reserved)
    if clash:
        raise CheckpointError(f"extra cannot set {', '.join(clash)}: import_model writes those itself.")
    if library == Library.TORCHVISION.value and (builder_args or label_map):
        raise CheckpointError("builder arguments and label maps are for --from timm, monai or torchxrayvision; "
                              "a torchvision network is chosen by --arch alone.")

    tensors, _ = _read_tensors(src)
    if library == Library.TORCHVISION.value:
        model, out, more = _torchvision_import(src, tensors, arch=arch, classes=classes, in_channels=in_channels,
                                               mean=mean_v, std=std_v)
    else:
        model, out, more = _external_import(src, tensors, library=library, arch=arch, classes=classes,
                                            image_size=image_size, in_channels=in_channels, mean=mean_v, std=std_v,
                                            builder_args=builder_args, label_map=label_map)
    float_dtypes = sorted({str(v.dtype).replace("torch.", "") for k, v in out.items()
                           if k.startswith("net.") and v.is_floating_point()})
    data = _serialise(out)

    out_dir = Path(out_dir)
    path = out_dir / f"{name}.safetensors"
    if path.exists() and (not path.is_file() or sha256_file(path) != hashlib.sha256(data).hexdigest()):
        raise CheckpointError(f"{path} exists and holds other weights; choose another name or remove it first.")
    card: dict[str, Any] = {
        **(extra or {}),
        "name": name, "method": "imported", "classes": classes, **model_spec(model),
        "image_size": image_size, **more, "imported_from": src.name, "imported_sha256": sha256_file(src),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    card = _write(path, data, card, weights_dtype=float_dtypes[0] if len(float_dtypes) == 1 else "mixed")
    return path, card


def _torchvision_import(src: Path, tensors: dict[str, torch.Tensor], *, arch: str, classes: list[str], in_channels: int,
                        mean: list[float] | None, std: list[float] | None,
                        ) -> tuple[XrayNet, dict[str, torch.Tensor], dict[str, Any]]:
    """The XrayNet a torchvision (or medrobust-layout) file fits, the tensors to write, and no more card entries."""
    mean_v, std_v = mean, std
    medrobust_layout = any(k.startswith("net.") for k in tensors)
    if medrobust_layout:
        net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        stray = sorted(k for k in tensors if not k.startswith("net.") and k not in ("mean", "std"))
        if stray:
            raise CheckpointError(f"{src.name} mixes medrobust keys (net.*) with others ({_first(stray)}).")
        for key, given in (("mean", mean_v), ("std", std_v)):
            if key in tensors:
                found = [float(v) for v in tensors[key].float().flatten()]
                if len(found) != in_channels:
                    raise CheckpointError(f"{src.name} normalises {len(found)} channel(s) ({key} {found}) "
                                          f"but in_channels={in_channels} was given.")
                if given is not None and not torch.allclose(torch.tensor(found), torch.tensor(given), rtol=1e-3, atol=1e-4):
                    raise CheckpointError(f"{src.name} normalises with {key} {found} but {key} {given} was given; "
                                          "leave it out to keep the file's.")
                if given is None and key == "mean":
                    mean_v = found
                elif given is None:
                    std_v = found
    else:
        net_state = fix_legacy_keys(arch, dict(tensors))
    if not net_state:
        raise CheckpointError(f"{src.name} holds no tensors.")

    # Shape checks with plain-language messages before the strict load.
    conv_key, head_key = first_conv_name(arch) + ".weight", head_name(arch) + ".weight"
    if conv_key in net_state and net_state[conv_key].ndim == 4 and net_state[conv_key].shape[1] != in_channels:
        c = net_state[conv_key].shape[1]
        raise CheckpointError(f"{src.name}: the file's first convolution ({conv_key}) takes {c} input channel(s) "
                              f"but in_channels={in_channels} was given.")
    if head_key in net_state and net_state[head_key].ndim == 2 and net_state[head_key].shape[0] != len(classes):
        k = net_state[head_key].shape[0]
        raise CheckpointError(f"{src.name}: the file's classifier ({head_key}) has {k} outputs "
                              f"but {len(classes)} classes were given ({', '.join(classes)}).")
    try:
        model = XrayNet(arch=arch, num_classes=len(classes), in_channels=in_channels, mean=mean_v, std=std_v)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    _load_net(model, net_state, src=src, what=f"torchvision {arch}", classes=classes)

    out = {f"net.{k}": v for k, v in net_state.items()}
    for key in ("mean", "std"):  # a medrobust file's own buffers keep their dtype; given or default ones are fp32
        buf = getattr(model, key)
        out[key] = tensors[key].reshape(buf.shape) if medrobust_layout and key in tensors else buf
    return model, out, {}


def _load_net(model: XrayNet, net_state: dict[str, torch.Tensor], *, src: Path, what: str, classes: Sequence[str]) -> None:
    """Load ``net_state`` into ``model.net`` (strict), saying in one line which keys or shapes do not fit."""
    ref = model.net.state_dict()
    missing, unexpected = sorted(set(ref) - set(net_state)), sorted(set(net_state) - set(ref))
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({_first(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_first(unexpected)})"] if unexpected else []
        raise CheckpointError(f"{src.name} is not a {what} state dict: {' and '.join(parts)} key(s).")
    wrong = [k for k in ref if tuple(net_state[k].shape) != tuple(ref[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{src.name} does not fit a {model.arch} with {len(classes)} classes and "
                              f"{model.in_channels} channel(s): {k} has shape {tuple(net_state[k].shape)}, expected "
                              f"{tuple(ref[k].shape)}{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}.")
    try:
        model.net.load_state_dict({k: (v.to(ref[k].dtype) if v.is_floating_point() else v) for k, v in net_state.items()},
                                  strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{src.name} does not fit the {_describe(model_spec(model))}: {str(exc)[:300]}") from None


def _external(fn: Callable[[ModuleType], Any], *, name: str | None = None) -> Any:
    """``fn(medrobust.external)``, its one-line errors (a missing library names the extra) as CheckpointError
    (prefixed with the checkpoint's ``name`` when given); the optional library is imported only in there."""
    from medrobust import external

    try:
        return fn(external)
    except external.ExternalModelError as exc:
        raise CheckpointError(f"{name}: {exc}" if name else str(exc)) from None


#: torchxrayvision keys that are no weights: ``op_threshs`` rescales outputs to its operating points (off here).
_XRV_DROPPED = ("op_threshs",)


def _external_import(src: Path, tensors: dict[str, torch.Tensor], *, library: str, arch: str, classes: list[str],
                     image_size: int, in_channels: int, mean: list[float] | None, std: list[float] | None,
                     builder_args: dict[str, Any] | None, label_map: dict[str, str] | str | None,
                     ) -> tuple[XrayNet, dict[str, torch.Tensor], dict[str, Any]]:
    """The ExternalNet a timm/MONAI/torchxrayvision state dict fits, the tensors to write, and the card's
    preprocessing (and torchxrayvision's label map, native size and dropped keys)."""
    xrv = library == Library.TORCHXRAYVISION.value
    if any(k.startswith("net.") for k in tensors):
        raise CheckpointError(f"{src.name} is in medrobust's layout (net.*); give the {library} network's own state "
                              "dict, or evaluate the medrobust checkpoint it came from.")
    if xrv and (mean is not None or std is not None):
        raise CheckpointError(f"torchxrayvision's weights expect its own scale ([0, 1] -> [-1024, 1024]); leave "
                              "--mean and --std out.")
    if xrv and not label_map:
        raise CheckpointError(f"torchxrayvision {arch} is multi-label (one sigmoid output per finding); say which "
                              f"output each class reads, e.g. --classes non-COVID,COVID-19 --label-map "
                              f"COVID-19=Pneumonia (the class left out is the rest).")
    if not xrv and label_map:
        raise CheckpointError(f"--label-map is for torchxrayvision's multi-label models; a {library} network's "
                              "outputs are the classes, in order.")

    def build(x):
        outputs = x.xrv_outputs(arch) if xrv else None
        resolved = (x.resolve_label_map(classes=classes, outputs=outputs, label_map=label_map,
                                        model=f"torchxrayvision {arch}") if xrv else None)
        kwargs = x.builder_kwargs(library, arch, kwargs=builder_args, in_channels=in_channels,
                                  num_outputs=None if xrv else len(classes))
        model = x.ExternalNet(library=library, name=arch, kwargs=kwargs, num_classes=len(classes),
                              in_channels=in_channels, mean=mean or [0.0] * in_channels, std=std or [1.0] * in_channels,
                              label_map=resolved, outputs=outputs, probe_size=image_size)
        d_mean, d_std, how = x.default_normalisation(library, arch, in_channels=in_channels, net=model.net)
        if mean is None:
            model.mean.copy_(torch.tensor(d_mean).view_as(model.mean))
            model.std.copy_(torch.tensor(d_std).view_as(model.std))
        return model, how

    model, how = _external(build)
    dropped = sorted(k for k in tensors if xrv and k in _XRV_DROPPED)
    net_state = {k: v for k, v in tensors.items() if k not in dropped}
    if not net_state:
        raise CheckpointError(f"{src.name} holds no tensors.")
    _load_net(model, net_state, src=src, what=f"{library} {arch}", classes=classes)
    probe = torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    _external(lambda x: model.check_stages(probe))

    more: dict[str, Any] = {"preprocessing": {
        "input": "grey image in [0, 1], resized to image_size; (x - mean) / std inside the model's forward",
        "normalisation": how if mean is None else "given with the import (--mean/--std)",
    }}
    if xrv:
        native = _external(lambda x: x.xrv_native_size(arch))
        more["preprocessing"].update(
            op_threshs="off: the outputs are raw logits, sigmoid = the model's probability",
            outputs=("class k's logit is its mapped output's logit, the rest class's 0, less their mean: softmax gives "
                     "P(class) = sigmoid(output) for two classes"))
        more["native_size"] = native
        if image_size != native:
            more["preprocessing"]["size_note"] = (f"evaluated at {image_size} px; torchxrayvision's own forward would "
                                                  f"resize every input to its native {native} px")
    if dropped:
        more["dropped_keys"] = dropped
    out = {f"net.{k}": v for k, v in net_state.items()}
    out.update(mean=model.mean, std=model.std)
    return model, out, more


def export_fp16(src: str | Path, dst: str | Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-save a checkpoint with fp16 weights (for shipping), keeping and extending its card."""
    model, card = load_checkpoint(src)
    card = {**card, **(extra or {})}
    return save_checkpoint(dst, model, card, dtype=torch.float16)
