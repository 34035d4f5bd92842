"""Tests for medrobust.cli, run in-process through ``main()``: help, usage errors, and train -> evaluate ->
report -> export end to end on tiny synthetic data."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from medrobust.checkpoints import load_checkpoint, read_card
from medrobust.cli import main
from medrobust.evaluation import write_results

from conftest import make_actualmed_root, make_covid_root

LONG_HEADER = ["model", "method", "suite", "perturbation", "severity", "metric", "value", "ci_low", "ci_high"]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout/stderr captured; argparse's SystemExit becomes a return code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str, command: str, match: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medrobust {command}: error: "), err
    assert match in lines[0], err


def assert_usage_error(rc: int, err: str, match: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: python -m medrobust")
    assert "error:" in lines[-1] and match in lines[-1], err


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """train (smoke, 32 px) -> evaluate (2 PGD steps, 50 resamples) -> report, once for the module."""
    base = tmp_path_factory.mktemp("cli")
    data = [make_covid_root(base / "data").path, make_actualmed_root(base / "data").path]
    data_args = [a for p in data for a in ("--data", str(p))]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("MEDROBUST_CACHE", str(base / "cache"))
        mp.setenv("MEDROBUST_CPU_BF16", "0")
        mp.delenv("MEDROBUST_DATA", raising=False)
        train = run_main(["train", "--method", "standard", "--preset", "smoke", "--image-size", "32", *data_args,
                          "--out", str(base / "run"), "--no-progress"])
        evaluate = run_main(["evaluate", str(base / "run"), *data_args, "--out", str(base / "results"),
                             "--steps", "2", "--n-boot", "50"])
        report = run_main(["report", str(base / "results")])
    return {"base": base, "data": data, "data_args": data_args, "train": train, "evaluate": evaluate,
            "report": report}


# ---- help and usage errors --------------------------------------------------------------------

def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "report", "export"):
        assert cmd in out


@pytest.mark.parametrize("cmd, expect", [("train", "--method"), ("evaluate", "--steps"), ("report", "--out"),
                                         ("export", "dest")])
def test_subcommand_help_exits_zero(capsys, cmd, expect):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    assert expect in capsys.readouterr().out


def test_no_command_is_a_usage_error():
    rc, _, err = run_main([])
    assert_usage_error(rc, err, "required")


@pytest.mark.parametrize("argv, match", [
    (["train", "--method", "magic"], "invalid choice: 'magic'"),
    (["train", "--method", "robust", "--eps", "-1"], "must be >= 0"),
    (["train", "--method", "robust", "--eps", "nan"], "must be >= 0"),
    (["train", "--method", "robust", "--epochs", "0"], "must be >= 1"),
    (["train", "--method", "robust", "--preset", "huge"], "invalid choice: 'huge'"),
    (["evaluate", "--eps", "1,-2"], "must be >= 0"),
    (["evaluate", "--steps", "two"], "expected an integer"),
])
def test_bad_arguments_are_usage_errors(argv, match):
    rc, _, err = run_main(argv)
    assert_usage_error(rc, err, match)


def test_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["train", "--method", "standard", "--preset", "smoke", "--data", str(tmp_path / "absent"),
                           "--out", str(tmp_path / "run"), "--no-progress"])
    assert_one_line_error(rc, err, "train", "does not exist")
    assert "absent" in err


def test_default_data_folder_is_data_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["train", "--method", "standard", "--preset", "smoke", "--no-progress"])
    assert_one_line_error(rc, err, "train", "Data folder data does not exist")


def test_invalid_config_value(tmp_path, monkeypatch, covid_root):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["train", "--method", "standard", "--preset", "smoke", "--image-size", "16",
                           "--data", str(covid_root.path), "--no-progress"])
    assert_one_line_error(rc, err, "train", "image_size must be >= 32")


def test_missing_checkpoint(tmp_path, monkeypatch, covid_root):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["evaluate", str(tmp_path / "nothing.safetensors"), "--data", str(covid_root.path)])
    assert_one_line_error(rc, err, "evaluate", "does not exist")
    rc, _, err = run_main(["evaluate", "--data", str(covid_root.path)])  # no checkpoint, and no runs/ here
    assert_one_line_error(rc, err, "evaluate", "No trained model found in runs/")


def test_report_without_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["report", str(tmp_path / "absent")])
    assert_one_line_error(rc, err, "report", "No result file or folder")
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(["report", str(tmp_path / "empty")])
    assert_one_line_error(rc, err, "report", "No evaluation results")


# ---- end to end -------------------------------------------------------------------------------

def test_train_writes_a_run(e2e):
    rc, out, err = e2e["train"]
    assert rc == 0, err
    assert "Traceback" not in err
    run = e2e["base"] / "run"
    assert f"checkpoint {run / 'model.safetensors'}" in out
    card = read_card(run / "model.safetensors")
    assert card["method"] == "standard" and card["image_size"] == 32 and card["config"]["preset"] == "smoke"
    assert card["epochs_done"] == 1 and card["config"]["max_batches"] == 3
    load_checkpoint(run / "model.safetensors")  # the sha256 matches


def test_evaluate_writes_json_and_csvs(e2e):
    rc, out, err = e2e["evaluate"]
    assert rc == 0, err
    assert "Traceback" not in err
    results = e2e["base"] / "results"
    assert sorted(p.name for p in results.iterdir()) == ["run.csv", "run.json", "run.logits.npz", "run.predictions.csv",
                                                         "run.val.npz"]
    assert "run: clean acc" in out and str(results / "run.json") in out

    result = json.loads((results / "run.json").read_text())
    split = json.loads((e2e["base"] / "run" / "split.json").read_text())
    assert result["name"] == "run" and result["method"] == "standard" and result["part"] == "test"
    assert result["n_test"] == len(split["images"]["test"])
    assert result["split_hash"] == split["hash"]
    assert result["params"]["pgd_steps"] == 2 and result["params"]["n_boot"] == 50
    assert result["params"]["eps_pixels"] == pytest.approx([e * 32 / 224 for e in (1, 2, 3, 4, 5)])
    assert 0.0 <= result["clean"]["accuracy"] <= 1.0
    assert isinstance(result["degenerate"], bool)
    assert sorted(result["predictions"]["keys"]) == sorted(split["images"]["test"])
    # the decision rule is fitted on the validation patients, never the test ones (medrobust.trust)
    from medrobust.trust import ValLogits

    val = ValLogits.load(results / "run.val.npz")
    assert sorted(val.keys) == sorted(split["images"]["val"])
    fit = result["trust"]["fits"]["-1"]
    assert fit["n_val"] == len(split["images"]["val"]) and fit["temperature"] > 0
    assert 0.0 <= fit["threshold"] <= 1.0

    with open(results / "run.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == LONG_HEADER
    body = [dict(zip(LONG_HEADER, r)) for r in rows[1:]]
    assert all(len(r) == len(LONG_HEADER) for r in rows)
    perts = {r["perturbation"] for r in body}
    from medrobust.clinical import CLINICAL

    assert perts == {"clean", "pgd_l2", "gaussian", "salt_and_pepper", "speckle", *(f"clinical/{n}" for n in CLINICAL)}
    assert {r["metric"] for r in body if r["perturbation"] != "clean"} >= {"accuracy", "balanced_accuracy", "auroc"}
    pgd_acc = [r for r in body if r["perturbation"] == "pgd_l2" and r["metric"] == "accuracy"]
    assert [float(r["severity"]) for r in pgd_acc] == [1.0, 2.0, 3.0, 4.0, 5.0]
    for r in body:
        assert r["model"] == "run" and r["method"] == "standard"
        if r["value"]:
            assert math.isfinite(float(r["value"]))
        if r["metric"] == "accuracy":
            assert 0.0 <= float(r["value"]) <= 1.0
            assert float(r["ci_low"]) <= float(r["value"]) + 1e-9 <= float(r["ci_high"]) + 2e-9

    with open(results / "run.predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == result["n_test"]
    assert all(0.0 <= float(p["p_covid"]) <= 1.0 and p["label"] in ("0", "1") for p in preds)


def test_report_prints_both_tables(e2e):
    rc, out, err = e2e["report"]
    assert rc == 0, err
    assert "Table I" in out and "Table II" in out
    assert "| run" in out and "standard" in out


def test_report_defaults_to_results_in_the_working_directory(e2e, tmp_path, monkeypatch):
    shutil.copytree(e2e["base"] / "results", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["report", "--out", "report.md"])
    assert rc == 0, err
    assert "Table I" in out
    assert (tmp_path / "report.md").read_text().strip() == out.strip()


def test_evaluate_refuses_overlapping_patients(e2e, tmp_path, monkeypatch):
    run = tmp_path / "leaky"
    shutil.copytree(e2e["base"] / "run", run)
    split = json.loads((run / "split.json").read_text())
    card_file = run / "model.json"
    card = json.loads(card_file.read_text())
    # The sha256 covers the weights only, so editing the card keeps the checkpoint loadable.
    card["split"]["train_patients"].append(split["patients"]["test"][0])
    card_file.write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDROBUST_CACHE", str(e2e["base"] / "cache"))  # decoded already: no progress bar
    rc, _, err = run_main(["evaluate", str(run), *e2e["data_args"], "--out", str(tmp_path / "res"),
                           "--steps", "1", "--n-boot", "10"])
    assert_one_line_error(rc, err, "evaluate", "1 patient(s) of the evaluation split were in the model's "
                                               "training split")
    assert not (tmp_path / "res").exists()


def test_export_fp16(e2e, tmp_path):
    dest = tmp_path / "shipped.safetensors"
    rc, out, err = run_main(["export", str(e2e["base"] / "run"), str(dest)])
    assert rc == 0, err
    assert f"wrote {dest} (fp16" in out
    model, card = load_checkpoint(dest)
    assert card["name"] == "shipped" and card["weights_dtype"] == "float16" and card["method"] == "standard"
    rc, _, err = run_main(["export", str(e2e["base"] / "run"), str(tmp_path / "shipped.pt")])
    assert_one_line_error(rc, err, "export", ".safetensors")


def test_csv_cells_with_commas_and_quotes_roundtrip(e2e, tmp_path):
    # Upstream file names and run names may hold commas or quotes; the CSVs must still parse.
    result = json.loads((e2e["base"] / "results" / "run.json").read_text())
    result["name"] = 'my "best", model'
    odd = 'covid-chestxray/a, "b".png'
    result["predictions"]["keys"][0] = odd
    paths = write_results(result, tmp_path)
    with open(paths[1], newline="") as fh:
        rows = list(csv.reader(fh))
    assert all(len(r) == len(LONG_HEADER) for r in rows)
    assert {r[0] for r in rows[1:]} == {'my "best", model'}
    with open(paths[2], newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert preds[0]["key"] == odd
    assert all(set(p) == {"key", "label", "p_covid"} and None not in p.values() for p in preds)


def test_checkpoint_whose_card_lacks_the_image_size(tmp_path, monkeypatch, covid_root):
    from medrobust.checkpoints import save_checkpoint
    from medrobust.models import build_model

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "foreign.safetensors", build_model(), {"name": "foreign"})
    rc, _, err = run_main(["evaluate", str(tmp_path / "foreign.safetensors"), "--data", str(covid_root.path)])
    assert_one_line_error(rc, err, "evaluate", "records no image size")


def test_check_attacks_writes_each_radius_beside_the_result_and_the_report_shows_them(e2e, tmp_path, monkeypatch):
    shutil.copytree(e2e["base"] / "results", tmp_path / "results")
    monkeypatch.setenv("MEDROBUST_CACHE", str(e2e["base"] / "cache"))
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")
    rc, out, err = run_main(["check-attacks", str(e2e["base"] / "run"), *e2e["data_args"], "--out",
                             str(tmp_path / "results"), "--n", "4", "--eps", "1", "3", "--queries", "5",
                             "--steps", "1", "--restarts", "1", "--device", "cpu"])
    assert rc in (0, 3), err  # 3: a check failed (a finding, written to the results), never a crash
    checks = json.loads((tmp_path / "results" / "run.attack_checks.json").read_text())
    assert [c["eps"] for c in checks["by_eps"]] == [1.0, 3.0] and checks["ok"] == (rc == 0)
    assert all(c["n"] == 4 and c["square"]["n_queries"] == 5 for c in checks["by_eps"])
    assert checks["precision"]["device"] == "cpu"
    result = json.loads((tmp_path / "results" / "run.json").read_text())
    assert result["sanity"]["attack_checks"] == checks
    rc, out, err = run_main(["report", str(tmp_path / "results")])
    assert rc == 0, err
    table = out.split("### Attack checks")[1].split("###")[0]
    assert table.count("| run") == 2 and "| 5 |" in table


@pytest.mark.parametrize("device, expect", [("bogus", "unknown device 'bogus'"),
                                            pytest.param("cuda", "no CUDA GPU is available here",
                                                         marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                                  reason="a GPU is here"))])
def test_check_attacks_refuses_a_device_it_cannot_use_in_one_line(e2e, tmp_path, device, expect):
    rc, _, err = run_main(["check-attacks", str(e2e["base"] / "run"), *e2e["data_args"], "--out", str(tmp_path),
                           "--n", "2", "--queries", "2", "--device", device])
    assert_one_line_error(rc, err, "check-attacks", expect)
    assert not any(tmp_path.iterdir())


# ---- issue 23, items 8 and 9: no image vanishes in silence, and every message names the user's own data -----

from synthetic_data import CLASSES, append_manifest_rows, write_manifest  # noqa: E402

EVAL_FAST = ["--steps", "2", "--n-boot", "40", "--eps", "1", "--suites", "paper", "--no-progress"]


def _train(tmp_path: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(["train", "--method", "standard", "--preset", "smoke", "--image-size", "32", "--data", str(data),
                     "--out", str(tmp_path / "run"), "--no-progress", *extra])


def _imported_resnet(tmp_path: Path, classes) -> Path:
    """A torchvision ResNet-18 (3 input channels) made evaluable with import-model."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=len(classes)).eval()
    src = tmp_path / "hospital.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src))
    rc, _, err = run_main(["import-model", str(src), "--arch", "resnet18", "--classes", ",".join(classes),
                           "--image-size", "32", "--in-channels", "3", "--out", str(tmp_path / "ckpt")])
    assert rc == 0, err
    return tmp_path / "ckpt" / "hospital.safetensors"


