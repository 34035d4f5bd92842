"""PGD evaluation throughput: medrobust.attacks.pgd_multi_eps vs torchattacks (PGDL2 / PGD), same process.

    python benchmarks/bench_pgd.py [--quick] [--checkpoint checkpoints/robust.safetensors] [--data DIR ...]

Ours: all radii in one batched run, channels_last, fooled samples dropped (keep_first_success), as
evaluate_model runs it. Peer: torchattacks.PGDL2(model, eps, alpha=2.5*eps/steps, steps, random_start=True)
once per radius on a contiguous fp32 copy of the same model (torchattacks.PGD with eps k/255 for L-inf).
Both include the forward pass that classifies the adversarial images. Throughput is image-eps pairs per
second. Also prints the fp32/bf16 matmul peak, our achieved FLOP/s (FlopCounterMode FLOPs per image x
the images that actually went through forward and backward) and, unless --no-levers, the effect of
channels_last, batching the radii, dropping fooled samples, the thread count and (--try-compile)
torch.compile.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import _common as C
import torch

from medrobust.attacks import pgd, pgd_multi_eps, scale_eps
from medrobust.models import fold_batchnorm
from medrobust.evaluation import _probs


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--checkpoint", help="medrobust checkpoint (default: a randomly initialised model)")
    p.add_argument("--size", type=int, help="image side (default: the checkpoint's image_size, else 64)")
    p.add_argument("--n", type=int, help="images (default 64; --quick 16)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", default="1,2,3,4,5", help="radii: L2 stated at 224 px; L-inf in units of 1/255")
    p.add_argument("--norms", default="l2,linf")
    p.add_argument("--no-levers", action="store_true", help="skip the lever experiments")
    p.add_argument("--levers-only", action="store_true", help="run only the lever experiments")
    p.add_argument("--lever-n", type=int, default=16, help="images for the lever experiments")
    p.add_argument("--lever-rounds", type=int, help="rounds for the lever experiments (default: --rounds)")
    p.add_argument("--try-compile", action="store_true",
                   help="also time torch.compile (compiling ResNet-18 fwd+bwd takes minutes on a small CPU)")
    p.add_argument("--bf16-size", type=int, help="bf16 matmul side (default 2048, 512 where bf16 is emulated)")
    return p.parse_args()


def _multi(model, x, y, eps_px, steps, norm, seed, device, *, channels_last=True, keep=True):
    """pgd_multi_eps with the channels_last switch exposed (same batching)."""
    k = len(eps_px)
    xs, ys = x.repeat(k, 1, 1, 1), y.repeat(k)
    es = torch.tensor(eps_px, device=device).repeat_interleave(x.shape[0])
    g = torch.Generator(device=device).manual_seed(seed)
    return pgd(model, xs, ys, eps=es, steps=steps, norm=norm, generator=g, keep_first_success=keep,
               channels_last=channels_last)


def main() -> None:
    args = parse()
    device = C.setup(args)
    rounds = args.rounds or 2
    n = args.n or (16 if args.quick else 64)
    C.print_header("bench_pgd: PGD evaluation, ours vs torchattacks", device)
    model, card, mdesc = C.load_model(args.checkpoint, device, seed=args.seed)
    size = args.size or C.card_size(card)
    x, y, idesc = C.test_images(args.data, size, card, n, seed=args.seed)
    x, y = x.to(device), y.to(device)
    print(f"model: {mdesc}")
    print(f"images: {idesc}; PGD {args.steps} steps, step 2.5*eps/steps, random start; rounds {rounds}")

    # As evaluate_model runs it: BatchNorm folded into the convs (same function, fewer passes over memory).
    ours_model = C.PassCounter(fold_batchnorm(model))
    peer_model = C.PassCounter(copy.deepcopy(model).to(memory_format=torch.contiguous_format))
    fwd_f, bwd_f = C.flops_per_image(model, size, device)
    print(f"ResNet-18 FLOPs per image at {size} px (FlopCounterMode): forward {fwd_f / 1e9:.3f} G, "
          f"input-gradient backward {bwd_f / 1e9:.3f} G")

    peak_dtype = C.relevant_peak_dtype(device)
    bf16_n = args.bf16_size or C.bf16_peak_size(device)
    peaks = {"fp32": [], "bf16": []}
    eps_stated = [float(e) for e in args.eps.split(",") if e.strip()]
    import torchattacks

    summary = []
    norms = [] if args.levers_only else [s.strip() for s in args.norms.split(",") if s.strip()]
    for norm in norms:
        if norm == "l2":
            eps_px = [scale_eps(e, norm="l2", side=size) for e in eps_stated]
            labels = [f"{e:g} (@224) = {p:.3f} px" for e, p in zip(eps_stated, eps_px)]
        else:
            eps_px = [e / 255 for e in eps_stated]
            labels = [f"{e:g}/255" for e in eps_stated]
        steps = args.steps

        def ours(steps=steps, eps_px=eps_px, norm=norm):
            ours_model.reset()
            g = torch.Generator(device=device).manual_seed(args.seed)
            advs = pgd_multi_eps(ours_model, x, y, eps_list=eps_px, steps=steps, norm=norm, generator=g)
            accs = [float((_probs(ours_model, advs[e], use_autocast=True).argmax(1) == y).float().mean())
                    for e in eps_px]
            return accs, ours_model.fwd, ours_model.bwd

        def peer(steps=steps, eps_px=eps_px, norm=norm):
            peer_model.reset()
            torch.manual_seed(args.seed)
            accs = []
            for e in eps_px:
                if norm == "l2":
                    atk = torchattacks.PGDL2(peer_model, eps=e, alpha=2.5 * e / steps, steps=steps, random_start=True)
                else:
                    atk = torchattacks.PGD(peer_model, eps=e, alpha=2.5 * e / steps, steps=steps, random_start=True)
                adv = atk(x, y)
                with torch.no_grad():
                    accs.append(float((peer_model(adv).argmax(1) == y).float().mean()))
            return accs, peer_model.fwd, peer_model.bwd

        section_peaks: list[float] = []

        def peak():
            section_peaks.append(C.matmul_peak(torch.float32, device))
            peaks["fp32"].append(section_peaks[-1])
            return None

        print(f"\n-- {norm.upper()}: {n} images x {len(eps_px)} radii --")
        ours(steps=1), peer(steps=1)  # warm-up (oneDNN primitive caches)
        bench = C.Interleaved(device)
        bench.run({"ours": ours, "torchattacks": peer, "fp32 matmul 2048^3": peak}, rounds)
        pairs = n * len(eps_px)
        t_o, t_p = bench.median("ours"), bench.median("torchattacks")
        ratio = bench.ratio("torchattacks", "ours")
        acc_o, fwd_o, bwd_o = bench.results["ours"]
        acc_p, fwd_p, bwd_p = bench.results["torchattacks"]
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        print(f"ours:         {t_o:8.2f} s  {pairs / t_o:8.2f} image-eps/s  ({fwd_o} image-forwards, {bwd_o} image-backwards)")
        print(f"torchattacks: {t_p:8.2f} s  {pairs / t_p:8.2f} image-eps/s  ({fwd_p} image-forwards, {bwd_p} image-backwards)")
        print(f"ratio (torchattacks time / ours, median of paired rounds): {ratio:.2f}x; best-of ratio "
              f"{bench.ratio_best('torchattacks', 'ours'):.2f}x")
        flops_o = fwd_o * fwd_f + bwd_o * bwd_f
        flops_p = fwd_p * fwd_f + bwd_p * bwd_f
        peak32 = max(section_peaks)  # the load can change during a run: compare within the section
        rate_o = statistics.median([flops_o / t for t in bench.times["ours"]])
        rate_p = statistics.median([flops_p / t for t in bench.times["torchattacks"]])
        print(f"achieved: ours {C.fmt_rate(rate_o)}, torchattacks {C.fmt_rate(rate_p)}; "
              f"fp32 matmul peak (best of this section's rounds) {C.fmt_rate(peak32)}; "
              f"ours = {100 * rate_o / peak32:.0f} %, torchattacks = {100 * rate_p / peak32:.0f} % of it")
        print(f"accuracy under attack (clean {clean:.3f}); ours must be <= torchattacks + 0.01:")
        worst = -1.0
        for lab, a, b in zip(labels, acc_o, acc_p):
            worst = max(worst, a - b)
            print(f"  eps {lab:<22s} ours {a:.3f}  torchattacks {b:.3f}  diff {a - b:+.3f}")
        verdict = "OK" if worst <= 0.01 + 1e-9 else "WEAKER"
        print(f"  max(ours - torchattacks) = {worst:+.3f} -> {verdict}")
        summary.append((norm, pairs / t_o, pairs / t_p, ratio, rate_o, worst, verdict, peak32))

    # ---- peaks -------------------------------------------------------------------------------------------
    if args.levers_only:
        levers(args, model, device, size, x, y, eps_stated, args.lever_rounds or rounds)
        return
    print("\n-- peaks --")
    t = time.perf_counter()
    peaks["bf16"].append(C.matmul_peak(torch.bfloat16, device, n=bf16_n, reps=2))
    print(f"bf16 matmul {bf16_n}^3: {C.fmt_rate(peaks['bf16'][0])} ({time.perf_counter() - t:.1f} s)"
          + ("  [512^3: 2048^3 in emulated bf16 takes minutes]" if bf16_n != 2048 else ""))
    print("fp32 matmul 2048^3, per round: " + ", ".join(C.fmt_rate(p) for p in peaks["fp32"])
          + " (interleaved with the attacks; the spread is the background load)")
    used_name = "fp32" if peak_dtype == torch.float32 else "bf16"
    why = ("this CPU has no native bf16, so our pipeline computes in fp32" if peak_dtype == torch.float32
           else "our pipeline runs bf16 autocast here")
    print(f"relevant peak: {used_name} ({why})")
    for norm, ips_o, ips_p, ratio, rate_o, worst, verdict, peak32 in summary:
        used = peak32 if peak_dtype == torch.float32 else peaks["bf16"][0]
        print(f"SUMMARY {norm}: ours {ips_o:.2f} vs torchattacks {ips_p:.2f} image-eps/s = {ratio:.2f}x; "
              f"ours {C.fmt_rate(rate_o)} = {100 * rate_o / used:.0f} % of the {used_name} peak; "
              f"accuracy max(ours - peer) {worst:+.3f} ({verdict})")

    if not args.no_levers:
        levers(args, model, device, size, x, y, eps_stated, args.lever_rounds or rounds)


def levers(args, model, device, size, x, y, eps_stated, rounds) -> None:
    n = min(args.lever_n, x.shape[0])
    xs, ys = x[:n], y[:n]
    eps_px = [scale_eps(e, norm="l2", side=size) for e in eps_stated]
    steps = args.steps
    pairs = n * len(eps_px)
    print(f"\n-- levers (L2, {n} images x {len(eps_px)} radii, {steps} steps; each vs ours as shipped; "
          f"job order rotated every round) --")
    m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    jobs = {
        "ours as shipped": lambda: _multi(model, xs, ys, eps_px, steps, "l2", args.seed, device),
        "+ weights channels_last": lambda: _multi(m_cl, xs, ys, eps_px, steps, "l2", args.seed, device),
        "- channels_last inputs": lambda: _multi(model, xs, ys, eps_px, steps, "l2", args.seed, device, channels_last=False),
        "- batching radii (per eps)": lambda: [pgd(model, xs, ys, eps=e, steps=steps, norm="l2", keep_first_success=True,
                                                   generator=torch.Generator(device=device).manual_seed(args.seed))
                                               for e in eps_px],
        "- dropping fooled samples": lambda: _multi(model, xs, ys, eps_px, steps, "l2", args.seed, device, keep=False),
    }
    nt = torch.get_num_threads()
    alt = 1 if nt > 1 else (os.cpu_count() or 1)
    if device.type == "cpu" and alt != nt:

        def other_threads():
            with C.num_threads(alt):
                return _multi(model, xs, ys, eps_px, steps, "l2", args.seed, device)

        jobs[f"threads {alt} (instead of {nt})"] = other_threads
    _multi(m_cl, xs[:2], ys[:2], eps_px[:1], 1, "l2", 0, device)
    bench = C.Interleaved(device)
    bench.run(jobs, rounds, rotate=True)
    base = "ours as shipped"
    print(f"{'variant':<30s} {'median s':>9s} {'best s':>7s} {'image-eps/s':>12s} {'time vs shipped':>16s} {'best-of':>8s}")
    for name in jobs:
        rel = bench.ratio(name, base) if name != base else 1.0
        print(f"{name:<30s} {bench.median(name):9.2f} {bench.best(name):7.2f} {pairs / bench.median(name):12.2f} "
              f"{rel:15.2f}x {bench.ratio_best(name, base):7.2f}x")
    print("(time vs shipped > 1 means the variant is slower than what the package does)")

    if args.try_compile:
        print("\n-- torch.compile (inductor, weights frozen, dynamic shapes) --")
        m_c = copy.deepcopy(model)
        for p in m_c.parameters():
            p.requires_grad_(False)
        compiled = torch.compile(m_c, dynamic=True)
        t = time.perf_counter()
        _multi(compiled, xs, ys, eps_px, steps, "l2", args.seed, device)
        print(f"compile + first run: {time.perf_counter() - t:.1f} s")
        bench = C.Interleaved(device)
        bench.run({"eager (shipped)": lambda: _multi(model, xs, ys, eps_px, steps, "l2", args.seed, device),
                   "compiled": lambda: _multi(compiled, xs, ys, eps_px, steps, "l2", args.seed, device)}, rounds)
        print(f"steady state: eager {pairs / bench.median('eager (shipped)'):.2f}, compiled "
              f"{pairs / bench.median('compiled'):.2f} image-eps/s; eager time / compiled time "
              f"{bench.ratio('eager (shipped)', 'compiled'):.2f}x")


if __name__ == "__main__":
    main()
