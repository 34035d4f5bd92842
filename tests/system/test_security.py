"""Security: the admin token gates every job that spends minutes of CPU/GPU; only safetensors are ever
loaded and a bad checkpoint is refused while the others keep working; decoding has limits (pixels,
bytes, a wall-clock limit on DICOM decoding)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import dashboard_env, dicom_bytes, png_bytes, tiny_checkpoints, xray_like  # noqa: F401
from medrobust.dashboard import jobs
from medrobust.dashboard.captions import VERDICT_LABELS

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-admin-token"


def _page(path: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90).run()
    return at.switch_page(path).run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _predictions(at: AppTest) -> list[str]:
    return [m.value for m in at.metric if m.label in VERDICT_LABELS]


# ----------------------------------------------------------------------------- the admin token

@pytest.fixture()
def token_env(dashboard_env, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDROBUST_ADMIN_TOKEN", TOKEN)
    return Path(os.environ["MEDROBUST_RUNS"]) / ".jobs"


def _no_popen(monkeypatch):
    def refuse(*a, **k):  # pragma: no cover - reached only if the gate is broken
        raise AssertionError("a job process was started without the admin token")

    monkeypatch.setattr(jobs.subprocess, "Popen", refuse)


def test_training_and_evaluation_jobs_are_refused_without_the_token(token_env, tmp_path, monkeypatch):
    manager = jobs.JobManager()
    train = jobs.train_command(method="standard", preset="smoke", out=tmp_path / "run", data=[tmp_path])
    evaluate = jobs.evaluate_command(run_dir=tmp_path / "run", data=[tmp_path])
    with monkeypatch.context() as m:
        _no_popen(m)
        for cmd, kind in ((train, "train"), (evaluate, "evaluate")):
            for given in (None, "", "wrong", TOKEN.upper(), TOKEN + " "):
                with pytest.raises(jobs.JobError, match="admin token is wrong"):
                    manager.launch(cmd, kind=kind, run_dir=tmp_path / "run", token=given)
    assert not token_env.exists() or not list(token_env.glob("*.json"))
    # With the token the same launch goes through; the child never sees the token.
    probe = [sys.executable, "-c", "import os; print('token in child:', os.environ.get('MEDROBUST_ADMIN_TOKEN', 'absent'))"]
    job = manager.launch(probe, kind="train", run_dir=tmp_path / "run", token=TOKEN)
    deadline = time.time() + 60
    while manager.status(job).running and time.time() < deadline:
        time.sleep(0.1)
    status = manager.status(job)
    assert status.state == "done" and "token in child: absent" in status.log_tail


def test_a_running_job_cannot_be_cancelled_without_the_token(token_env, tmp_path):
    manager = jobs.JobManager()
    job = manager.launch([sys.executable, "-c", "import time; time.sleep(120)"], kind="train",
                         run_dir=tmp_path / "run", token=TOKEN)
    try:
        for given in (None, "wrong"):
            with pytest.raises(jobs.JobError, match="admin token is wrong"):
                manager.cancel(job, token=given)
        assert manager.is_alive(job)
        # The Training page: a wrong token in the box, then "Cancel job".
        at = _page("views/training.py")
        _no_exception(at)
        at.text_input(key="admin_token").set_value("wrong").run()
        at.button(key="cancel").click().run()
        _no_exception(at)
        assert any("admin token is wrong" in e.value for e in at.error)
        assert manager.is_alive(job)
    finally:
        assert manager.cancel(job, token=TOKEN, grace_s=2)
    assert not manager.is_alive(job)


def test_evaluating_a_finished_run_from_the_training_page_needs_the_token(token_env, tmp_path, monkeypatch):
    from conftest import make_covid_root

    root = make_covid_root(tmp_path / "data")
    # A finished training job, as the page finds it after a restart.
    token_env.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = Path(os.environ["MEDROBUST_RUNS"]) / "standard-smoke-s0"
    run_dir.mkdir(parents=True)
    job = jobs.Job(id="20260101-000000-0000-000", kind="train", pid=dead.pid, run_dir=str(run_dir),
                   command=["python", "-m", "medrobust", "train"], started=time.time() - 60, data=[str(root.path)],
                   label="standard-smoke-s0")
    (token_env / f"{job.id}.json").write_text(json.dumps(job.to_dict()))
    (token_env / f"{job.id}.rc").write_text("0\n")
    (token_env / "current.json").write_text(json.dumps({"id": job.id}))

    at = _page("views/training.py")
    _no_exception(at)
    assert "Training finished" in "\n".join(s.value for s in at.success)
    with monkeypatch.context() as m:
        _no_popen(m)
        for given in ("", "wrong"):
            at.text_input(key="admin_token").set_value(given).run()
            at.button(key="evaluate").click().run()
            _no_exception(at)
            assert any("admin token is wrong" in e.value for e in at.error), [e.value for e in at.error]
    assert {p.name for p in token_env.glob("*.json")} == {"current.json", f"{job.id}.json"}


def test_a_read_only_jobs_folder_is_a_clear_error_not_a_traceback(dashboard_env, tmp_path, monkeypatch):
    import errno

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    manager = jobs.JobManager(tmp_path / "ro" / ".jobs")
    with pytest.raises(jobs.JobError, match="Cannot write the jobs folder .*Read-only file system"):
        manager.launch([sys.executable, "-c", "pass"], kind="train", run_dir=tmp_path / "ro" / "run")


# ----------------------------------------------------------------------------- checkpoints

class _Payload:
    """Unpickling this creates a file: proof that something unpickled a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def hostile_checkpoints(tiny_checkpoints, tmp_path) -> tuple[Path, Path]:
    """standard: intact. robust: one byte changed. augmix: cut in half (card untouched). robustaugmix: cut in
    half with a card updated to the cut file's sha256. evil: a pickle named .safetensors with a matching card.
    Also a pickle ``legacy.pt`` beside them, which must not even be listed."""
    from medrobust.checkpoints import sha256_file

    dst = tmp_path / "hostile"
    shutil.copytree(tiny_checkpoints, dst)
    marker = tmp_path / "UNPICKLED"
    w = dst / "robust.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    w = dst / "augmix.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    w = dst / "robustaugmix.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    card = json.loads((dst / "robustaugmix.json").read_text())
    card["sha256"] = sha256_file(w)
    (dst / "robustaugmix.json").write_text(json.dumps(card))
    evil = dst / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(str(marker))}))
    (dst / "evil.json").write_text(json.dumps({"name": "evil", "method": "standard", "image_size": 32,
                                               "sha256": sha256_file(evil)}))
    (dst / "legacy.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    return dst, marker


def _forbid_unpickling(monkeypatch):
    import torch

    def refuse(*a, **k):  # pragma: no cover - reached only if a loader unpickles
        raise AssertionError("something tried to unpickle a checkpoint")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


EXPECTED_ERRORS = {
    "robust": ("robust.safetensors", "sha256", "does not match its card"),
    "augmix": ("augmix.safetensors", "sha256", "truncated"),
    "robustaugmix": ("robustaugmix.safetensors", "not a readable safetensors file"),
    "evil": ("evil.safetensors", "is a pickle", "never unpickles"),
}


def test_only_safetensors_load_and_bad_files_are_refused_while_the_others_work(hostile_checkpoints, monkeypatch):
    from medrobust.dashboard.clean_analysis import analyse_clean
    from medrobust.dashboard.modelset import load_model_set

    folder, marker = hostile_checkpoints
    _forbid_unpickling(monkeypatch)
    ms = load_model_set(folder)
    assert sorted(m.name for m in ms.models) == sorted(["standard", *EXPECTED_ERRORS])  # legacy.pt not listed
    assert [m.name for m in ms.ok_models] == ["standard"]
    for name, needles in EXPECTED_ERRORS.items():
        err = ms.get(name).error
        assert err and all(n in err for n in needles), (name, err)
    assert not marker.exists()
    clean = analyse_clean(ms, xray_like(64).astype(np.float32), cam_layer="layer3")
    assert list(clean.views) == ["standard"] and 0.0 <= clean.views["standard"].p_covid <= 1.0


def test_the_stress_page_shows_one_error_card_per_refused_checkpoint(dashboard_env, hostile_checkpoints, monkeypatch):
    folder, marker = hostile_checkpoints
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(folder))
    _forbid_unpickling(monkeypatch)
    at = _page("views/stress_lab.py")
    at.file_uploader[0].set_value(("chest.png", png_bytes(xray_like(96)), "image/png")).run()
    _no_exception(at)
    assert len(_predictions(at)) == 1
    errors = [e.value for e in at.error]
    assert len(errors) == len(EXPECTED_ERRORS)
    for name, needles in EXPECTED_ERRORS.items():
        assert any(all(n in e for n in needles) for e in errors), (name, errors)
    assert not marker.exists()


