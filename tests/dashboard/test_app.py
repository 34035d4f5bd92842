"""The dashboard, page by page, through Streamlit's AppTest (no browser), on a tiny self-made model set."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import (  # noqa: F401 - fixtures
    broken_checkpoints,
    cv_checkpoints,
    compressed_dicom_bytes,
    dashboard_env,
    dicom_bytes,
    png_bytes,
    tiny_checkpoints,
    xray_like,
)
from medrobust import report
from medrobust.dashboard.captions import VERDICT_LABELS

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
TIMEOUT = 60
STRESS = "views/stress_lab.py"


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    return at.run()


def _page(path: str) -> AppTest:
    at = _app()
    return at.switch_page(path).run()


def _texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader", "header",
                 "text", "code", "exception"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    return "\n".join(parts)


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _predictions(at: AppTest) -> list[str]:
    return [m.value for m in at.metric if m.label in VERDICT_LABELS]


# ----------------------------------------------------------------------------- Overview / Calibration / Downloads

def test_overview_is_the_landing_page_with_tables_curves_and_warnings(dashboard_env):
    at = _app()
    _no_exception(at)
    text = _texts(at)
    assert "Table I" in text and "Table II" in text
    assert len(at.dataframe) >= 2
    t1 = next(d.value for d in at.dataframe if "clean acc [95% CI]" in d.value.columns)
    assert "The paper's claims, decided" in text
    assert list(t1["method"]) == ["standard", "robust", "augmix", "robustaugmix"]
    assert "clean bal. acc [95% CI]" in t1.columns and "clean acc [95% CI]" in t1.columns
    assert all("[" in v for v in t1["clean acc [95% CI]"])  # CIs shown
    # robustaugmix was evaluated with a constant model: flagged, with a visible warning.
    assert any("robustaugmix" in w.value and "mean nothing" in w.value for w in at.warning)
    assert "What this means for a clinician" in text and "Balanced accuracy" in text
    assert len(at.get("plotly_chart")) >= 1
    labels = [b.label for b in at.get("download_button")]
    assert any("CSV" in l for l in labels) and any("JSON" in l for l in labels)



def test_overview_shows_the_attack_checks_a_result_carries(dashboard_env, tmp_path, monkeypatch):
    import shutil

    ckpts = tmp_path / "ckpts"
    shutil.copytree(dashboard_env, ckpts)
    path = ckpts / "results" / "robust.json"
    result = json.loads(path.read_text())
    check = {"n": 8, "eps": 2.0, "square": {"n_queries": 50, "square_accuracy": 0.5, "masking_suspected": True},
             "budget": {"factor": 2, "accuracy": 0.625, "accuracy_larger_budget": 0.625, "gap": 0.0, "gap_ok": True}}
    result.setdefault("sanity", {})["attack_checks"] = {"ok": False, "by_eps": [check]}
    path.write_text(json.dumps(result))
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(ckpts))
    at = _app()
    _no_exception(at)
    tables = [d.value for d in at.dataframe if "Square %" in d.value.columns]
    assert len(tables) == 1 and list(tables[0]["model"]) == ["robust"]
    assert tables[0]["verdict"][0] == "gradient masking suspected" and tables[0]["Square %"][0] == "50.0"


def test_overview_can_show_an_earlier_attempt_beside_the_shipped_set(dashboard_env):
    import shutil

    attempt = dashboard_env / "attempts" / "64px-from-scratch"
    attempt.mkdir(parents=True)
    shutil.copy(dashboard_env / "results" / "standard.json", attempt / "standard.json")
    at = _app()
    _no_exception(at)
    table_one = lambda: next(d.value for d in at.dataframe if "clean acc [95% CI]" in d.value.columns)  # noqa: E731
    assert len(table_one()) == 4  # attempts are opt-in
    picker = at.multiselect(key="overview_attempts")
    assert "64px-from-scratch" in picker.options[0]
    picker.set_value(picker.options).run()
    _no_exception(at)
    names = list(table_one()["model"])
    assert len(names) == 5 and "standard [64px-from-scratch]" in names

def test_calibration_page_shows_a_reliability_diagram_per_model(dashboard_env):
    at = _page("views/calibration.py")
    _no_exception(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 4 + 2  # four reliability diagrams, confidence histograms, entropy
    assert "Reliability diagrams" in _texts(at)


def test_overview_leads_with_the_cross_validation_and_switches_suite_and_metric(cv_checkpoints, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(cv_checkpoints))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    at = _app()
    _no_exception(at)
    text = _texts(at)
    assert "Cross-validated results" in text and "40 images of 20 patients" in text
    # The page opens with a short summary; the rest sits in sections a reader can skip.
    glance = str(at.markdown[0].value)
    assert glance.startswith("#### At a glance") and len(glance.splitlines()) <= 6 and "chance 50 %" in glance
    assert [t.label for t in at.tabs][:2] == ["Claims and reading", "Robustness"]
    heads = [h.value for h in at.subheader]
    assert heads[0].startswith("Cross-validated results") and any(h.startswith("Table I") for h in heads[1:])
    assert "Is a method better than standard?" in text and "cv-robust" in text and "cv-standard" in text
    assert "The paper's own figures" in text and "95.96" in text  # the paper's Table I beside ours
    for suite in ("clinical", "paper"):
        for metric in ("auroc", "accuracy", "balanced_accuracy"):
            at.radio(key="ov_suite").set_value(suite).run()
            at.radio(key="ov_metric").set_value(metric).run()
            _no_exception(at)
    at.radio(key="ov_suite").set_value("clinical").run()
    assert "Clinical suite" in _texts(at)
    for page in ("views/calibration.py", "views/downloads.py"):  # the other result pages take the pooled set too
        at.switch_page(page).run()
        _no_exception(at)
    at.switch_page("views/overview.py").run()
    # The single-split shipped set is still one choice away.
    single = at.selectbox(key="overview_set").options[1]
    at.selectbox(key="overview_set").set_value(single).run()
    _no_exception(at)
    assert "Cross-validated results" not in _texts(at)
    # ... and the set chosen on one page is the set on every page that shows results (for this browser session).
    for page, key in (("views/calibration.py", "calibration_set"), ("views/downloads.py", "downloads_set"),
                      ("views/overview.py", "overview_set")):
        at.switch_page(page).run()
        _no_exception(at)
        assert at.selectbox(key=key).value == single, page
    at.switch_page("views/calibration.py").run()
    first = at.selectbox(key="calibration_set").options[0]
    at.selectbox(key="calibration_set").set_value(first).run()
    at.switch_page("views/overview.py").run()
    assert at.selectbox(key="overview_set").value == first
    assert "Cross-validated results" in _texts(at)


def test_overview_sentences_state_the_numbers_of_the_table_rows_they_describe(cv_checkpoints, monkeypatch, tmp_path):
    """Each plain sentence's "B − A = d [lo, hi]" is, character for character, the paired table's cell for the same
    models, condition and metric (one formatter, one direction); p-values are never "0.000"."""
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(cv_checkpoints))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    at = _app()
    _no_exception(at)
    md = [str(m.value) for m in at.markdown]
    cells, metric = {}, None
    for block in md:
        if block.startswith("**") and block.endswith("**") and block.strip("*") in report.METRIC_LABELS.values():
            metric = block.strip("*")
        elif block.startswith("| B − A |") and metric:
            for line in block.splitlines()[2:]:
                pair, cond, diff, p, _ = (c.strip() for c in line.strip("|").split("|"))
                cells[(metric, pair, cond)] = diff
                assert p != "0.000" and (p == "< 0.001" or float(p) >= 0.001), line
    sentence = re.compile(r"\*\*(?P<cond>[^*]+)\*\*, (?P<metric>[^:]+): (?P<pair>\S+ − \S+) = (?P<diff>[^:]+): ")
    found = [m for block in md for line in block.splitlines() if (m := sentence.search(line))]
    assert len(found) >= 3, md
    for m in found:
        assert cells[(m["metric"], m["pair"], m["cond"])] == m["diff"], m.group(0)


def test_downloads_page(dashboard_env):
    at = _page("views/downloads.py")
    _no_exception(at)
    assert len(at.get("download_button")) == 2
    assert "No stress test in this session yet" in _texts(at)


def test_pages_say_what_to_do_when_nothing_is_there(tmp_path, monkeypatch):
    for var in ("MEDROBUST_CHECKPOINTS", "MEDROBUST_RESULTS", "MEDROBUST_RUNS"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    at = _app()
    _no_exception(at)
    assert "No evaluation results yet" in _texts(at)
    for page in ("views/calibration.py", "views/downloads.py", STRESS, "views/training.py"):
        at.switch_page(page).run()
        _no_exception(at)
    at.switch_page(STRESS).run()
    assert "No model checkpoints found" in _texts(at)


# ----------------------------------------------------------------------------- Stress test

def test_stress_test_png_sliders_and_four_predictions(dashboard_env):
    at = _page(STRESS)
    _no_exception(at)
    assert "showing an example" in _texts(at)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    _no_exception(at)
    # The default is the clinical suite, each level with its physical meaning.
    assert at.radio(key="kind").value == "clinical"
    assert len(_predictions(at)) == 4 and "Gaussian noise, level 2: σ 0.08 (about 20 of 255 grey levels)" in _texts(at)
    for corruption, level, meaning in (("jpeg_compression", 4, "JPEG quality 3"), ("poisson_noise", 5, "5 photons"),
                                       ("gaussian_blur", 1, "blur kernel 11 px"), ("resolution_loss", 2, "12 px across")):
        at.selectbox(key="corruption").set_value(corruption).run()
        at.select_slider(key="level").set_value(level).run()
        _no_exception(at)
        assert len(_predictions(at)) == 4 and meaning in _texts(at), corruption
    at.radio(key="kind").set_value("none").run()
    clean = _predictions(at)
    assert len(clean) == 4
    # The paper's noises on the paper's scale, said in grey levels.
    at.radio(key="kind").set_value("gaussian").run()
    assert at.slider(key="severity").value == 0.1 and "σ 0.32, 81 of 255 grey levels" in _texts(at)
    at.slider(key="severity").set_value(0.8).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4
    assert "severity 0.8" in _texts(at) and "of 255 grey levels" in _texts(at)
    assert all(m.delta in ("changed", "unchanged") for m in at.metric if m.label in VERDICT_LABELS)  # label unknown
    for kind in ("salt_and_pepper", "speckle"):
        at.radio(key="kind").set_value(kind).run()
        _no_exception(at)
        assert len(_predictions(at)) == 4
    # PGD, each model on its own, then transferred from one model to all.
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="eps").set_value(2.0).run()
    at.slider(key="steps").set_value(3).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4 and "L2 PGD, eps 2" in _texts(at)
    assert "eps 2 spread evenly is 0.0089 per pixel, 2 of 255 grey levels" in _texts(at)
    assert "L2 length, pixels on a 0–1 scale" in _texts(at) and "largest single-pixel change" in _texts(at)
    at.radio(key="mode").set_value("transfer").run()
    at.selectbox(key="source_model").set_value("robust").run()
    _no_exception(at)
    assert len(_predictions(at)) == 4 and "crafted on robust" in _texts(at)
    # Back to none: the clean predictions again.
    at.radio(key="kind").set_value("none").run()
    assert _predictions(at) == clean
    # The snapshot is offered for download and kept for the Downloads page.
    labels = [b.label for b in at.get("download_button")]
    assert any("snapshot" in l.lower() for l in labels)
    assert at.session_state["stress_snapshot"]["zip"]()[:2] == b"PK"  # built when downloaded


def test_stress_test_shows_an_example_xray_without_any_upload(dashboard_env):
    from medrobust.dashboard import examples

    shipped = examples.list_examples()
    at = _page(STRESS)
    _no_exception(at)
    assert "showing an example" in _texts(at)
    assert len(_predictions(at)) == 4  # four models answer on the example at once
    first = _texts(at)
    assert shipped[0].license in first and "split" in first
    # Every example can be picked, and the page says which split of the shipped models it came from.
    for i, ex in enumerate(shipped[1:], start=1):
        at.selectbox(key="example").set_value(i).run()
        _no_exception(at)
        assert len(_predictions(at)) == 4
        assert f"{ex.split} split" in _texts(at) and ex.class_name in _texts(at)
    # An upload replaces the example.
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    _no_exception(at)
    assert "showing an example" not in _texts(at)


def test_stress_test_smallest_flipping_eps(dashboard_env):
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    at.slider(key="flip_steps").set_value(5).run()
    at.button(key="find_flip").click().run()
    _no_exception(at)
    found = [c.value for c in at.caption if c.value.startswith("Smallest flipping eps:")]
    assert len(found) == 4 and all(("eps ≈" in f) or ("not flipped" in f) for f in found)
    assert "Smallest eps that flips each prediction" in _texts(at)
    snap = at.session_state["stress_snapshot"]["json"]
    assert '"smallest_flip_eps": [' in snap


def test_stress_test_16bit_png_and_colour_jpeg(dashboard_env):
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest16.png", png_bytes(xray_like(120), bits=16), "image/png")).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4
    assert "16-bit" in _texts(at)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((xray_like(80) * 255).astype(np.uint8)).convert("RGB").save(buf, format="JPEG")
    at.file_uploader[0].set_value(("colour.jpg", buf.getvalue(), "image/jpeg")).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4 and "JPEG" in _texts(at)


def test_stress_test_dicom_shows_no_patient_tag_and_writes_nothing(dashboard_env, tmp_path):
    data = dicom_bytes(xray_like(64), monochrome1=True, patient_name="Secretname^Patient")
    t0 = time.time()
    at = _page(STRESS)
    # No .dcm extension: detected by the DICM marker.
    at.file_uploader[0].set_value(("upload", data, "application/octet-stream")).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4
    text = _texts(at)
    assert "DICOM" in text
    snapshot = at.session_state["stress_snapshot"]["json"]
    for secret in ("Secretname", "SECRET-ID-12345"):
        assert secret not in text and secret not in snapshot
    # Nothing holding the upload was written, neither to the temp folder nor into the repository.
    needle = b"SECRET-ID-12345"
    for root in (Path(tempfile.gettempdir()), REPO):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", "bash_jobs.0") and not d.startswith("pytest-")]
            for f in filenames:
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                    if st.st_mtime >= t0 and st.st_size < 5_000_000 and p.is_file():
                        assert needle not in p.read_bytes(), f"upload written to {p}"
                except OSError:
                    continue


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(side: int = 30000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4)  # far too little data: a decoder must not allocate first
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


BAD_FILES = {
    "empty": ("empty.png", b"", "empty"),
    "truncated": ("cut.png", png_bytes(xray_like())[:200], "truncated or corrupt"),
    "not an image": ("notes.png", b"hello, this is text, not an X-ray\n" * 20, "not a readable"),
    "bomb": ("bomb.png", _bomb_png(), "pixels"),
    "dicom without pixels": ("nopix.dcm", dicom_bytes(xray_like(32), with_pixels=False), "no pixel data"),
    "compressed dicom": ("j2k.dcm", compressed_dicom_bytes(xray_like(32)), "compressed transfer syntax"),
}


def test_stress_test_bad_files_give_one_clear_message_and_the_app_goes_on(dashboard_env):
    at = _page(STRESS)
    for name, (fname, data, expected) in BAD_FILES.items():
        t = time.time()
        at.file_uploader[0].set_value((fname, data, "application/octet-stream")).run()
        _no_exception(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and expected in errors[0], (name, errors)
        assert not _predictions(at)
        assert time.time() - t < 30, name
    at.file_uploader[0].set_value(("good.png", png_bytes(xray_like()), "image/png")).run()
    _no_exception(at)
    assert not at.error and len(_predictions(at)) == 4


def test_a_checkpoint_that_fails_to_load_gets_an_error_card(dashboard_env, broken_checkpoints, monkeypatch):
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(broken_checkpoints))
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    _no_exception(at)
    assert len(_predictions(at)) == 3
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "robust.safetensors" in errors[0] and "sha256" in errors[0]


def test_stress_test_samples_from_a_configured_data_folder(dashboard_env, tmp_path, monkeypatch):
    from conftest import make_actualmed_root, make_covid_root

    make_covid_root(tmp_path / "data", n_covid=12, n_other=8)
    make_actualmed_root(tmp_path / "data")
    monkeypatch.setenv("MEDROBUST_DATA", os.pathsep.join(str(tmp_path / "data" / d) for d in ("covid-chestxray", "actualmed")))
    at = _page(STRESS)
    at.radio(key="source").set_value("Sample from the test split").run()
    _no_exception(at)
    # The synthetic X-rays are 44 px wide: the input check refuses them, and one click shows the answers anyway.
    assert any("Outside what these models were trained on" in e.value for e in at.error)
    at.toggle(key="reveal_flagged").set_value(True).run()
    assert len(_predictions(at)) == 4
    assert "true class of this image" in _texts(at)


# ----------------------------------------------------------------------------- Training

def test_training_page_is_open_without_a_token_and_refuses_bad_data(dashboard_env, tmp_path):
    at = _page("views/training.py")
    _no_exception(at)
    assert "Training is open to anyone" in _texts(at)
    assert "No job has run yet" in _texts(at)
    at.text_area(key="t_data").set_value(str(tmp_path / "nowhere"))
    at.form_submit_button(key="launch").click().run()
    _no_exception(at)
    assert any("does not exist" in e.value for e in at.error)


def test_training_page_asks_for_the_admin_token(dashboard_env, monkeypatch, tmp_path):
    from conftest import make_covid_root

    monkeypatch.setenv("MEDROBUST_ADMIN_TOKEN", "s3cret-token")
    root = make_covid_root(tmp_path / "data")
    at = _page("views/training.py")
    assert "open to anyone" not in _texts(at)
    at.text_input(key="admin_token").set_value("wrong")
    at.text_area(key="t_data").set_value(str(root.path))
    at.form_submit_button(key="launch").click().run()
    _no_exception(at)
    assert any("admin token is wrong" in e.value for e in at.error)
    assert not list((Path(os.environ["MEDROBUST_RUNS"]) / ".jobs").glob("*.json"))


# ----------------------------------------------------------------------------- the real shipped folder

def test_app_runs_on_the_shipped_checkpoints(monkeypatch):
    shipped = REPO / "checkpoints"
    if not list(shipped.glob("*.safetensors")):
        pytest.skip("checkpoints/ holds no shipped models yet")
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(shipped))
    at = _app()
    _no_exception(at)
    # A fresh clone opens on the four cross-validated methods, pooled over every labelled image, with the
    # seed spread beside the paired differences.
    text = _texts(at)
    assert "Cross-validated results" in text and "571 images of 348 patients" in text
    assert all(f"cv-{m}" in text for m in ("standard", "robust", "augmix", "robustaugmix"))
    assert "Is a difference more than a reseed?" in text
    at.switch_page(STRESS).run()
    at.file_uploader[0].set_value(("chest.png", _example_png(1), "image/png")).run()
    _no_exception(at)
    n_files = len([p for p in shipped.glob("*.safetensors") if p.stem != "input_check"])
    assert len(_predictions(at)) >= 1
    assert len(_predictions(at)) + len(at.error) == n_files  # a model that fails to load has an error card
    at.switch_page("views/calibration.py").run()
    _no_exception(at)


def _cam_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions if c.startswith("Grad-CAM")]


def test_stress_test_grad_cam_names_its_class_and_grid_and_draws_no_empty_or_repeated_tile(dashboard_env):
    import zipfile

    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    at.radio(key="kind").set_value("none").run()
    _no_exception(at)
    # No perturbation: per model the input and one Grad-CAM, no "no perturbation" tile, no "perturbed" map.
    captions = [c for img in at.image for c in img.captions]
    cams = _cam_captions(at)
    assert len(cams) == 4 and not any("perturb" in c for c in captions), captions
    # Each map names the class it explains: the model's most probable class on that input.
    snap = json.loads(at.session_state["stress_snapshot"]["json"])
    assert [c.split(" (flat")[0] for c in cams] == [f"Grad-CAM for {m['clean']['class']}" for m in snap["models"]]
    assert "most probable" in snap["grad_cam_explains"] and "most probable on that input" in _texts(at)
    with zipfile.ZipFile(io.BytesIO(at.session_state["stress_snapshot"]["zip"]())) as zf:
        assert not any(n.endswith(("perturbation.png", "cam_perturbed.png")) for n in zf.namelist())
    # And the layer and native grid behind it (32 px models: layer3 by default, a 2×2 map).
    assert _texts(at).count("layer3: 2×2 map, upsampled bilinearly to 32 px") == 4
    # With a perturbation, by default only the clean map (computed once per image), and the card says the perturbed
    # one is off; switched on, a clean and a perturbed map per model, each naming its own input's class.
    at.radio(key="kind").set_value("gaussian").run()
    _no_exception(at)
    cams = [c.split(" (flat")[0] for c in _cam_captions(at)]
    snap = json.loads(at.session_state["stress_snapshot"]["json"])
    assert cams == [f"Grad-CAM for {m['clean']['class']}, clean input" for m in snap["models"]]
    assert sum("Grad-CAM of the perturbed input: off" in c.value for c in at.caption) == 4
    with zipfile.ZipFile(io.BytesIO(at.session_state["stress_snapshot"]["zip"]())) as zf:
        assert not any(n.endswith("cam_perturbed.png") for n in zf.namelist())
    at.toggle(key="cam_perturbed").set_value(True).run()
    _no_exception(at)
    cams = [c.split(" (flat")[0] for c in _cam_captions(at)]
    snap = json.loads(at.session_state["stress_snapshot"]["json"])
    assert cams == [f"Grad-CAM for {m[which]['class']}, {which} input" for m in snap["models"]
                    for which in ("clean", "perturbed")]
    at.selectbox(key="cam_layer").set_value("layer3+layer4").run()
    _no_exception(at)
    assert _texts(at).count("layer3 + layer4: 2×2 and 1×1 maps averaged, upsampled bilinearly to 32 px") == 4


def test_stress_test_runs_apgd_and_the_worst_case(dashboard_env):
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="steps").set_value(3).run()
    for method, text in (("apgd", "L2 APGD-CE, eps 1"), ("ensemble", "L2 worst case of PGD and APGD-CE, eps 1")):
        at.radio(key="attack_method").set_value(method).run()
        _no_exception(at)
        assert len(_predictions(at)) == 4 and text in _texts(at)


def _example_png(i: int) -> bytes:
    """One of the shipped, CC BY-licensed example X-rays (medrobust/dashboard/examples/ATTRIBUTION.md)."""
    return next((REPO / "medrobust" / "dashboard" / "examples").glob(f"example-{i}-*.png")).read_bytes()


def _rotated_png(i: int, k: int) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(_example_png(i)))
    buf = io.BytesIO()
    Image.fromarray(np.rot90(np.asarray(img), k).copy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shipped_env(monkeypatch, tmp_path):
    shipped = REPO / "checkpoints"
    if not (shipped / "results" / "standard.json").is_file():
        pytest.skip("checkpoints/ holds no shipped models yet")
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(shipped))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    return shipped


def test_stress_test_gives_verdicts_at_the_operating_point_with_calibrated_probabilities(shipped_env):
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", _example_png(2), "image/png")).run()
    _no_exception(at)
    verdicts = [m for m in at.metric if m.label in VERDICT_LABELS]
    assert len(verdicts) == 4 and all(m.label == "Verdict at the operating point" for m in verdicts)
    assert all(m.value in ("COVID-19", "non-COVID", "uncertain — refer") for m in verdicts)
    text = _texts(at)
    assert "Outside what these models were trained on" not in text
    assert "calibrated" in text and "Raw model output" in text and "temperature" in text
    assert "single-split models" in text  # the page says which models it runs, and why


@pytest.mark.parametrize("name, data", [
    ("photo.png", "photo"), ("white.png", "white"), ("black.png", "black"), ("rotated.png", "rotated")])
def test_stress_test_refuses_an_out_of_scope_upload_with_a_plain_reason(shipped_env, name, data):
    import skimage.data

    payload = {"photo": lambda: png_bytes(skimage.data.astronaut().astype(np.float64) / 255, mode="RGB"),
               "white": lambda: png_bytes(np.ones((300, 300))), "black": lambda: png_bytes(np.zeros((300, 300))),
               "rotated": lambda: _rotated_png(3, 1)}[data]()
    at = _page(STRESS)
    at.file_uploader[0].set_value((name, payload, "image/png")).run()
    _no_exception(at)
    assert not [m for m in at.metric if m.label in VERDICT_LABELS]  # no verdict by default
    refusal = [e.value for e in at.error if "Outside what these models were trained on" in e.value]
    assert len(refusal) == 1 and len(refusal[0]) > len("**Outside what these models were trained on.**  No verdict")
    at.toggle(key="reveal_flagged").set_value(True).run()  # one click shows the outputs, marked as such
    _no_exception(at)
    shown = [m for m in at.metric if m.label in VERDICT_LABELS]
    assert len(shown) == 4 and all(m.label == "Verdict (outside what this model was trained on)" for m in shown)


def test_overview_shows_the_operating_points_referral_and_conformal_coverage(shipped_env):
    at = _app()
    single = next(o for o in at.selectbox(key="overview_set").options if "single split" in o)
    at.selectbox(key="overview_set").set_value(single).run()
    _no_exception(at)
    text = _texts(at)
    assert "Verdicts: operating point, referral and conformal sets" in text
    table = next(d.value for d in at.dataframe if "sensitivity" in d.value.columns)
    assert list(table["model"]) == ["standard", "robust", "augmix", "robustaugmix"]
    assert all("[" in v for v in table["specificity"])  # with its patient-bootstrap interval
    assert "prevalence" in text


def test_stress_test_marks_a_change_by_its_direction_when_the_label_is_known(shipped_env):
    """An attack that moves a wrong answer to the true class is "wrong → right" in green, never a red failure."""
    at = _page(STRESS)  # the first example: a labelled COVID-19 image of the shipped models' test split
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="eps").set_value(5.0).run()
    at.slider(key="steps").set_value(5).run()
    _no_exception(at)
    from streamlit.proto.Metric_pb2 import Metric as MetricProto

    marks = {(m.delta, MetricProto.MetricColor.Name(m.proto.color)) for m in at.metric if m.label in VERDICT_LABELS}
    assert {d for d, _ in marks} <= {"right → wrong", "wrong → right", "unchanged"}, marks
    colours = {"right → wrong": "RED", "wrong → right": "GREEN", "unchanged": "GRAY"}
    for delta, colour in marks:
        assert colour == colours[delta], (delta, colour)
    assert "right → wrong (red), wrong → right (green)" in _texts(at)


def test_examples_say_what_is_known_about_the_models_having_seen_them(dashboard_env):
    from medrobust.dashboard import examples

    shipped = examples.list_examples()
    test_ex = next(e for e in shipped if e.split == "test")
    train_ex = next(e for e in shipped if e.split == "train")
    card = json.loads((REPO / "checkpoints" / "standard.json").read_text())
    assert test_ex.exposure({"standard": card}) == "never seen by these models (checked against their cards)"
    assert train_ex.exposure({"standard": card}) == "seen in training by standard"
    assert test_ex.exposure({"mine": {"name": "mine"}}).startswith("unknown whether mine saw it")
    # The tiny self-made models of dashboard_env were not trained on these patients' collection: the page never
    # calls an example unseen unless the models' cards show it.
    at = _page(STRESS)
    labels = at.selectbox(key="example").options
    assert len(labels) == len(shipped) and not any("never seen" in label for label in labels), labels


@pytest.mark.parametrize("pinned, sentence, recorded", [
    ("0", "The attack's gradient steps ran in fp32.", "fp32"),
    ("1", "The attack's gradient steps ran on a bf16 copy of each model", "bf16 (fp32 verdicts)")])
def test_the_page_and_the_snapshot_say_how_the_attack_took_its_steps(dashboard_env, monkeypatch, pinned, sentence,
                                                                     recorded):
    from medrobust.dashboard import ui

    monkeypatch.setenv("MEDROBUST_CPU_BF16", pinned)  # pins bf16 steps off / on, whatever this CPU's timing says
    ui._model_set.clear()  # the choice is made when a model set loads
    at = _page(STRESS)
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like()), "image/png")).run()
    assert "Change:" in _texts(at) and "gradient steps ran" not in _texts(at)  # nothing was attacked
    at.radio(key="kind").set_value("pgd").run()
    at.slider(key="steps").set_value(3).run()
    _no_exception(at)
    assert len(_predictions(at)) == 4 and sentence in _texts(at)
    snap = json.loads(at.session_state["stress_snapshot"]["json"])
    assert [m["attack_steps"] for m in snap["models"]] == [recorded] * 4
