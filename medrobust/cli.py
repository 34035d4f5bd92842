"""Command line: ``python -m medrobust train|cv|evaluate|audit|report|export|import-model``.

Bad arguments end in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from medrobust import settings
from medrobust.choices import Arch, Library, Schedule
from medrobust.methods import METHODS

EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3  # check-attacks: a check failed (a finding written to the results, not an error)


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v < 0 or v != v:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _eps_list(text: str) -> tuple[float, ...]:
    return tuple(_non_negative(t) for t in text.split(",") if t.strip())


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", metavar="PATH",
                   help="a COVID collection in the upstream layout (metadata.csv + images/), a CSV manifest (path, "
                        "label[, patient, source, split]), an ImageFolder tree (one sub-folder per class) or a "
                        "MedMNIST .npz; repeat for several. Default: $MEDROBUST_DATA (os.pathsep-separated), else ./data")


def _add_test_set(p: argparse.ArgumentParser) -> None:
    """Which images a model is judged on: its split's part, a split file, or a test manifest (as for evaluate)."""
    p.add_argument("--part", choices=["test", "val"], default="test")
    p.add_argument("--test-manifest", type=Path, metavar="DATA", help="as for evaluate")
    p.add_argument("--split", type=Path, metavar="SPLIT_JSON", help="as for evaluate")


