"""Privacy: no DICOM tag value reaches the page, a log line, a warning, an exception message or a file, and
uploads are processed in memory (nothing is written to the app's folders or to the temp folder).

Checked three ways: the decoder alone (every exception and warning of good and broken files), the
dashboard in-process (AppTest, with a Python audit hook recording every file opened for writing), and the
real server the Docker image runs (its own audit hook, debug logging, a private TMPDIR, and uploads over
the 1 MB at which Starlette would otherwise spool a file to /tmp).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import dashboard_env, png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixtures
from dicom_base import base_dataset
from medrobust.imaging import ImageDecodeError, decode_image
from medrobust.dashboard.captions import VERDICT_LABELS

REPO = Path(__file__).resolve().parents[2]

#: Tag -> marker value. Each marker is unique text that must never appear outside the uploaded bytes.
TAGS = {
    "PatientName": "Mkrpatient^Qzxname",
    "PatientID": "MKR-PID-7Q3X9",
    "PatientBirthDate": "18530214",
    "PatientAddress": "MKR-ADDR 12 Qzx Street",
    "PatientTelephoneNumbers": "MKR-TEL-5550199",
    "OtherPatientIDs": "MKR-OPID-44Z",
    "PatientComments": "MKR-COMMENT confidential",
    "InstitutionName": "MKR-INST Qzx General",
    "InstitutionAddress": "MKR-INSTADDR 9 Qzx Road",
    "ReferringPhysicianName": "Mkrrefphys^Qzx",
    "PerformingPhysicianName": "Mkrperfphys^Qzx",
    "OperatorsName": "Mkroperator^Qzx",
    "AccessionNumber": "MKRACC82731",
    "StudyDescription": "MKR-STUDYDESC chest",
    "SeriesDescription": "MKR-SERIESDESC pa",
    "StationName": "MKRSTATION9",
    "DeviceSerialNumber": "MKR-SERIAL-0042",
    "StudyID": "MKRSTUDY77",
}
PRIVATE_MARKER = "MKR-PRIVATE-TAG-VALUE"
AE_MARKER = "MKRAE\\TITLE00000"  # 16 characters, one of them a backslash
TS_MARKER = "MKRTSUID"  # hidden in a (then invalid) transfer syntax UID, which every reader looks at
MARKERS = [*TAGS.values(), PRIVATE_MARKER, "MKRAE", "TITLE00000", TS_MARKER]
NEEDLES = [m.encode() for m in MARKERS] + [m.split("^")[0].encode() for m in MARKERS if "^" in m]


def tagged_dicom(arr: np.ndarray | None, *, transfer_syntax: str = "explicit", photometric: str = "MONOCHROME2",
                 pixel_bytes: bytes | None = None, rows: int | None = None, cols: int | None = None, **extra) -> bytes:
    """A DICOM whose identifying tags (and a private tag) all hold marker strings."""
    from pydicom.uid import (JPEG2000, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             JPEG2000Lossless, JPEGLosslessSV1, JPEGLSNearLossless, RLELossless)

    ds = base_dataset(TAGS.get("PatientName", ""))
    meta = ds.file_meta
    ts = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "big": ExplicitVRBigEndian,
          "rle": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless, "j2k lossy": ExplicitVRLittleEndian,
          "jls near": ExplicitVRLittleEndian, "jpeg lossless": JPEGLosslessSV1}[transfer_syntax]
    meta.TransferSyntaxUID = ts
    meta.SourceApplicationEntityTitle = "MKRAETITLE000000"  # the file meta group is always read
    ds.Modality = "DX"
    for k, v in TAGS.items():
        setattr(ds, k, v)
    block = ds.private_block(0x0011, "MKR CREATOR", create=True)
    block.add_new(0x01, "LO", PRIVATE_MARKER)
    if arr is not None:
        ds.Rows, ds.Columns = rows or arr.shape[0], cols or arr.shape[1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        pix = (np.clip(arr, 0, 1) * 4095).round().astype(np.uint16)
        ds.PixelData = pixel_bytes if pixel_bytes is not None else pix.tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    if transfer_syntax == "rle" and arr is not None and pixel_bytes is None:
        ds.compress(RLELossless, pix)
    elif transfer_syntax == "j2k lossy" and arr is not None:
        ds.compress(JPEG2000, pix, j2k_psnr=[50])
    elif transfer_syntax == "jls near" and arr is not None:
        ds.compress(JPEGLSNearLossless, pix, jls_error=2)
    elif transfer_syntax == "jpeg lossless" and arr is not None:
        from pydicom.encaps import encapsulate

        from jpeg_codec import encode_lossless

        ds.PixelData = encapsulate([encode_lossless(pix, precision=12)])
        ds["PixelData"].VR = "OB"
    elif transfer_syntax == "j2k" and arr is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(200))])  # not a decodable JPEG 2000 stream
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, little_endian=transfer_syntax != "big",
               implicit_vr=transfer_syntax == "implicit")
    # An invalid AE title (a backslash): a validating reader would warn, quoting the value.
    return buf.getvalue().replace(b"MKRAETITLE000000", AE_MARKER.encode())


def _variants() -> dict[str, bytes]:
    arr = xray_like(64)
    good = tagged_dicom(arr)
    out = {
        "good": good,
        "monochrome1 + window": tagged_dicom(arr, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=3000),
        "implicit VR": tagged_dicom(arr, transfer_syntax="implicit"),
        "RLE compressed": tagged_dicom(arr, transfer_syntax="rle"),
        "JPEG 2000 lossy": tagged_dicom(arr, transfer_syntax="j2k lossy", photometric="MONOCHROME1"),
        "JPEG-LS near-lossless": tagged_dicom(arr, transfer_syntax="jls near"),
        "JPEG lossless": tagged_dicom(arr, transfer_syntax="jpeg lossless", WindowCenter=2000, WindowWidth=3000),
        "JPEG 2000, broken": tagged_dicom(arr, transfer_syntax="j2k"),
        "no pixel data": tagged_dicom(None),
        "truncated pixel data": tagged_dicom(arr, pixel_bytes=b"\x00" * 100),
        "huge declared size": tagged_dicom(arr, rows=60000, cols=60000),
        "rescale slope NaN": tagged_dicom(arr, RescaleSlope="NaN", RescaleIntercept=0),
        "marker in the transfer syntax UID": good.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840." + TS_MARKER.encode() + b".12\x00"),
        "bad window": tagged_dicom(arr, WindowCenter="1234.5678", WindowWidth="2345.6789").replace(
            b"1234.5678", b"not-a-num").replace(b"2345.6789", b"neither!!"),
    }
    rng = np.random.default_rng(7)
    for cut in rng.integers(133, len(good), 8):
        out[f"cut at {cut}"] = good[:cut]
    for k in range(6):
        flipped = bytearray(good)
        for pos in rng.integers(132, len(good), 16):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        out[f"bit flips {k}"] = bytes(flipped)
    return out


def _texts_of(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    seen = set()
    while exc is not None and id(exc) not in seen:  # explicit causes and hidden contexts alike
        seen.add(id(exc))
        texts += [str(exc), repr(exc), *map(str, getattr(exc, "args", ()))]
        exc = exc.__cause__ or exc.__context__
    return texts


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            self.lines.append(str(record.msg))


class capture_logs:
    """Every log record of every logger (DEBUG and up), and every warning, while active."""

    def __enter__(self):
        self.handler = _Capture()
        self.loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        self.saved = []
        for lg in self.loggers:
            self.saved.append((lg, lg.level))
            lg.addHandler(self.handler)
            lg.setLevel(logging.DEBUG)
        self.warn_cm = warnings.catch_warnings(record=True)
        self.warned = self.warn_cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.warn_cm.__exit__(*exc)
        for lg, level in self.saved:
            lg.removeHandler(self.handler)
            lg.setLevel(level)

    def text(self) -> str:
        return "\n".join(self.handler.lines + [f"{w.category.__name__}: {w.message}" for w in self.warned])


def _assert_clean(*texts: str) -> None:
    for t in texts:
        for m in MARKERS + [m.split("^")[0] for m in MARKERS if "^" in m]:
            assert m not in t, f"tag value {m!r} escaped into: {t[:300]!r}"


def test_the_test_files_really_carry_the_markers():
    good = tagged_dicom(xray_like(16))
    for needle in NEEDLES:
        assert needle in good or needle == TS_MARKER.encode()
    assert TS_MARKER.encode() in _variants()["marker in the transfer syntax UID"]


def test_no_tag_value_reaches_a_result_an_exception_a_warning_or_a_log():
    texts, outcomes = [], {}
    with capture_logs() as cap:
        for name, data in _variants().items():
            try:
                out = decode_image(data)
                outcomes[name] = "ok"
                texts += [repr(out), out.format, out.note, str(out.bit_depth)]
            except ImageDecodeError as exc:
                outcomes[name] = "refused"
                texts += _texts_of(exc)
    for name in ("good", "monochrome1 + window", "RLE compressed", "JPEG 2000 lossy", "JPEG-LS near-lossless",
                 "JPEG lossless"):
        assert outcomes[name] == "ok", name
    for name in ("no pixel data", "truncated pixel data", "huge declared size", "JPEG 2000, broken"):
        assert outcomes[name] == "refused", name
    _assert_clean(*texts, cap.text())


# ----------------------------------------------------------------------------- in-process: the dashboard

class _WriteAudit:
    """A process-wide audit hook (Python cannot remove one; it is switched off instead) recording files
    opened for writing, folders made, renames and temp files, while ``active``."""

    events: list[tuple[str, str, str]] = []
    active = False
    installed = False
    _W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC | getattr(os, "O_TMPFILE", 0)

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True

    @classmethod
    def _hook(cls, event, args):
        if not cls.active:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags > 0 and flags & cls._W)):
                return
        elif event in ("os.mkdir", "os.rename", "os.replace", "tempfile.mkstemp", "tempfile.mkdtemp",
                       "shutil.copyfile"):
            path = args[0] if args else None
        else:
            return
        cls.events.append((event, str(path), threading.current_thread().name))


def _tree_text(at: AppTest) -> str:
    out = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values() if isinstance(getattr(node, "children", None), dict) else []:
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def _marker_files(roots, since: float) -> list[str]:
    """Files modified since ``since`` under ``roots`` that hold any marker."""
    hits = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", "bash_jobs.0")]
            for f in filenames:
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                    if st.st_mtime >= since and st.st_size < 50_000_000 and p.is_file():
                        blob = p.read_bytes()
                        if any(n in blob for n in NEEDLES):
                            hits.append(str(p))
                except OSError:
                    continue
    return hits


def test_the_dashboard_shows_logs_and_writes_no_tag_and_no_upload(dashboard_env, tmp_path):
    _WriteAudit.install()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("views/stress_lab.py").run()
    # Warm up every import and cache with a plain PNG first: only the uploads below are audited.
    at.file_uploader[0].set_value(("warmup.png", png_bytes(xray_like(64)), "image/png")).run()
    assert not at.exception
    t0 = time.time()
    uploads = [("scan.dcm", tagged_dicom(xray_like(96))), ("noext", tagged_dicom(xray_like(80), photometric="MONOCHROME1")),
               ("broken.dcm", tagged_dicom(xray_like(64), pixel_bytes=b"\x00" * 10)),
               ("big.png", png_bytes(np.random.default_rng(0).random((900, 900))))]
    rendered = []
    with capture_logs() as cap:
        _WriteAudit.events.clear()
        _WriteAudit.active = True
        try:
            for name, data in uploads:
                at.file_uploader[0].set_value((name, data, "application/octet-stream")).run()
                assert not at.exception, [e.value for e in at.exception]
                rendered.append(_tree_text(at))
                for kind in ("gaussian", "none"):
                    if not at.error:  # a refused file draws no controls
                        at.radio(key="kind").set_value(kind).run()
                        rendered.append(_tree_text(at))
                snap = at.session_state["stress_snapshot"] if "stress_snapshot" in at.session_state else {}
                rendered += [str(snap.get("json", "")), repr(snap["zip"]() if "zip" in snap else b"")]
        finally:
            _WriteAudit.active = False
    assert any("DICOM" in r for r in rendered) and any(label in r for r in rendered for label in VERDICT_LABELS)
    assert any("truncated or malformed" in r for r in rendered)
    _assert_clean(*rendered, cap.text())
    # Nothing was opened for writing anywhere while the uploads were processed: not the temp folder,
    # not the app's folders, not the checkpoint/run/result folders.
    assert _WriteAudit.events == [], _WriteAudit.events[:10]
    roots = [Path(tempfile.gettempdir()), REPO, tmp_path, *(Path(os.environ[v]) for v in
             ("MEDROBUST_CHECKPOINTS", "MEDROBUST_RUNS", "MEDROBUST_RESULTS") if Path(os.environ[v]).exists())]
    assert _marker_files(roots, t0) == []


# ----------------------------------------------------------------------------- the real server

@pytest.fixture(scope="module")
def audited_server(tiny_checkpoints, tmp_path_factory):
    """The image's entry point (loopback only) with an audit hook, debug logging and a private TMPDIR."""
    from hosting_helpers import free_port, stage_image, start_server, stop_server, with_port

    image = stage_image(tmp_path_factory.mktemp("image"), substitute={"checkpoints": tiny_checkpoints})
    port = free_port()
    env = {**image.env, "STREAMLIT_LOGGER_LEVEL": "debug"}
    server = start_server(with_port(image.entrypoint, port, "127.0.0.1"), cwd=image.workdir, env=env,
                          workdir=tmp_path_factory.mktemp("srv"), port=port, audit=True)
    server.image = image
    yield server
    stop_server(server)


