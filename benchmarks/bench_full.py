"""The whole benchmark: medrobust's evaluate_model vs a naive pipeline, per checkpoint, same process.

    python benchmarks/bench_full.py [--quick] [--checkpoints checkpoints/*.safetensors] [--data DIR ...]

Naive pipeline (what one would write with the peer libraries): fp32 contiguous forward; L2 PGD with
torchattacks.PGDL2(model, eps, alpha=2.5*eps/steps, steps, random_start=True) once per radius (last
iterate); noise with skimage.util.random_noise called per image; the same metrics (classification_metrics
and bootstrap_ci from medrobust.metrics, same n_boot) for every level. For each checkpoint ours runs, then
the naive pipeline (interleaved); prints the wall time of each, the ratio, and the largest accuracy
difference per perturbation (PGD: ours keeps the first fooling iterate, so it should be <= naive).

Default: the paper's protocol (eps 1..5, 20 steps, 3 noises x 10 severities, 1000 bootstrap resamples)
on the test patients (117 images with the shipped split) or 117 synthetic images. --quick: 32 images,
eps 1,3,5, severities 0.2,0.6,1.0, 200 resamples.
"""

from __future__ import annotations

import copy
import time

import _common as C
import numpy as np
import torch
from skimage.util import random_noise

from medrobust.attacks import scale_eps
from medrobust.corruptions import SEVERITIES
from medrobust.evaluation import NOISES, PER_LEVEL_METRICS, EvalConfig, evaluate_model
from medrobust.metrics import bootstrap_ci, classification_metrics

SK_MODE = {"gaussian": ("gaussian", "var"), "salt_and_pepper": ("s&p", "amount"), "speckle": ("speckle", "var")}


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--checkpoints", nargs="*", default=[], help="medrobust checkpoints (default: one random model)")
    p.add_argument("--n", type=int, help="test images (default all / 117 synthetic; --quick 32)")
    p.add_argument("--size", type=int, help="image side for a random model (default 64)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-boot", type=int, help="bootstrap resamples (default 1000; --quick 200)")
    p.add_argument("--ours-only", action="store_true", help="time evaluate_model only (no naive pipeline)")
    return p.parse_args()


