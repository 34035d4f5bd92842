"""Tests for medrobust.training: the four methods end to end on tiny synthetic data, resume, config guards."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from medrobust.checkpoints import load_checkpoint, read_card
from medrobust.data import Split
from medrobust.methods import METHODS
from medrobust.training import (
    COLLAPSE_BACC,
    PRESETS,
    TrainConfig,
    class_weights,
    eps_for_epoch,
    is_collapsed,
    preset_config,
    train,
)

from conftest import make_actualmed_root, make_covid_root

BASE = TrainConfig(image_size=32, epochs=2, batch_size=8, max_batches=2, device="cpu", pgd_steps=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run per method on the same synthetic folders (built once for the module)."""
    base = tmp_path_factory.mktemp("training")
    roots = [make_covid_root(base / "data").path, make_actualmed_root(base / "data").path]
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDROBUST_CACHE", str(base / "cache"))
        mp.setenv("MEDROBUST_CPU_BF16", "0")
        for name in METHODS:
            config = replace(BASE, method=name)
            runs[name] = (config, train(config, roots=roots, run_dir=base / "runs" / name, show_progress=False))
    return roots, runs


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_writes_a_complete_run(trained, method):
    roots, runs = trained
    config, result = runs[method]
    run = result.run_dir
    for name in ("model.safetensors", "model.json", "progress.jsonl", "split.json", "config.json",
                 "state.safetensors"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # atomic writes left nothing behind

    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config

    events = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch") == 2 and "step" in kinds
    assert all(isinstance(e["time"], float) for e in events)
    start = events[0]
    assert start["method"] == method and start["steps_per_epoch"] == 2 and start["epochs"] == 2
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(math.isfinite(e["train_loss"]) for e in epochs)
    steps = [e for e in events if e["event"] == "step"]
    assert all(math.isfinite(e["loss"]) and e["steps_per_epoch"] == 2 for e in steps)

    split = Split.load(run / "split.json")
    card = read_card(run / "model.safetensors")
    assert card == json.loads(json.dumps(result.card))  # the card on disk is the one returned
    assert card["method"] == method and card["epochs_done"] == 2 and card["selected_epoch"] == 2
    assert card["image_size"] == 32 and TrainConfig.from_dict(card["config"]) == config
    assert card["split"]["hash"] == split.hash == start["split_hash"]
    assert card["split"]["train_patients"] == split.patients["train"] and split.patients["train"]
    assert not set(split.patients["train"]) & set(split.patients["test"])
    assert card["split"]["counts"] == {k: len(v) for k, v in split.images.items()}
    assert len(card["history"]) == 2 and all(math.isfinite(h["train_loss"]) for h in card["history"])
    expected_eps = [eps_for_epoch(config, e) if METHODS[method].uses_pgd else 0.0 for e in range(2)]
    assert [h["eps"] for h in card["history"]] == expected_eps
    # The collapse flag and warning follow the final validation metrics.
    assert card["collapsed"] == is_collapsed(card["val_metrics"])
    assert ("warning" in card) == card["collapsed"]

    model, _ = load_checkpoint(run / "model.safetensors")
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_training_learns_the_blob(trained):
    # Standard training, 2 x 2 batches of 8 at lr 0.01, already lowers the loss on this easy task.
    _, runs = trained
    history = runs["standard"][1].history
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_resume_matches_an_uninterrupted_run(trained, tmp_path):
    roots, runs = trained
    config, full = runs["robustaugmix"]  # PGD, AugMix and flips: every consumer of the RNG
    run_dir = tmp_path / "resumed"
    first = train(replace(config, epochs=1), roots=roots, run_dir=run_dir, show_progress=False)
    assert first.card["epochs_done"] == 1
    resumed = train(config, roots=roots, run_dir=run_dir, show_progress=False)
    assert len(resumed.history) == len(full.history) == 2
    events = [json.loads(line)["event"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert "resume" in events and events.count("start") == 1
    # On the CPU every kernel is deterministic and the state file holds everything the next epoch
    # reads (weights, BN buffers, momentum, the RNG), so the resumed run is bitwise identical.
    a = load_file(str(run_dir / "model.safetensors"))
    b = load_file(str(full.checkpoint))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.card["split"]["hash"] == full.card["split"]["hash"]


def test_a_changed_config_in_an_existing_run_is_refused(trained):
    roots, runs = trained
    config, result = runs["standard"]
    before = (result.run_dir / "config.json").read_text()
    with pytest.raises(ValueError, match="different config"):
        train(replace(config, lr=0.5), roots=roots, run_dir=result.run_dir, show_progress=False)
    assert (result.run_dir / "config.json").read_text() == before


def test_is_collapsed():
    ok = {"balanced_accuracy": 0.8, "majority_fraction": 0.6}
    assert not is_collapsed(ok)
    assert is_collapsed({"balanced_accuracy": 0.5, "majority_fraction": 1.0})  # always one class
    assert is_collapsed({"balanced_accuracy": COLLAPSE_BACC, "majority_fraction": 0.6})
    assert is_collapsed({"balanced_accuracy": 0.9, "majority_fraction": 0.95})
    assert not is_collapsed({"balanced_accuracy": COLLAPSE_BACC + 0.01, "majority_fraction": 0.94})


def test_class_weights():
    w = class_weights(torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))
    labels = torch.tensor([0] * 17 + [1] * 100)
    w = class_weights(labels)
    # The average training sample weighs 1, and both classes carry the same total weight.
    assert float(w[labels].mean()) == pytest.approx(1.0)
    assert float(w[0] * 17) == pytest.approx(float(w[1] * 100))
    torch.testing.assert_close(class_weights(torch.tensor([0, 1, 1, 0])), torch.ones(2))
    with pytest.raises(ValueError, match="lacks a class"):
        class_weights(torch.tensor([1, 1, 1]))


def test_class_weights_name_the_class_without_training_images():
    with pytest.raises(ValueError) as info:
        class_weights(torch.tensor([0, 0, 1]), num_classes=3, classes=("normal", "pneumonia", "flu"))
    msg = str(info.value)
    assert "no training image of flu (training images per class: normal 2, pneumonia 1, flu 0)" in msg
    assert "[" not in msg and "--classes" in msg


def test_eps_for_epoch_ramp():
    c = TrainConfig(eps=4.0, eps_ramp_epochs=4)
    assert [eps_for_epoch(c, e) for e in range(6)] == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    c15 = TrainConfig(eps=3.0)  # default ramp: 15 epochs, from eps/15
    assert eps_for_epoch(c15, 0) == pytest.approx(0.2)
    assert eps_for_epoch(c15, 14) == 3.0 and eps_for_epoch(c15, 40) == 3.0
    assert all(eps_for_epoch(TrainConfig(eps=2.0, eps_ramp_epochs=0), e) == 2.0 for e in range(3))


def test_preset_config():
    smoke = preset_config("smoke", method="robust")
    assert smoke.preset == "smoke" and smoke.method == "robust"
    assert (smoke.image_size, smoke.epochs, smoke.max_batches, smoke.batch_size) == (64, 1, 3, 16)
    assert preset_config("cpu", epochs=None).epochs == PRESETS["cpu"]["epochs"]  # None = keep the preset's
    assert preset_config("smoke", image_size=32).image_size == 32
    with pytest.raises(ValueError, match="Unknown preset 'fast'") as info:
        preset_config("fast")
    assert "smoke" in str(info.value)
    with pytest.raises(ValueError, match="Unknown method"):
        preset_config("smoke", method="magic")
    with pytest.raises(ValueError, match="image_size"):
        preset_config("smoke", image_size=16)
    with pytest.raises(ValueError, match="lr"):
        preset_config("smoke", lr=0.0)


def test_config_json_roundtrip():
    c = TrainConfig(method="augmix", augmix_ops=("hflip", "rotate"), split_fractions=(0.8, 0.0, 0.2), init=None)
    back = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c
    assert TrainConfig.from_dict({**c.to_dict(), "unknown_future_key": 1}) == c
