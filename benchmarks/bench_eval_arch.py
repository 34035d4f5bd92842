"""Evaluation cost by architecture: ``evaluate`` of a DenseNet-121 and a ResNet-50 at 128 and 224 px, where the time goes.

    python benchmarks/bench_eval_arch.py [--archs densenet121,resnet50] [--sizes 128,224] [--n 64]
        [--weights ARCH=FILE ...] [--in-channels 1] [--threads 2] [--peer pgd|pgd+apgd|none] [--peer-n N]
        [--levers] [--pass-images N] [--cli] [--data DIR ...]

What it runs, per architecture and image size: the model as ``python -m medrobust import-model`` makes it
(torchvision architecture; seeded random weights, or ``--weights ARCH=FILE`` for a safetensors state dict
such as a trained run's ``model.safetensors``), loaded with ``load_checkpoint``, then
``evaluate_model`` with the ``evaluate`` command's default settings (:class:`EvalConfig`: worst case of
PGD + APGD-CE, 20 steps each, L2 eps 1..5 at 224 px, both corruption suites, 1000 bootstrap resamples)
on a fixed subset of the labelled images (``--n``, a seed-0 random subset of all the images of
``--data``: 571 with the shared COVID-19 data). The times are extrapolated **linearly** to
``--total`` images (default: all the labelled images of ``--data``) and said to be so.

Where the time goes: hooks on the model time every forward pass by kind (fp32 without a graph: counted
predictions and verdicts; bf16 or fp32 with a graph: attack iterations) and ``torch.autograd.grad``
(the attacks' backward passes); ``evaluate_model``'s own timing splits clean / attacks / paper suite /
clinical suite / metrics. The rest of the attack stage (projections, indexing, bookkeeping) is printed
as "other".

Peer (same process, after ours): ``torchattacks.PGDL2`` (alpha 2.5 eps / steps, random start, last
iterate, the fp32 unfolded model, batches of 64) at the same radii on the first ``--peer-n`` images of
the subset, its accuracy counted by an fp32 forward pass; ``pgd+apgd`` adds ``torchattacks.APGD`` (CE,
1 restart). The ratio is the peer's seconds per image over our attack stage's seconds per image (ours
does more: the PGD + APGD ensemble). Our worst case must be at or below the peer's accuracy.

``--levers`` times the attack stage alone on the subset, one process, rotated: the ensemble as it ran
before (all radii in one batch, no pass-size limit) vs the same with the pass-size limit vs the nested
radii with the pass-size limit (what ``evaluate_model`` runs now). ``--cli`` also runs the real
``python -m medrobust evaluate`` on the subset (a manifest written to a temporary folder) and prints its
wall time.
"""

from __future__ import annotations

import copy
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import torch

from medrobust.attacks import scale_eps
from medrobust.evaluation import EvalConfig, evaluate_model

SHARED = C.REPO.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "covid-chestxray", SHARED / "actualmed"]


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--archs", default="densenet121,resnet50", help="torchvision architectures (comma-separated)")
    p.add_argument("--sizes", default="128,224", help="image sides (comma-separated)")
    p.add_argument("--n", type=int, default=64, help="images evaluated (default 64: one evaluation batch)")
    p.add_argument("--total", type=int, help="images to extrapolate to (default: all labelled images of --data)")
    p.add_argument("--weights", action="append", default=[], metavar="ARCH=FILE",
                   help="a safetensors state dict for ARCH (torchvision or medrobust keys); default seeded random")
    p.add_argument("--in-channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--peer", default="pgd", choices=["pgd", "pgd+apgd", "none"])
    p.add_argument("--peer-n", type=int, help="images the peer attacks (default --n)")
    p.add_argument("--levers", action="store_true", help="time the attack stage with and without each lever")
    p.add_argument("--pass-images", type=int, help="images per model pass (default: evaluate_model's choice)")
    p.add_argument("--batch-size", type=int, help="images per evaluation batch (default: EvalConfig's)")
    p.add_argument("--cli", action="store_true", help="also time `python -m medrobust evaluate` on the subset")
    return p.parse_args()


def cpu_kind() -> str:
    """The CPU model and the SIMD features that decide the arithmetic's speed."""
    simd = C.cpu_simd()
    kind = ("AMX + AVX-512 BF16" if "amx_bf16" in simd else "AVX-512 BF16" if "avx512_bf16" in simd
            else "AVX2 only (bf16 emulated)" if "avx2" in simd else "unknown")
    return f"{C.cpu_model()} [{kind}; flags {', '.join(simd) or 'unknown'}]"


# ---- instrumentation ---------------------------------------------------------------------------------------


