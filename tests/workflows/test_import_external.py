"""Networks built by timm, MONAI and torchxrayvision (issue 25, items 1 and 2): ``import-model --from LIB``
rebuilds the library's network from its card, keeps the library's normalisation inside the wrapper, replays it
stage by stage for Grad-CAM, and evaluates, audits and shows it on the Stress test like any medrobust model;
torchxrayvision's 18 sigmoid outputs become a K-class task through ``--label-map``.

No network: every route is tested with a seeded random network of the library's architecture saved as
safetensors (torchxrayvision's own weights download from GitHub; its DenseNet is built with weights=None).
Each library's tests skip, saying why, when that extra is not installed; the refusals without a library run
everywhere (the library is hidden from the import system).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medrobust.checkpoints import CheckpointError, import_model, load_checkpoint, sha256_file
from medrobust.gradcam import cam_grid, gradcam
from medrobust.models import cam_layers, head, inference_copy, stages

from synthetic_data import write_manifest
from test_cli import assert_one_line_error, assert_usage_error, run_main

SIZE = 32  # every network here runs at 32 px: the smallest image_size medrobust accepts


@dataclass(frozen=True)
class Route:
    """One library's import: what to build and how the user says it on the command line."""

    library: str
    arch: str
    classes: tuple[str, ...]
    stages: tuple[str, ...]  # the Grad-CAM stage names the card must record
    label_map: str | None = None
    args: dict = field(default_factory=dict)

    @property
    def options(self) -> list[str]:
        return ["--label-map", self.label_map] if self.label_map else []


ROUTES = {
    "timm": Route("timm", "resnet18", ("normal", "pneumonia"), ("layer1", "layer2", "layer3", "layer4")),
    "monai": Route("monai", "DenseNet121", ("covid", "normal", "pneumonia"),
                   tuple(f"features.denseblock{i}" for i in range(1, 5))),
    "torchxrayvision": Route("torchxrayvision", "densenet121-res224-all", ("non-COVID", "COVID-19"),
                             tuple(f"features.denseblock{i}" for i in range(1, 5)),
                             label_map="COVID-19=Pneumonia"),
}
EVAL_FAST = ["--steps", "2", "--n-boot", "40", "--eps", "1", "--suites", "paper", "--no-progress"]


def _need(library: str) -> None:
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed (pip install -c constraints.txt \".[{library}]\")")


def _random_network(route: Route) -> nn.Module:
    """The library's network with seeded random weights and BatchNorm statistics of real activations."""
    from medrobust.external import build_network, builder_kwargs, default_normalisation

    xrv = route.library == "torchxrayvision"
    kwargs = builder_kwargs(route.library, route.arch, kwargs=route.args, in_channels=1,
                            num_outputs=None if xrv else len(route.classes))
    torch.manual_seed(0)
    net, _ = build_network(route.library, route.arch, kwargs)
    mean, std, _ = default_normalisation(route.library, route.arch, in_channels=1, net=net)
    x = (torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) - mean[0]) / std[0]
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # one pass sets the running statistics to those of the batch
    with torch.no_grad():
        net.train()(x)
    return net.eval()


@pytest.fixture(scope="module", params=list(ROUTES))
def imported(request, tmp_path_factory):
    """``(route, net, checkpoint path, card)``: the random network imported with the command line."""
    route = ROUTES[request.param]
    _need(route.library)
    base = tmp_path_factory.mktemp(route.library)
    net = _random_network(route)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if route.library == "torchxrayvision":
        state["op_threshs"] = torch.full((18,), 0.3)  # what xrv.models.get_model(...).state_dict() holds
    src = base / "theirs.safetensors"
    save_file(state, str(src))
    rc, out, err = run_main(["import-model", str(src), "--from", route.library, "--arch", route.arch,
                             "--classes", ",".join(route.classes), "--image-size", str(SIZE), *route.options,
                             "--name", f"{route.library}-model", "--out", str(base / "ckpt")])
    assert rc == 0, err
    path = base / "ckpt" / f"{route.library}-model.safetensors"
    assert str(path) in out
    return route, net, path, json.loads(path.with_suffix(".json").read_text())


