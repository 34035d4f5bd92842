"""The shipped models: they load, match their cards, are not degenerate, and the README shows their tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medrobust.checkpoints import load_checkpoint
from medrobust.evaluation import load_results
from medrobust.methods import METHODS
from medrobust.report import render_report

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints"

pytestmark = pytest.mark.skipif(not (SHIPPED / "standard.safetensors").is_file(), reason="no shipped checkpoints")


@pytest.mark.parametrize("method", list(METHODS))
def test_shipped_model_loads_and_is_not_degenerate(method):
    model, card = load_checkpoint(SHIPPED / f"{method}.safetensors")  # verifies the sha256
    assert card["method"] == method and card["weights_dtype"] == "float16"
    assert next(model.parameters()).dtype.is_floating_point and not model.training
    result = json.loads((SHIPPED / "results" / f"{method}.json").read_text())
    assert result["model_sha256"] == card["sha256"]
    assert not result["degenerate"] and result["majority_fraction"] < 0.95
    assert result["sanity"]["monotone_in_eps"] and result["sanity"]["restart_gap_ok"]


def test_readme_and_model_card_show_the_generated_tables():
    report = render_report(load_results([SHIPPED / "results"]))
    table_one = report.split("### Table I")[1].split("###")[0].strip()
    for doc in (REPO / "README.md", SHIPPED / "README.md"):
        assert table_one in doc.read_text(), f"{doc.name} is stale: rerun `python -m medrobust report checkpoints/results`"
