"""Tests for medrobust.checkpoints: safetensors + JSON card, sha256 checks, fp16 export, no pickle, every
architecture of the registry, and importing a network medrobust did not train."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from medrobust import checkpoints as C
from medrobust.checkpoints import (
    SPEC_KEYS,
    CheckpointError,
    card_path,
    classes_of,
    export_fp16,
    import_model,
    load_checkpoint,
    read_card,
    save_checkpoint,
    sha256_file,
)
from medrobust.choices import CLASS_NAMES, Arch
from medrobust.models import IMAGENET_MEAN, IMAGENET_STD, build_model

ROOT = Path(__file__).resolve().parents[2]

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
    assert {k: card[k] for k in SPEC_KEYS} == {"arch": "resnet18", "num_classes": 2, "in_channels": 1,
                                               "mean": [0.449], "std": [0.226]}
    assert "classes" not in card and classes_of(card) == CLASS_NAMES
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
    with pytest.raises(CheckpointError, match=r"does not fit the medrobust resnet18 \(2 classes, 1 channel\)"):
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


# ----------------------------------------------------------------------------- every architecture

@pytest.mark.parametrize("arch", [a.value for a in Arch])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_arch_round_trips_with_its_card(arch, in_channels, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=3, in_channels=in_channels).eval()
    path = tmp_path / f"{arch}.safetensors"
    card = save_checkpoint(path, model, {"name": arch, "classes": ["a", "b", "c"]})
    assert (card["arch"], card["num_classes"], card["in_channels"]) == (arch, 3, in_channels)
    assert len(card["mean"]) == len(card["std"]) == in_channels and classes_of(card) == ("a", "b", "c")
    loaded, loaded_card = load_checkpoint(path)
    assert (loaded.arch, loaded.num_classes, loaded.in_channels) == (arch, 3, in_channels)
    assert loaded_card == card
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_old_style_card_without_architecture_loads_as_the_papers_resnet18(saved, tmp_path):
    path = _copy(saved, tmp_path)
    card = read_card(path)
    for k in SPEC_KEYS:
        card.pop(k)
    card_path(path).write_text(json.dumps(card))  # the card's sha256 covers the weights only
    model, loaded_card = load_checkpoint(path)
    assert (model.arch, model.num_classes, model.in_channels) == ("resnet18", 2, 1)
    assert classes_of(loaded_card) == ("non-COVID", "COVID-19")
    with torch.no_grad():
        assert torch.equal(model(saved[2]), saved[3])


def test_shipped_checkpoint_cards_still_load_as_resnet18():
    path = ROOT / "checkpoints" / "standard.safetensors"
    if not path.is_file():
        pytest.skip("no shipped checkpoint in this checkout")
    model, card = load_checkpoint(path)
    assert (model.arch, model.num_classes, model.in_channels) == ("resnet18", 2, 1)
    assert classes_of(card) == CLASS_NAMES


def test_classes_of_defaults():
    assert classes_of({}) == ("non-COVID", "COVID-19")
    assert classes_of({"classes": ["normal", "pneumonia", "covid"]}) == ("normal", "pneumonia", "covid")
    assert classes_of({"num_classes": 3}) == ("0", "1", "2")


def test_cards_that_disagree_with_the_model_are_refused(saved, tmp_path):
    with pytest.raises(CheckpointError, match="names 3 classes .* 2 outputs"):
        save_checkpoint(tmp_path / "x.safetensors", _model(), {"classes": ["a", "b", "c"]})
    path = _copy(saved, tmp_path)
    card = read_card(path)
    card_path(path).write_text(json.dumps({**card, "arch": "vgg16"}))
    with pytest.raises(CheckpointError, match="Unknown architecture 'vgg16'"):
        load_checkpoint(path)
    card_path(path).write_text(json.dumps({**card, "arch": "resnet34"}))
    with pytest.raises(CheckpointError, match=r"does not fit the medrobust resnet34 \(2 classes, 1 channel\)"):
        load_checkpoint(path)
    card_path(path).write_text(json.dumps({**card, "num_classes": 3, "in_channels": 3, "mean": None, "std": None}))
    with pytest.raises(CheckpointError, match=r"does not fit the medrobust resnet18 \(3 classes, 3 channels\)"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- import_model

def _densenet_rgb():
    """A torchvision DenseNet-121 for 3 classes with non-default BatchNorm statistics, in eval mode."""
    from torchvision.models import densenet121

    torch.manual_seed(0)
    net = densenet121(weights=None, num_classes=3)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net.eval()


def _resnet_file(path: Path, *, num_classes=2, in_channels=1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(4)
    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return state


def test_import_a_torchvision_densenet_and_evaluate_it_like_a_medrobust_model(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    net = _densenet_rgb()
    src = tmp_path / "in" / "chexnet.safetensors"
    src.parent.mkdir()
    save_file(net.state_dict(), str(src))
    out = tmp_path / "out"
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used"))
    path, card = import_model(src, arch="densenet121", classes=["normal", "pneumonia", "covid"], image_size=64,
                              in_channels=3, out_dir=out, extra={"source": "a test"})
    assert path == out / "chexnet.safetensors" and sorted(p.name for p in out.iterdir()) == ["chexnet.json", "chexnet.safetensors"]
    assert card == read_card(path)
    assert card["name"] == "chexnet" and card["method"] == "imported" and card["source"] == "a test"
    assert card["arch"] == "densenet121" and card["num_classes"] == 3 and card["in_channels"] == 3
    assert card["classes"] == ["normal", "pneumonia", "covid"] and card["image_size"] == 64
    assert card["mean"] == list(IMAGENET_MEAN) and card["std"] == list(IMAGENET_STD)
    assert card["imported_from"] == "chexnet.safetensors" and card["imported_sha256"] == sha256_file(src)
    assert card["sha256"] == sha256_file(path) and card["weights_dtype"] == "float32"
    assert "split" not in card  # trained on no patients of ours
    model, _ = load_checkpoint(path)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x.repeat(1, 3, 1, 1) - mean) / std), rtol=0, atol=0)
    # Importing the same file again is harmless; other weights under the same name are refused.
    assert import_model(src, arch="densenet121", classes=["normal", "pneumonia", "covid"], image_size=64,
                        in_channels=3, out_dir=out)[1]["sha256"] == card["sha256"]
    other = tmp_path / "chexnet.safetensors"
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="exists and holds other weights"):
        import_model(other, arch="densenet121", classes=["normal", "pneumonia", "covid"], image_size=64,
                     in_channels=3, out_dir=out)


def test_import_keeps_fp16_and_a_medrobust_layout_file(tmp_path):
    src = tmp_path / "half.safetensors"
    state = _resnet_file(src, dtype=torch.float16)
    path, card = import_model(src, arch="resnet18", classes=["neg", "pos"], image_size=96, out_dir=tmp_path / "a",
                              name="half-import")
    assert path.name == "half-import.safetensors" and card["weights_dtype"] == "float16"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert {k for k in fh.keys() if k.startswith("net.")} == {f"net.{k}" for k in state}
        assert fh.get_tensor("net.conv1.weight").dtype == torch.float16
        assert torch.equal(fh.get_tensor("net.conv1.weight"), state["conv1.weight"])
    model, _ = load_checkpoint(path)
    assert model.net.conv1.weight.dtype == torch.float32
    # A medrobust checkpoint (net.* keys, its own mean/std) imports as well, keeping its normalisation.
    torch.manual_seed(0)
    mine = build_model(arch="resnet34", num_classes=3, in_channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    save_checkpoint(tmp_path / "mine.safetensors", mine, {"name": "mine"})
    path2, card2 = import_model(tmp_path / "mine.safetensors", arch="resnet34", classes=["a", "b", "c"], image_size=64,
                                in_channels=3, out_dir=tmp_path / "b")
    assert card2["mean"] == [0.5, 0.5, 0.5] and card2["std"] == [0.25, 0.25, 0.25]
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path2)[0](x), mine(x))
    with pytest.raises(CheckpointError, match="normalises with mean"):
        import_model(tmp_path / "mine.safetensors", arch="resnet34", classes=["a", "b", "c"], image_size=64,
                     in_channels=3, mean=[0.4, 0.4, 0.4], out_dir=tmp_path / "c")


def _pickle_refused(info, path: Path) -> None:
    msg = str(info.value)
    assert "\n" not in msg and "never unpickles" in msg
    assert f"torch.load('{path}', weights_only=True)" in msg and "save_file(" in msg  # the user's own file
    assert f"'{path}')" not in msg  # the conversion never writes over its source


def test_pickled_files_are_refused_before_unpickling(tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("unpickled")

    weights = {"conv1.weight": torch.zeros(64, 1, 7, 7)}
    pth = tmp_path / "model.pth"
    torch.save(weights, pth)
    disguised = tmp_path / "disguised.safetensors"
    torch.save(weights, disguised)  # a torch.save zip archive under a safetensors name
    legacy = tmp_path / "legacy.safetensors"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)  # starts with the pickle protocol byte
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    for path, what in ((pth, "pickled PyTorch file"), (disguised, "torch.save zip"), (legacy, "is a pickle")):
        with pytest.raises(CheckpointError, match=what) as info:
            import_model(path, arch="resnet18", classes=["a", "b"], image_size=64, out_dir=tmp_path / "out")
        _pickle_refused(info, path)
    with pytest.raises(CheckpointError, match="pickled") as info:  # refused by name, even if missing
        import_model(tmp_path / "nothing.ckpt", arch="resnet18", classes=["a", "b"], image_size=64, out_dir=tmp_path)
    _pickle_refused(info, tmp_path / "nothing.ckpt")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_wrong_head_channels_or_architecture(tmp_path):
    from safetensors.torch import save_file

    three = tmp_path / "three.safetensors"
    _resnet_file(three, num_classes=3)
    with pytest.raises(CheckpointError, match=r"the file's classifier \(fc.weight\) has 3 outputs but 2 classes were given"):
        import_model(three, arch="resnet18", classes=["a", "b"], image_size=64, out_dir=tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"first convolution \(conv1.weight\) takes 1 input channel\(s\) but in_channels=3"):
        import_model(three, arch="resnet18", classes=["a", "b", "c"], image_size=64, in_channels=3, out_dir=tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"is not a torchvision resnet34 state dict: \d+ missing \(layer1.2.bn1.bias"):
        import_model(three, arch="resnet34", classes=["a", "b", "c"], image_size=64, out_dir=tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"is not a torchvision densenet121 state dict: \d+ missing .* unexpected \(bn1"):
        import_model(three, arch="densenet121", classes=["a", "b", "c"], image_size=64, out_dir=tmp_path / "o")
    bad = tmp_path / "bad.safetensors"
    state = _resnet_file(bad, num_classes=3)
    save_file({**state, "layer4.1.conv2.weight": torch.zeros(512, 512, 1, 1)}, str(bad))
    with pytest.raises(CheckpointError, match=r"layer4.1.conv2.weight has shape \(512, 512, 1, 1\), expected \(512, 512, 3, 3\)"):
        import_model(bad, arch="resnet18", classes=["a", "b", "c"], image_size=64, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weights": "missing.safetensors"}, "does not exist"),
    ({"image_size": 16}, "image_size must be an integer of at least 32"),
    ({"classes": ["only"]}, "at least two distinct"),
    ({"classes": ["a", "a"]}, "at least two distinct"),
    ({"in_channels": 2}, "in_channels must be 1 .* or 3"),
    ({"mean": [0.5, 0.5]}, "mean needs 1 value"),
    ({"std": [0.0]}, "std must be finite and positive"),
    ({"arch": "vgg16"}, "Unknown architecture 'vgg16'"),
    ({"name": "../escape"}, "must be letters, digits"),
    ({"extra": {"arch": "resnet50"}}, "extra cannot set arch"),
    ({"weights": "text.safetensors"}, "is not a safetensors file"),
])
def test_import_refuses_bad_arguments(tmp_path, kwargs, message):
    good = tmp_path / "good.safetensors"
    _resnet_file(good)
    (tmp_path / "text.safetensors").write_text("hello, not tensors")
    args = {"weights": good, "arch": "resnet18", "classes": ["a", "b"], "image_size": 64, "out_dir": tmp_path / "o"}
    args.update(kwargs)
    if isinstance(args["weights"], str):
        args["weights"] = tmp_path / args["weights"]
    with pytest.raises(CheckpointError, match=message) as info:
        import_model(**args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o").exists()
