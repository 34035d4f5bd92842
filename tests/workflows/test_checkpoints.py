"""Tests for medrobust.checkpoints: safetensors + JSON card, sha256 checks, fp16 export, no pickle."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from medrobust import checkpoints as C
from medrobust.checkpoints import (
    CheckpointError,
    card_path,
    export_fp16,
    load_checkpoint,
    read_card,
    save_checkpoint,
    sha256_file,
)
from medrobust.models import build_model

CARD = {"name": "tiny", "method": "standard", "epochs_done": 3, "split": {"hash": "abc", "train_patients": ["s:1"]}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model()
    # Non-default BatchNorm statistics, so a loader that forgot the buffers would be caught.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=g))
            m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved checkpoint, its model and a probe batch (read-only: copy before editing)."""
    d = tmp_path_factory.mktemp("ckpt")
    model = _model()
    path = d / "model.safetensors"
    card = save_checkpoint(path, model, CARD)
    x = torch.rand((3, 1, 32, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    return path, card, x, logits


def _copy(saved, tmp_path: Path) -> Path:
    src = saved[0]
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(card_path(src), card_path(dst))
    return dst


def test_roundtrip_gives_the_same_logits(saved):
    path, card, x, logits = saved
    model, loaded_card = load_checkpoint(path)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), logits)
    assert loaded_card == card
    # The card path works as well as the weights path.
    model2, _ = load_checkpoint(card_path(path))
    with torch.no_grad():
        assert torch.equal(model2(x), logits)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 7


def test_card_contents(saved):
    path, card, _, _ = saved
    on_disk = read_card(path)
    assert on_disk == card
    assert card["sha256"] == sha256_file(path) and len(card["sha256"]) == 64
    assert card["torch_version"] == torch.__version__
    assert card["weights_file"] == "model.safetensors"
    assert card["weights_dtype"] == "float32"
    assert card["card_version"] == C.CARD_VERSION
    for k, v in CARD.items():
        assert card[k] == v  # the caller's card is kept
    assert card_path(path) == path.with_suffix(".json")


def test_save_leaves_no_temporary_files(saved):
    names = sorted(p.name for p in saved[0].parent.iterdir())
    assert names == ["model.json", "model.safetensors"]


def test_fp16_export_loads_as_fp32_with_close_logits(saved, tmp_path):
    path, card, x, logits = saved
    dst = tmp_path / "shipped.safetensors"
    new_card = export_fp16(path, dst, extra={"name": "shipped"})
    assert new_card["weights_dtype"] == "float16" and new_card["name"] == "shipped"
    assert new_card["sha256"] == sha256_file(dst) != card["sha256"]
    assert new_card["method"] == card["method"] and new_card["split"] == card["split"]
    assert dst.stat().st_size < 0.6 * path.stat().st_size
    from safetensors import safe_open

    with safe_open(str(dst), framework="pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert dtypes == {torch.float16, torch.int64}  # num_batches_tracked stays an integer
    model, _ = load_checkpoint(dst)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=2e-2, rtol=2e-2)


def test_save_refuses_other_suffixes(tmp_path):
    with pytest.raises(CheckpointError, match=".safetensors"):
        save_checkpoint(tmp_path / "model.pt", _model(), CARD)


def test_one_changed_byte_is_a_sha256_error(saved, tmp_path):
    path = _copy(saved, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(path)
    assert path.name in str(info.value)


def test_truncated_file_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)
    # Even without the hash check, a truncated file is a CheckpointError, not a crash.
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path, verify=False)


def test_missing_or_broken_card_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    card_path(path).unlink()
    with pytest.raises(CheckpointError, match="card") as info:
        load_checkpoint(path)
    assert "model.json" in str(info.value)
    card_path(path).write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_missing_weights_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_tensors_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    tiny = torch.nn.Linear(3, 2)
    save_checkpoint(path, tiny, {"name": "other"})  # a valid file and card, for another network
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path)


def test_loading_never_unpickles(saved, monkeypatch):
    path, _, x, logits = saved

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    model, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(model(x), logits)
    # The weights file is a safetensors file: an 8-byte little-endian header length, then JSON.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"] == {"format": "medrobust"}


def test_atomic_write_text(tmp_path):
    target = tmp_path / "card.json"
    C.atomic_write_text(target, "one")
    C.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]
