"""Checkpoint I/O: safetensors weights plus a JSON card; loading never unpickles.

A checkpoint ``NAME.safetensors`` has its card beside it as ``NAME.json``: method, full training
config, epochs done, data split hash and training patients, validation metrics, torch version,
and the sha256 of the weights file. Loading checks the hash before reading a single tensor, so a
truncated or swapped file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from medrobust.fileio import atomic_write_bytes, atomic_write_text
from medrobust.models import XrayResNet, build_model

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


def save_checkpoint(path: str | Path, model: torch.nn.Module, card: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Write ``path`` (safetensors) and its card; returns the card with ``sha256`` filled in.

    The card is written first (it knows the sha256 of the serialised weights), then the weights, each
    atomically: a process killed in between leaves at worst a card without new weights, never weights
    without a card or with a card that describes other bytes (on a first save; a resumed run writes
    the same bytes again).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"Checkpoint files end in .safetensors, got {path.name}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_tensors(model, dtype=dtype).items()}
    data = save_tensors(tensors, metadata={"format": "medrobust"})
    card = dict(card)
    card.update(card_version=CARD_VERSION, weights_file=path.name, weights_dtype=str(dtype).replace("torch.", ""),
                sha256=hashlib.sha256(data).hexdigest(), torch_version=torch.__version__)
    atomic_write_text(card_path(path), json.dumps(card, indent=1, default=str))
    atomic_write_bytes(path, data)
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """The JSON card of a checkpoint (``path`` may be the weights or the card)."""
    cp = card_path(path)
    if not cp.is_file():
        raise CheckpointError(f"{cp} is missing: every checkpoint needs its JSON card beside it.")
    try:
        return json.loads(cp.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The card {cp} is not valid JSON ({exc}).") from None


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> tuple[XrayResNet, dict[str, Any]]:
    """Load a checkpoint into a model in eval mode (fp16 files are upcast to fp32).

    Raises
    ------
    CheckpointError
        If the weights or card are missing, the sha256 differs from the card's, or the tensors do
        not fit the model.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    card = read_card(path)
    if verify:
        digest = sha256_file(path)
        if card.get("sha256") != digest:
            raise CheckpointError(
                f"{path.name}: sha256 {digest[:12]}… does not match its card ({str(card.get('sha256'))[:12]}…); "
                "the file is truncated, corrupted or not the one the card describes."
            )
    model = build_model()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({type(exc).__name__}).") from None
    ref = model.state_dict()
    try:
        state = {k: (v.to(ref[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} does not fit the medrobust ResNet-18: {str(exc)[:300]}") from None
    model.eval()
    return model.to(device), card


def export_fp16(src: str | Path, dst: str | Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-save a checkpoint with fp16 weights (for shipping), keeping and extending its card."""
    model, card = load_checkpoint(src)
    card = {**card, **(extra or {})}
    return save_checkpoint(dst, model, card, dtype=torch.float16)
