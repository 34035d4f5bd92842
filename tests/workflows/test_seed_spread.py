"""The seed spread: a record is checked before it is shown, its rows say what a reseed does, and it reaches
``report`` and the Overview beside the paired differences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dashboard_fixtures import cv_checkpoints, tiny_checkpoints  # noqa: F401 - fixtures
from medrobust.evaluation import load_results
from medrobust.report import render_report
from medrobust.seed_spread import FILE_NAME, check_spread, difference_rows, load_spread, spread_markdown, spread_rows


APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _spread(**over):
    rows = [{"method": m, "seed": s, "clean_auroc": a, "clean_balanced_accuracy": b, "pgd_accuracy": p}
            for m, s, a, b, p in (("standard", 0, 0.62, 0.59, 0.04), ("standard", 1, 0.70, 0.61, 0.02),
                                  ("standard", 2, 0.65, 0.55, 0.03), ("robust", 0, 0.66, 0.57, 0.55),
                                  ("robust", 1, 0.64, 0.58, 0.50), ("robust", 2, 0.60, 0.52, 0.52))]
    return {"fold": 0, "eps": 2.0, "n_test": 124, "n_patients": 70, "rows": rows, "command": "python scripts/x.py",
            **over}


def test_rows_give_each_seed_and_the_range():
    rows = {r["method"]: r for r in spread_rows(check_spread(_spread()))}
    assert rows["standard"]["seeds"] == "0, 1, 2"
    assert rows["standard"]["clean AUROC"] == "0.620 / 0.700 / 0.650"
    assert rows["standard"]["clean AUROC range"] == "0.080"
    assert rows["robust"]["PGD eps 2 acc. range"] == "5.0 pts"
    assert rows["standard"]["clean bal. acc. range"] == "6.0 pts"


def test_per_seed_differences_are_signed_b_minus_a():
    rows = difference_rows(_spread(), a="standard", b="robust")
    assert [r["robust − standard: clean AUROC"] for r in rows] == ["+0.040", "\u22120.060", "\u22120.050"]
    assert [r["robust − standard: PGD acc."] for r in rows] == ["+51.0 pts", "+48.0 pts", "+49.0 pts"]


@pytest.mark.parametrize("bad, message", [
    ({"rows": []}, "non-empty 'rows'"),
    ({"eps": "two"}, "number 'eps'"),
    ({"rows": [{"method": "standard", "seed": "0", "clean_auroc": 0.5, "clean_balanced_accuracy": 0.5,
                "pgd_accuracy": 0.1}]}, "'seed' (integer)"),
    ({"rows": [{"method": "standard", "seed": 0, "clean_auroc": 1.5, "clean_balanced_accuracy": 0.5,
                "pgd_accuracy": 0.1}]}, "'clean_auroc' must be in [0, 1]"),
    ({"rows": [{"method": "standard", "seed": 0, "clean_auroc": 0.5, "clean_balanced_accuracy": 0.5,
                "pgd_accuracy": 0.1}] * 2}, "twice"),
])
def test_a_malformed_record_is_refused_with_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        check_spread(_spread(**bad))


def test_load_names_the_broken_file_and_is_none_without_one(tmp_path):
    assert load_spread(tmp_path) is None
    (tmp_path / FILE_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=FILE_NAME):
        load_spread(tmp_path)


def test_markdown_says_what_was_retrained_and_how_to_reproduce():
    text = spread_markdown(_spread())
    assert "Fold 0 only (124 test images of 70 patients)" in text and "same patients" in text
    assert "Reproduce: `python scripts/x.py`" in text and "eps 2" in text


def test_report_and_overview_show_the_spread_kept_beside_the_results(cv_checkpoints, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "checkpoints"
    shutil.copytree(cv_checkpoints, root)
    folder = root / "cv" / "results"
    assert "Seed spread" not in render_report(load_results([folder]))
    (folder / FILE_NAME).write_text(json.dumps(_spread()))
    report = render_report(load_results([folder]))
    section = report.split("### Seed spread")[1].split("###")[0]
    assert "0.620 / 0.700 / 0.650" in section and "robust − standard: clean AUROC" in section
    assert report.index("### Paired differences") < report.index("### Seed spread") < report.index("### The paper's claims")

    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(root))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(str(m.value) for m in at.markdown)
    assert "Is a difference more than a reseed?" in shown and "0.620 / 0.700 / 0.650" in shown
    (folder / FILE_NAME).write_text("[]")  # a broken record is said, never silently dropped
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert "seed spread kept with these results cannot be read" in "\n".join(str(w.value) for w in at.warning)
