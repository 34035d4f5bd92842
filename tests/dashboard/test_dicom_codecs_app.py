"""The Stress test on compressed DICOM uploads (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE), via AppTest."""

from __future__ import annotations

import io
import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard_fixtures import (  # noqa: F401 - fixtures
    dashboard_env,
    dicom_bytes,
    encoded_dicom_bytes,
    tiny_checkpoints,
    xray_like,
)
from medrobust.dashboard.captions import VERDICT_LABELS

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
STRESS = "views/stress_lab.py"
SECRET = "Codecsecret^Patient"


def _syntaxes():
    from pydicom import uid

    lossless = [uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless]
    lossy = [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000]
    return lossless, lossy


def _stress_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    return at.switch_page(STRESS).run()


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, data, "application/dicom")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _verdicts(at: AppTest) -> list[tuple[str, str]]:
    return [(m.label, str(m.value)) for m in at.metric if m.label in VERDICT_LABELS]


def _source(snapshot) -> dict:
    """The snapshot's description of the image (the dict holding its format and bit depth)."""
    if isinstance(snapshot, dict):
        if "bit_depth" in snapshot and "format" in snapshot:
            return snapshot
        found = [_source(v) for v in snapshot.values()]
    elif isinstance(snapshot, list):
        found = [_source(v) for v in snapshot]
    else:
        return {}
    return next((f for f in found if f), {})


def _page_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "text", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    return "\n".join(parts)


def test_the_stress_test_predicts_on_every_compressed_dicom_syntax(dashboard_env):
    """Each syntax uploads, decodes and gets the four models' verdicts; a lossless one gets exactly the verdicts
    of the uncompressed file (the same pixels), MONOCHROME1 included; no patient tag reaches the page."""
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit

    lossless, lossy = _syntaxes()
    arr = xray_like(64)
    at = _stress_page()
    _upload(at, "plain.dcm", dicom_bytes(arr, monochrome1=True, patient_name=SECRET))
    reference = _verdicts(at)
    assert len(reference) == 4
    for ts in lossless + lossy:
        name = pydicom.uid.UID(ts).name
        _upload(at, f"{ts}.dcm", encoded_dicom_bytes(arr, ts, monochrome1=True, patient_name=SECRET))
        assert not at.error, (name, [e.value for e in at.error])
        verdicts = _verdicts(at)
        assert len(verdicts) == 4, name
        if ts in lossless:
            assert verdicts == reference, name
        text = _page_text(at)
        assert "DICOM" in text and "Codecsecret" not in text, name
        snapshot = at.session_state["stress_snapshot"]["json"]
        assert "Codecsecret" not in snapshot, name
        bits = 8 if ts == JPEGBaseline8Bit else 12
        assert {"format": "DICOM", "bit_depth": bits}.items() <= _source(json.loads(snapshot)).items(), name


def test_a_truncated_compressed_upload_gets_one_message_and_the_app_goes_on(dashboard_env):
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    data = encoded_dicom_bytes(xray_like(64), JPEG2000Lossless, patient_name=SECRET)
    ds = pydicom.dcmread(io.BytesIO(data))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    at = _stress_page()
    _upload(at, "cut.dcm", buf.getvalue())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "truncated or corrupt" in errors[0] and "JPEG 2000" in errors[0], errors
    assert not _verdicts(at) and "Codecsecret" not in _page_text(at)
    _upload(at, "good.dcm", data)
    assert not at.error and len(_verdicts(at)) == 4
