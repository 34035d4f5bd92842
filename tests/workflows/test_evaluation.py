"""Cross-validated evaluation end to end on tiny synthetic data: folds, pooling, files that recompute every
number, paired comparisons, and counted predictions that do not depend on the CPU's bf16."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medrobust.evaluation import EvalConfig, PerSample, evaluate_model, per_sample_of, summarise, load_results
from medrobust.metrics import classification_metrics

from conftest import make_actualmed_root, make_covid_root
from test_cli import assert_one_line_error, run_main


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """cv (smoke, 32 px, 3 folds) of standard, robust fine-tuned per fold, then pooled evaluation of both."""
    base = tmp_path_factory.mktemp("cv")
    data = [make_covid_root(base / "data").path, make_actualmed_root(base / "data").path]
    data_args = [a for p in data for a in ("--data", str(p))]
    small = ["--preset", "smoke", "--image-size", "32", "--folds", "3", "--no-progress", *data_args]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("MEDROBUST_CACHE", str(base / "cache"))
        mp.setenv("MEDROBUST_CPU_BF16", "0")
        mp.delenv("MEDROBUST_DATA", raising=False)
        std = run_main(["cv", "--method", "standard", *small, "--out", str(base / "cv-standard")])
        rob = run_main(["cv", "--method", "robust", *small, "--out", str(base / "cv-robust"),
                        "--init-cv", str(base / "cv-standard"), "--pgd-steps", "2"])
        ev = run_main(["evaluate", str(base / "cv-standard"), str(base / "cv-robust"), *data_args,
                       "--out", str(base / "results"), "--steps", "2", "--eps", "1,2", "--n-boot", "50"])
        rep = run_main(["report", str(base / "results")])
    return {"base": base, "data_args": data_args, "std": std, "rob": rob, "ev": ev, "report": rep}


def test_cv_trains_every_fold_and_fine_tunes_from_the_same_fold(cv):
    from medrobust.checkpoints import read_card

    for key in ("std", "rob"):
        rc, out, err = cv[key]
        assert rc == 0, err
    for fold in range(3):
        std = read_card(cv["base"] / "cv-standard" / f"fold{fold}" / "model.safetensors")
        rob = read_card(cv["base"] / "cv-robust" / f"fold{fold}" / "model.safetensors")
        assert (std["split"]["folds"], std["split"]["fold"]) == (3, fold)
        assert rob["split"]["hash"] == std["split"]["hash"]  # the same patients, fold by fold
        assert rob["config"]["init"].endswith(f"fold{fold}/model.safetensors")
    # Rerunning the command finds every fold done and trains nothing.
    rc, out, _ = run_main(["cv", "--method", "standard", "--preset", "smoke", "--image-size", "32", "--folds", "3",
                           "--no-progress", *cv["data_args"], "--out", str(cv["base"] / "cv-standard")])
    assert rc == 0 and out.count("done already") == 3


def test_init_from_another_folds_model_is_refused(cv, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDROBUST_CACHE", str(cv["base"] / "cache"))
    rc, _, err = run_main(["train", "--method", "robust", "--preset", "smoke", "--image-size", "32", "--folds", "3",
                           "--fold", "0", "--init", str(cv["base"] / "cv-standard" / "fold1" / "model.safetensors"),
                           *cv["data_args"], "--out", str(tmp_path / "leak"), "--no-progress"])
    assert_one_line_error(rc, err, "train", "test patient")


def test_pooled_results_test_every_image_once_with_fold_spread(cv):
    rc, out, err = cv["ev"]
    assert rc == 0, err
    assert out.count("pooled over 3 folds") == 2
    results = {r["method"]: r for r in load_results([cv["base"] / "results"])}
    std = results["standard"]
    splits = [json.loads((cv["base"] / "cv-standard" / f"fold{i}" / "split.json").read_text()) for i in range(3)]
    tested = [k for s in splits for k in s["images"]["test"]]
    assert sorted(std["predictions"]["keys"]) == sorted(tested) and len(set(tested)) == len(tested)
    assert std["n_test"] == len(tested) and std["cv"]["folds"] == 3
    assert len(std["cv"]["fold_results"]) == 3 and all(len(r["folds"]["accuracy"]) == 3 for r in std["rows"])
    assert {"mean", "sd", "n"} <= set(std["cv"]["clean"]["auroc"])
    assert results["robust"]["predictions"]["keys"] == std["predictions"]["keys"]
    for row in std["rows"]:  # AUROC and its CI at every condition
        assert "auroc" in row and "auroc" in row["ci"]
    assert {r["suite"] for r in std["rows"]} == {"clean", "attack", "paper", "clinical"}
    assert std["precision"]["counted_predictions"] == "fp32"


def test_a_second_evaluation_reuses_the_finished_folds(cv, monkeypatch):
    monkeypatch.setenv("MEDROBUST_CACHE", str(cv["base"] / "cache"))
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")
    before = json.loads((cv["base"] / "results" / "cv-standard.json").read_text())
    rc, out, err = run_main(["evaluate", str(cv["base"] / "cv-standard"), *cv["data_args"], "--out",
                             str(cv["base"] / "results"), "--steps", "2", "--eps", "1,2", "--n-boot", "50"])
    assert rc == 0, err
    assert err.count("reusing its evaluation") == 3
    after = json.loads((cv["base"] / "results" / "cv-standard.json").read_text())
    assert after["rows"] == before["rows"] and after["clean"] == before["clean"]


def test_every_reported_number_recomputes_from_the_files(cv):
    results = load_results([cv["base"] / "results"])
    for r in results:
        with open(r["_path"].replace(".json", ".predictions.csv"), newline="") as fh:
            preds = list(csv.DictReader(fh))
        logits = np.array([[float(p["logit_0"]), float(p["logit_1"])] for p in preds])
        z = np.exp(logits - logits.max(1, keepdims=True))
        probs = z / z.sum(1, keepdims=True)
        labels = np.array([int(p["label"]) for p in preds])
        m = classification_metrics(labels=labels, probs=probs)
        for k in ("accuracy", "balanced_accuracy", "auroc"):
            assert m[k] == pytest.approx(r["clean"][k], abs=1e-12)
        for k in ("rmsce", "rmsce_plugin", "ece"):
            assert m[k] == pytest.approx(r["calibration"][k], abs=1e-12)
        assert [float(p["p_covid"]) for p in preds] == pytest.approx(r["predictions"]["p_covid"], abs=1e-15)
        ps = per_sample_of(r)
        assert ps is not None and ps.keys == [p["key"] for p in preds]
        for i, row in enumerate(r["rows"]):  # every condition, from the .npz
            mi = classification_metrics(labels=ps.labels, probs=ps.probs(i))
            assert (mi["balanced_accuracy"], mi["auroc"]) == pytest.approx((row["balanced_accuracy"], row["auroc"]),
                                                                           abs=1e-12, nan_ok=True)


def test_report_leads_with_the_pooled_table_and_paired_differences(cv):
    rc, out, err = cv["report"]
    assert rc == 0, err
    assert out.index("Cross-validated") < out.index("Table I")
    assert "Paired differences against standard" in out and "cv-robust − cv-standard" in out
    assert "Clinical corruption suite" in out and "Severity check" in out


def test_pooling_refuses_overlapping_or_mismatched_parts():
    cfg = EvalConfig(eps=(1.0,), suites=())
    from medrobust.evaluation import conditions_for

    conds = conditions_for(cfg)

    def part(keys, fold):
        n = len(keys)
        return PerSample(keys=keys, labels=np.arange(n) % 2, groups=np.array(keys), folds=np.full(n, fold),
                         conditions=conds, logits=np.zeros((len(conds), n, 2), np.float32),
                         attack_ok=np.ones((3, 1, n), bool), attack_names=("pgd_first", "pgd", "apgd"))

    pooled = PerSample.concat([part(["a", "b"], 0), part(["c", "d"], 1)])
    assert pooled.keys == ["a", "b", "c", "d"] and pooled.folds.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="twice"):
        PerSample.concat([part(["a", "b"], 0), part(["b", "c"], 1)])
    r = summarise(pooled, config=cfg, name="x", image_size=32)
    assert r["cv"]["folds"] == 2 and r["n_test"] == 4


def test_counted_predictions_are_fp32_whatever_the_cpu(monkeypatch):
    from medrobust.models import build_model

    torch.manual_seed(0)
    model = build_model().eval()
    x = torch.rand(6, 1, 32, 32)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    cfg = EvalConfig(eps=(1.0,), pgd_steps=1, suites=("paper",), severities=(0.1,), n_boot=20)
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MEDROBUST_CPU_BF16", flag)
        r = evaluate_model(model, x, y, config=cfg, name="m")
        out[flag] = (r["_per_sample"].logits[0], r["precision"])
    assert np.array_equal(out["0"][0], out["1"][0])  # the clean prediction is counted in fp32 both times
    assert out["1"][1]["attack_iterations"] == "bf16 autocast" and out["0"][1]["attack_iterations"] == "fp32"


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2)).eval()


@pytest.mark.parametrize("schedule", ["independent", "sequential"])
def test_attack_rows_are_the_worst_case_with_each_attack_beside_it(tmp_path, schedule):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 16, 16, generator=g)
    model = _tiny_model()
    y = model(x).argmax(1).detach()  # every image correct before the attack
    cfg = EvalConfig(eps=(0.5, 2.0), pgd_steps=3, restarts=2, n_boot=20, suites=(), schedule=schedule)
    r = evaluate_model(model, x, y, config=cfg, name="tiny")
    ps = r["_per_sample"]
    apgd = "apgd" if schedule == "independent" else "apgd_after_pgd"
    assert ps.attack_names == ("pgd_first", "pgd", apgd) and ps.attack_ok.shape == (3, 2, 24)
    for e, row in enumerate(x for x in r["rows"] if x["suite"] == "attack"):
        by = row["accuracy_by_attack"]
        assert set(by) == {"pgd_first", "pgd", apgd} and row["ensemble"] == ["pgd", "apgd"]
        assert row["schedule"] == schedule
        assert row["accuracy"] <= min(by.values()) + 1e-12  # the worst case is never above any member
        worst = ps.attack_ok[1, e] & ps.attack_ok[2, e]
        assert row["accuracy"] == pytest.approx(worst.mean())  # ... and is exactly their conjunction
        if schedule == "sequential":  # APGD saw PGD's survivors only: its verdict is the worst case itself
            assert row["accuracy"] == pytest.approx(by[apgd])
        assert by["pgd"] <= by["pgd_first"]
    assert set(r["sanity"]["worst_case_gain"]) == {"0.5", "2"} and r["sanity"]["schedule"] == schedule
    # Saved and loaded with the attack verdicts; the long CSV lists every attack's accuracy.
    from medrobust.evaluation import write_results

    paths = write_results(r, tmp_path)
    back = PerSample.load(paths[-1])
    assert back.attack_names == ps.attack_names and np.array_equal(back.attack_ok, ps.attack_ok)
    metrics = {row["metric"] for row in csv.DictReader(open(paths[1]))}
    assert {"accuracy_pgd", f"accuracy_{apgd}", "accuracy_pgd_first"} <= metrics


def test_the_attack_schedule_is_checked_at_the_boundary():
    with pytest.raises(ValueError, match="attack schedule 'both'"):
        EvalConfig(schedule="both").validate()


def test_per_sample_files_written_before_the_ensemble_still_load(tmp_path):
    import io

    from medrobust.evaluation import conditions_for

    conds = conditions_for(EvalConfig(eps=(1.0,), suites=()))
    buf = io.BytesIO()
    np.savez_compressed(buf, keys=np.array(["a", "b"]), labels=np.array([0, 1]), groups=np.array(["a", "b"]),
                        folds=np.array([-1, -1]), logits=np.zeros((2, 2, 2), np.float32),
                        restart_ok=np.array([[True, False]]),
                        conditions=np.array(json.dumps([c.__dict__ for c in conds])))
    (tmp_path / "old.npz").write_bytes(buf.getvalue())
    ps = PerSample.load(tmp_path / "old.npz")
    assert ps.attack_names == ("pgd",) and ps.attack_ok.tolist() == [[[True, False]]]


def test_an_unknown_attack_is_refused_at_the_boundary():
    with pytest.raises(ValueError, match="subset of pgd, apgd"):
        EvalConfig(attacks=("pgd", "square")).validate()


def test_attack_checks_report_square_and_the_larger_budget():
    from medrobust.evaluation import attack_checks

    model = _tiny_model()
    x = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1).detach()
    cfg = EvalConfig(pgd_steps=3, restarts=1)
    c = attack_checks(model, x, y, config=cfg, eps=8.0, n=12, square_queries=30)
    assert c["n"] == 12 and c["square"]["n_queries"] == 30
    b = c["budget"]
    assert b["steps"] == 3 and b["factor"] == 2 and b["accuracy_larger_budget"] <= b["accuracy"] + 1 / 12
    assert c["ok"] == (not c["square"]["masking_suspected"] and b["gap_ok"])
    json.dumps(c)


def test_folds_evaluated_elsewhere_pool_to_the_same_result(cv, tmp_path, monkeypatch):
    """scripts/evaluate_folds_elsewhere.py: pack here, run "there" (another process), pool here = evaluate."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    script = repo / "scripts" / "evaluate_folds_elsewhere.py"
    env = {**os.environ, "PYTHONPATH": str(repo), "MEDROBUST_CACHE": str(cv["base"] / "cache"),
           "MEDROBUST_CPU_BF16": "0"}
    opts = ["--steps", "2", "--eps", "1,2", "--n-boot", "50"]  # as the fixture's evaluate
    packed, there = tmp_path / "packed", tmp_path / "there"
    done = subprocess.run([sys.executable, str(script), "pack", str(cv["base"] / "cv-standard"), *cv["data_args"],
                           "--dest", str(packed), "--", *opts], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for fold in range(3):
        done = subprocess.run([sys.executable, str(script), "run", str(packed), "--fold", str(fold), "--device", "cpu",
                               "--cache", str(there)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    # A part run with another fold's model is refused.
    (packed / "fold0" / "part.pt").replace(packed / "fold1" / "part.pt")
    done = subprocess.run([sys.executable, str(script), "run", str(packed), "--fold", "1", "--device", "cpu",
                           "--cache", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "fold 0's, but the model's card says fold 1" in done.stderr
    results = tmp_path / "results"
    (results / ".cv-standard.folds").mkdir(parents=True)
    for f in there.iterdir():
        f.replace(results / ".cv-standard.folds" / f.name)
    monkeypatch.setenv("MEDROBUST_CACHE", str(cv["base"] / "cache"))
    rc, _, err = run_main(["evaluate", str(cv["base"] / "cv-standard"), *cv["data_args"], "--out", str(results), *opts])
    assert rc == 0, err
    assert err.count("reusing its evaluation") == 3  # nothing was evaluated again here
    pooled = json.loads((results / "cv-standard.json").read_text())
    direct = json.loads((cv["base"] / "results" / "cv-standard.json").read_text())
    assert [r["accuracy"] for r in pooled["rows"]] == [r["accuracy"] for r in direct["rows"]]
    assert pooled["precision"]["device"] == "cpu"


def test_attack_rows_follow_the_nested_balls_and_their_logits_are_the_kept_examples():
    """Each attack's accuracy and the worst case fall with eps (an example found at a smaller radius lies in
    every larger ball), the radii may come in any order, and a stored attack logit is the fp32 prediction of
    the example kept for that image (the verdict that judged it, not a second forward pass)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 1, 16, 16, generator=g)
    model = _tiny_model()
    y = model(x).argmax(1).detach()
    cfg = EvalConfig(eps=(2.0, 0.5, 1.0), pgd_steps=3, restarts=2, n_boot=20, suites=())
    r = evaluate_model(model, x, y, config=cfg, name="tiny")
    ps = r["_per_sample"]
    order = np.argsort(cfg.eps)  # smallest radius first
    for a in range(len(ps.attack_names)):
        for small, large in zip(order, order[1:]):
            assert (ps.attack_ok[a, large] <= ps.attack_ok[a, small]).all(), ps.attack_names[a]
    for i, e in enumerate(cfg.eps):
        worst = ps.attack_ok[1, i] & ps.attack_ok[2, i]
        assert np.array_equal(ps.logits[1 + i].argmax(1) == ps.labels, worst)
    assert set(r["timing"]) >= {"total_s", "clean_s", "pgd_s", "paper_s", "clinical_s", "corruption_s", "summary_s"}
    assert r["timing"]["pass_images"] == 32 * 128 * 128 // (16 * 16)


def test_model_passes_are_cut_to_cache_sized_chunks_without_changing_the_function():
    from medrobust.evaluation import Chunked, pass_images

    assert (pass_images(128), pass_images(224), pass_images(64), pass_images(4096)) == (32, 10, 128, 1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 3)).eval()
    chunked = Chunked(net, size=4)
    assert not chunked.training
    x = torch.rand(10, 1, 16, 16, requires_grad=True)
    out = chunked(x)
    assert torch.allclose(out, net(x), atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-6)  # every image gets its own gradient through the chunks
    with pytest.raises(ValueError, match="size"):
        Chunked(net, size=0)


def test_the_cli_passes_the_attack_schedule_and_defaults_to_evalconfigs():
    from medrobust.cli import build_parser, evaluate_config

    parse = build_parser().parse_args
    assert evaluate_config(parse(["evaluate"])).schedule == EvalConfig.schedule == "sequential"
    assert evaluate_config(parse(["evaluate", "--attack-schedule", "independent"])).schedule == "independent"
    with pytest.raises(SystemExit):
        parse(["evaluate", "--attack-schedule", "parallel"])
