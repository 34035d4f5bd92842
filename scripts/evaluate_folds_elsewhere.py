"""Evaluate cross-validation folds on another machine (a lent GPU) without the data set travelling.

    # here, beside the data: each fold's test tensors and weights, in DEST (never commit it)
    python scripts/evaluate_folds_elsewhere.py pack runs/cv-robust-cpu-s0 --data ../shared/data/covid-chestxray \
        --data ../shared/data/actualmed --dest /tmp/packed -- --restarts 5     # after --: evaluate's options
    # there: one fold per call if the transfer limit asks for it
    python scripts/evaluate_folds_elsewhere.py run /tmp/packed --fold 0 --device cuda --cache OUT
    # here again: put OUT's fold<i>.json/.npz into RESULTS/.<cv dir name>.folds/ and pool as usual
    python -m medrobust evaluate runs/cv-robust-cpu-s0 --data ... --restarts 5 --out RESULTS   # the same options

``pack`` rebuilds each fold's test part exactly as ``evaluate`` does (``evaluation.fold_part``: the fold
card's split, patient overlap checked) and saves it with the fold's weights and the evaluation config;
``run`` evaluates one packed fold (``evaluation.evaluate_fold_part``, which checks that the images are
that fold's) and writes the same cache files
``evaluate`` writes (keyed by the weights' sha256 and the config), so the pooling step reuses them and
re-checks that the folds test every labelled image once. Precision and device are recorded per fold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path


def pack(args) -> int:
    from medrobust.checkpoints import image_size_of, read_card
    from medrobust.cli import build_parser, evaluate_config
    from medrobust.data import load_dataset
    from medrobust.evaluation import config_digest, fold_checkpoints, fold_part

    config = evaluate_config(build_parser().parse_args(["evaluate", str(args.cv_dir), *args.evaluate_options]))
    args.dest.mkdir(parents=True, exist_ok=True)
    (args.dest / "config.json").write_text(json.dumps(asdict(config), default=float))
    data = None
    for i, ckpt in enumerate(fold_checkpoints(args.cv_dir)):
        card = read_card(ckpt)
        size = image_size_of(card, name=str(ckpt))
        if data is None or data.image_size != size:
            data = load_dataset(args.data, image_size=size)
        part = fold_part(card, i, roots=args.data, data=data)
        (args.dest / f"fold{i}").mkdir(exist_ok=True)
        part.save(args.dest / f"fold{i}" / "part.pt")
        for f in ckpt.parent.glob("model.*"):
            shutil.copy2(f, args.dest / f"fold{i}" / f.name)
        print(f"fold {i}: {len(part.keys)} test images, split {part.split_hash} -> {args.dest / f'fold{i}'}")
    print(f"config digest {config_digest(config)}: pool with `evaluate {args.cv_dir} --data ... "
          f"{' '.join(args.evaluate_options)}` (other options would evaluate the folds again, here)")
    return 0


def run(args) -> int:
    import torch

    from medrobust import distributed
    from medrobust.checkpoints import load_checkpoint
    from medrobust.evaluation import EvalConfig, FoldPart, evaluate_fold_part

    raw = json.loads((args.packed / "config.json").read_text())
    config = EvalConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}).validate()
    device = distributed.setup(args.device).device
    folder = args.packed / f"fold{args.fold}"
    model, card = load_checkpoint(folder / "model.safetensors", device=device)
    part = FoldPart.load(folder / "part.pt")
    _, summary = evaluate_fold_part(model, card, part, config=config, cache_dir=args.cache)
    clean = summary["clean"]
    print(f"fold {args.fold}: {summary['n_test']} images on {device} in {summary['seconds']:.0f} s; clean balanced "
          f"accuracy {clean['balanced_accuracy']:.3f}, AUROC {clean['auroc']:.3f} -> {args.cache}/fold{args.fold}.npz "
          f"(torch {torch.__version__})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("cv_dir", type=Path)
    a.add_argument("--data", action="append", type=Path, required=True)
    a.add_argument("--dest", type=Path, required=True)
    b = sub.add_parser("run")
    b.add_argument("packed", type=Path)
    b.add_argument("--fold", type=int, required=True)
    b.add_argument("--device", default="auto")
    b.add_argument("--cache", type=Path, required=True, help="where fold<i>.npz / fold<i>.json go")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: the evaluate options the pooling step uses
    args = p.parse_args(argv[:cut])
    args.evaluate_options = argv[cut + 1:]
    return pack(args) if args.command == "pack" else run(args)


if __name__ == "__main__":
    sys.exit(main())
