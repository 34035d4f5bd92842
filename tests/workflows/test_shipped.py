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


SHIPPED_SETS = [d for d in (SHIPPED / "cv" / "results", SHIPPED / "results") if d.is_dir()]


def test_readme_and_model_card_show_the_generated_tables():
    report = render_report(load_results(SHIPPED_SETS))
    for section in ("### Table I", "### Cross-validated"):
        if section not in report:
            continue
        table = report.split(section)[1].split("###")[0].strip()
        for doc in (REPO / "README.md", SHIPPED / "README.md"):
            assert table in doc.read_text(), f"{doc.name} is stale: rerun `python scripts/update_results_docs.py`"


CV_RESULTS = sorted((SHIPPED / "cv" / "results").glob("cv-*.json"))


@pytest.mark.parametrize("path", CV_RESULTS, ids=[p.stem for p in CV_RESULTS])
def test_shipped_cross_validation_tests_every_image_once_and_recomputes(path):
    import numpy as np

    from medrobust.evaluation import per_sample_of
    from medrobust.metrics import classification_metrics

    result = load_results([path])[0]
    assert result["cv"]["folds"] == 5 and len(result["cv"]["fold_results"]) == 5
    keys = result["predictions"]["keys"]
    assert len(keys) == len(set(keys)) == result["n_test"] == sum(f["n_test"] for f in result["cv"]["fold_results"])
    assert result["precision"]["counted_predictions"].startswith("fp32")  # on CUDA: "fp32 (IEEE: TF32 off on CUDA)"
    # Accuracy falls with eps, up to one image: a single random start can miss at eps 5 what it found at eps 4.
    accs = [result["clean"]["accuracy"]] + [r["accuracy"] for r in result["rows"] if r["suite"] == "attack"]
    assert all(b <= a + 1.0 / result["n_test"] + 1e-12 for a, b in zip(accs, accs[1:]))
    ps = per_sample_of(result)
    assert ps is not None and ps.keys == keys and sorted(set(ps.folds.tolist())) == [0, 1, 2, 3, 4]
    for i, row in enumerate(result["rows"]):  # every reported number, recomputed from the shipped logits
        m = classification_metrics(labels=ps.labels, probs=ps.probs(i))
        assert (m["accuracy"], m["balanced_accuracy"]) == pytest.approx((row["accuracy"], row["balanced_accuracy"]),
                                                                        abs=1e-12)
        assert np.isclose(m["auroc"], row["auroc"], atol=1e-12, equal_nan=True)
    clean = classification_metrics(labels=ps.labels, probs=ps.probs(0))
    assert clean["rmsce"] == pytest.approx(result["calibration"]["rmsce"], abs=1e-12)


@pytest.mark.skipif(not (SHIPPED / "cv" / "results" / "seed_spread.json").is_file(), reason="no shipped seed spread")
def test_shipped_seed_spread_seed_zero_is_the_cross_validations_own_fold():
    import numpy as np

    from medrobust.evaluation import per_sample_of
    from medrobust.metrics import classification_metrics
    from medrobust.seed_spread import load_spread

    spread = load_spread(SHIPPED / "cv" / "results")
    eps = spread["eps"]
    for method in ("standard", "robust"):
        seeds = {r["seed"]: r for r in spread["rows"] if r["method"] == method}
        assert len(seeds) >= 3 and 0 in seeds
        ps = per_sample_of(load_results([SHIPPED / "cv" / "results" / f"cv-{method}-cpu-s0.json"])[0])
        fold = ps.folds == spread["fold"]
        assert int(fold.sum()) == spread["n_test"]
        clean = classification_metrics(labels=ps.labels[fold], probs=ps.probs(0)[fold])
        at = [c.severity for c in ps.conditions if c.suite == "attack"].index(eps)
        robust = ps.attack_ok[:, at, :].all(axis=0)[fold]
        assert seeds[0]["clean_auroc"] == pytest.approx(clean["auroc"], abs=1e-12)
        assert seeds[0]["pgd_accuracy"] == pytest.approx(float(np.mean(robust)), abs=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
def test_shipped_single_split_results_recompute_from_their_files(method):
    from medrobust.evaluation import per_sample_of
    from medrobust.metrics import classification_metrics

    result = load_results([SHIPPED / "results" / f"{method}.json"])[0]
    ps = per_sample_of(result)
    assert ps is not None and result["precision"]["counted_predictions"] == "fp32"
    m = classification_metrics(labels=ps.labels, probs=ps.probs(0))
    for k in ("rmsce", "ece"):
        assert m[k] == pytest.approx(result["calibration"][k], abs=1e-12)
    for k in ("auroc", "balanced_accuracy"):
        assert m[k] == pytest.approx(result["clean"][k], abs=1e-12)
