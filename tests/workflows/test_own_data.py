"""Bring your own data and model, end to end through the CLI: a 3-class CSV manifest (patients, sources), an
ImageFolder tree and a MedMNIST-format ``.npz`` each train ``smoke`` and evaluate; an imported torchvision
DenseNet-121 with three input channels is evaluated on a test manifest; pickles are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medrobust.checkpoints import load_checkpoint, read_card

from synthetic_data import CLASSES, write_image_folder, write_manifest, write_medmnist_npz
from test_cli import assert_one_line_error, run_main

EVAL_FAST = ["--steps", "2", "--n-boot", "40", "--eps", "1,3", "--suites", "paper"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)


def _train_and_evaluate(tmp_path: Path, data: Path, *extra: str) -> tuple[dict, dict]:
    rc, out, err = run_main(["train", "--method", "standard", "--preset", "smoke", "--image-size", "32",
                             "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress", *extra])
    assert rc == 0, err
    rc, out, err = run_main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--out", str(tmp_path / "res"),
                             *EVAL_FAST])
    assert rc == 0, err
    return read_card(tmp_path / "run" / "model.safetensors"), json.loads((tmp_path / "res" / "run.json").read_text())


def _check_three_class_result(result: dict, classes) -> None:
    assert result["classes"] == list(classes)
    assert set(result["n_per_class"]) == set(classes) and sum(result["n_per_class"].values()) == result["n_test"]
    cm = np.asarray(result["clean"]["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == result["n_test"]
    assert cm.sum(axis=1).tolist() == [result["n_per_class"][c] for c in classes]
    probs = np.asarray(result["predictions"]["probs"])
    assert probs.shape == (result["n_test"], 3) and np.allclose(probs.sum(1), 1.0)
    assert 0.0 <= result["calibration"]["entropy"] <= np.log(3) + 1e-9
    assert "ln 3" in result["calibration_note"]
    assert np.isnan(result["clean"]["sensitivity"])  # a binary notion: not defined for three classes
    assert set(result["clean"]["recall_per_class"]) == set(classes)
    assert 0.0 <= result["clean"]["auroc"] <= 1.0 and 0.0 <= result["clean"]["balanced_accuracy"] <= 1.0
    assert {r["perturbation"] for r in result["rows"]} >= {"clean", "pgd_l2", "gaussian"}


def test_manifest_with_patients_and_sources_trains_evaluates_and_audits(tmp_path):
    ds = write_manifest(tmp_path / "data", bad_rows=True)
    card, result = _train_and_evaluate(tmp_path, ds.root)
    assert card["classes"] == sorted(CLASSES) and card["arch"] == "resnet18" and card["num_classes"] == 3
    assert card["data"]["dropped"] == ds.dropped  # every bad row dropped, counted by reason
    _check_three_class_result(result, sorted(CLASSES))
    # The test patients are whole patients the model never trained on.
    test_patients = {k.split("/")[0] for k in result["predictions"]["keys"]}
    assert test_patients and not (set(card["split"]["train_patients"]) & set(result["predictions"]["keys"]))
    rc, out, err = run_main(["audit", str(tmp_path / "run"), "--data", str(ds.root), "--out", str(tmp_path / "res"),
                             "--n-boot", "40", "--cam-images", "8"])
    assert rc == 0, err
    audited = json.loads((tmp_path / "res" / "run.json").read_text())["audit"]
    assert audited["source_table"]["sources"] == ["site-a", "site-b"]
    assert set(audited["masking"]["conditions"]) == {"clean", "lungs_blanked", "border_blanked"}
    assert audited["verdicts"] and audited["config"]
    rc, out, err = run_main(["report", str(tmp_path / "res")])
    assert rc == 0 and "Shortcut audit" in out, err


def test_explicit_class_order_and_another_architecture(tmp_path):
    ds = write_manifest(tmp_path / "data")
    card, result = _train_and_evaluate(tmp_path, ds.root, "--classes", ",".join(CLASSES),
                                       "--arch", "mobilenet_v3_large")
    assert card["classes"] == list(CLASSES) and card["arch"] == "mobilenet_v3_large"
    model, _ = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert model.arch == "mobilenet_v3_large" and model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    _check_three_class_result(result, CLASSES)


def test_image_folder_tree_trains_and_evaluates(tmp_path):
    ds = write_image_folder(tmp_path / "data")
    card, result = _train_and_evaluate(tmp_path, ds.root)
    assert card["classes"] == list(ds.classes)
    assert any("per image" in w for w in card["data"]["warnings"])  # no patient ids: said plainly
    _check_three_class_result(result, ds.classes)


def test_medmnist_npz_uses_its_own_split(tmp_path):
    ds = write_medmnist_npz(tmp_path / "toymnist.npz", rgb=True)
    card, result = _train_and_evaluate(tmp_path, ds.root)
    assert card["classes"] == ["0", "1", "2"]
    assert card["split"]["counts"] == {"train": 72, "val": 12, "test": 24}
    assert all(k.startswith("toymnist/test/") for k in result["predictions"]["keys"])
    _check_three_class_result(result, ("0", "1", "2"))


def _torchvision_densenet(tmp_path: Path) -> Path:
    from torchvision.models import densenet121

    torch.manual_seed(0)
    net = densenet121(weights=None, num_classes=3).eval()
    path = tmp_path / "hospital-densenet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_imported_densenet_with_three_channels_is_evaluated_on_a_test_manifest(tmp_path):
    weights = _torchvision_densenet(tmp_path)
    ds = write_manifest(tmp_path / "data", with_split=False)
    rc, out, err = run_main(["import-model", str(weights), "--arch", "densenet121", "--classes", ",".join(sorted(CLASSES)),
                             "--image-size", "32", "--in-channels", "3", "--out", str(tmp_path / "ckpt")])
    assert rc == 0, err
    ckpt = tmp_path / "ckpt" / "hospital-densenet.safetensors"
    card = read_card(ckpt)
    assert card["arch"] == "densenet121" and card["in_channels"] == 3 and card["method"] == "imported"
    # Without training patients in its card, evaluate cannot check overlap: it says what to pass.
    rc, out, err = run_main(["evaluate", str(ckpt), "--data", str(ds.root), "--out", str(tmp_path / "res"), *EVAL_FAST])
    assert_one_line_error(rc, err, "evaluate", "--test-manifest")
    rc, out, err = run_main(["evaluate", str(ckpt), "--test-manifest", str(ds.root), "--out", str(tmp_path / "res"),
                             *EVAL_FAST])
    assert rc == 0, err
    result = json.loads((tmp_path / "res" / "hospital-densenet.json").read_text())
    assert result["n_test"] == ds.kept and result["part"] == "test-manifest"
    _check_three_class_result(result, sorted(CLASSES))
    assert "trust" not in result and "no validation patients" in err  # nothing to fit the decision rule on ...
    # ... until the user gives labelled images of other patients: then K classes get a temperature, a referral
    # level and conformal sets, and the verdict is the most probable class.
    fit_ds = write_manifest(tmp_path / "fitdata", with_split=False, sources=("site-c", "site-d"), seed=1)
    rc, out, err = run_main(["fit-decision", str(ckpt), "--fit-data", str(fit_ds.root), "--out", str(tmp_path / "res"),
                             "--n-boot", "30"])
    assert rc == 0, err
    result = json.loads((tmp_path / "res" / "hospital-densenet.json").read_text())
    fit = result["trust"]["fits"]["-1"]
    assert fit["threshold"] is None and fit["n_val"] == fit_ds.kept and fit["temperature"] > 0
    assert "most probable class" in result["trust"]["assessment"]["operating_point"]["note"]
    # the test images themselves are refused as fit data
    rc, out, err = run_main(["fit-decision", str(ckpt), "--fit-data", str(ds.root), "--out", str(tmp_path / "res")])
    assert_one_line_error(rc, err, "fit-decision", "training or test images")


def test_import_refuses_pickles_and_wrong_class_counts(tmp_path):
    from torchvision.models import densenet121

    pth = tmp_path / "model.pth"
    torch.save(densenet121(weights=None, num_classes=3).state_dict(), pth)
    rc, out, err = run_main(["import-model", str(pth), "--arch", "densenet121", "--classes", "a,b,c",
                             "--image-size", "32", "--in-channels", "3", "--out", str(tmp_path / "ckpt")])
    assert_one_line_error(rc, err, "import-model", "safetensors")
    weights = _torchvision_densenet(tmp_path)
    rc, out, err = run_main(["import-model", str(weights), "--arch", "densenet121", "--classes", "a,b",
                             "--image-size", "32", "--in-channels", "3", "--out", str(tmp_path / "ckpt")])
    assert_one_line_error(rc, err, "import-model", "3")
    assert not (tmp_path / "ckpt" / "hospital-densenet.safetensors").exists()


def test_evaluating_on_data_with_classes_the_model_lacks_is_refused(tmp_path):
    weights = _torchvision_densenet(tmp_path)
    ds = write_manifest(tmp_path / "data")
    run_main(["import-model", str(weights), "--arch", "densenet121", "--classes", "normal,pneumonia,flu",
              "--image-size", "32", "--in-channels", "3", "--out", str(tmp_path / "ckpt")])
    rc, out, err = run_main(["evaluate", str(tmp_path / "ckpt" / "hospital-densenet.safetensors"), "--test-manifest",
                             str(ds.root), "--out", str(tmp_path / "res"), *EVAL_FAST, "--no-progress"])
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("medrobust evaluate: error: ") and "covid" in last and "normal, pneumonia, flu" in last
