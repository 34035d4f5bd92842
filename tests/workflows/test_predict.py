"""``python -m medrobust predict`` end to end on the shipped models: files and folders, the input check before any
verdict, calibrated probabilities and verdicts at each model's operating point, a CSV whose header gives every
parameter, one line for an unreadable file while the others go on, exit 1 when some file was not read."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.predict import OUT_OF_SCOPE, REFER_TEXT

from test_cli import run_main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "medrobust" / "dashboard" / "examples"
MODELS = ("standard", "robust", "augmix", "robustaugmix")


def _png(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def inbox(tmp_path):
    """A hospital's folder: two licensed example X-rays (one in a sub-folder), a colour photograph, a blank square
    and a truncated file."""
    import skimage.data

    box = tmp_path / "inbox"
    (box / "ward").mkdir(parents=True)
    shutil.copy(EXAMPLES / "example-1-covid19.png", box / "a-xray.png")
    shutil.copy(EXAMPLES / "example-2-noncovid.png", box / "ward" / "b-xray.png")
    _png(skimage.data.astronaut(), box / "c-photo.png")
    _png(np.full((300, 300), 255, np.uint8), box / "d-white.png")
    (box / "e-broken.png").write_bytes((EXAMPLES / "example-3-covid19.png").read_bytes()[:200])
    return box


def test_predict_answers_good_files_refuses_out_of_scope_ones_and_reports_the_broken_one(inbox, tmp_path):
    out = tmp_path / "answers.csv"
    rc, stdout, stderr = run_main(["predict", str(inbox), "--models", str(REPO / "checkpoints"), "--out", str(out),
                                   "--no-progress"])
    assert rc == 1, stderr  # one file could not be read
    broken = [line for line in stderr.splitlines() if "e-broken.png" in line]
    assert len(broken) == 1 and "cannot be read" in broken[0] and "Traceback" not in stderr
    assert "4 of 5 file(s) read" in stderr

    text = out.read_text()
    header = [line for line in text.splitlines() if line.startswith("# ")]
    assert any("input check:" in h for h in header)
    for m in MODELS:  # every model's decision rule is stated: temperature, operating point, referral, conformal
        line = next(h for h in header if h.startswith(f"# model {m} "))
        assert "temperature" in line and "calibrated P(COVID-19)" in line and "conformal" in line
    rows = list(csv.DictReader(io.StringIO("\n".join(l for l in text.splitlines() if not l.startswith("# ")))))
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, []).append(r)
    assert set(by_file) == {"a-xray.png", "b-xray.png", "c-photo.png", "d-white.png", "e-broken.png"}
    for name in ("a-xray.png", "b-xray.png"):
        answers = by_file[name]
        assert sorted(r["model"] for r in answers) == sorted(MODELS)
        for r in answers:
            assert r["input_check"] == "pass"
            assert r["verdict"] in ("COVID-19", "non-COVID", REFER_TEXT)
            assert r["answer_at_operating_point"] in ("COVID-19", "non-COVID")
            assert 0.0 <= float(r["p_calibrated"]) <= 1.0 and 0.0 <= float(r["p_raw"]) <= 1.0
            assert r["rule"] == "operating point" and r["conformal_set_lac"].startswith("{")
    for name in ("c-photo.png", "d-white.png"):
        (r,) = by_file[name]
        assert r["input_check"] == "flagged" and r["verdict"] == OUT_OF_SCOPE and r["input_reason"]
        assert r["p_calibrated"] == "" and r["model"] == ""  # no verdict, no numbers by default
    (r,) = by_file["e-broken.png"]
    assert r["error"] and r["input_check"] == ""
    assert "c-photo.png: not assessed" in stdout


def test_assess_flagged_marks_the_outputs_of_an_out_of_scope_image(inbox, tmp_path):
    out = tmp_path / "answers.csv"
    rc, stdout, stderr = run_main(["predict", str(inbox / "c-photo.png"), "--models", str(REPO / "checkpoints"),
                                   "--out", str(out), "--assess-flagged"])
    assert rc == 0, stderr
    rows = list(csv.DictReader(io.StringIO("\n".join(l for l in out.read_text().splitlines() if not l.startswith("# ")))))
    assert sorted(r["model"] for r in rows) == sorted(MODELS)
    assert all(r["verdict"] == OUT_OF_SCOPE and r["p_calibrated"] for r in rows)


def test_predict_on_nothing_readable_is_one_line(tmp_path):
    rc, stdout, stderr = run_main(["predict", str(tmp_path / "missing.png"), "--models", str(REPO / "checkpoints")])
    assert rc == 1 and "missing.png: cannot be read: no such file" in stderr
    rc, stdout, stderr = run_main(["predict", str(tmp_path), "--models", str(tmp_path / "nowhere")])
    assert rc == 2 and "--models" in stderr and len(stderr.strip().splitlines()) == 1
