"""Worst-case ensemble vs AutoAttack: medrobust.attacks.worst_case vs torchattacks.AutoAttack, same process.

    python benchmarks/bench_ensemble.py [--model robust] [--n 4] [--eps 2] [--threads 2] [--data DIR ...]

Ours: ``worst_case`` (PGD with 5 starts + APGD-CE, 20 steps each, L2 eps stated at 224 px and scaled to
the model's side), as ``evaluate_model`` runs it: BatchNorm folded into the convs, fp32 (``use_autocast=
False``) and, where the CPU has native bf16 (``cpu_bf16_is_fast()``) or on CUDA, also with bf16 autocast
(every verdict still an fp32 forward pass). Peer: ``torchattacks.AutoAttack(model, norm='L2', eps,
version='standard', n_classes=2, seed=0)`` with its standard settings, on the unchanged fp32 model.
On two classes its APGD-T member cannot run (the targeted DLR loss needs at least 4 logits; torchattacks
raises IndexError, and AutoAttack's own checks warn "with only 2 classes it is not possible to use the DLR
loss"), so it is dropped and the rest runs: APGD-CE, FAB-T, Square. torchattacks 3.3.0 builds the standard
set with its own defaults, i.e. 10 steps for APGD-CE and FAB-T (the reference AutoAttack uses 100) and
5000 Square queries; the script prints the settings it ran.
Robust accuracy is counted for both with one fp32 eval-mode forward pass of the unfolded model.

The two are not the same work: AutoAttack's last member, Square, spends 5000 forward queries on each
image nothing else broke, which on a robust model is most of them, so AutoAttack costs minutes per
robust image at 128 px on a CPU. Hence the small default ``--n`` (a fixed seed-0 random subset of the
checkpoint's test images, as the other benchmarks take it). Needs the real data (default
``../shared/data/covid-chestxray`` and ``../shared/data/actualmed``, or ``--data``); exits with a
message where it is absent. One round by default (``--rounds``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import _common as C
import torch

from medrobust.attacks import cpu_bf16_is_fast, scale_eps, worst_case
from medrobust.models import fold_batchnorm

DEFAULT_N = 4
SHARED = C.REPO.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "covid-chestxray", SHARED / "actualmed"]


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--model", default="robust",
                   help="a shipped model name (checkpoints/NAME.safetensors) or a checkpoint path (default robust)")
    p.add_argument("--n", type=int, default=DEFAULT_N,
                   help=f"test images (default {DEFAULT_N}: AutoAttack standard costs minutes per robust image)")
    p.add_argument("--eps", type=float, default=2.0, help="L2 radius stated at 224 px (default 2)")
    p.add_argument("--steps", type=int, default=20, help="steps of each of our PGD starts and APGD run")
    p.add_argument("--pgd-restarts", type=int, default=5)
    p.add_argument("--apgd-restarts", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true", help="skip our bf16-autocast run even where bf16 is native")
    return p.parse_args()


def _checkpoint(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".safetensors", ".json") or p.exists():
        return p
    return C.REPO / "checkpoints" / f"{name}.safetensors"


def _aa_settings(aa) -> str:
    parts = []
    for a in aa._autoattack.attacks:
        kw = [f"{k}={getattr(a, k)}" for k in ("steps", "n_restarts", "n_target_classes", "n_queries", "loss")
              if hasattr(a, k)]
        parts.append(f"{type(a).__name__}({', '.join(kw)})")
    return " + ".join(parts)


def cpu_kind() -> str:
    """The CPU model and the SIMD features that decide the attack's arithmetic speed."""
    simd = C.cpu_simd()
    return (f"{C.cpu_model()} ({', '.join(simd) or 'SIMD flags unknown'}), native bf16 for oneDNN: "
            f"{cpu_bf16_is_fast()}")