def test_train_says_and_records_the_images_it_kept_and_dropped(e2e):
    from medrobust.data import read_records

    rc, _, err = e2e["train"]
    assert rc == 0, err
    _, report = read_records(e2e["data"])
    assert sum(report.dropped.values()) > 0  # the synthetic COVID roots hold one row per drop reason
    assert f"medrobust: data: {report.counts_line()}" in err.splitlines()
    assert "dropped " in report.counts_line() and "not a frontal view" in report.counts_line()
    assert any(line.startswith("medrobust: split: train ") for line in err.splitlines())
    card = read_card(e2e["base"] / "run" / "model.safetensors")
    assert card["data"]["dropped"] == dict(report.dropped)


def test_evaluate_says_and_records_the_images_it_kept_and_dropped(e2e):
    from medrobust.data import read_records

    rc, _, err = e2e["evaluate"]
    assert rc == 0, err
    _, report = read_records(e2e["data"])
    assert f"medrobust: data: {report.counts_line()}" in err.splitlines()
    result = json.loads((e2e["base"] / "results" / "run.json").read_text())
    assert result["data"]["dropped"] == dict(report.dropped) and result["data"]["kept"] == report.kept


def test_evaluate_on_a_test_manifest_says_and_records_its_duplicate_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = _imported_resnet(tmp_path, sorted(CLASSES))
    ds = write_manifest(tmp_path / "data", patients_per_class=2)
    first, second = (k.split("/", 1) for k in list(ds.labels)[:2])
    append_manifest_rows(ds.root, [{"path": p, "label": ds.labels[f"{s}/{p}"], "patient": "dup", "source": s}
                                   for s, p in (first, second, first, second)])
    rc, _, err = run_main(["evaluate", str(ckpt), "--test-manifest", str(ds.root), "--out", str(tmp_path / "res"),
                           *EVAL_FAST])
    assert rc == 0, err
    assert "medrobust: data: kept 12 images (covid 4, normal 4, pneumonia 4); dropped 4: 4 duplicate path" in err
    result = json.loads((tmp_path / "res" / "hospital.json").read_text())
    assert result["n_test"] == 12 and result["data"]["dropped"] == {"duplicate path": 4}
    assert result["data"]["per_class"] == {"covid": 4, "normal": 4, "pneumonia": 4}


