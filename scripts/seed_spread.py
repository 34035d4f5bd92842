"""How much of a method difference is training noise? Retrain fold 0 of a cross-validation with other seeds.

Each reseeded run keeps fold 0's patients exactly (its ``split.json`` is copied from the seed-0 fold, and a run
reuses the split it finds), so only what the seed drives changes: weight initialisation, batch order,
augmentations and PGD starts. Fine-tuned methods (robust, ...) start from the standard model of the same seed,
as the cross-validation's did. Then the fold-0 test patients are evaluated with the shipped benchmark (clean,
the worst-case ensemble at eps 2, 5 restarts; no corruption suites) and the seed-0 value is read from the
cross-validation's own results, so all seeds are judged on the same images by the same attacks.

Usage (resumes: finished runs and evaluations are skipped, a killed run picks up its last epoch)::

    python scripts/seed_spread.py train --seeds 1 2            # ~5 min standard, ~15 min robust per seed, 1 thread
    python scripts/seed_spread.py evaluate --seeds 1 2 --out checkpoints/cv/results/seed_spread.json

``--data`` defaults to the two shared COVID collections (``$MEDROBUST_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ("standard", "robust")
FOLD = 0
EPS = 2.0


def _cv_fold(cv_root: Path, method: str) -> Path:
    return cv_root / f"cv-{method}-cpu-s0" / f"fold{FOLD}"


def _run_dir(out_root: Path, method: str, seed: int) -> Path:
    return out_root / f"{method}-s{seed}" / f"fold{FOLD}"


def _train_one(method: str, seed: int, *, cv_root: Path, out_root: Path, data: list[str], threads: int) -> str:
    run = _run_dir(out_root, method, seed)
    if (run / "model.safetensors").is_file():
        return f"{method} seed {seed}: done before"
    reference = json.loads((_cv_fold(cv_root, method) / "config.json").read_text())
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "split.json").is_file():
        shutil.copy(_cv_fold(cv_root, method) / "split.json", run / "split.json")
    cmd = [sys.executable, "-m", "medrobust", "train", "--method", method, "--preset", reference["preset"],
           "--seed", str(seed), "--folds", str(reference["folds"]), "--fold", str(FOLD), "--out", str(run),
           "--epochs", str(reference["epochs"]), "--lr", str(reference["lr"]),
           "--eps-ramp-epochs", str(reference["eps_ramp_epochs"]), "--no-progress"]
    if reference.get("init"):
        cmd += ["--init", str(_run_dir(out_root, "standard", seed) / "model.safetensors")]
    for d in data:
        cmd += ["--data", d]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MEDROBUST_TORCH_THREADS": str(threads)}
    t = time.time()
    with open(run.parent / "train.log", "a") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{method} seed {seed}: trained in {time.time() - t:.0f} s"


def train(args) -> None:
    with ThreadPoolExecutor(max_workers=len(args.seeds)) as pool:  # seeds in parallel, methods in order
        for method in METHODS:
            jobs = [pool.submit(_train_one, method, s, cv_root=args.cv_root, out_root=args.out_root,
                                data=args.data, threads=args.threads) for s in args.seeds]
            for j in jobs:
                print(j.result(), flush=True)


def _metrics(labels, logits, ok_at_eps) -> dict[str, float]:
    import numpy as np

    from medrobust.metrics import classification_metrics

    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    clean = classification_metrics(labels=labels, probs=probs)
    return {"clean_auroc": clean["auroc"], "clean_balanced_accuracy": clean["balanced_accuracy"],
            "pgd_accuracy": float(ok_at_eps.mean())}


def _seed0(results_dir: Path, method: str) -> dict[str, float]:
    import numpy as np

    z = np.load(results_dir / f"cv-{method}-cpu-s0.logits.npz")
    conditions = json.loads(str(z["conditions"]))
    at = [i for i, c in enumerate(conditions) if c["suite"] == "attack" and c["severity"] == EPS][0]
    eps_index = [c["severity"] for c in conditions if c["suite"] == "attack"].index(EPS)
    fold = z["folds"] == FOLD
    robust = z["attack_ok"][:, eps_index].all(0)  # every attack of the ensemble failed
    assert conditions[at]["severity"] == EPS
    return _metrics(z["labels"][fold], z["logits"][0][fold], robust[fold])


def evaluate(args) -> None:
    import numpy as np

    from medrobust.evaluation import EvalConfig, evaluate_fold
    from medrobust.settings import data_roots

    config = EvalConfig(eps=(EPS,), restarts=5, suites=()).validate()
    rows = []
    for method in METHODS:
        rows.append({"method": method, "seed": 0, **_seed0(args.results, method)})
        for seed in args.seeds:
            ckpt = _run_dir(args.out_root, method, seed) / "model.safetensors"
            cache = args.out_root / ".eval" / f"{method}-s{seed}"
            t = time.time()
            ps, _, _ = evaluate_fold(ckpt, FOLD, roots=data_roots(args.data), config=config, device="cpu", cache_dir=cache,
                               log=lambda s: print(s, flush=True))
            ok = np.asarray(ps.attack_ok)[:, 0].all(0)
            rows.append({"method": method, "seed": seed, **_metrics(np.asarray(ps.labels), np.asarray(ps.logits[0]), ok),
                         "eval_seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    out = {"fold": FOLD, "eps": EPS, "n_test": int(len(ps.labels)), "n_patients": int(len(set(ps.groups))), "rows": rows,
           "protocol": "fold 0 of the cross-validation, same patients (split.json copied from seed 0); seeds change "
                       "initialisation, batch order, augmentation and PGD starts; robust fine-tuned from the same "
                       "seed's standard model; clean and the worst-case ensemble at eps 2 (stated at 224 px), 5 restarts",
           "command": "python scripts/seed_spread.py train --seeds " + " ".join(map(str, args.seeds))
                      + " && python scripts/seed_spread.py evaluate --seeds " + " ".join(map(str, args.seeds))}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {args.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "evaluate"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data", action="append", default=None)
    p.add_argument("--cv-root", type=Path, default=Path("runs"), help="where cv-<method>-cpu-s0/ are (default runs)")
    p.add_argument("--out-root", type=Path, default=Path("runs/seed-spread"))
    p.add_argument("--results", type=Path, default=Path("checkpoints/cv/results"), help="the seed-0 pooled results")
    p.add_argument("--out", type=Path, default=Path("checkpoints/cv/results/seed_spread.json"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    args = p.parse_args(argv)
    if args.data is None:
        from medrobust.settings import data_roots

        args.data = [str(r) for r in data_roots(None)]
    (train if args.what == "train" else evaluate)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
