"""Tests for medrobust.claims: the verdict rule, each claim decided by paired patient-bootstrap intervals on
synthetic results written to disk and read back, refusal of models tested on other images, and the shipped
results (every claim decided, every number in a sentence equal to its comparison's)."""

from __future__ import annotations

import doctest
import math
import re
from pathlib import Path

import numpy as np
import pytest

from medrobust import claims as claims_module
from medrobust.calibrate import apply_temperature
from medrobust.claims import (
    CLAIMS,
    VERDICTS,
    claims_markdown,
    claims_rows,
    comparison_text,
    condition_label,
    decide_claims,
    verdict,
)
from medrobust.evaluation import EvalConfig, PerSample, conditions_for, load_results, summarise, write_results
from medrobust.metrics import classification_metrics
from medrobust.stats import paired_cluster_bootstrap

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "results"
SHIPPED_CV = ROOT / "checkpoints" / "cv" / "results"

CONFIG = EvalConfig(eps=(2.0,), severities=(0.1,), suites=("paper",), n_boot=20)
N = 80  # images, two per patient


# --------------------------------------------------------------------------- synthetic results


def _labels() -> np.ndarray:
    return np.repeat(np.arange(N // 2) % 2, 2).astype(np.int64)  # each patient's two images share a label


def _logits(labels: np.ndarray, *, right: float, seed: int, margin: float = 3.0) -> np.ndarray:
    """Logits that put the true class first on a fraction ``right`` of the patients (both their images)."""
    rng = np.random.default_rng(seed)
    patient_right = rng.random(N // 2) < right
    ok = np.repeat(patient_right, 2)
    m = margin + rng.normal(0.0, 0.5, N)
    z = np.zeros((N, 2), np.float32)
    z[np.arange(N), labels] = np.where(ok, m, -m)
    return z


def _result(name: str, method: str, right: dict[str, float], *, seed: int, keys: list[str] | None = None,
            order: np.ndarray | None = None, folds: np.ndarray | None = None) -> dict:
    """A summarised result whose accuracy per condition key is about ``right[key]`` (default 0.9)."""
    conds = conditions_for(CONFIG)
    y = _labels()
    logits = np.stack([_logits(y, right=right.get(c.key, 0.9), seed=seed + 7 * i) for i, c in enumerate(conds)])
    keys = keys or [f"img{i:03d}" for i in range(N)]
    groups = np.array([f"p{i // 2:02d}" for i in range(N)])
    order = np.arange(N) if order is None else order
    ps = PerSample(keys=[keys[i] for i in order], labels=y[order], groups=groups[order],
                   folds=(np.full(N, -1) if folds is None else folds)[order], conditions=conds, logits=logits[:, order],
                   attack_ok=np.ones((1, 1, N), bool), attack_names=("pgd",))
    return summarise(ps, config=CONFIG, name=name, card={"method": method}, image_size=32)


def _written(tmp_path: Path, *results: dict) -> list[dict]:
    for r in results:
        write_results(r, tmp_path)
    back = load_results([tmp_path])
    assert all(r.get("_per_sample") is None for r in back)  # the logits come from the .npz files
    return back


def _by_id(decided: list[dict]) -> dict[str, dict]:
    return {d["id"]: d for d in decided}


ATTACKED = {"pgd_l2@2": 0.0, "gaussian@0.1": 0.55, "speckle@0.1": 0.5}  # standard: broken by attack and noise
ROBUST = {"pgd_l2@2": 0.9, "gaussian@0.1": 0.95, "speckle@0.1": 0.95}


# --------------------------------------------------------------------------- the rule


def test_verdict_rule_for_each_outcome():
    assert verdict([((0.01, 0.2), +1)]) == "confirmed"
    assert verdict([((-0.3, -0.1), -1), ((0.05, 0.1), +1)]) == "confirmed"  # mixed claimed signs, each on its side
    assert verdict([((-0.3, -0.1), +1)]) == "refuted"
    assert verdict([((0.05, 0.1), +1), ((0.02, 0.3), -1)]) == "refuted"  # one counter-example is enough
    assert verdict([((0.05, 0.1), +1), ((-0.02, 0.3), +1)]) == "undecided"  # an interval across 0 decides nothing
    assert verdict([((0.0, 0.1), +1)]) == "undecided"  # touching 0 is not excluding it
    assert verdict([((1e-17, 0.1), +1), ((-0.2, -1e-16), -1)]) == "undecided"  # nor is float noise around 0
    assert verdict([((-0.02, 0.3), +1), ((0.01, 0.2), -1)]) == "refuted"  # refuted beats undecided
    assert verdict([((math.nan, math.nan), +1)]) == "undecided"
    assert set(VERDICTS) >= {"confirmed", "refuted", "undecided", "not evaluable"}
    with pytest.raises(ValueError, match="at least one"):
        verdict([])
    with pytest.raises(ValueError, match="expected sign"):
        verdict([((0.1, 0.2), 0)])
    with pytest.raises(ValueError, match="lower end above"):
        verdict([((0.3, 0.2), 1)])


def test_doctests():
    result = doctest.testmod(claims_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 4


def test_claims_are_the_papers_four_and_ours():
    assert [c.id for c in CLAIMS] == ["1", "2", "3", "4", "5", "6"]
    assert [c.source for c in CLAIMS] == ["paper"] * 4 + ["ours"] * 2
    three = CLAIMS[2].comparisons
    assert len(three) == 12 and {(c.b, c.a) for c in three} == {
        (b, a) for b in ("robust", "robustaugmix") for a in ("standard", "augmix")}
    assert all(c.expected == +1 and c.metric == "balanced_accuracy" for c in three)
    assert all(c.expected == -1 and c.metric == "rmsce" for c in CLAIMS[3].comparisons)


# --------------------------------------------------------------------------- synthetic result sets


def test_robust_beats_standard_partly_confirms_claim_three_and_missing_methods_are_named(tmp_path):
    results = _written(tmp_path, _result("std", "standard", ATTACKED, seed=1), _result("rob", "robust", ROBUST, seed=2))
    decided = _by_id(decide_claims(results, n_boot=300, seed=0))
    assert [d["verdict"] in VERDICTS for d in decided.values()] == [True] * 6

    one = decided["1"]
    assert one["verdict"] == "confirmed" and one["comparisons"][0]["difference"] == pytest.approx(-0.5)

    three = decided["3"]
    assert three["verdict"] == "partly confirmed"
    assert {(c["b"], c["a"], c["condition"]) for c in three["comparisons"]} == {
        ("robust", "standard", k) for k in ("pgd_l2@2", "gaussian@0.1", "speckle@0.1")}
    assert all(c["ci"][0] > 0 and c["side"] == "claimed" for c in three["comparisons"])
    assert "augmix" in " ".join(three["missing"]) and "robustaugmix" in three["reading"]

    for cid, what in (("2", "no augmix result"), ("4", "no robustaugmix result"), ("5", "no robustaugmix result")):
        assert decided[cid]["verdict"] == "not evaluable" and what in decided[cid]["reading"]
        assert decided[cid]["comparisons"] == []
    assert decided["6"]["verdict"] == "not evaluable" and "temperature" in decided["6"]["reading"]

    # the paired interval is paired_cluster_bootstrap's on the same images, same seed
    c = next(c for c in three["comparisons"] if c["condition"] == "pgd_l2@2")
    ps_s, ps_r = (r["_per_sample"] for r in sorted(results, key=lambda r: r["method"] != "standard"))
    direct = paired_cluster_bootstrap(labels=ps_s.labels, probs_a=ps_s.probs(1), probs_b=ps_r.probs(1),
                                      groups=ps_s.groups, metrics=("balanced_accuracy",), n_boot=300, seed=0)
    assert c["difference"] == pytest.approx(direct["balanced_accuracy"]["difference"])
    assert c["ci"] == pytest.approx(direct["balanced_accuracy"]["ci"])
    assert c["p_value"] == pytest.approx(direct["balanced_accuracy"]["p_value"])

    rows = claims_rows(list(decided.values()))
    assert list(rows[0]) == ["claim", "verdict", "deciding differences", "reading"]
    assert rows[1]["deciding differences"] == "–"
    md = claims_markdown(list(decided.values()))
    assert md.startswith("| claim | verdict |") and "80 images of 40 patients" in md and "Rule: confirmed" in md


def test_images_are_matched_by_key_and_other_images_are_refused(tmp_path):
    std = _result("std", "standard", ATTACKED, seed=1)
    rob = _result("rob", "robust", ROBUST, seed=2)
    shuffled = _result("rob", "robust", ROBUST, seed=2, order=np.random.default_rng(5).permutation(N))
    same = decide_claims([std, rob], n_boot=100)
    again = decide_claims([std, shuffled], n_boot=100)
    assert [c["ci"] for d in same for c in d["comparisons"]] == [c["ci"] for d in again for c in d["comparisons"]]

    other = _result("rob", "robust", ROBUST, seed=2, keys=[f"other{i:03d}" for i in range(N)])
    with pytest.raises(ValueError, match=r"^std and rob were not tested on the same images \(80 and 80 images, "
                                         r"0 in common\), so no paired comparison of them is possible\.$"):
        decide_claims([std, other], n_boot=100)
    with pytest.raises(ValueError, match="two results of method standard"):
        decide_claims([std, _result("std2", "standard", ATTACKED, seed=3)], n_boot=100)
    with pytest.raises(ValueError, match="no results"):
        decide_claims([], n_boot=100)


def test_all_four_methods_and_a_temperature_decide_every_claim():
    std = _result("std", "standard", ATTACKED, seed=1)
    aug = _result("aug", "augmix", {"pgd_l2@2": 0.0, "gaussian@0.1": 0.3, "speckle@0.1": 0.3}, seed=3)
    rob = _result("rob", "robust", ROBUST, seed=2)
    ram = _result("ram", "robustaugmix", ROBUST, seed=4)
    std["trust"] = {"fits": {"-1": {"temperature": 2.5}}}
    decided = _by_id(decide_claims([std, aug, rob, ram], n_boot=200, seed=1))
    assert all(d["verdict"] != "not evaluable" for d in decided.values())
    assert decided["3"]["verdict"] == "confirmed" and len(decided["3"]["comparisons"]) == 12
    assert {c["a"] for c in decided["4"]["comparisons"]} == {"standard", "robust", "augmix", "standard + temperature"}

    six = decided["6"]["comparisons"][0]
    ps = std["_per_sample"]
    raw = classification_metrics(labels=ps.labels, probs=ps.probs(0))["rmsce"]
    cooled = classification_metrics(labels=ps.labels,
                                    probs=apply_temperature(logits=ps.logits[0], temperature=2.5))["rmsce"]
    assert six["difference"] == pytest.approx(cooled - raw)
    assert six["ci"][0] <= six["difference"] <= six["ci"][1] and 0.0 <= six["p_value"] <= 1.0
    assert comparison_text(six).startswith("(standard + temperature) − standard, RMSCE clean: ")


def test_each_fold_gets_its_own_temperature_and_a_missing_fit_is_named():
    folds = np.repeat([0, 1], N // 2)
    std = _result("cv-std", "standard", ATTACKED, seed=1, folds=folds)
    rob = _result("cv-rob", "robust", ROBUST, seed=2, folds=folds)
    std["trust"] = {"fits": {"0": {"temperature": 0.5}}}
    six = _by_id(decide_claims([std, rob], n_boot=50))["6"]
    assert six["verdict"] == "not evaluable"
    assert six["reading"] == "Not evaluable: cv-std carries no fitted temperature for fold 1."
    std["trust"]["fits"]["1"] = {"temperature": 4.0}
    six = _by_id(decide_claims([std, rob], n_boot=50))["6"]["comparisons"][0]
    ps = std["_per_sample"]
    cooled = np.concatenate([apply_temperature(logits=ps.logits[0][folds == f], temperature=t)
                             for f, t in ((0, 0.5), (1, 4.0))])
    raw = classification_metrics(labels=ps.labels, probs=ps.probs(0))["rmsce"]
    assert six["difference"] == pytest.approx(classification_metrics(labels=ps.labels, probs=cooled)["rmsce"] - raw)


# --------------------------------------------------------------------------- the shipped results

_NAME = r"\([\w ]+ \+ [\w ]+\)|\w+"
_NUM = r"[+−]\d+\.\d+"
_FRAGMENT = re.compile(rf"({_NAME}) − ({_NAME}), ([^:;()]+): ({_NUM}) \[({_NUM}), ({_NUM})\]")


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


def _check_numbers(decided: list[dict]) -> None:
    """Every ``B − A, condition: d [lo, hi]`` in a sentence or a row is a comparison's numbers, rounded."""
    for d, row in zip(decided, claims_rows(decided)):
        index = {(c["b"], c["a"], ("RMSCE " if c["metric"] == "rmsce" else "") + condition_label(c["condition"])): c
                 for c in d["comparisons"]}
        cited = list(_FRAGMENT.finditer(d["reading"]))
        listed = list(_FRAGMENT.finditer(row["deciding differences"]))
        assert len(listed) == len(d["comparisons"]) and (cited or not d["comparisons"]), d["reading"]
        for m in [*cited, *listed]:
            c = index[(m.group(1).strip("()"), m.group(2).strip("()"), m.group(3))]
            scale, digits = (100.0, 1) if c["metric"] == "balanced_accuracy" else (1.0, 3)
            for got, want in zip(m.groups()[3:], (c["difference"], *c["ci"])):
                assert _num(got) == pytest.approx(scale * want, abs=0.5 * 10 ** -digits + 1e-9), (m.group(0), c)
        for m in cited:  # the magnitude in words is the same difference
            c = index[(m.group(1).strip("()"), m.group(2).strip("()"), m.group(3))]
            if c["difference"] != 0:
                words = d["reading"][: m.start()].rsplit(c["b"], 1)[-1]
                assert re.search(r"\d+\.\d+", words).group(0) == m.group(4)[1:], (words, m.group(0))


@pytest.mark.skipif(not all((SHIPPED / f"{m}.logits.npz").is_file()
                            for m in ("standard", "robust", "augmix", "robustaugmix")),
                    reason="the shipped single-split results are absent")
def test_shipped_results_decide_every_claim_and_sentences_carry_the_numbers():
    results = load_results([SHIPPED])
    decided = decide_claims(results, n_boot=200, seed=0)
    assert [d["id"] for d in decided] == [c.id for c in CLAIMS]
    assert all(d["verdict"] in VERDICTS and d["verdict"] != "not evaluable" for d in decided), \
        [(d["id"], d["verdict"], d["missing"]) for d in decided]
    assert all(d["n_images"] == 118 and d["reading"].startswith(d["verdict"].capitalize()) for d in decided)
    _check_numbers(decided)
    assert "118 images of 69 patients" in claims_markdown(decided)


@pytest.mark.skipif(not (SHIPPED_CV / "cv-standard-cpu-s0.logits.npz").is_file(),
                    reason="the shipped cross-validated results are absent")
def test_shipped_cross_validation_decides_every_claim_on_all_571_images():
    decided = _by_id(decide_claims(load_results([SHIPPED_CV]), n_boot=100, seed=0))
    assert all(d["verdict"] != "not evaluable" and not d["missing"] for d in decided.values()), \
        [(d["id"], d["verdict"], d["missing"]) for d in decided.values()]
    assert all(d["n_images"] == 571 for d in decided.values())
    assert len(decided["3"]["comparisons"]) == 12  # {robust, robustaugmix} x {standard, augmix} x {PGD, Gaussian, speckle}
    _check_numbers(list(decided.values()))
