"""Noise evaluation: medrobust's batched torch corruptions vs skimage.util.random_noise, model forward included.

    python benchmarks/bench_noise.py [--quick] [--checkpoint CKPT] [--data DIR ...] [--size 64]

For every level (3 noises x severities 0.1..1.0; --quick: 0.2, 0.6, 1.0) the batch is corrupted and
classified:

* ours: ``apply_corruption`` on batches of 64 + channels_last forward, exactly as evaluate_model does;
* skimage per image: ``random_noise`` called once per image (as a naive user would), stacked, fp32
  contiguous forward in batches of 64;
* skimage batched: one ``random_noise`` call over the whole (N, 1, H, W) array, same forward;
* lever: ours with a contiguous forward instead of channels_last.

Prints the time of each (noise only, forward, total), the ratios and the mean accuracy per noise of each
pipeline (they should agree within sampling noise).
"""

from __future__ import annotations

import copy
import statistics
import time

import _common as C
import numpy as np
import torch
from skimage.util import random_noise

from medrobust.corruptions import SEVERITIES, apply_corruption
from medrobust.evaluation import NOISES, _probs

SK_MODE = {"gaussian": ("gaussian", "var"), "salt_and_pepper": ("s&p", "amount"), "speckle": ("speckle", "var")}


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--checkpoint", help="medrobust checkpoint (default: a randomly initialised model)")
    p.add_argument("--size", type=int, help="image side (default: the checkpoint's image_size, else 64)")
    p.add_argument("--n", type=int, default=117, help="images (default 117, the test set's size)")
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args()


def main() -> None:
    args = parse()
    device = C.setup(args)
    rounds = args.rounds or 2
    sevs = (0.2, 0.6, 1.0) if args.quick else tuple(SEVERITIES)
    levels = [(ni, noise, li, s) for ni, noise in enumerate(NOISES) for li, s in enumerate(sevs)]
    C.print_header("bench_noise: noise + forward, ours vs skimage.util.random_noise", device)
    model, card, mdesc = C.load_model(args.checkpoint, device, seed=args.seed)
    size = args.size or C.card_size(card)
    x, y, idesc = C.test_images(args.data, size, card, args.n, seed=args.seed)
    print(f"model: {mdesc}")
    print(f"images: {idesc}; {len(levels)} levels ({len(NOISES)} noises x severities {sevs}); rounds {rounds}")
    bs = args.batch_size
    n = x.shape[0]
    peer_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    x_dev, y_np = x.to(device), y.numpy()
    x_np = x.numpy().astype(np.float64)  # what a user holding numpy images passes to skimage

    def ours(contiguous_forward: bool = False):
        t_noise = t_fwd = 0.0
        accs = {}
        for ni, noise, li, sev in levels:
            g = torch.Generator(device=device).manual_seed(args.seed * 1000 + ni * 100 + li)
            preds = []
            for i in range(0, n, bs):
                t = time.perf_counter()
                xc = apply_corruption(x_dev[i : i + bs], name=noise, severity=sev, generator=g)
                C.sync(device)
                t_noise += time.perf_counter() - t
                t = time.perf_counter()
                if contiguous_forward:  # lever: skip evaluate_model's channels_last conversion
                    with torch.no_grad():
                        preds.append(model(xc).argmax(1).cpu())
                else:
                    preds.append(_probs(model, xc, use_autocast=True).argmax(1).cpu())
                t_fwd += time.perf_counter() - t
            accs[(noise, sev)] = float((torch.cat(preds).numpy() == y_np).mean())
        return accs, t_noise, t_fwd

    def forward_peer(xc_np: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(xc_np).float().to(device)
        with torch.no_grad():
            return torch.cat([peer_model(xt[i : i + bs]).argmax(1).cpu() for i in range(0, n, bs)]).numpy()

    def skimage_pipeline(per_image: bool):
        def run():
            t_noise = t_fwd = 0.0
            accs = {}
            for ni, noise, li, sev in levels:
                mode, kw = SK_MODE[noise]
                rng = np.random.default_rng(args.seed * 1000 + ni * 100 + li)
                t = time.perf_counter()
                if per_image:
                    xc = np.stack([random_noise(x_np[i], mode=mode, rng=rng, **{kw: sev}) for i in range(n)])
                else:
                    xc = random_noise(x_np, mode=mode, rng=rng, **{kw: sev})
                t_noise += time.perf_counter() - t
                t = time.perf_counter()
                preds = forward_peer(xc)
                t_fwd += time.perf_counter() - t
                accs[(noise, sev)] = float((preds == y_np).mean())
            return accs, t_noise, t_fwd
        return run

    # warm-up (oneDNN primitives for both memory formats and the tail batch)
    _probs(model, x_dev[:bs], use_autocast=True), _probs(model, x_dev[bs:], use_autocast=True)
    forward_peer(x_np[:bs].copy()) if n > bs else None
    bench = C.Interleaved(device)
    jobs = {"ours": ours, "skimage per image": skimage_pipeline(True), "skimage batched": skimage_pipeline(False),
            "ours, contiguous fwd": lambda: ours(contiguous_forward=True)}
    bench.run(jobs, rounds)
    print(f"\n{'pipeline':<20s} {'total s':>8s} {'best s':>7s} {'noise s':>8s} {'forward s':>9s} {'levels/s':>9s} "
          f"{'time / ours':>12s} {'best-of':>8s}")
    for name in jobs:
        _, tn, tf = bench.results[name]
        tot = bench.median(name)
        rel = bench.ratio(name, "ours") if name != "ours" else 1.0
        print(f"{name:<20s} {tot:8.2f} {bench.best(name):7.2f} {tn:8.2f} {tf:9.2f} {len(levels) / tot:9.2f} {rel:11.2f}x "
              f"{bench.ratio_best(name, 'ours'):7.2f}x")
    print("(noise s / forward s: from the last round)")
    noise_only = {name: bench.results[name][1] for name in jobs}
    print(f"noise only: skimage per image / ours = {noise_only['skimage per image'] / noise_only['ours']:.1f}x, "
          f"skimage batched / ours = {noise_only['skimage batched'] / noise_only['ours']:.1f}x")
    print("\nmean accuracy per noise over the severities (all pipelines should agree within sampling noise):")
    maxdiff = 0.0
    for noise in NOISES:
        row = []
        for name in jobs:
            accs = bench.results[name][0]
            row.append(statistics.mean(accs[(noise, s)] for s in sevs))
        for s in sevs:
            vals = [bench.results[name][0][(noise, s)] for name in jobs]
            maxdiff = max(maxdiff, max(vals) - min(vals))
        print(f"  {noise:<16s} " + "  ".join(f"{name} {a:.3f}" for name, a in zip(jobs, row)))
    print(f"max |accuracy difference| over all levels and pipelines: {maxdiff:.3f} (n={n})")
    print(f"SUMMARY: ours {bench.median('ours'):.2f} s, skimage per image {bench.median('skimage per image'):.2f} s "
          f"({bench.ratio('skimage per image', 'ours'):.2f}x), skimage batched {bench.median('skimage batched'):.2f} s "
          f"({bench.ratio('skimage batched', 'ours'):.2f}x) for {len(levels)} levels x {n} images incl. forward")


if __name__ == "__main__":
    main()