# ----------------------------------------------------------------------------- decoding limits

def test_upload_cap_and_file_cap_and_pixel_cap():
    import tomllib

    from medrobust.imaging import MAX_FILE_BYTES, MAX_PIXELS, ImageDecodeError, decode_image

    cap_mb = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert cap_mb * 1024 * 1024 <= MAX_FILE_BYTES  # Streamlit's upload cap is the tighter one
    t = time.time()
    with pytest.raises(ImageDecodeError, match="MiB, more than the limit"):
        decode_image(b"\x89PNG" + b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(png_bytes(xray_like(64)), max_pixels=64 * 64 - 1)
    big = dicom_bytes(xray_like(64))
    with pytest.raises(ImageDecodeError, match="limit of"):
        decode_image(big, max_pixels=100)
    assert MAX_PIXELS <= 100_000_000
    assert time.time() - t < 10


@pytest.fixture()
def slow_dicom(monkeypatch):
    """DICOM pixel decoding that hangs until released (a hostile compressed stream, say)."""
    from medrobust import dicom

    release = threading.Event()
    real = dicom._pixels

    def hang(ds):
        release.wait(60)
        return real(ds)

    monkeypatch.setattr(dicom, "_pixels", hang)
    yield release
    release.set()
    deadline = time.time() + 30
    while dicom._stuck and time.time() < deadline:  # let the abandoned workers finish
        time.sleep(0.05)
    assert dicom._stuck == 0


def test_dicom_decoding_has_a_wall_clock_limit(slow_dicom):
    from medrobust import dicom
    from medrobust.imaging import ImageDecodeError, decode_image

    data = dicom_bytes(xray_like(32))
    for _ in range(dicom.MAX_STUCK):
        t = time.time()
        with pytest.raises(ImageDecodeError, match=r"took longer than 0\.3 s"):
            dicom.decode_dicom(data, max_pixels=10**6, timeout_s=0.3)
        assert time.time() - t < 5
    # While earlier decoders are still stuck, a new DICOM is refused at once instead of piling up.
    t = time.time()
    with pytest.raises(ImageDecodeError, match="still busy"):
        decode_image(data)
    assert time.time() - t < 1
    slow_dicom.set()
    deadline = time.time() + 30
    while dicom._stuck and time.time() < deadline:
        time.sleep(0.05)
    assert decode_image(data).format == "DICOM"  # back to normal once they finished


def test_the_stress_page_reports_a_dicom_that_decodes_too_slowly(dashboard_env, slow_dicom, monkeypatch):
    from medrobust import dicom

    monkeypatch.setattr(dicom, "DECODE_TIMEOUT_S", 0.5)
    at = _page("views/stress_lab.py")
    t = time.time()
    at.file_uploader[0].set_value(("slow.dcm", dicom_bytes(xray_like(32)), "application/dicom")).run()
    _no_exception(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "took longer than 0.5 s" in errors[0], errors
    assert not _predictions(at)
    assert time.time() - t < 60