def test_the_real_server_keeps_uploads_in_memory_and_tags_out_of_everything(audited_server):
    from hosting_helpers import read_audit
    from st_client import StreamlitSession

    server = audited_server
    big_dicom = tagged_dicom(np.random.default_rng(1).random((1000, 1000)))  # 2 MB: over Starlette's 1 MB spool
    assert len(big_dicom) > 1_500_000
    with StreamlitSession(server.url) as s:
        s.run("stress-test")
        page = s.upload("upload", "warmup.png", png_bytes(xray_like(64)), "image/png")
        assert len(page.predictions) == 4, page.errors
        t0 = time.time()
        texts = []
        for name, data in (("scan.dcm", big_dicom), ("broken", tagged_dicom(xray_like(64), pixel_bytes=b"\x01" * 7)),
                           ("big.png", png_bytes(np.random.default_rng(2).random((1100, 1100))))):
            page = s.upload("upload", name, data)
            assert not page.exceptions, page.exceptions
            texts.append(page.text())
            if name == "scan.dcm":
                assert len(page.predictions) == 4 and "DICOM" in page.text()
            if name == "broken":
                assert len(page.errors) == 1 and "truncated or malformed" in page.errors[0]
        page = s.set_radio("kind", "Gaussian noise")
        texts.append(page.text())
    time.sleep(0.5)
    _assert_clean(*texts, server.log_text())
    writes = read_audit(server.audit, since=t0)
    assert writes == [], writes[:10]  # no file opened for writing, no temp file, no folder, while serving uploads
    assert list(server.tmpdir.iterdir()) == [] or all(p.name.startswith("torchinductor") for p in server.tmpdir.iterdir())
    assert _marker_files([server.tmpdir, server.image.root, server.log.parent], t0 - 5) == []