def _grey(n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- import and load


def test_the_card_records_library_builder_and_preprocessing_and_loading_rebuilds_the_network(imported):
    route, net, path, card = imported
    assert card["method"] == "imported" and card["classes"] == list(route.classes) and card["image_size"] == SIZE
    assert card["library"] == route.library and card["library_version"] == importlib.metadata.version(route.library)
    assert card["builder"]["name"] == route.arch and card["arch"] == f"{route.library}:{route.arch}"
    assert list(card["stage_modules"]) == ["stem", *route.stages]
    assert "[0, 1]" in card["preprocessing"]["input"] and card["sha256"] == sha256_file(path)
    model, loaded = load_checkpoint(path)
    assert loaded == card and not model.training and model.num_classes == len(route.classes)
    x = _grey()
    with torch.no_grad():
        theirs = net((x - model.mean) / model.std)
        ours = model(x)
    if route.library != "torchxrayvision":
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the library's network, its weights, its forward
    else:
        assert torch.allclose(torch.softmax(ours, 1)[:, 1], torch.sigmoid(theirs[:, 8]), atol=1e-6)


def test_each_librarys_normalisation_lives_inside_the_model(imported):
    route, net, path, card = imported
    expected = {"timm": ([0.449], [0.226], "timm's data config of resnet18, averaged over RGB"),  # as medrobust's grey
                "monai": ([0.0], [1.0], "none: the [0, 1] image as it is"),  # MONAI pipelines scale to [0, 1]
                "torchxrayvision": ([0.5], [1 / 2048], "xrv.datasets.normalize")}[route.library]
    assert (card["mean"], card["std"]) == expected[:2]
    assert expected[2] in card["preprocessing"]["normalisation"]
    if route.library == "torchxrayvision":
        import torchxrayvision as xrv

        model, _ = load_checkpoint(path)
        x = _grey(1)
        theirs = torch.from_numpy(xrv.datasets.normalize((x * 255).numpy(), 255))  # xrv's own [-1024, 1024]
        assert float(theirs.min()) >= -1024 and float(theirs.max()) <= 1024
        with torch.no_grad():
            torch.testing.assert_close(model.net(model.normalise(x)), net(theirs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("imported", ["torchxrayvision"], indirect=True)
def test_torchxrayvision_output_is_the_chosen_sigmoid_with_op_threshs_off(imported):
    route, net, path, card = imported
    assert card["label_map"] == {"non-COVID": "rest", "COVID-19": "Pneumonia"}
    assert len(card["outputs"]) == 18 and card["outputs"][8] == "Pneumonia"
    assert card["native_size"] == 224 and card["dropped_keys"] == ["op_threshs"]
    assert "off" in card["preprocessing"]["op_threshs"]
    model, _ = load_checkpoint(path)
    assert getattr(model.net, "op_threshs", None) is None
    x = _grey(4)
    with torch.no_grad():
        z = net((x - 0.5) * 2048)[:, 8]
        logits = model(x)
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], torch.sigmoid(z), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, torch.stack([-z / 2, z / 2], 1), rtol=1e-5, atol=1e-5)


def test_a_three_class_label_map_is_softmax_over_the_chosen_outputs_and_the_rest(tmp_path):
    _need("torchxrayvision")
    route = Route("torchxrayvision", "resnet50-res512-all", ("effusion", "normal", "oedema"),
                  tuple(f"model.layer{i}" for i in range(1, 5)), label_map="effusion=Effusion,oedema=Edema")
    net = _random_network(route)  # torchxrayvision's ResNet-50 modules (its constructor would download weights)
    src = tmp_path / "xrv.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src))
    _, card = import_model(src, library="torchxrayvision", arch=route.arch, classes=list(route.classes),
                           label_map=route.label_map, image_size=SIZE, out_dir=tmp_path / "o")
    assert card["label_map"] == {"effusion": "Effusion", "normal": "rest", "oedema": "Edema"}
    assert card["native_size"] == 512 and list(card["stage_modules"])[1:] == list(route.stages)
    model, _ = load_checkpoint(tmp_path / "o" / "xrv.safetensors")
    x = _grey(4)
    with torch.no_grad():
        z = net((x - 0.5) * 2048)
        p = torch.softmax(model(x), 1)
    odds = torch.stack([z[:, 7].exp(), torch.ones(4), z[:, 4].exp()], 1)  # Effusion, none, Edema
    torch.testing.assert_close(p, odds / odds.sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert gradcam(model, x[:1], class_index=1, layer=route.stages[-1])[0].max() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Grad-CAM


def test_stages_replay_the_network_and_gradcam_explains_every_stage_without_changing_it(imported):
    route, _, path, card = imported
    model, _ = load_checkpoint(path)
    x = _grey(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert cam_layers(model) == route.stages
    with torch.no_grad():
        h = model.normalise(x)
        for _, stage in stages(model):
            h = stage(h)
        torch.testing.assert_close(head(model, h), model(x), rtol=1e-5, atol=1e-5)
    grids = cam_grid(model, route.stages, size=SIZE)
    assert all(a >= b for a, b in zip([g[0] for g in grids], [g[0] for g in grids[1:]]))  # shallow -> deep
    for c in range(model.num_classes):
        cam, logits = gradcam(model, x, class_index=c, layer=route.stages[-2:])
        assert cam.shape == (SIZE, SIZE) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
        assert torch.allclose(logits, model(x).detach(), atol=1e-5)
    frozen = inference_copy(model).requires_grad_(False)  # what the Stress test shares
    assert gradcam(frozen, x, layer=route.stages[-1])[0].shape == (SIZE, SIZE)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- evaluate and audit


def test_evaluate_with_attacks_corruptions_and_audit(imported, tmp_path):
    route, _, path, card = imported
    data = write_manifest(tmp_path / "data", classes=route.classes, patients_per_class=2, size=SIZE)
    rc, _, err = run_main(["evaluate", str(path), "--test-manifest", str(data.root), "--out", str(tmp_path / "res"),
                           "--audit", *EVAL_FAST])
    assert rc == 0, err
    result = json.loads((tmp_path / "res" / f"{route.library}-model.json").read_text())
    assert result["classes"] == list(route.classes) and result["n_test"] == 4 * len(route.classes)
    assert result["model_sha256"] == card["sha256"]
    suites = {r["suite"] for r in result["rows"]}
    assert {"clean", "attack"} <= suites and len(suites) >= 3  # plus the paper's noises
    attack = [r for r in result["rows"] if r["suite"] == "attack"]
    assert attack and all(0 <= r["accuracy"] <= 1 for r in attack)
    assert result["audit"]["cam"]["n_images"] > 0 and result["audit"]["classes"] == list(route.classes)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("label_map, message", [
    ("COVID-19=Covid", "has no output 'Covid'"),
    ("COVID-19=pneumonia", "did you mean Pneumonia?"),
    ("covid=Pneumonia", "not among the classes"),
    ("COVID-19=Pneumonia,non-COVID=Pneumonia", "more than one class"),
    ("COVID-19=rest,non-COVID=rest", "at most one class may be the rest"),
])
def test_a_label_map_naming_what_the_model_lacks_is_one_line(tmp_path, label_map, message):
    _need("torchxrayvision")
    src = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(src))
    rc, _, err = run_main(["import-model", str(src), "--from", "torchxrayvision", "--arch", "densenet121-res224-all",
                           "--classes", "non-COVID,COVID-19", "--label-map", label_map, "--out", str(tmp_path / "o")])
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and message in err, err
    if "has no output" in message:  # the valid names are listed
        assert "Atelectasis" in err and "Enlarged Cardiomediastinum" in err and "''" not in err
    assert not (tmp_path / "o").exists()


def test_a_label_map_that_is_not_class_equals_output_is_a_usage_error(tmp_path):
    rc, _, err = run_main(["import-model", str(tmp_path / "w.safetensors"), "--from", "torchxrayvision", "--arch",
                           "densenet121-res224-all", "--classes", "non-COVID,COVID-19", "--label-map", "COVID-19"])
    assert_usage_error(rc, err, "'COVID-19' is not CLASS=OUTPUT (e.g. COVID-19=Pneumonia)")


@pytest.mark.parametrize("library, arch, options, message", [
    ("torchxrayvision", "densenet121-res224-all", ["--classes", "a,b"], "--label-map COVID-19=Pneumonia"),
    ("torchxrayvision", "densenet121-res224-all", ["--classes", "a,b,c", "--label-map", "a=Pneumonia"],
     "leaves classes b, c without an output"),
    ("torchxrayvision", "densenet121-res999", ["--classes", "a,b", "--label-map", "a=Pneumonia"],
     "choose one of densenet121-res224-all"),
    ("torchxrayvision", "densenet121-res224-all", ["--classes", "a,b", "--label-map", "a=Mass", "--mean", "0.4"],
     "leave --mean and --std out"),
    ("timm", "resnet18", ["--classes", "a,b", "--image-size", "32", "--label-map", "a=b"], "torchxrayvision's multi-label"),
    ("timm", "resnet18", ["--classes", "a,b"], "--image-size is required"),
    ("timm", "no_such_net", ["--classes", "a,b", "--image-size", "32"], "Unknown timm model 'no_such_net'"),
    ("timm", "resnet18", ["--classes", "a,b", "--image-size", "32", "--arg", "pretrained=true"], "leave pretrained out"),
    ("timm", "resnet18", ["--classes", "a,b", "--image-size", "32", "--arg", "in_chans=3"], "contradicts --in-channels"),
    ("timm", "test_vit", ["--classes", "a,b", "--image-size", "32", "--arg", "img_size=32"],
     "cannot split it into a stem, four stages and a head"),
    ("monai", "UNet", ["--classes", "a,b", "--image-size", "32"], "Unsupported MONAI network 'UNet'"),
    ("monai", "DenseNet121", ["--classes", "a,b", "--image-size", "32", "--arg", "spatial_dims=3"], "contradicts 2-D"),
])
def test_bad_imports_are_one_line_errors(tmp_path, library, arch, options, message):
    _need(library)
    src = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(src))
    rc, _, err = run_main(["import-model", str(src), "--from", library, "--arch", arch, *options,
                           "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, err, "import-model", message)


def test_weights_that_do_not_fit_the_librarys_network_name_the_keys(tmp_path):
    _need("timm")
    from timm import create_model

    src = tmp_path / "w.safetensors"
    save_file(create_model("resnet18", num_classes=5, in_chans=1).state_dict(), str(src))
    with pytest.raises(CheckpointError, match=r"fc.weight has shape \(5, 512\), expected \(2, 512\)"):
        import_model(src, library="timm", arch="resnet18", classes=["a", "b"], image_size=SIZE, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="is not a timm resnet34 state dict: .* missing"):
        import_model(src, library="timm", arch="resnet34", classes=list("abcde"), image_size=SIZE, out_dir=tmp_path)


@pytest.mark.parametrize("library", ["timm", "monai", "torchxrayvision"])
def test_without_the_library_import_and_load_name_the_extra_in_one_line(tmp_path, monkeypatch, library):
    src = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(src))
    card = {"name": "w", "method": "imported", "arch": f"{library}:x", "library": library, "library_version": "1.0",
            "builder": {"name": "x", "kwargs": {}}, "stage_modules": {"stem": []}, "num_classes": 2,
            "classes": ["a", "b"], "image_size": SIZE, "sha256": sha256_file(src)}
    src.with_suffix(".json").write_text(json.dumps(card))
    monkeypatch.setitem(sys.modules, library, None)  # as if it were not installed
    hint = f'pip install -c constraints.txt ".[{library}]"'
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(src)
    assert hint in str(exc.value) and "\n" not in str(exc.value)
    options = ["--label-map", "b=Mass"] if library == "torchxrayvision" else ["--image-size", "32"]
    rc, _, err = run_main(["import-model", str(src), "--from", library, "--arch", "x", "--classes", "a,b", *options,
                           "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, err, "import-model", hint)


def test_importing_the_library_leaves_warning_filters_alone():
    _need("torchxrayvision")
    from medrobust.external import require

    before = list(__import__("warnings").filters)
    require("torchxrayvision")  # torchxrayvision's own import says warnings.filterwarnings("ignore")
    assert list(__import__("warnings").filters) == before


# ----------------------------------------------------------------------------- the Stress test


def test_the_stress_test_runs_each_imported_model(tmp_path_factory, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard_fixtures import png_bytes, xray_like
    from medrobust.dashboard.captions import VERDICT_LABELS

    folder = tmp_path_factory.mktemp("stress")
    names = []
    for library, route in ROUTES.items():
        if importlib.util.find_spec(library) is None:
            continue
        net = _random_network(route)
        src = folder.parent / f"{library}-src.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src))
        import_model(src, library=library, arch=route.arch, classes=list(route.classes), image_size=SIZE,
                     label_map=route.label_map, out_dir=folder, name=library)
        names.append(library)
    if not names:
        pytest.skip("none of timm, monai, torchxrayvision is installed")
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(folder))
    for var, sub in (("MEDROBUST_RESULTS", "results"), ("MEDROBUST_RUNS", "runs")):
        monkeypatch.setenv(var, str(folder.parent / sub))
    for var in ("MEDROBUST_JOBS", "MEDROBUST_DATA", "MEDROBUST_ADMIN_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120).run()
    at = at.switch_page("views/stress_lab.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len([m for m in at.metric if m.label in VERDICT_LABELS]) == len(names)
    text = "\n".join(str(m.value) for m in at.markdown)
    assert all(n in text for n in names)
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="steps").set_value(2).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len([m for m in at.metric if m.label in VERDICT_LABELS]) == len(names)