class Meter:
    """Times every forward pass of a model by kind, and ``torch.autograd.grad`` (the attacks' backward passes)."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}
        self._t0: list[float] = []
        self._grad = None

    def add(self, key: str, seconds: float, images: int) -> None:
        s = self.stats.setdefault(key, [0.0, 0])
        s[0] += seconds
        s[1] += images

    def attach(self, model: torch.nn.Module) -> None:
        def pre(_mod, _args):
            self._t0.append(time.perf_counter())

        def post(_mod, args, _out):
            dt = time.perf_counter() - self._t0.pop()
            kind = ("bf16" if torch.is_autocast_enabled("cpu") else "fp32") + (" fwd+graph" if torch.is_grad_enabled()
                                                                            else " fwd")
            self.add(kind, dt, int(args[0].shape[0]))

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)

    def __enter__(self) -> "Meter":
        self._grad = torch.autograd.grad
        inner = self._grad

        def grad(*a, **k):
            t = time.perf_counter()
            out = inner(*a, **k)
            self.add("backward (input grad)", time.perf_counter() - t, 0)
            return out

        torch.autograd.grad = grad
        return self

    def __exit__(self, *exc) -> None:
        torch.autograd.grad = self._grad


# ---- models and data -----------------------------------------------------------------------------------------


def imported_model(arch: str, size: int, *, weights: str | None, in_channels: int, folder: Path, seed: int):
    """(model, card) as `import-model` then `evaluate` load it."""
    from safetensors.torch import save_file

    from medrobust.checkpoints import import_model, load_checkpoint

    if weights is None:
        from torchvision.models import get_model

        from medrobust.models import build_model

        torch.manual_seed(seed)
        net = build_model(arch=arch, in_channels=1) if in_channels == 1 else get_model(arch, weights=None, num_classes=2)
        weights = str(folder / f"{arch}-random-s{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    path, _ = import_model(weights, arch=arch, classes=["non-COVID", "COVID-19"], image_size=size,
                           in_channels=in_channels, out_dir=folder, name=f"{arch}-{size}")
    model, card = load_checkpoint(path)
    return model.eval(), card, path


def subset(data_roots: list[str], size: int, n: int, seed: int):
    from medrobust.data import load_dataset

    ds = load_dataset([Path(d) for d in data_roots], image_size=size)
    total = len(ds.records)
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    return ds.subset([ds.records[i].key for i in idx]), total


def write_manifest(part, folder: Path) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient", "source"])
        for r in part.records:
            w.writerow([str(Path(r.path).resolve()), part.classes[r.label], r.patient.split(":", 1)[-1], r.source])
    return path


# ---- ours, the peer, the levers ------------------------------------------------------------------------------


def run_ours(model, card, x_u8, y, *, keys, pass_images: int | None, config: EvalConfig) -> tuple[dict, Meter]:
    meter = Meter()
    m = copy.deepcopy(model)
    meter.attach(m)  # forward hooks survive evaluate_model's fold_batchnorm copy
    kw = {} if pass_images is None else {"max_pass_images": pass_images}
    with meter:
        result = evaluate_model(m, x_u8, y, config=config, name=card["name"], card=card, keys=keys, **kw)
    return result, meter


def run_peer(model, x: torch.Tensor, y: torch.Tensor, *, size: int, which: str) -> tuple[float, dict[str, list[int]]]:
    import torchattacks

    m = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    correct: dict[str, list[int]] = {"torchattacks PGDL2": []}
    if which == "pgd+apgd":
        correct["torchattacks APGD"] = []
    bs = 64
    t0 = time.perf_counter()
    for e in EvalConfig.eps:
        ep = scale_eps(e, norm="l2", side=size)
        atks = {"torchattacks PGDL2": torchattacks.PGDL2(m, eps=ep, alpha=2.5 * ep / 20, steps=20, random_start=True)}
        if which == "pgd+apgd":
            atks["torchattacks APGD"] = torchattacks.APGD(m, norm="L2", eps=ep, steps=20, n_restarts=1, loss="ce", seed=0)
        for name, atk in atks.items():
            n_ok = 0
            for i in range(0, x.shape[0], bs):
                adv = atk(x[i:i + bs], y[i:i + bs])
                with torch.no_grad():
                    n_ok += int((m(adv).argmax(1) == y[i:i + bs]).sum())
            correct[name].append(n_ok)
    return time.perf_counter() - t0, correct


def run_levers(model, x: torch.Tensor, y: torch.Tensor, *, size: int, rounds: int) -> None:
    from medrobust.attacks import worst_case
    from medrobust.evaluation import Chunked, pass_images
    from medrobust.models import XrayNet, fold_batchnorm

    try:
        from medrobust.attacks import worst_case_radii
    except ImportError:  # the package before the nested radii
        worst_case_radii = None
    base = fold_batchnorm(model) if isinstance(model, XrayNet) else model
    chunk = pass_images(size)
    radii = [scale_eps(e, norm="l2", side=size) for e in EvalConfig.eps]
    n, k = x.shape[0], len(radii)

    def batched(m):
        es = torch.tensor(radii).repeat_interleave(n)
        wc = worst_case(m, x.repeat(k, 1, 1, 1), y.repeat(k), eps=es, steps=20,
                        generator=torch.Generator().manual_seed(0))
        return wc.ok.view(k, n).sum(1).tolist()

    def nested(m):
        cases = worst_case_radii(m, x, y, radii=radii, steps=20, generator=torch.Generator().manual_seed(0))
        return [int(c.ok.sum()) for c in cases]

    jobs = {"radii in one batch, no pass limit (before)": lambda: batched(base),
            f"radii in one batch, {chunk} images per pass": lambda: batched(Chunked(base, size=chunk))}
    if worst_case_radii is not None:
        jobs[f"nested radii, {chunk} images per pass (now)"] = lambda: nested(Chunked(base, size=chunk))
    times: dict[str, list[float]] = {j: [] for j in jobs}
    accs: dict[str, list[int]] = {}
    names = list(jobs)
    for r in range(rounds):
        for j in names[r % len(names):] + names[:r % len(names)]:  # rotated order each round
            t0 = time.perf_counter()
            accs[j] = jobs[j]()
            times[j].append(time.perf_counter() - t0)
    ref = statistics.median(times[names[0]])
    print(f"  levers (attack stage only, {n} images x {k} radii, {rounds} round(s), rotated):")
    for j in names:
        med = statistics.median(times[j])
        print(f"    {j:48s} {med:7.1f} s  ({ref / med:4.2f}x faster than before)  worst-case correct per eps {accs[j]}")


# ---- report ------------------------------------------------------------------------------------------------------


def report(result: dict, meter: Meter, *, n: int, total: int, wall: float) -> float:
    t = result["timing"]
    scale = total / n
    attack = t.get("pgd_s", 0.0)
    fwd = meter.stats
    counted = t.get("clean_s", 0.0) + t.get("corruption_s", 0.0)
    rows = [("clean forward", t.get("clean_s")),
            ("attacks (PGD + APGD, 5 radii)", attack),
            ("  paper suite (30 levels)", t.get("paper_s")),
            ("  clinical suite (45 levels)", t.get("clinical_s")),
            ("corruption suites", t.get("corruption_s")),
            ("metrics + bootstrap CIs", t.get("summary_s")),
            ("evaluate_model total", t["total_s"])]
    print(f"  {'stage':34s} {'s (measured)':>12s} {'s / image':>10s} {f'min for {total}':>12s}")
    for name, s in rows:
        if s is None:
            continue
        print(f"  {name:34s} {s:12.1f} {s / n:10.3f} {s * scale / 60:12.1f}")
    print(f"  passes (images through the model, s, ms per image):")
    grad_s = fwd.get("backward (input grad)", [0.0, 0])[0]
    for key in ("fp32 fwd", "bf16 fwd", "bf16 fwd+graph", "fp32 fwd+graph"):
        if key in fwd:
            s, k = fwd[key]
            print(f"    {key:22s} {k:8d} images {s:8.1f} s {1000 * s / max(k, 1):7.2f} ms/image")
    print(f"    {'backward (input grad)':22s} {'':8s}        {grad_s:8.1f} s")
    fp32_fwd = fwd.get("fp32 fwd", [0.0, 0])[0]
    in_attack_fp32 = max(fp32_fwd - counted, 0.0)
    graph = sum(fwd.get(k, [0.0, 0])[0] for k in ("bf16 fwd+graph", "fp32 fwd+graph", "bf16 fwd"))
    other = attack - in_attack_fp32 - graph - grad_s
    print(f"  attack stage split: iterations' forward {graph:.1f} s, backward {grad_s:.1f} s, fp32 verdict forwards "
          f"{in_attack_fp32:.1f} s, other {other:.1f} s (of {attack:.1f} s)")
    print(f"  extrapolated linearly to {total} images: {t['total_s'] * scale / 60:.1f} min "
          f"(measured {t['total_s']:.1f} s on {n}; wall incl. loading {wall:.1f} s)")
    return t["total_s"] * scale


def main() -> int:
    args = parse()
    device = C.setup(args)
    if device.type != "cpu":
        print("bench_eval_arch measures the CPU; pass --device cpu (or run it on a machine without a GPU).")
    data = args.data or [str(p) for p in DEFAULT_DATA]
    if not all(Path(d).exists() for d in data):
        print(f"bench_eval_arch needs the real data ({', '.join(map(str, data))}); pass --data DIR ...")
        return 2
    weights = dict(w.split("=", 1) for w in args.weights)
    C.print_header("evaluate cost by architecture", device)
    print(f"CPU kind: {cpu_kind()}")
    print(f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    cfg = EvalConfig() if args.batch_size is None else EvalConfig(batch_size=args.batch_size)
    print(f"settings: evaluate's defaults: eps {cfg.eps} at 224 px, {cfg.pgd_steps} steps, PGD starts {cfg.restarts}, "
          f"APGD runs {cfg.apgd_restarts}, attacks {'+'.join(cfg.attacks)}, suites {'+'.join(cfg.suites)}, "
          f"n_boot {cfg.n_boot}, batch {cfg.batch_size}, bf16 attack iterations where native")
    summary = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_arch_") as tmp:
        folder = Path(tmp)
        for arch in args.archs.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                print(f"\n== {arch} at {size} px ==")
                model, card, path = imported_model(arch, size, weights=weights.get(arch), in_channels=args.in_channels,
                                                   folder=folder, seed=args.seed)
                part, total_all = subset(data, size, args.n, args.seed)
                total = args.total or total_all
                n = len(part.records)
                what = weights.get(arch) or f"seeded random torchvision weights (seed {args.seed})"
                print(f"model: {arch}, {card['in_channels']} channel(s), {what}")
                print(f"images: a seed-{args.seed} random {n} of the {total_all} labelled images of {', '.join(data)}")
                t0 = time.perf_counter()
                result, meter = run_ours(model, card, part.images, part.labels, keys=[r.key for r in part.records],
                                         pass_images=args.pass_images, config=cfg)
                wall = time.perf_counter() - t0
                print(f"ours: clean accuracy {result['clean']['accuracy']:.3f}; worst case per eps "
                      f"{[round(r['accuracy'], 3) for r in result['rows'] if r['suite'] == 'attack']}; "
                      f"images per pass {result['timing'].get('pass_images', 'unlimited')}")
                est = report(result, meter, n=n, total=total, wall=wall)
                row = {"arch": arch, "size": size, "n": n, "ours_s": result["timing"]["total_s"], "est_min": est / 60,
                       "attack_s": result["timing"]["pgd_s"]}
                if args.peer != "none":
                    k = min(args.peer_n or n, n)
                    x = part.images[:k].float() / 255
                    y = part.labels[:k].long()
                    peer_s, correct = run_peer(model, x, y, size=size, which=args.peer)
                    ours_correct = [round(r["accuracy"] * n) for r in result["rows"] if r["suite"] == "attack"]
                    ratio = (peer_s / k) / (result["timing"]["pgd_s"] / n)
                    print(f"peer on {k} images: {peer_s:.1f} s = {peer_s / k:.2f} s/image; ours (attack stage, "
                          f"PGD + APGD) {result['timing']['pgd_s'] / n:.2f} s/image; peer / ours = {ratio:.2f}x")
                    for name, c in correct.items():
                        print(f"  {name} correct per eps (of {k}): {c}")
                    print(f"  ours worst case correct per eps (of {n}): {ours_correct}"
                          + ("" if k < n else f"; at or below the peer everywhere: "
                             f"{all(o <= min(c[i] for c in correct.values()) for i, o in enumerate(ours_correct))}"))
                    row["peer_ratio"] = ratio
                if args.levers:
                    run_levers(model, part.images.float() / 255, part.labels.long(), size=size, rounds=args.rounds or 1)
                if args.cli:
                    sub = folder / f"cli-{arch}-{size}"
                    sub.mkdir()
                    manifest = write_manifest(part, sub)
                    cmd = [sys.executable, "-m", "medrobust", "evaluate", str(path), "--test-manifest", str(manifest),
                           "--out", str(sub / "res"), "--no-progress"]
                    t0 = time.perf_counter()
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    cli_s = time.perf_counter() - t0
                    print(f"cli: {' '.join(cmd[1:])}: exit {proc.returncode}, {cli_s:.1f} s wall "
                          f"= {cli_s * total / n / 60:.1f} min for {total} (linear)")
                    if proc.returncode:
                        print("  " + proc.stderr.strip().replace("\n", "\n  ")[-2000:])
                    row["cli_s"] = cli_s
                summary.append(row)
    print("\n== summary ==")
    for r in summary:
        extra = f", peer/ours attack {r['peer_ratio']:.2f}x" if "peer_ratio" in r else ""
        print(f"{r['arch']:12s} {r['size']:4d} px: {r['ours_s']:.1f} s on {r['n']} images -> {r['est_min']:.1f} min "
              f"for {args.total or 'all'} images (linear){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