def main() -> int:
    args = parse()
    data = args.data or [str(d) for d in DEFAULT_DATA]
    missing = [d for d in data if not (Path(d) / "metadata.csv").is_file() and not (str(d).endswith(".csv") and Path(d).is_file())]
    if missing:
        print(f"bench_ensemble: real data not found ({', '.join(missing)} has no metadata.csv). This benchmark "
              "runs on the checkpoint's real test images only: pass --data DIR for each data folder "
              "(covid-chestxray and actualmed in the upstream layout).", file=sys.stderr)
        return 2
    try:
        import torchattacks
    except ImportError:
        print("bench_ensemble: torchattacks is not installed (pip install torchattacks==3.3.0).", file=sys.stderr)
        return 2
    ckpt = _checkpoint(args.model)
    if not ckpt.is_file():
        print(f"bench_ensemble: checkpoint {ckpt} not found.", file=sys.stderr)
        return 2

    device = C.setup(args)
    rounds = args.rounds or 1
    C.print_header("bench_ensemble: worst-case ensemble (ours) vs torchattacks AutoAttack standard", device)
    model, card, mdesc = C.load_model(str(ckpt), device, seed=args.seed)
    size = C.card_size(card)
    x, y, idesc = C.test_images(data, size, card, args.n, seed=args.seed)
    x, y = x.to(device), y.to(device)
    n = x.shape[0]
    eps_px = scale_eps(args.eps, norm="l2", side=size)
    n_classes = int(getattr(model, "num_classes", 2))
    print(f"model: {mdesc}")
    print(f"images: {idesc}" + (f" (--n {args.n}: a small default, because AutoAttack standard spends up to "
                                "5000 Square queries on every image it cannot break)" if args.n == DEFAULT_N else ""))
    print(f"eps: L2 {args.eps:g} at 224 px = {eps_px:.4f} at {size} px; rounds {rounds}")

    ours_model = C.PassCounter(fold_batchnorm(model))  # as evaluate_model runs it
    peer_model = C.PassCounter(copy.deepcopy(model).eval())
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum())

    bf16 = not args.no_bf16 and (device.type == "cuda" or cpu_bf16_is_fast())

    def ours(use_autocast: bool):
        def run():
            g = torch.Generator(device=device).manual_seed(args.seed)
            return worst_case(ours_model, x, y, eps=eps_px, steps=args.steps, norm="l2",
                              pgd_restarts=args.pgd_restarts, apgd_restarts=args.apgd_restarts,
                              generator=g, use_autocast=use_autocast)
        return run

    aa = torchattacks.AutoAttack(peer_model, norm="L2", eps=eps_px, version="standard", n_classes=n_classes, seed=0)
    dropped = ""
    if n_classes < 4:
        # APGD-T's targeted DLR loss divides by z_pi1 - (z_pi3 + z_pi4) / 2: it needs 4 logits and raises an
        # IndexError on 2 (AutoAttack's own checks.check_n_classes: "with only 2 classes it is not possible to
        # use the DLR loss"). Run the rest of the standard set, each member with its standard settings.
        aa._autoattack.attacks = [a for a in aa._autoattack.attacks if type(a).__name__ != "APGDT"]
        dropped = (f" [APGD-T dropped: its targeted DLR loss needs >= 4 classes, this model has {n_classes}; "
                   "torchattacks raises IndexError on it]")

    def peer():
        torch.manual_seed(args.seed)
        return aa(x, y)

    print(f"ours: worst_case, PGD {args.pgd_restarts} starts x {args.steps} steps + APGD-CE "
          f"{args.apgd_restarts} x {args.steps} steps, BatchNorm folded; fp32" + (" and bf16 autocast" if bf16 else
                                                                                    " only (no native bf16)"))
    print(f"peer: torchattacks {torchattacks.__version__} AutoAttack standard = {_aa_settings(aa)}{dropped}")

    jobs = {"ours fp32": ours(False)}
    if bf16:
        jobs["ours bf16 autocast"] = ours(True)
    jobs["AutoAttack standard"] = peer
    # Warm-up (oneDNN primitives, autocast caches), untimed: one image, one step, each path.
    for use_ac in ([False, True] if bf16 else [False]):
        worst_case(ours_model, x[:1], y[:1], eps=eps_px, steps=1,
                   generator=torch.Generator(device=device).manual_seed(0), use_autocast=use_ac)
    xw = x[:1].clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(peer_model(xw), y[:1]), xw)
    bench = C.Interleaved(device)
    passes = {}

    def counted(name, fn):
        def run():
            for m in (ours_model, peer_model):
                m.reset()
            out = fn()
            m = peer_model if name.startswith("AutoAttack") else ours_model
            passes[name] = (m.fwd, m.bwd)
            return out
        return run

    bench.run({k: counted(k, f) for k, f in jobs.items()}, rounds)

    def acc_of(name) -> int:
        out = bench.results[name]
        adv = (out.x_adv if hasattr(out, "x_adv") else out).detach()
        assert float((adv - x).flatten(1).norm(dim=1).max()) <= eps_px * (1 + 1e-4) + 1e-5, name
        with torch.no_grad():
            return int((model(adv.detach().float()).argmax(1) == y).sum())

    print()
    print(f"machine: {C.machine_line(device)}")
    print(f"CPU kind: {cpu_kind()}")
    print(f"clean accuracy: {clean / n:.3f} ({clean}/{n})")
    for name in jobs:
        acc = acc_of(name)
        f, b = passes[name]
        print(f"{name:<22s} time {bench.median(name):8.2f} s (best {bench.best(name):.2f} s, "
              f"{bench.best(name) / n:.2f} s/image)  robust accuracy {acc / n:.3f} ({acc}/{n})  "
              f"image passes fwd {f} bwd {b}")
    for name in jobs:
        if name.startswith("ours"):
            print(f"ratio AutoAttack / {name}: {bench.ratio('AutoAttack standard', name):.2f}x (median), "
                  f"{bench.ratio_best('AutoAttack standard', name):.2f}x (best-of)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
