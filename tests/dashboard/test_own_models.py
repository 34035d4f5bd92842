"""The dashboard takes what it finds: an imported 3-channel DenseNet-121 for three classes beside the four
shipped-style models (five in all, so the Stress test offers a chooser), its result with confusion matrix and
shortcut audit on the Overview, and distinct colours for every model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixtures
from synthetic_data import class_image
from medrobust.dashboard.captions import VERDICT_LABELS

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def own_models(tiny_checkpoints, tmp_path_factory) -> Path:  # noqa: F811 - pytest fixture
    """The tiny set plus an imported torchvision DenseNet-121 (3 channels, 3 classes) and its audited result."""
    from torchvision.models import densenet121

    from medrobust.audit import run_audit
    from medrobust.checkpoints import import_model, load_checkpoint
    from medrobust.evaluation import EvalConfig, evaluate_model, write_results

    root = tmp_path_factory.mktemp("own")
    shutil.copytree(tiny_checkpoints, root, dirs_exist_ok=True)
    torch.manual_seed(0)
    src = root.parent / "hospital.safetensors"
    save_file({k: v.contiguous() for k, v in densenet121(weights=None, num_classes=3).state_dict().items()}, str(src))
    path, card = import_model(src, arch="densenet121", classes=CLASSES, image_size=32, in_channels=3, out_dir=root,
                              name="hospital-densenet")
    model, card = load_checkpoint(path)
    labels = torch.arange(24) % 3
    images = torch.stack([torch.as_tensor(class_image(int(y), n_classes=3, size=32, seed=i), dtype=torch.float32)
                          for i, y in enumerate(labels)]).unsqueeze(1)
    config = EvalConfig(eps=(1.0, 3.0), severities=(0.1, 0.5), pgd_steps=2, n_boot=40, seed=0, suites=("paper",))
    result = evaluate_model(model, images, labels, config=config, name="hospital-densenet", card=card)
    result["audit"] = run_audit(model=model, images=images, labels=labels, classes=CLASSES, n_boot=40, cam_images=4)
    write_results(result, root / "results")
    return root


@pytest.fixture()
def env(own_models, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(own_models))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    for name in ("MEDROBUST_JOBS", "MEDROBUST_DATA", "MEDROBUST_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return own_models


def _page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    return at.switch_page(path).run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_stress_test_offers_a_chooser_and_shows_the_imported_model(env):
    at = _page("views/stress_lab.py")
    _no_exception(at)
    chooser = at.multiselect(key="stress_models")
    assert "hospital-densenet" in chooser.options and len(chooser.value) == 4
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    chooser = at.multiselect(key="stress_models")
    chooser.set_value(["standard", "robust", "hospital-densenet"]).run()
    _no_exception(at)
    preds = [m.value for m in at.metric if m.label in VERDICT_LABELS]
    assert len(preds) == 3 and preds[2] in CLASSES
    text = "\n".join(str(m.value) for m in at.markdown)
    assert "hospital-densenet" in text
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="steps").set_value(2).run()
    _no_exception(at)
    assert len([m for m in at.metric if m.label in VERDICT_LABELS]) == 3


def test_overview_shows_the_imported_models_confusion_matrix_and_audit(env):
    at = _page("views/overview.py")
    _no_exception(at)
    subheaders = [s.value for s in at.subheader]
    assert any("Confusion matrices" in s for s in subheaders)
    assert any("Shortcut audit" in s for s in subheaders)
    frames = [df.value for df in at.dataframe]
    audit = next(f for f in frames if "lungs blanked" in f.columns)
    assert audit["model"].tolist() == ["hospital-densenet"]


def test_every_model_gets_its_own_colour(own_models):
    from medrobust.dashboard.modelset import load_model_set

    ms = load_model_set(own_models)
    assert len(ms.models) == 5 and all(m.ok for m in ms.models)
    assert len({m.colour for m in ms.models}) == 5
    dense = ms.get("hospital-densenet")
    assert dense.classes == tuple(CLASSES) and dense.model.in_channels == 3


def test_calibration_page_handles_three_classes(env):
    at = _page("views/calibration.py")
    _no_exception(at)
    assert len(at.get("plotly_chart")) >= 2
    text = "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.subheader])
    assert "hospital-densenet" in text or any("hospital-densenet" in str(c.proto) for c in at.get("plotly_chart"))