def test_a_file_listed_twice_with_two_labels_is_an_error_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = write_manifest(tmp_path / "data", patients_per_class=6)
    key = next(k for k, c in ds.labels.items() if c == "normal")
    source, path = key.split("/", 1)
    append_manifest_rows(ds.root, [{"path": path, "label": "covid", "patient": "again", "source": source}])
    rc, _, err = _train(tmp_path, ds.root)
    assert_one_line_error(rc, err, "train", "is listed twice with different labels: 'normal'")
    assert "'covid'" in err and path in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("typo", ["covdi", "Covid "])
def test_a_mistyped_label_is_refused_with_did_you_mean(tmp_path, monkeypatch, typo):
    monkeypatch.chdir(tmp_path)
    ds = write_manifest(tmp_path / "data", patients_per_class=6)
    key = next(k for k, c in ds.labels.items() if c == "covid")
    source, path = key.split("/", 1)
    rows = list(csv.DictReader(open(ds.root, newline="")))
    for r in rows:
        if r["path"] == path:
            r["label"] = typo
    with open(ds.root, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, _, err = _train(tmp_path, ds.root)
    assert_one_line_error(rc, err, "train", f"{typo.strip()!r} (1 image): did you mean 'covid'?")
    assert "--classes" in err
    # Listing the classes without the typo: its image would vanish, so it is refused as well ...
    rc, _, err = _train(tmp_path, ds.root, "--classes", ",".join(CLASSES))
    assert_one_line_error(rc, err, "train", "not in --classes): did you mean 'covid'?")
    # ... while listing it keeps it as a class of its own.
    assert _train(tmp_path, ds.root, "--classes", ",".join([*CLASSES, typo.strip()]))[0] == 0


def test_a_class_of_fewer_than_five_images_is_refused_unless_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = write_manifest(tmp_path / "data", patients_per_class=6)
    rare = tmp_path / "data" / "images" / "rare.png"
    rare.write_bytes((tmp_path / "data" / next(iter(ds.labels)).split("/", 1)[1]).read_bytes())
    append_manifest_rows(ds.root, [{"path": "images/rare.png", "label": "tuberculosis", "patient": "t1",
                                    "source": "site-a"}])
    rc, _, err = _train(tmp_path, ds.root)
    assert_one_line_error(rc, err, "train", "'tuberculosis' (1 image): fewer than 5 images")
    rc, _, err = _train(tmp_path, ds.root, "--classes", ",".join(CLASSES))  # left out: dropped, and said
    assert rc == 0, err
    assert "1 unknown class (tuberculosis 1)" in err


def test_ten_images_give_the_empty_validation_split_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = write_manifest(tmp_path / "data", classes=("normal", "covid"), patients_per_class=5, images_per_patient=1)
    rc, _, err = _train(tmp_path, ds.root)
    assert_one_line_error(rc, err, "train", "The validation split is empty: the data hold 10 images of 10 patients")
    assert "covid 5, normal 5" in err and "at least 6 patients" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_classes_naming_an_absent_class_says_which_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = write_manifest(tmp_path / "data", patients_per_class=6)
    rc, _, err = _train(tmp_path, ds.root, "--classes", "normal,pneumonia,flu")
    assert_one_line_error(rc, err, "train", "--classes lists 'flu', but no image is labelled so")
    assert "covid 12, normal 12, pneumonia 12" in err and "[" not in err and ".0" not in err
    rc, _, err = _train(tmp_path, ds.root, "--classes", "normal,Pneumonia,covid")
    assert_one_line_error(rc, err, "train", "'Pneumonia' (did you mean 'pneumonia'?)")


@pytest.mark.parametrize("classes, match", [
    ("covid,covid,x", "names 'covid' more than once; list each class once, in label order (e.g. 'covid,x')"),
    ("covid", "names 1 class; a classifier needs at least two"),
])
def test_classes_option_says_what_is_wrong_with_the_names_given(classes, match):
    rc, _, err = run_main(["train", "--method", "standard", "--classes", classes])
    assert_usage_error(rc, err, match)


def test_a_missing_manifest_is_called_a_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _train(tmp_path, Path("x.csv"))
    assert_one_line_error(rc, err, "train", f"Manifest x.csv does not exist (looked for in {tmp_path})")
    assert "Data folder" not in err and "No --data" not in err  # the user named it


def test_evaluate_without_data_says_to_pass_data(e2e, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["evaluate", str(e2e["base"] / "run"), "--out", str(tmp_path / "res"), *EVAL_FAST])
    assert_one_line_error(rc, err, "evaluate", "Data folder data does not exist")
    assert "No --data was given and MEDROBUST_DATA is unset" in err and "pass --data PATH" in err


def test_evaluate_refuses_a_pickle_with_the_users_own_file_in_the_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pt = tmp_path / "my-net.pt"
    torch.save({"conv1.weight": torch.zeros(2)}, pt)
    ds = write_manifest(tmp_path / "data", patients_per_class=1)
    rc, _, err = run_main(["evaluate", str(pt), "--test-manifest", str(ds.root), "--out", str(tmp_path / "res")])
    assert_one_line_error(rc, err, "evaluate", "my-net.pt is a pickled PyTorch file (.pt); medrobust never unpickles")
    assert f"torch.load('{pt}', weights_only=True)" in err and f"'{tmp_path / 'my-net.safetensors'}'" in err
    assert "import-model" in err and "card" not in err and "model.pth" not in err