def _class_list(text: str) -> tuple[str, ...]:
    """``--classes a,b,c``: at least two names, each once (the message names what is wrong and the fix)."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    twice = list(dict.fromkeys(n for n in names if names.count(n) > 1))
    if twice:
        once = ",".join(dict.fromkeys(names))
        raise argparse.ArgumentTypeError(f"{text!r} names {', '.join(repr(n) for n in twice)} more than once; list "
                                         f"each class once, in label order (e.g. {once!r})")
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} names {len(names)} class; a classifier needs at least two: list "
                                         "them comma-separated, in label order (e.g. 'normal,pneumonia')")
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from medrobust.training import PRESETS

    p.add_argument("--method", required=True, choices=list(METHODS), help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--preset", default="cpu", choices=list(PRESETS),
                   help="paper: 224 px, 41 epochs; cpu: 128 px, 41 epochs (default); smoke: 64 px, 1 epoch, 3 batches")
    _add_data(p)
    p.add_argument("--arch", choices=[a.value for a in Arch], help="torchvision network (default resnet18, the paper's)")
    p.add_argument("--classes", type=_class_list,
                   help="comma-separated class names in label order (default: from the data; rows of other "
                        "classes are dropped)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<method>-<preset>-s<seed>)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--image-size", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_non_negative)
    p.add_argument("--weight-decay", type=_non_negative)
    p.add_argument("--eps", type=_non_negative, help="PGD radius for robust methods, stated at 224 px (default 4)")
    p.add_argument("--norm", choices=["l2", "linf"], help="PGD norm (default l2; for linf give eps in pixel units, e.g. 0.0157 for 4/255)")
    p.add_argument("--pgd-steps", type=_positive_int)
    p.add_argument("--eps-ramp-epochs", type=int, help="ramp eps linearly over this many epochs (default 15; 0 = off)")
    p.add_argument("--class-balance", choices=["weights", "none"], help="inverse-frequency class weights (default) or none")
    p.add_argument("--augmix-ops", help="comma-separated AugMix ops (default hflip,vflip)")
    p.add_argument("--init", help="'imagenet' or a medrobust checkpoint to start from (default: from scratch)")
    p.add_argument("--select", choices=["last", "best_val_bacc"], help="which epoch to ship (default last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, help="patient-level K-fold cross-validation (K >= 2); test = fold --fold")
    p.add_argument("--fold", type=int, help="which fold (0..K-1) is this run's test set")
    p.add_argument("--max-batches", type=_positive_int, help="cap batches per epoch (quick checks)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a tqdm bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medrobust",
        description="Train and benchmark chest X-ray classifiers for robustness and calibration.",
        epilog="Example: python -m medrobust train --method robust --preset smoke --data DIR && "
               "python -m medrobust evaluate && python -m medrobust report",
    )
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,cv,evaluate,audit,check-attacks,report,export,import-model}")

    t = sub.add_parser("train", help="train one model (resumes an interrupted run in the same --out)",
                       description="Train a network (default ResNet-18) with one of the four methods. Writes config.json, split.json, "
                                   "progress.jsonl, state.safetensors (every epoch) and model.safetensors + model.json.")
    _add_train_options(t)

    c = sub.add_parser("cv", help="train every fold of a patient-level K-fold cross-validation (resumable)",
                       description="Train fold 0..K-1 of one method into OUT/fold<i> (each a normal run folder). "
                                   "Finished folds are skipped and an interrupted fold resumes, so the same command "
                                   "can be run again after a kill. Evaluate with `evaluate OUT` (pooled out-of-fold).")
    _add_train_options(c)
    c.add_argument("--init-cv", type=Path, metavar="CVDIR",
                   help="start fold i from CVDIR/fold<i>/model.safetensors (fine-tuning from the same fold's model)")
    e = sub.add_parser("evaluate", help="run the benchmark on the test patients of each model's split",
                       description="Clean, L2 attacks (eps 1..5 at 224 px, 20 steps; worst case over PGD and APGD-CE), "
                                   "the paper's gaussian/s&p/speckle at "
                                   "0.1..1.0, the clinical suite (9 corruptions x 5 levels), and calibration, on the "
                                   "held-out test patients, with patient-level bootstrap CIs and AUROC everywhere. "
                                   "Refuses a split overlapping the model's training patients. A cross-validation "
                                   "folder is evaluated fold by fold and pooled.")
    e.add_argument("checkpoints", nargs="*", type=Path,
                   help="model .safetensors files, run folders, or cross-validation folders (fold0/, fold1/, ...: "
                        "pooled out-of-fold evaluation); default: the newest run in runs/")
    _add_data(e)
    e.add_argument("--out", type=Path, help="results folder (default $MEDROBUST_RESULTS, else results/)")
    e.add_argument("--eps", type=_eps_list, help="comma-separated radii stated at 224 px (default 1,2,3,4,5)")
    e.add_argument("--norm", choices=["l2", "linf"], default="l2")
    e.add_argument("--steps", type=_positive_int, default=20, help="PGD steps (default 20)")
    e.add_argument("--restarts", type=_positive_int, default=1,
                   help="PGD random starts, alternating inside the ball and on its surface (default 1)")
    e.add_argument("--attacks", default="pgd,apgd", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                   help="the attack ensemble: an image is robust only if none of them fools it (default pgd,apgd)")
    e.add_argument("--apgd-restarts", type=_positive_int, default=1, help="APGD-CE restarts (default 1)")
    e.add_argument("--attack-schedule", choices=[s.value for s in Schedule],
                   help="sequential (the default; AutoAttack's rule): APGD-CE attacks only the images PGD left standing, "
                        "same worst case, cheaper; independent: every attack attacks every image, so APGD's own "
                        "accuracy is reported too")
    e.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples for 95 %% CIs")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--suites", default="paper,clinical", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   help="corruption suites: paper (the paper's noise levels), clinical (graded, from MedMNIST-C); "
                        "default both")
    e.add_argument("--part", choices=["test", "val"], default="test", help="which split part to evaluate on")
    e.add_argument("--test-manifest", type=Path, metavar="DATA",
                   help="evaluate on every image of DATA (a CSV manifest, ImageFolder tree or .npz) as the test set: "
                        "for models whose card has no training patients (imported models); you vouch that the "
                        "model never saw these patients")
    e.add_argument("--split", type=Path, metavar="SPLIT_JSON",
                   help="a split file (split.json of a run) whose --part to evaluate on, instead of the card's split")
    e.add_argument("--audit", action="store_true",
                   help="add the shortcut audit: source x label table, lungs-blanked / border-blanked accuracy, "
                        "Grad-CAM mass inside the central lung field")
    e.add_argument("--device", default="auto")
    _add_decision_options(e)
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a tqdm bar while decoding")

    a = sub.add_parser("audit", help="shortcut audit of models on their test patients (no attacks)",
                       description="Source x label table and Cramér's V, balanced accuracy and AUROC with the central "
                                   "lung field blanked and with the border blanked, and Grad-CAM mass inside the "
                                   "central field. Writes OUT/NAME.audit.json and adds the audit to OUT/NAME.json "
                                   "when that is the same model's evaluation result.")
    a.add_argument("checkpoints", nargs="+", type=Path, help="model .safetensors files or run folders")
    _add_data(a)
    a.add_argument("--out", type=Path, help="results folder (default $MEDROBUST_RESULTS, else results/)")
    _add_test_set(a)
    a.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples for 95 %% CIs")
    a.add_argument("--cam-images", type=_positive_int, default=64, help="images whose Grad-CAM mass is measured")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a tqdm bar while decoding")

    k = sub.add_parser("check-attacks", help="gradient-masking (Square) and budget checks of the worst case",
                       description="On a seeded random N of the test images at each radius: the Square attack (black-box) must not "
                                   "find lower accuracy than the white-box worst case, and twice the steps and "
                                   "restarts must not lower it by more than a point. Writes OUT/NAME.attack_checks.json "
                                   "and adds it to OUT/NAME.json (sanity.attack_checks) for the same model. Exit "
                                   f"status {EXIT_CHECK_FAILED} when a check fails (the results say which).")
    k.add_argument("checkpoints", nargs="+", type=Path, help="model .safetensors files or run folders")
    _add_data(k)
    k.add_argument("--out", type=Path, help="results folder (default $MEDROBUST_RESULTS, else results/)")
    k.add_argument("--eps", type=_non_negative, nargs="+", default=[2.0],
                   help="radius (or radii) stated at 224 px (default 2)")
    k.add_argument("--n", type=_positive_int, default=64, help="images checked (default 64)")
    k.add_argument("--queries", type=_positive_int, default=1000, help="Square queries (default 1000)")
    k.add_argument("--steps", type=_positive_int, default=20)
    k.add_argument("--restarts", type=_positive_int, default=5, help="PGD starts of the worst case (default 5)")
    k.add_argument("--apgd-restarts", type=_positive_int, default=1)
    _add_test_set(k)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    k.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")

    r = sub.add_parser("report", help="print Table I and Table II for evaluated models",
                       description="Print the paper's tables (Markdown) from evaluation JSON files or folders.")
    r.add_argument("results", nargs="*", type=Path, help="result JSONs or folders (default results/, else the shipped checkpoints/cv/results and checkpoints/results)")
    r.add_argument("--out", type=Path, help="also write the report to this file")

    x = sub.add_parser("export", help="write a run's model as an fp16 checkpoint for shipping",
                       description="Re-save a checkpoint with fp16 weights (upcast to fp32 on load); its card is "
                                   "kept, named after DEST's stem, with a new sha256.")
    x.add_argument("checkpoint", type=Path)
    x.add_argument("dest", type=Path)

    i = sub.add_parser("import-model", help="make a model medrobust did not train evaluable (writes a medrobust card)",
                       description="Read a safetensors state dict of a network built by torchvision (plain "
                                   "torchvision keys or medrobust's), timm, MONAI or torchxrayvision, check that it "
                                   "loads, and write it with a medrobust card (sha256, library and version, "
                                   "architecture and builder arguments, classes, preprocessing) into --out, so "
                                   "evaluate, report and the dashboard treat it like a shipped model. Pickled files "
                                   "(.pt/.pth) are refused: convert them to safetensors first.",
                       epilog="Examples: --from timm --arch convnext_tiny --classes a,b --image-size 224; "
                              "--from monai --arch DenseNet121 --classes a,b,c --image-size 128 "
                              "(spatial_dims=2, in_channels, out_channels filled in); --from torchxrayvision "
                              "--arch densenet121-res224-all --classes non-COVID,COVID-19 --label-map "
                              "COVID-19=Pneumonia.")
    i.add_argument("weights", type=Path, help="WEIGHTS.safetensors")
    i.add_argument("--from", dest="library", choices=[lib.value for lib in Library], default=Library.TORCHVISION.value,
                   help="the library that builds --arch (default torchvision; timm, monai and torchxrayvision are "
                        "extras: pip install \".[timm]\" etc.)")
    i.add_argument("--arch", required=True,
                   help=f"torchvision: one of {', '.join(a.value for a in Arch)}; timm: a model name "
                        "(timm.list_models()); monai: a network of monai.networks.nets (DenseNet121, resnet18, "
                        "SEResNet50, ...); torchxrayvision: a weights name (densenet121-res224-all, -nih, -pc, "
                        "-chex, -rsna, -mimic_nb, -mimic_ch; resnet50-res512-all)")
    i.add_argument("--arg", dest="builder_args", action="append", type=_builder_arg, metavar="KEY=VALUE",
                   help="an argument of timm.create_model or the MONAI network, repeatable; VALUE is read as JSON "
                        "(2, 0.1, true, [6,12,24,16]) or else as text")
    i.add_argument("--classes", required=True, type=_class_list, help="comma-separated class names in output order")
    i.add_argument("--label-map", type=_label_map, metavar="CLASS=OUTPUT[,CLASS=OUTPUT...]",
                   help="torchxrayvision only (required there): which of its outputs each class reads, e.g. "
                        "COVID-19=Pneumonia; the one class left out (or CLASS=rest) is none of them. Two classes: "
                        "P(class) = sigmoid(output)")
    i.add_argument("--image-size", type=_positive_int,
                   help="the side the model expects (e.g. 224); required except for torchxrayvision (its native size)")
    i.add_argument("--in-channels", type=int, choices=[1, 3], default=1,
                   help="1 (grey) or 3 (the grey image is repeated to RGB)")
    i.add_argument("--mean", type=_floats, help="per-channel mean the model normalises with (default: the library's; "
                                                "torchvision grey 0.449 or ImageNet's RGB means for 3 channels)")
    i.add_argument("--std", type=_floats, help="per-channel std (default: the library's; torchvision grey 0.226 or "
                                               "ImageNet's RGB stds)")
    i.add_argument("--name", help="model name (default: the file's stem)")
    i.add_argument("--out", type=Path, help="folder to write into (default $MEDROBUST_CHECKPOINTS, else checkpoints/)")

    f = sub.add_parser("fit-decision", help="fit each model's temperature, operating point, referral level and "
                                            "conformal sets on its validation patients, and assess them on its test patients",
                       description="Reads the model's validation patients from its card (or, for a cross-validation "
                                   "folder, each fold's), fits the decision rule and writes it into the model's results "
                                   "file in --out (which `evaluate` must have written), with the validation logits beside it "
                                   "(<name>.val.npz). `evaluate` does the same at its end.")
    f.add_argument("checkpoints", nargs="+", type=Path, help="model .safetensors files, run folders or cross-validation folders")
    _add_data(f)
    f.add_argument("--out", type=Path, help="the results folder holding <name>.json (default $MEDROBUST_RESULTS, else results/)")
    f.add_argument("--fit-data", type=Path, metavar="DATA",
                   help="labelled images of patients the model never saw (manifest, ImageFolder, ...), for models "
                        "whose card lists no validation patients (imported models)")
    _add_decision_options(f)
    f.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples for 95 %% CIs")

    pr = sub.add_parser("predict", help="run the models on image files and folders: input check, calibrated "
                                        "probability, verdict at the operating point or 'refer', conformal sets",
                        description="PNG, JPEG and DICOM files (recognised by content) and folders (recursively). "
                                    "Writes a table to the terminal and, with --out, a CSV whose header lines give "
                                    "every parameter. An unreadable file gives one line and the others go on; the exit "
                                    "status is 0 when every file was read, 1 when some were not. No DICOM tag is printed "
                                    "or written. Research and education only: not a diagnostic device.")
    pr.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    pr.add_argument("--models", type=Path, metavar="DIR", help="folder of .safetensors models with their cards "
                                                               "(default $MEDROBUST_CHECKPOINTS, else checkpoints/)")
    pr.add_argument("--results", type=Path, action="append", metavar="DIR",
                    help="where the models' fitted decision rules are (default DIR/results and $MEDROBUST_RESULTS)")
    pr.add_argument("--input-check", type=Path, metavar="JSON", help="fitted input check (default: the one beside the models)")
    pr.add_argument("--assess-flagged", action="store_true",
                    help="also give the models' outputs for images the input check flags (marked as outside what "
                         "the models were trained on)")
    pr.add_argument("--out", type=Path, metavar="CSV", help="write the answers to this CSV file")
    pr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: on for folders, when the terminal is interactive)")
    return parser


def _add_decision_options(p: argparse.ArgumentParser) -> None:
    from medrobust.choices import ThresholdRule

    p.add_argument("--rule", choices=[r.value for r in ThresholdRule], default="youden",
                   help="operating point: Youden's J (default) or the largest threshold reaching --target-sensitivity")
    p.add_argument("--target-sensitivity", type=float, default=0.9)
    p.add_argument("--coverage", type=float, default=0.8,
                   help="fraction of validation cases a model answers; below that confidence it says 'refer' (default 0.8)")
    p.add_argument("--alpha", type=float, default=0.1, help="conformal sets promise 1 - alpha coverage (default 0.1)")


def _newest_run() -> Path:
    runs = sorted(settings.runs_dir().glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"No trained model found in {settings.runs_dir()}/; train one first or pass a checkpoint.")
    return runs[-1]


def _checkpoint_file(p: Path) -> Path:
    return p / "model.safetensors" if p.is_dir() else p


def _train_config(args, **extra):
    from medrobust.training import preset_config

    overrides = dict(method=args.method, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
                     lr=args.lr, weight_decay=args.weight_decay, eps=args.eps, norm=args.norm, pgd_steps=args.pgd_steps,
                     eps_ramp_epochs=args.eps_ramp_epochs, class_balance=args.class_balance, init=args.init,
                     select=args.select, seed=args.seed, max_batches=args.max_batches, device=args.device,
                     folds=args.folds, fold=args.fold, arch=args.arch, classes=args.classes)
    if args.augmix_ops:
        overrides["augmix_ops"] = tuple(o.strip() for o in args.augmix_ops.split(",") if o.strip())
    overrides.update(extra)
    return preset_config(args.preset, **overrides)


def cmd_train(args) -> int:
    from medrobust.settings import data_roots
    from medrobust.training import train

    config = _train_config(args)
    out = args.out or settings.runs_dir() / f"{config.method}-{config.preset}-s{config.seed}"
    roots = data_roots(args.data)
    result = train(config, roots=roots, run_dir=out, show_progress=args.progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    val = result.card.get("val_metrics", {})
    print(f"trained {config.method} for {result.card['epochs_done']} epoch(s) in {result.card['train_seconds']:.0f} s; "
          f"val accuracy {val.get('accuracy', float('nan')):.3f}, balanced {val.get('balanced_accuracy', float('nan')):.3f}; "
          f"checkpoint {result.checkpoint}")
    if result.card.get("collapsed"):
        print(f"WARNING: {result.card['warning']}", file=sys.stderr)
    return 0


def cmd_cv(args) -> int:
    from medrobust.settings import data_roots
    from medrobust.training import train

    folds = args.folds or 5
    if args.fold is not None:
        raise ValueError("cv trains every fold; use `train --folds K --fold i` for one fold.")
    if args.init and args.init_cv:
        raise ValueError("give --init or --init-cv, not both.")
    first = _train_config(args, folds=folds, fold=0)
    out = args.out or settings.runs_dir() / f"cv-{first.method}-{first.preset}-s{first.seed}"
    roots = data_roots(args.data)
    for fold in range(folds):
        init = args.init
        if args.init_cv:
            init = str(_checkpoint_file(args.init_cv / f"fold{fold}"))
            if not Path(init).is_file():
                raise FileNotFoundError(f"--init-cv: {init} is missing; train that cross-validation first.")
        config = _train_config(args, folds=folds, fold=fold, init=init)
        run_dir = out / f"fold{fold}"
        if (run_dir / "model.safetensors").is_file():
            print(f"fold {fold}: done already ({run_dir})")
            continue
        result = train(config, roots=roots, run_dir=run_dir, show_progress=args.progress)
        val = result.card.get("val_metrics", {})
        print(f"fold {fold}: {result.card['epochs_done']} epoch(s) in {result.card['train_seconds']:.0f} s; "
              f"val balanced accuracy {val.get('balanced_accuracy', float('nan')):.3f}; {result.checkpoint}", flush=True)
        if result.card.get("collapsed"):
            print(f"WARNING: fold {fold}: {result.card['warning']}", file=sys.stderr)
    return 0


def _test_part(ckpt: Path, card: dict, *, args, size: int, roots, datasets: dict, verbose: bool):
    """The images ``ckpt`` is evaluated on, with the split hash and fold they come from.

    The test patients must be provably unseen: the card's split (rebuilt from the data, overlap checked),
    a split file (overlap checked against the card's training patients), or, for a model whose card has
    no training patients (an imported model), a test manifest the user vouches for.
    """
    from medrobust.data import (DataError, Split, check_no_overlap, check_split_parts, load_dataset,
                                split_from_info)

    fresh = []  # data sets read by this call: their counts are said once the test part is known to be usable

    def load(key, data_roots, classes=None):
        """The data set of ``key``, read once per command."""
        if key not in datasets:
            datasets[key] = load_dataset(data_roots, image_size=size, progress=verbose and args.progress,
                                         classes=classes)
            fresh.append(datasets[key])
        return datasets[key]

    def said(result):
        for data in fresh if verbose else ():
            _print_data_report(data.report)
        return result

    split_info = card.get("split") or {}
    seen = split_info.get("train_patients", []) + split_info.get("val_patients", [])
    if args.test_manifest is not None:
        data = load(("manifest", str(args.test_manifest), size), [args.test_manifest])
        check_no_overlap(train_patients=seen, eval_patients={r.patient for r in data.records})
        if verbose and not seen:
            print(f"note: {ckpt.name}'s card lists no training patients; the test set {args.test_manifest} is taken "
                  "on trust as images the model never saw.", file=sys.stderr)
        return said((data, data, None, -1))
    if not split_info.get("train_patients") and args.split is None:
        raise DataError(f"{ckpt.name}'s card lists no training patients, so medrobust cannot check that the test "
                        "patients are unseen; pass --test-manifest DATA (images the model never saw) or --split "
                        "SPLIT_JSON.")
    # The classes (and their order) the model trained with, so the rebuilt split is the training run's.
    classes = (card.get("config") or {}).get("classes")
    data = load((size, tuple(classes) if classes else None), roots, classes)
    if args.split is not None:
        split = Split.load(args.split)
        missing = set(split.images[args.part]) - {r.key for r in data.records}
        if missing:
            raise DataError(f"{args.split} names {len(missing)} {args.part} image(s) that are not in the data given.")
    else:
        split = split_from_info(data.records, split_info)
        if split_info.get("hash") and split.hash != split_info["hash"] and verbose:
            print(f"note: the data differ from {ckpt.name}'s training data (split hash {split.hash} vs "
                  f"{split_info['hash']}); checking patient overlap.", file=sys.stderr)
    check_no_overlap(train_patients=split_info.get("train_patients", []), eval_patients=split.patients[args.part])
    check_split_parts(split, records=data.records, parts=(args.part,), classes=data.classes)
    fold = int(split_info.get("fold", -1)) if split_info.get("folds") and args.split is None else -1
    return said((data, data.subset(split.images[args.part]), split.hash, fold))


def _print_data_report(report) -> None:
    """Say on stderr which images a command kept (per class), which it dropped (by reason), and the warnings."""
    print(f"medrobust: data: {report.counts_line()}", file=sys.stderr)
    for warning in report.warnings:
        print(f"medrobust: warning: {warning}", file=sys.stderr)


def _audit(model, part, labels, classes, *, seed: int, n_boot: int, cam_images: int = 64) -> dict:
    from medrobust.audit import run_audit

    return run_audit(model=model.eval(), images=part.float_images(), labels=labels, classes=list(classes),
                     groups=[r.patient for r in part.records], sources=[r.source for r in part.records],
                     seed=seed, n_boot=n_boot, cam_images=cam_images)


def _evaluate_one(ckpt: Path, *, args, config, dinfo, roots, datasets: dict) -> dict | None:
    from medrobust.checkpoints import classes_of, image_size_of, load_checkpoint
    from medrobust.data import DataError
    from medrobust.evaluation import evaluate_model, map_labels

    model, card = load_checkpoint(ckpt, device=dinfo.device)
    size = image_size_of(card, name=ckpt.name)
    data, part, split_hash, fold = _test_part(ckpt, card, args=args, size=size, roots=roots, datasets=datasets,
                                              verbose=dinfo.is_main)
    if len(part) == 0:
        raise DataError(f"The {args.part} split is empty.")
    classes = classes_of(card)
    labels = map_labels(part.labels, data_classes=data.classes, model_classes=classes)
    name = card.get("name") or ckpt.stem
    if dinfo.is_main:
        print(f"evaluating {name} ({card.get('arch', 'resnet18')}, {card.get('method')}) on {len(part)} "
              f"{'test-manifest' if args.test_manifest else args.part} images at {size} px ...", file=sys.stderr)
    result = evaluate_model(model, part.images, labels, config=config, name=name, card=card,
                            keys=[r.key for r in part.records], groups=[r.patient for r in part.records],
                            fold=fold, split_hash=split_hash, classes=classes)
    result["part"] = "test-manifest" if args.test_manifest else args.part
    if args.test_manifest:  # unseen is proven only against the training patients the card lists
        split_info = card.get("split") or {}
        result["test_patients_checked"] = bool(split_info.get("train_patients"))
    result["data"] = data.report.to_dict()  # the images read, kept per class and dropped by reason
    result["world_size"] = dinfo.world
    if dinfo.is_main:
        result["input_check"] = _input_check_summary(part, size)
    if dinfo.is_main and args.part == "test" and not args.split:
        _fit_decision(result, model, card, data=data, fit_data=None, args=args, n_boot=config.n_boot, strict=False)
    if args.audit and dinfo.is_main:
        print(f"auditing {name} for shortcuts ...", file=sys.stderr)
        result["audit"] = _audit(model, part, labels, classes, seed=config.seed, n_boot=config.n_boot)
    return result if dinfo.is_main else None  # every rank computed the same merged result; rank 0 writes it


def _trust_config(args):
    from medrobust.trust import TrustConfig

    return TrustConfig(rule=getattr(args, "rule", None) or "youden",
                       target_sensitivity=getattr(args, "target_sensitivity", None) or 0.9,
                       coverage=getattr(args, "coverage", None) or 0.8,
                       alpha=getattr(args, "alpha", None) or 0.1).validate()


def _input_check_summary(part, size: int) -> dict | None:
    """How many of the evaluated images the fitted input check beside the checkpoints lets through (its learned
    part, on the images at model resolution; None when there is no check, or it works at another size)."""
    from collections import Counter

    from medrobust.input_check import InputCheck, default_input_check_path

    path = default_input_check_path()
    if not path.is_file():
        return None
    checker = InputCheck.load(path)
    if checker.image_size != size:
        return None
    x = part.float_images()
    verdicts = [v for i in range(0, len(x), 64) for v in checker.check_images(x[i:i + 64])]
    codes = Counter(c for v in verdicts for c in v.codes)
    return {"source": path.name, "n": len(verdicts), "passed": sum(v.ok for v in verdicts) / max(1, len(verdicts)),
            "flagged_by": dict(codes), "note": "the learned check on the images at model resolution (the size, colour "
                                              "and aspect checks need the original files)"}


def _batched_logits(model, x, batch_size: int = 64):
    from medrobust.evaluation import _logits

    return np.concatenate([_logits(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _fit_decision(result: dict, model, card: dict, *, data, fit_data, args, n_boot: int, strict: bool = True) -> bool:
    """Fit the decision rule (temperature, operating point, referral, conformal) of a single model from its
    validation patients, or from ``fit_data`` (a manifest of images it never trained on); say so when neither
    exists. Returns whether a rule was fitted."""
    from medrobust.checkpoints import classes_of
    from medrobust.data import load_dataset
    from medrobust.trust import ValLogits, add_trust, validation_logits

    name = result["name"]
    if fit_data is not None:
        size = int(result.get("image_size") or card.get("image_size"))
        fd = load_dataset([fit_data], image_size=size, classes=classes_of(card))
        seen = set((card.get("split") or {}).get("train_patients", []))
        test_keys = set((result.get("predictions") or {}).get("keys") or [])
        clash = [r.key for r in fd.records if r.patient in seen or r.key in test_keys]
        if clash:
            raise ValueError(f"--fit-data {fit_data}: {len(clash)} image(s) are training or test images of {name} "
                             f"(e.g. {clash[0]}); the fit needs images of other patients.")
        val = ValLogits(keys=[r.key for r in fd.records], labels=fd.labels.numpy().astype(np.int64),
                        groups=np.array([r.patient for r in fd.records]), folds=np.full(len(fd), -1),
                        logits=_batched_logits(model, fd.float_images()))
    else:
        val = validation_logits(model, card, data) if data is not None else None
    if val is None:
        print(f"note: {name}'s card lists no validation patients, so no temperature, operating point, referral "
              "level or conformal sets are fitted; pass --fit-data DATA (labelled images of patients it never "
              "saw) to `fit-decision`.", file=sys.stderr)
        return False
    try:
        add_trust(result, val, config=_trust_config(args), n_boot=n_boot)
    except ValueError as exc:
        if strict:
            raise
        print(f"note: {name}: no decision rule fitted ({exc})", file=sys.stderr)
        return False
    return True


def evaluate_config(args):
    """The :class:`~medrobust.evaluation.EvalConfig` of parsed ``evaluate`` options (also for packed CV folds)."""
    from medrobust.evaluation import EvalConfig

    return EvalConfig(eps=args.eps or EvalConfig.eps, norm=args.norm, pgd_steps=args.steps, restarts=args.restarts,
                      attacks=args.attacks, apgd_restarts=args.apgd_restarts, schedule=args.attack_schedule or EvalConfig.schedule,
                      n_boot=args.n_boot, seed=args.seed,
                      suites=tuple(args.suites)).validate()


def cmd_evaluate(args) -> int:
    from medrobust import distributed
    from medrobust.evaluation import EvalConfig, evaluate_cv, is_cv_dir, write_results
    from medrobust.settings import data_roots

    config = evaluate_config(args)
    dinfo = distributed.setup(args.device)
    roots = data_roots(args.data)
    datasets: dict[int, object] = {}
    for target in args.checkpoints or [_newest_run()]:
        if is_cv_dir(target):
            if args.audit or args.test_manifest or args.split:
                raise ValueError("--audit, --test-manifest and --split apply to single models; give a fold's "
                                 "model.safetensors to audit it.")
            if args.part != "test":
                raise ValueError("a cross-validation is evaluated on each fold's test patients; --part val does not apply.")
            if dinfo.enabled:
                raise ValueError("evaluate a cross-validation in one process (torchrun is for single models).")
            out = args.out or settings.results_dir()
            result = evaluate_cv(target, roots=roots, config=config, device=dinfo.device,
                                 cache_dir=out / f".{Path(target).name}.folds",
                                 log=lambda text: print(text, file=sys.stderr, flush=True))
            from medrobust.trust import add_cv_trust

            add_cv_trust(result, target, roots=roots, device=dinfo.device, cache_dir=out / f".{Path(target).name}.folds",
                         config=_trust_config(args), n_boot=config.n_boot, seed=config.seed,
                         log=lambda text: print(text, file=sys.stderr, flush=True))
        else:
            result = _evaluate_one(_checkpoint_file(target), args=args, config=config, dinfo=dinfo, roots=roots,
                                   datasets=datasets)
        if result is None:
            continue
        paths = write_results(result, args.out or settings.results_dir())
        flag = "  DEGENERATE (one class for >= 95 % of images)" if result["degenerate"] else ""
        scope = f"pooled over {result['cv']['folds']} folds, " if "cv" in result else ""
        print(f"{result['name']}: {scope}clean acc {result['clean']['accuracy']:.3f} "
              f"(balanced {result['clean']['balanced_accuracy']:.3f}, AUROC {result['clean']['auroc']:.3f}), "
              f"adversarial (worst-case) mean {result['summary']['pgd_' + config.norm]['accuracy']:.3f}, "
              f"{result['timing']['total_s']:.0f} s "
              f"-> {paths[0]}{flag}")
    return 0


def _models_on_test_parts(args):
    """For ``audit`` and ``check-attacks``: each checkpoint with its test images and labels in its class order."""
    from medrobust.checkpoints import classes_of, image_size_of, load_checkpoint
    from medrobust.evaluation import map_labels
    from medrobust.settings import data_roots

    roots, datasets = data_roots(args.data), {}
    for target in args.checkpoints:
        ckpt = _checkpoint_file(target)
        model, card = load_checkpoint(ckpt)
        size = image_size_of(card, name=ckpt.name)
        data, part, split_hash, _ = _test_part(ckpt, card, args=args, size=size, roots=roots, datasets=datasets,
                                               verbose=True)
        labels = map_labels(part.labels, data_classes=data.classes, model_classes=classes_of(card))
        yield model, card, part, labels, split_hash, card.get("name") or ckpt.stem


def _write_beside_result(out: Path, name: str, card: dict, what: str, value: dict, keys: Sequence[str]) -> str:
    """Write ``OUT/NAME.<what>.json`` and put ``value`` at ``keys`` inside ``OUT/NAME.json`` when that is the
    same model's result (same sha256); returns a note saying where it went."""
    import json

    from medrobust.evaluation import load_results
    from medrobust.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.{what}.json", json.dumps(value, indent=1, default=float))
    note = f"-> {out / f'{name}.{what}.json'}"
    if (out / f"{name}.json").is_file():
        (result,) = load_results([out / f"{name}.json"]) or (None,)
        if result is not None and result.get("model_sha256") == card.get("sha256"):
            result.pop("_path", None)
            node = result
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
            atomic_write_text(out / f"{name}.json", json.dumps(result, indent=1, default=float))
            note += f" and into {out / f'{name}.json'}"
    return note


def cmd_audit(args) -> int:
    from medrobust.checkpoints import classes_of

    from medrobust import audit_text

    out = args.out or settings.results_dir()
    done = []
    for model, card, part, labels, split_hash, name in _models_on_test_parts(args):
        print(f"auditing {name} on {len(part)} images ...", file=sys.stderr)
        audit = {**_audit(model, part, labels, classes_of(card), seed=args.seed, n_boot=args.n_boot,
                          cam_images=args.cam_images),
                 "model": name, "model_sha256": card.get("sha256"), "split_hash": split_hash,
                 "part": "test-manifest" if args.test_manifest else args.part}
        note = _write_beside_result(out, name, card, "audit", audit, ["audit"])
        done.append({"name": name, "audit": audit})
        print(f"{name}: " + " ".join(audit_text.model_sentences(audit["masking"], audit.get("cam"), name=name))
              + f" {note}")
    for line in audit_text.set_lines(done):  # the test set's facts once, however many models
        print(line)
    return 0


def cmd_check_attacks(args) -> int:
    from medrobust import distributed
    from medrobust.evaluation import EvalConfig, attack_checks, precision_info

    config = EvalConfig(pgd_steps=args.steps, restarts=args.restarts, apgd_restarts=args.apgd_restarts,
                        seed=args.seed).validate()
    dinfo = distributed.setup(args.device)
    if dinfo.enabled:
        raise ValueError("check-attacks runs in one process (torchrun is for train and evaluate).")
    device = dinfo.device
    out = args.out or settings.results_dir()
    failed = 0
    for model, card, part, labels, split_hash, name in _models_on_test_parts(args):
        model = model.to(device)
        images, labels = part.images.to(device), labels.to(device)
        checks = []
        for eps in args.eps:
            print(f"checking the attacks on {name}: {min(args.n, len(part))} images at eps {eps:g} on {device} ...",
                  file=sys.stderr)
            c = attack_checks(model, images, labels, config=config, eps=eps, n=args.n, square_queries=args.queries,
                              seed=args.seed)
            sq, b = c["square"], c["budget"]
            print(f"{name} eps {eps:g}: worst case {100 * b['accuracy']:.1f} %, with {b['factor']}x steps and restarts "
                  f"{100 * b['accuracy_larger_budget']:.1f} %; Square ({sq['n_queries']} queries) "
                  f"{100 * sq['square_accuracy']:.1f} %: {'OK' if c['ok'] else 'CHECK FAILED'} ({sq['note']})")
            checks.append(c)
        value = {"model": name, "model_sha256": card.get("sha256"), "split_hash": split_hash,
                 "ok": all(c["ok"] for c in checks), "by_eps": checks,
                 "precision": precision_info(device, attack_autocast=config.use_autocast)}
        failed += not value["ok"]
        print(_write_beside_result(out, name, card, "attack_checks", value, ["sanity", "attack_checks"]))
    return EXIT_CHECK_FAILED if failed else 0


def cmd_fit_decision(args) -> int:
    from medrobust.checkpoints import image_size_of, load_checkpoint, read_card
    from medrobust.data import load_dataset
    from medrobust.evaluation import fold_checkpoints, is_cv_dir, load_results, write_results
    from medrobust.trust import fold_validation_logits
    from medrobust.settings import data_roots
    from medrobust.trust import ValLogits, add_trust

    out = args.out or settings.results_dir()
    config = _trust_config(args)
    roots = data_roots(args.data) if args.fit_data is None else []
    for target in args.checkpoints:
        if is_cv_dir(target):
            name = Path(target).name
            vals = [fold_validation_logits(c, i, roots=roots, cache_dir=out / f".{name}.folds")
                    for i, c in enumerate(fold_checkpoints(target))]
            if any(v is None for v in vals):
                raise ValueError(f"{target}: a fold has no validation patients; nothing to fit on.")
            result = _result_of(out, name, load_results)
            add_trust(result, ValLogits.concat(vals), config=config, n_boot=args.n_boot)
        else:
            ckpt = _checkpoint_file(target)
            card = read_card(ckpt)
            name = card.get("name") or ckpt.stem
            result = _result_of(out, name, load_results)
            if result.get("model_sha256") != card.get("sha256"):
                raise ValueError(f"{out / (name + '.json')} was computed with other weights than {ckpt}; evaluate it again.")
            model, card = load_checkpoint(ckpt)
            data = None
            if args.fit_data is None:
                data = load_dataset(roots, image_size=image_size_of(card, name=name),
                                    classes=(card.get("config") or {}).get("classes"))
            if not _fit_decision(result, model, card, data=data, fit_data=args.fit_data, args=args, n_boot=args.n_boot):
                continue
        write_results(result, out)
        print(_decision_line(result))
    return 0


def _result_of(out: Path, name: str, load_results) -> dict:
    path = out / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m medrobust evaluate` for {name} first (or pass "
                                "--out with the folder holding its results).")
    return load_results([path])[0]


def _decision_line(result: dict) -> str:
    """One line per fitted result: temperature(s), threshold(s), coverage and calibration change."""
    trust = result["trust"]
    fits = trust["fits"]
    a = trust["assessment"]
    temps = ", ".join(f"{f['temperature']:.2f}" for f in fits.values())
    thr = [f["threshold"] for f in fits.values()]
    point = a.get("operating_point", {})
    rates = (f"; sensitivity {point['sensitivity']:.2f}, specificity {point['specificity']:.2f}"
             if "sensitivity" in point else "")
    cal = a["calibration"]
    return (f"{result['name']}: temperature {temps}; threshold "
            f"{', '.join('-' if t is None else f'{t:.3f}' for t in thr)}{rates}; answered "
            f"{a['referral']['coverage']:.0%} of test images; RMSCE {cal['raw']['rmsce']:.3f} -> "
            f"{cal['temperature_scaled']['rmsce']:.3f}")


def cmd_predict(args) -> int:
    import csv

    from medrobust.input_check import InputCheck, default_input_check_path
    from medrobust.predict import CSV_COLUMNS, csv_rows, iter_files, load_models, parameters, predict_file

    models = load_models(args.models, results_dirs=args.results or ())
    check_path = args.input_check or (args.models / "input_check.json" if args.models else default_input_check_path())
    checker, source = None, "size, shape, colour and contrast checks only (no fitted input check found)"
    if Path(check_path).is_file():
        checker = InputCheck.load(check_path)
        source = (f"{Path(check_path).name} (fitted on {checker.card.get('n_train', '?')} training images of "
                  f"{checker.card.get('feature_model', {}).get('name', 'a model')}; threshold {checker.threshold:.3g})")
    elif args.input_check is not None:
        raise FileNotFoundError(f"--input-check {args.input_check} does not exist.")
    files = list(iter_files(args.paths))
    if not files:
        raise FileNotFoundError("no files found under the paths given.")
    params = parameters(models, checker_source=source)
    for line in params:
        print(f"# {line}")
    show_bar = args.progress if args.progress is not None else (len(files) > 1 and sys.stderr.isatty())
    from tqdm import tqdm

    writer = handle = None
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(args.out, "w", newline="")
        handle.write("".join(f"# {line}\n" for line in params))
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
    unread = 0
    try:
        for f in tqdm(files, disable=not show_bar, unit="file", file=sys.stderr):
            ans = predict_file(f, models, checker=checker, assess_flagged=args.assess_flagged)
            if not ans.ok:
                unread += 1
                tqdm.write(f"{f}: cannot be read: {ans.error}", file=sys.stderr)
            elif not ans.input_ok:
                print(f"{f}: not assessed: {' '.join(ans.input_reasons)}")
            for a in ans.answers:
                p_cal = "-" if a.p_calibrated != a.p_calibrated else f"{a.p_calibrated:.3f}"
                print(f"{f}  {a.model:<14} {a.verdict:<26} P cal {p_cal:>5} (raw {a.p_raw:.3f})  "
                      f"sets LAC {a.lac_set or '-'} APS {a.aps_set or '-'}")
            if writer is not None:
                for row in csv_rows(ans):
                    writer.writerow({k: ("" if isinstance(v, float) and v != v else v) for k, v in row.items()})
    finally:
        if handle is not None:
            handle.close()
    print(f"{len(files) - unread} of {len(files)} file(s) read" + (f"; answers in {args.out}" if args.out else ""),
          file=sys.stderr)
    return 1 if unread else 0


def cmd_report(args) -> int:
    from medrobust.evaluation import load_results
    from medrobust.report import render_report

    paths = args.results
    if not paths:
        shipped = [d for d in (settings.cv_results_dir(), settings.shipped_results_dir()) if d.is_dir()]
        paths = [settings.results_dir()] if settings.results_dir().is_dir() else shipped or [settings.shipped_results_dir()]
    text = render_report(load_results(paths))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def cmd_export(args) -> int:
    from medrobust.checkpoints import export_fp16

    card = export_fp16(_checkpoint_file(args.checkpoint), args.dest, extra={"name": args.dest.stem})
    print(f"wrote {args.dest} (fp16, sha256 {card['sha256'][:12]}…)")
    return 0


def _builder_arg(text: str) -> tuple[str, object]:
    """``--arg KEY=VALUE``: VALUE as JSON (numbers, true/false, lists), else as text."""
    import json

    key, eq, value = (t.strip() for t in text.partition("="))
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. drop_rate=0.1), got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _label_map(text: str) -> dict[str, str]:
    from medrobust.external import ExternalModelError, parse_label_map

    try:
        return parse_label_map(text)
    except ExternalModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_import_model(args) -> int:
    from medrobust.checkpoints import CheckpointError, import_model

    if args.image_size is None and args.library != Library.TORCHXRAYVISION.value:
        raise CheckpointError(f"--image-size is required for a {args.library} model: the side it expects (e.g. 224).")
    builder_args = dict(args.builder_args or ())
    if len(builder_args) != len(args.builder_args or ()):
        raise CheckpointError("--arg names a key twice; give each builder argument once.")
    out = args.out or settings.checkpoints_dir()
    path, card = import_model(args.weights, arch=args.arch, classes=list(args.classes), image_size=args.image_size,
                              mean=args.mean, std=args.std, in_channels=args.in_channels, out_dir=out, name=args.name,
                              library=args.library, builder_args=builder_args or None, label_map=args.label_map)
    where = f"{card['library']} {card['library_version']} " if card.get("library") else ""
    print(f"wrote {path} ({where}{card['arch']}, {len(card['classes'])} classes: {', '.join(card['classes'])}; "
          f"{card['image_size']} px, {card['in_channels']} channel(s); sha256 {card['sha256'][:12]}…). "
          f"Evaluate it with: python -m medrobust evaluate {path} --test-manifest DATA")
    if card.get("label_map"):
        print("label map: " + "; ".join(f"{c} = {o if o != 'rest' else 'rest (none of the mapped outputs)'}"
                                        for c, o in card["label_map"].items()))
    if card.get("native_size") and card["native_size"] != card["image_size"]:
        print(f"note: {card['arch']} was trained at {card['native_size']} px; it is evaluated at {card['image_size']} px.",
              file=sys.stderr)
    return 0


_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
}


def os_error_text(exc: OSError, *, resumable: bool = False) -> str:
    """One line for an OSError: what could not be done to which file, why, and what to do."""
    why = exc.strerror or str(exc)
    hint = _OS_ERROR_HINTS.get(exc.errno or -1)
    text = (f"{exc.filename}: " if exc.filename else "") + why + (f" ({hint})" if hint else "")
    if resumable:
        text += "; fix that and run the same command again: training resumes from its last complete epoch"
    return text + "."


def _missing_root_hint(root: Path, args) -> str:
    """Where a missing data root came from and what to pass instead ("" when the user named it on the line)."""
    named = [Path(p).expanduser() for p in (getattr(args, "data", None) or [])]
    for option in ("test_manifest", "fit_data"):
        if getattr(args, option, None) is not None:
            named += [Path(getattr(args, option)), Path(getattr(args, option)).expanduser()]
    if root in named:
        return ""
    if root in settings.env_data_roots():
        return f" It is named in {settings.ENV_DATA}; fix that variable or pass --data PATH."
    what = ("the data the model was trained on (its test patients are found in them), or --test-manifest DATA "
            "for images it never saw" if args.command in ("evaluate", "audit", "check-attacks", "fit-decision")
            else "a data folder, a manifest .csv or a MedMNIST .npz; repeat --data for several")
    return (f" No --data was given and {settings.ENV_DATA} is unset, so medrobust looked for the default folder "
            f"{root}: pass --data PATH ({what}).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "cv": cmd_cv, "evaluate": cmd_evaluate, "report": cmd_report, "export": cmd_export,
                "import-model": cmd_import_model, "audit": cmd_audit, "check-attacks": cmd_check_attacks,
                "fit-decision": cmd_fit_decision, "predict": cmd_predict}
    from medrobust.checkpoints import CheckpointError
    from medrobust.data import DataError, DataRootMissing

    try:
        return handlers[args.command](args)
    except DataRootMissing as exc:
        print(f"medrobust {args.command}: error: {exc}{_missing_root_hint(exc.root, args)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, DataError, CheckpointError, FileNotFoundError) as exc:
        print(f"medrobust {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # disk full, read-only folder: say so in one line, without a traceback
        print(f"medrobust {args.command}: error: {os_error_text(exc, resumable=args.command in ('train', 'cv'))}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medrobust {args.command}: interrupted; an interrupted training run resumes from its last epoch.", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
