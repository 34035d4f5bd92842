"""The whole pipeline on the real (downsized) upstream data, when it is present beside the repository.

Skipped cleanly where ``../shared/data/covid-chestxray`` does not exist. Decoding the ~575 real images
at 64 px takes ~20 s on a laptop CPU; the smoke training and the 2-step evaluation add about as much.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from medrobust.cli import main

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
COVID = SHARED / "covid-chestxray"
ACTUALMED = SHARED / "actualmed"

pytestmark = pytest.mark.slow


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def test_smoke_train_evaluate_report_on_the_real_data(tmp_path, monkeypatch):
    if not (COVID / "metadata.csv").is_file() or not (ACTUALMED / "metadata.csv").is_file():
        pytest.skip(f"real data not found at {SHARED} (needs covid-chestxray/ and actualmed/ in the upstream layout)")
    monkeypatch.chdir(tmp_path)  # MEDROBUST_CACHE already points into tmp_path (conftest)
    data_args = ["--data", str(COVID), "--data", str(ACTUALMED)]

    rc, out, err = run_main(["train", "--method", "robust", "--preset", "smoke", *data_args,
                             "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0, err
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["method"] == "robust" and card["image_size"] == 64 and card["epochs_done"] == 1
    # The two upstream layouts are read: ~575 labelled frontal X-rays, Actualmed's empty findings dropped.
    assert 500 <= card["data"]["kept"] <= 600, card["data"]
    assert card["data"]["dropped"].get("unlabelled (empty finding)", 0) >= 10
    assert card["data"]["per_class"]["non-COVID"] > 30 and card["data"]["per_class"]["COVID-19"] > 300
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert not set(split["patients"]["train"]) & set(split["patients"]["test"])
    assert {p.split(":")[0] for p in split["patients"]["train"]} == {"covid-chestxray", "actualmed"}

    rc, out, err = run_main(["evaluate", str(tmp_path / "run"), *data_args, "--out", str(tmp_path / "results"),
                             "--steps", "2", "--n-boot", "100"])
    assert rc == 0, err
    result = json.loads((tmp_path / "results" / "run.json").read_text())
    assert result["n_test"] > 50
    assert result["n_per_class"]["non-COVID"] > 0 and result["n_per_class"]["COVID-19"] > 0
    assert isinstance(result["degenerate"], bool)
    assert result["split_hash"] == split["hash"]
    for row in result["rows"]:
        for metric in ("accuracy", "balanced_accuracy"):
            assert 0.0 <= row[metric] <= 1.0
            lo, hi = row["ci"][metric]
            assert lo <= row[metric] + 1e-9 and row[metric] <= hi + 1e-9
    auroc = result["clean"]["auroc"]
    assert math.isnan(auroc) or 0.0 <= auroc <= 1.0

    rc, out, err = run_main(["report", str(tmp_path / "results")])
    assert rc == 0, err
    assert "Table I" in out and "Table II" in out and "| run" in out
    if result["degenerate"]:
        assert "**Warning:** run answers one class" in out
