"""Tests for medrobust.trust: the decision rule (temperature, operating point, referral, conformal sets) is fitted
on validation patients only, fold by fold, applied to each fold's own test images, and reaches a loaded model only
when the weights match; the shipped fits recompute from the shipped validation logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medrobust.calibrate import fit_temperature
from medrobust.evaluation import Condition, PerSample
from medrobust.trust import REFER, Decision, TrustConfig, ValLogits, add_trust, decision_for, fit_trust, val_path

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


def _binary(n: int, *, scale: float, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model whose calibrated log-odds are ``t``; the labels are drawn from those odds, so the
    fitted temperature should come out near ``scale``."""
    rng = np.random.default_rng(seed)
    t = rng.normal(shift, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-t))).astype(np.int64)
    return np.stack([np.zeros(n), scale * t], axis=1).astype(np.float32), y


def _per_sample(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, prefix: str = "t") -> PerSample:
    n = labels.size
    conds = [Condition("clean", "clean", 0.0), Condition("attack", "pgd_l2", 1.0)]
    stacked = np.stack([logits, logits[:, ::-1]])  # the "attack" swaps the logits: every answer flips
    return PerSample(keys=[f"{prefix}{i}" for i in range(n)], labels=labels, groups=np.array([f"p{i // 2}" for i in range(n)]),
                     folds=folds, conditions=conds, logits=stacked, attack_ok=np.ones((1, 1, n), bool))


def _val(logits, labels, folds, prefix="v") -> ValLogits:
    n = labels.size
    return ValLogits(keys=[f"{prefix}{i}" for i in range(n)], labels=labels, groups=np.array([f"q{i}" for i in range(n)]),
                     folds=np.asarray(folds), logits=logits)


def test_fit_recovers_the_temperature_and_keeps_the_coverage_it_promises():
    z, y = _binary(4000, scale=4.0, seed=0)
    fit = fit_trust(logits=z, labels=y, config=TrustConfig(coverage=0.7))
    assert fit["temperature"] == pytest.approx(4.0, rel=0.1)
    assert 0.0 < fit["threshold"] < 1.0
    d = Decision(fit=fit, classes=("a", "b")).apply(z)
    answered = d["verdict"] != REFER
    assert answered.mean() >= 0.7 and answered.mean() < 0.72
    assert (d["answer"][answered] == d["verdict"][answered]).all()


def test_target_sensitivity_rule_reaches_the_target_on_validation():
    z, y = _binary(600, scale=2.0, seed=1)
    fit = fit_trust(logits=z, labels=y, config=TrustConfig(rule="sensitivity", target_sensitivity=0.9))
    p1 = Decision(fit=fit, classes=("a", "b")).apply(z)["probs"][:, 1]
    assert np.mean(p1[y == 1] >= fit["threshold"]) >= 0.9


def test_each_fold_uses_its_own_rule_and_the_attack_condition_is_assessed():
    z0, y0 = _binary(300, scale=5.0, seed=2)
    z1, y1 = _binary(300, scale=1.0, seed=3)
    v0, vy0 = _binary(400, scale=5.0, seed=4)
    v1, vy1 = _binary(400, scale=1.0, seed=5)
    ps = _per_sample(np.concatenate([z0, z1]), np.concatenate([y0, y1]), np.repeat([0, 1], 300))
    val = ValLogits.concat([_val(v0, vy0, np.zeros(400, int), "a"), _val(v1, vy1, np.ones(400, int), "b")])
    result = {"name": "cv", "classes": ["non-COVID", "COVID-19"], "_per_sample": ps, "params": {"n_boot": 50}}
    add_trust(result, val)
    fits = result["trust"]["fits"]
    assert set(fits) == {"0", "1"}
    assert fits["0"]["temperature"] == pytest.approx(fit_temperature(logits=v0, labels=vy0))
    assert fits["1"]["temperature"] == pytest.approx(fit_temperature(logits=v1, labels=vy1))
    assert fits["0"]["temperature"] > 3 * fits["1"]["temperature"]
    a = result["trust"]["assessment"]
    clean, attacked = a["conditions"]
    assert clean["condition"] == "clean@0" and attacked["condition"] == "pgd_l2@1"
    assert attacked["risk_all"] > 0.5 > clean["risk_all"]  # swapped logits: (nearly) every verdict flips
    assert attacked["aurc"] > clean["aurc"]
    op = a["operating_point"]
    assert op["ci"]["sensitivity"][0] <= op["sensitivity"] <= op["ci"]["sensitivity"][1]
    assert a["calibration"]["temperature_scaled"]["nll"] < a["calibration"]["raw"]["nll"]


def test_a_validation_image_that_is_also_a_test_image_is_refused():
    z, y = _binary(40, scale=1.0, seed=6)
    ps = _per_sample(z, y, np.full(40, -1))
    val = _val(z[:20], y[:20], np.full(20, -1), prefix="t")  # keys t0..t19 are test images too
    with pytest.raises(ValueError, match="also its test images"):
        add_trust({"name": "m", "classes": ["a", "b"], "_per_sample": ps}, val)


def test_one_class_validation_cannot_choose_an_operating_point():
    z, _ = _binary(30, scale=1.0, seed=7)
    with pytest.raises(ValueError, match="one class"):
        fit_trust(logits=z, labels=np.ones(30, int))


def test_k_classes_verdict_is_the_most_probable_class():
    rng = np.random.default_rng(8)
    z = rng.normal(0, 2, (200, 3)).astype(np.float32)
    y = z.argmax(1)
    fit = fit_trust(logits=z, labels=y)
    assert fit["threshold"] is None
    d = Decision(fit=fit, classes=("a", "b", "c")).apply(z)
    assert (d["answer"] == z.argmax(1)).all()


def test_a_fit_reaches_only_the_weights_it_was_made_for(tmp_path):
    z, y = _binary(100, scale=1.0, seed=9)
    fit = fit_trust(logits=z, labels=y)
    (tmp_path / "m.json").write_text(json.dumps({"model_sha256": "abc", "trust": {"fits": {"-1": fit}}}))
    assert decision_for({"name": "m", "sha256": "abc"}, [tmp_path]).fit == fit
    assert decision_for({"name": "m", "sha256": "other"}, [tmp_path]) is None
    assert decision_for({"name": "x", "sha256": "abc"}, [tmp_path]) is None


@pytest.mark.parametrize("name", ["standard", "robust", "augmix", "robustaugmix"])
def test_shipped_fits_recompute_from_the_shipped_validation_logits(name):
    result = json.loads((SHIPPED / "results" / f"{name}.json").read_text())
    card = json.loads((SHIPPED / f"{name}.json").read_text())
    fit = result["trust"]["fits"]["-1"]
    val = ValLogits.load(val_path(SHIPPED / "results" / f"{name}.json"))
    assert set(val.groups.tolist()) == set(card["split"]["val_patients"])  # validation patients only
    assert not set(val.keys) & set(result["predictions"]["keys"])
    again = fit_trust(logits=val.logits, labels=val.labels, groups=val.groups, config=TrustConfig(**fit["config"]))
    assert again["temperature"] == pytest.approx(fit["temperature"], rel=1e-9)
    assert again["threshold"] == pytest.approx(fit["threshold"], rel=1e-9)
    assert again["referral_level"] == pytest.approx(fit["referral_level"], rel=1e-9)
    assert decision_for(card, [SHIPPED / "results"]) is not None
