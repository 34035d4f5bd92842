"""Copy a checkpoint's test images, with a CSV manifest, into a folder that travels alone.

    python scripts/export_test_set.py checkpoints/robust.safetensors --data ../shared/data/covid-chestxray \
        --data ../shared/data/actualmed --dest /tmp/testset

Rebuilds the checkpoint's split from its card, copies the test part's original image files into DEST
and writes DEST/manifest.csv (path, label, patient, source) with DEST/manifest.json (the checkpoint's
sha256, split hash and classes: benchmarks refuse the set for another model), so that ``--test-manifest DEST/manifest.csv``
(evaluate, audit, check-attacks) and ``benchmarks/bench_parity.py --test-manifest`` see exactly the
same preprocessed images without the whole data set (e.g. on a lent GPU machine that can take only a
few tens of MiB). Checks that the manifest decodes to tensors identical to the test part's, and
refuses to write into a non-empty DEST. These are the data set's own images under its licence: never
commit the folder.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", action="append", type=Path, required=True, help="data folder(s), as for evaluate")
    p.add_argument("--dest", type=Path, required=True)
    args = p.parse_args(argv)

    import json

    import torch

    from medrobust.checkpoints import classes_of, image_size_of, read_card
    from medrobust.data import check_no_overlap, load_dataset, split_from_info

    if args.dest.exists() and any(args.dest.iterdir()):
        print(f"export_test_set: {args.dest} is not empty; choose a new folder.", file=sys.stderr)
        return 2
    card = read_card(args.checkpoint)
    size = image_size_of(card, name=args.checkpoint.name)
    if not (card.get("split") or {}).get("train_patients"):
        print(f"export_test_set: {args.checkpoint.name}'s card lists no training patients, so it has no test split "
              "to export.", file=sys.stderr)
        return 2
    classes = (card.get("config") or {}).get("classes")  # the training run's class order, if it fixed one
    data = load_dataset(args.data, image_size=size, classes=classes)
    split = split_from_info(data.records, card["split"])
    check_no_overlap(train_patients=card["split"]["train_patients"], eval_patients=split.patients["test"])
    if card["split"].get("hash") and split.hash != card["split"]["hash"]:
        print(f"export_test_set: these data give split {split.hash}, not the card's {card['split']['hash']}.",
              file=sys.stderr)
        return 2
    test = data.subset(split.images["test"])
    (args.dest / "images").mkdir(parents=True)
    rows = []
    for i, r in enumerate(test.records):
        name = f"images/{i:04d}_{r.source}_{Path(r.path).name}"
        shutil.copy2(r.path, args.dest / name)
        rows.append({"path": name, "label": data.classes[r.label], "patient": r.patient.split(":", 1)[1],
                     "source": r.source})
    with open(args.dest / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "patient", "source"])
        w.writeheader()
        w.writerows(rows)
    again = load_dataset([args.dest / "manifest.csv"], image_size=size, use_cache=False, classes=data.classes)
    same = (len(again.records) == len(test.records)
            and [r.patient for r in again.records] == [r.patient for r in test.records]
            and torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels))
    if not same:
        print("export_test_set: the manifest does not decode to the same test tensors.", file=sys.stderr)
        return 1
    (args.dest / "manifest.json").write_text(json.dumps({
        "checkpoint_sha256": card.get("sha256"), "split_hash": split.hash, "classes": list(classes_of(card)),
        "image_size": size, "images": len(rows)}, indent=1))
    mib = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file()) / 2**20
    print(f"wrote {len(rows)} test images of {len(split.patients['test'])} patients ({mib:.1f} MiB), split "
          f"{split.hash}, to {args.dest}/manifest.csv; decoded tensors identical to the test part's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