def naive_pipeline(model, x: torch.Tensor, y: torch.Tensor, config: EvalConfig) -> dict:
    import torchattacks

    m = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    device = next(m.parameters()).device
    n, bs, side = x.shape[0], config.batch_size, x.shape[-1]
    y_np = y.numpy()

    def probs_of(xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([torch.softmax(m(xs[i : i + bs].to(device)), 1).cpu() for i in range(0, n, bs)]).numpy()

    def row(p: np.ndarray) -> dict:
        met = classification_metrics(labels=y_np, probs=p)
        bootstrap_ci(labels=y_np, probs=p, metrics=PER_LEVEL_METRICS, n_boot=config.n_boot, seed=config.seed)
        return met

    out = {}
    clean = probs_of(x)
    row(clean)
    bootstrap_ci(labels=y_np, probs=clean, metrics=("auroc",), n_boot=config.n_boot, seed=config.seed)
    out[("clean", 0.0)] = float((clean.argmax(1) == y_np).mean())
    torch.manual_seed(config.seed)
    for e in config.eps:
        ep = scale_eps(e, norm="l2", side=side)
        atk = torchattacks.PGDL2(m, eps=ep, alpha=2.5 * ep / config.pgd_steps, steps=config.pgd_steps, random_start=True)
        adv = torch.cat([atk(x[i : i + bs].to(device), y[i : i + bs].to(device)) for i in range(0, n, bs)])
        p = probs_of(adv)
        row(p)
        out[("pgd_l2", e)] = float((p.argmax(1) == y_np).mean())
    x_np = x.numpy().astype(np.float64)
    for ni, noise in enumerate(config.noises):
        mode, kw = SK_MODE[noise]
        for li, sev in enumerate(config.severities):
            rng = np.random.default_rng(config.seed * 1000 + ni * 100 + li)
            xc = np.stack([random_noise(x_np[i], mode=mode, rng=rng, **{kw: sev}) for i in range(n)])
            p = probs_of(torch.from_numpy(xc).float())
            row(p)
            out[(noise, sev)] = float((p.argmax(1) == y_np).mean())
    return out


def main() -> None:
    args = parse()
    device = C.setup(args)
    n = args.n or (32 if args.quick else None)
    config = EvalConfig(
        eps=(1.0, 3.0, 5.0) if args.quick else EvalConfig.eps,
        severities=(0.2, 0.6, 1.0) if args.quick else tuple(SEVERITIES),
        pgd_steps=args.steps, n_boot=args.n_boot or (200 if args.quick else 1000), seed=args.seed,
    ).validate()
    C.print_header("bench_full: evaluate_model vs a naive torchattacks + skimage pipeline", device)
    print(f"protocol: eps {config.eps} (@224 px), {config.pgd_steps} steps, noises {config.noises} x severities "
          f"{config.severities}, n_boot {config.n_boot}")
    targets = args.checkpoints or [None]
    rounds = args.rounds or 1
    times: dict[str, list[float]] = {"ours": [], "naive": []}
    per_model = []
    worst = {"clean": 0.0, "pgd (ours - naive, max)": -1.0, "noise (|diff|, max)": 0.0}
    for ck in targets:
        model, card, mdesc = C.load_model(ck, device, seed=args.seed)
        size = args.size if (ck is None and args.size) else C.card_size(card)
        x, y, idesc = C.test_images(args.data, size, card, n, seed=args.seed)
        print(f"\nmodel: {mdesc}\nimages: {idesc}")
        # warm-up: one forward in both memory formats
        with torch.no_grad():
            model(x[:8].to(device)), model(x[:8].to(device).contiguous(memory_format=torch.channels_last))
        t_o, t_n = [], []
        for r in range(rounds):
            t = time.perf_counter()
            res = evaluate_model(model, x.to(device), y, config=config, name="bench", card=card)
            t_o.append(time.perf_counter() - t)
            print(f"  round {r + 1}: ours  {t_o[-1]:8.2f} s (pgd {res['timing']['pgd_s']:.1f} s, noise "
                  f"{res['timing']['noise_s']:.1f} s)", flush=True)
            if args.ours_only:
                continue
            t = time.perf_counter()
            naive = naive_pipeline(model, x, y, config)
            t_n.append(time.perf_counter() - t)
            print(f"  round {r + 1}: naive {t_n[-1]:8.2f} s", flush=True)
        times["ours"].append(min(t_o))
        if args.ours_only:
            per_model.append((mdesc, min(t_o), None))
            continue
        times["naive"].append(min(t_n))
        ours_acc = {(r["perturbation"], r["severity"]): r["accuracy"] for r in res["rows"]}
        diffs = {k: ours_acc[k] - v for k, v in naive.items()}
        worst["clean"] = max(worst["clean"], abs(diffs[("clean", 0.0)]))
        pg = [d for k, d in diffs.items() if k[0] == "pgd_l2"]
        nz = [abs(d) for k, d in diffs.items() if k[0] in NOISES]
        worst["pgd (ours - naive, max)"] = max(worst["pgd (ours - naive, max)"], max(pg))
        worst["noise (|diff|, max)"] = max(worst["noise (|diff|, max)"], max(nz))
        print("  accuracy  " + "  ".join(f"{k[0]}@{k[1]:g}: {ours_acc[k]:.3f}/{v:.3f}" for k, v in naive.items()
                                         if k[0] in ("clean", "pgd_l2")) + "  (ours/naive)")
        print(f"  noise: max |ours - naive| {max(nz):.3f}, mean {np.mean(nz):.3f}; "
              f"PGD: max(ours - naive) {max(pg):+.3f}")
        per_model.append((mdesc, min(t_o), min(t_n)))

    print("\n-- summary --")
    for mdesc, to, tn in per_model:
        extra = f", naive {tn:.1f} s, ratio {tn / to:.2f}x" if tn else ""
        print(f"{mdesc}: ours {to:.1f} s{extra}")
    tot_o = sum(times["ours"])
    line = f"SUMMARY: {len(targets)} model(s): ours {tot_o:.1f} s ({tot_o / 60:.1f} min)"
    if times["naive"]:
        tot_n = sum(times["naive"])
        line += f", naive {tot_n:.1f} s ({tot_n / 60:.1f} min), ratio {tot_n / tot_o:.2f}x"
        line += "; max accuracy differences: " + ", ".join(f"{k} {v:+.3f}" for k, v in worst.items())
    print(line)


if __name__ == "__main__":
    main()
