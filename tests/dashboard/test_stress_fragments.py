"""The Stress test reruns less: a slider reruns only its panel (an ``st.fragment``), and the clean analysis and the
decoded upload are computed once per session (AppTest, on the tiny model set).

AppTest's ``.run()`` always reruns the whole script. A browser instead reports a change of a widget that sits inside a
fragment with that fragment's id (``ClientState.fragment_id``), and the server reruns the fragment alone.
:func:`_fragment_run` does what the browser does: it learns from the messages which fragment drew each widget and asks
for a rerun of that fragment (``RerunData(fragment_id=...)``, as ``AppSession`` builds it from the browser's request).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import streamlit.testing.v1.local_script_runner as lsr
from streamlit.runtime.scriptrunner import RerunData
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import dashboard_env, png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixtures
from medrobust.dashboard import clean_analysis, modelset, perturbation, stress_run
from medrobust.imaging import decode_image

from test_app import STRESS, _no_exception, _page, _predictions, _texts

# The computations themselves, before any test counts them.
_ANALYSE, _RUN_STRESS = clean_analysis.analyse_clean, stress_run.run_stress


@contextmanager
def _recording_fragments(monkeypatch):
    """Record, per widget id, the fragment that drew it (the delta's ``fragment_id``, as the browser reads it)."""
    owners: dict[str, str] = {}
    parse = lsr.parse_tree_from_messages

    def recording(messages):
        for msg in messages:
            if msg.WhichOneof("type") == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                kind = el.WhichOneof("type")
                wid = getattr(getattr(el, kind), "id", None) if kind else None
                if isinstance(wid, str) and wid:
                    owners[wid] = msg.delta.fragment_id
        return parse(messages)

    monkeypatch.setattr(lsr, "parse_tree_from_messages", recording)
    yield owners


def _fragment_run(at: AppTest, widget, owners: dict[str, str], monkeypatch) -> AppTest:
    """Rerun after ``widget.set_value(...)`` the way a browser does: only the fragment that drew the widget."""
    fragment_id = owners[widget.id]
    assert fragment_id, f"{widget.key} is not inside a fragment"

    def rerun_data(*args, **kwargs):
        # Both requests AppTest's runner builds carry the id: its initial placeholder too, which would otherwise
        # stand for a full rerun and absorb the fragment's (a full rerun pending wins over a fragment rerun).
        return RerunData(*args, **{**kwargs, "fragment_id": fragment_id})

    with monkeypatch.context() as m:
        m.setattr(lsr, "RerunData", rerun_data)
        return widget.run()


@pytest.fixture
def counted(monkeypatch):
    """Count the clean analyses and image decodes the page asks for."""
    calls = {"clean": 0, "decode": 0}
    decode = decode_image

    def counting_analyse(*args, **kwargs):
        calls["clean"] += 1
        return _ANALYSE(*args, **kwargs)

    def counting_decode(*args, **kwargs):
        calls["decode"] += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(clean_analysis, "analyse_clean", counting_analyse)
    monkeypatch.setattr("medrobust.imaging.decode_image", counting_decode)
    return calls


def _expected(image: np.ndarray, pert: perturbation.Perturbation, cam_layer: str = "layer3") -> list[str]:
    """The verdicts the page must show, computed here without the page (none of the tiny models has a fitted rule)."""
    ms = modelset.load_model_set()
    return [o.verdict_text() for o in _RUN_STRESS(ms, _ANALYSE(ms, image, cam_layer=cam_layer), pert)]


def _upload(seed: int, counted: dict[str, int] | None = None) -> tuple[AppTest, np.ndarray]:
    """Open the Stress test (it shows an example) and upload an image no other test uploads (nothing is cached for
    it yet); ``counted`` starts from zero at the upload."""
    data = png_bytes(xray_like(88, seed=seed))
    at = _page(STRESS)
    if counted is not None:
        counted.update({k: 0 for k in counted})
    at.file_uploader[0].set_value((f"chest{seed}.png", data, "image/png")).run()
    _no_exception(at)
    return at, decode_image(data).pixels


def test_a_slider_reruns_only_its_panel_and_never_the_clean_analysis(dashboard_env, monkeypatch, counted):
    from medrobust.dashboard import resultsets

    top = []  # the page's first call: made on a full rerun, never on a rerun of the panel alone
    discover = resultsets.discover_run_models
    monkeypatch.setattr(resultsets, "discover_run_models", lambda *a, **k: top.append(1) or discover(*a, **k))
    with _recording_fragments(monkeypatch) as owners:
        at, pixels = _upload(seed=2401, counted=counted)
        assert counted == {"clean": 1, "decode": 1}
        top.clear()
        _fragment_run(at, at.radio(key="kind").set_value("gaussian"), owners, monkeypatch)
        _no_exception(at)
        for severity in (0.3, 0.55, 0.8):
            _fragment_run(at, at.slider(key="severity").set_value(severity), owners, monkeypatch)
            _no_exception(at)
            # The panel's answers are the right ones for this image and setting ...
            assert _predictions(at) == _expected(pixels, perturbation.Perturbation(kind="gaussian", severity=severity))
            assert f"severity {severity:g}" in _texts(at)
        # ... and neither the upload nor the clean image was analysed again: the top of the page did not run. (AppTest
        # builds each run's tree from that run's messages alone, so after a fragment run it holds the panel only; a
        # browser keeps the rest of the page.)
        assert at.selectbox(key="cam_layer").value == "layer3"
        assert counted == {"clean": 1, "decode": 1} and top == []


def test_the_widgets_that_drive_the_panel_sit_in_one_fragment_and_the_image_source_outside(dashboard_env, monkeypatch):
    with _recording_fragments(monkeypatch) as owners:
        at = _page(STRESS)
        at.radio(key="kind").set_value("pgd").run()
        _no_exception(at)
    panel = {owners[at.radio(key=k).id] for k in ("kind", "attack_method", "mode")}
    panel |= {owners[at.slider(key=k).id] for k in ("eps", "steps", "flip_steps")}
    panel |= {owners[at.selectbox(key="cam_layer").id], owners[at.button(key="find_flip").id]}
    assert len(panel) == 1 and panel != {""}
    assert owners[at.selectbox(key="example").id] == ""  # the image source reruns the whole page


def test_full_reruns_reuse_the_session_cache_and_a_new_layer_or_image_is_analysed_once(dashboard_env, counted):
    at, pixels = _upload(seed=2402, counted=counted)
    assert counted["clean"] == 1
    at.radio(key="kind").set_value("none").run()  # a full rerun (AppTest's own): the session cache answers
    at.radio(key="kind").set_value("clinical").run()
    _no_exception(at)
    assert counted == {"clean": 1, "decode": 1}
    clinical = perturbation.Perturbation(kind="clinical")
    assert _predictions(at) == _expected(pixels, clinical)
    at.selectbox(key="cam_layer").set_value("layer3+layer4").run()  # the clean Grad-CAMs change: analysed once more
    assert counted["clean"] == 2
    assert _predictions(at) == _expected(pixels, clinical, cam_layer="layer3+layer4")
    at.selectbox(key="cam_layer").set_value("layer3").run()  # back to the first layer: still cached
    assert counted == {"clean": 2, "decode": 1}
    at.file_uploader[0].set_value(("other.png", png_bytes(xray_like(88, seed=2403)), "image/png")).run()
    assert counted == {"clean": 3, "decode": 2}  # another file: decoded and analysed once


def test_the_snapshot_zip_is_built_only_when_downloaded(dashboard_env, monkeypatch):
    from medrobust.dashboard import snapshot

    built = []
    zip_of = snapshot.snapshot_zip
    monkeypatch.setattr(snapshot, "snapshot_zip", lambda *a, **k: built.append(1) or zip_of(*a, **k))
    at, _ = _upload(seed=2404)
    at.radio(key="kind").set_value("gaussian").run()
    assert built == []  # no rerun encodes the ZIP's pictures ...
    data = at.session_state["stress_snapshot"]["zip"]()  # ... until the button asks for them
    assert data[:2] == b"PK" and built == [1]


def test_card_pictures_are_encoded_at_the_size_they_are_shown(dashboard_env):
    """JPEG at about the on-screen size (the 32 px models' pixels enlarged 5x to 160 px), grey pictures in one channel."""
    import io

    from PIL import Image

    from medrobust.dashboard import stress_session, tiles

    ms = modelset.load_model_set()
    outcomes = _RUN_STRESS(ms, _ANALYSE(ms, xray_like(88), cam_layer="layer3"),
                           perturbation.Perturbation(kind="gaussian", severity=0.3))
    for o in outcomes:
        pictures = tiles.card_tiles(o, vmax=tiles.shared_delta_scale(outcomes), target=stress_session.TILE_PX)
        assert set(pictures) == {"perturbed", "perturbation", "cam_clean", "cam_perturbed"}
        for name, data in pictures.items():
            img = Image.open(io.BytesIO(data))
            assert (img.format, img.size) == ("JPEG", (160, 160)), name
            assert img.mode == ("L" if name == "perturbed" else "RGB"), name


def test_predictions_stay_right_when_the_same_setting_comes_back(dashboard_env, monkeypatch, counted):
    calls = []
    monkeypatch.setattr(stress_run, "run_stress", lambda *a, **k: calls.append(a[2]) or _RUN_STRESS(*a, **k))
    at, pixels = _upload(seed=2406, counted=counted)
    calls.clear()
    for level in (3, 4, 3):
        at.select_slider(key="level").set_value(level).run()
        _no_exception(at)
        assert _predictions(at) == _expected(pixels, perturbation.Perturbation(kind="clinical", level=level))
    assert [p.level for p in calls] == [3, 4]  # level 3 again came from the session cache
    assert counted["clean"] == 1


@pytest.mark.parametrize("bits", [8, 16])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 40))
def test_a_held_image_keeps_integer_levels_and_gives_back_the_decoders_pixels(bits, seed, h, w):
    """The session holds an 8-bit (16-bit) file's pixels as uint8 (uint16) and gives back, bit for bit, the float32
    pixels the decoder returned; pixels that are no integer levels (a windowed DICOM) stay float32."""
    from dataclasses import replace

    from medrobust.dashboard import stress_session

    arr = np.random.default_rng(seed).random((h, w))
    data = png_bytes(arr, bits=bits)
    image = stress_session._held(data)
    want = decode_image(data).pixels
    assert image.error is None and image.stored.pixels.dtype == (np.uint8 if bits == 8 else np.uint16)
    got = image.decoded.pixels
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert image.digest == clean_analysis.image_digest(want)
    px = (want * 0.7 + 0.1).astype(np.float32)
    px.flat[0] = np.float32(0.5001)  # no 8- or 16-bit level (a 1-pixel image could land on one by chance)
    windowed = replace(decode_image(data), pixels=px)
    kept = stress_session._compact(windowed, "d")
    assert kept.stored.pixels.dtype == np.float32 and np.array_equal(kept.decoded.pixels, windowed.pixels)
