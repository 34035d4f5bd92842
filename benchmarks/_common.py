"""Shared helpers for the benchmark scripts (not part of the package, not run by the test suite).

Every benchmark runs ours and the peer in the same process, interleaved (ours, peer, ours, peer, ...),
so that a background load slows both alike; it reports the median time of each and the median of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

import torch
from torch import nn

from medrobust.attacks import cpu_bf16_is_fast


# ---- command line ----------------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller workload (fewer images / levels / rounds)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice, usually the core count)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (ours, peer) x rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    return p


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", metavar="DIR",
                   help="data folder(s) in the upstream layout (the checkpoint's split), or one test manifest written "
                        "by scripts/export_test_set.py (all its images): use real test images "
                        "instead of synthetic ones")


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


# ---- machine ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_simd() -> list[str]:
    """The SIMD features of this CPU that decide the arithmetic's speed (avx2, avx512f, avx512_bf16, amx_bf16)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def machine_line(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    try:
        load = "load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = "load unknown"
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), native CPU bf16: {cpu_bf16_is_fast()}, {gpu}; {load}")


def print_header(title: str, device: torch.device) -> None:
    print(f"== {title} ==")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {machine_line(device)}")
    print(f"command: python {' '.join(sys.argv)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, *, n: int = 2048, reps: int = 3) -> float:
    """Best-of-``reps`` FLOP/s of an n^3 matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def relevant_peak_dtype(device: torch.device) -> torch.dtype:
    """The precision our pipeline computes in: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_is_fast()):
        return torch.bfloat16
    return torch.float32


def bf16_peak_size(device: torch.device) -> int:
    # Emulated bf16 matmul on an AVX2 CPU ran at ~0.1 GFLOP/s here: a 2048^3 one takes minutes.
    return 2048 if relevant_peak_dtype(device) == torch.bfloat16 else 512


# ---- models and images -----------------------------------------------------------------------------------


def load_model(checkpoint: str | None, device: torch.device, *, seed: int = 0):
    """(model in eval mode, card or None, description)."""
    from medrobust.checkpoints import load_checkpoint
    from medrobust.models import build_model

    if checkpoint:
        model, card = load_checkpoint(checkpoint, device=device)
        desc = f"checkpoint {checkpoint} ({card.get('method')}, {card.get('image_size')} px)"
        return model.eval(), card, desc
    torch.manual_seed(seed)
    model = build_model().to(device).eval()
    return model, None, "RANDOMLY INITIALISED medrobust ResNet-18 (no --checkpoint given)"


def card_size(card: dict | None, default: int = 64) -> int:
    if not card:
        return default
    return int(card.get("image_size") or card.get("config", {}).get("image_size") or default)


def synthetic_xrays(n: int, size: int, *, seed: int = 0, positive_rate: float = 0.85) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured chest-X-ray-like images in [0, 1]: body, two dark lungs, ribs, a bright mediastinum,
    smooth and fine noise; class 1 images get a few bright "opacities" in the lungs."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    yy, xx = yy.expand(n, size, size), xx.expand(n, size, size)
    labels = (torch.rand(n, generator=g) < positive_rate).long()
    cx, cy = u(n, 1, 1, lo=-0.08, hi=0.08), u(n, 1, 1, lo=-0.08, hi=0.08)
    sx, sy = u(n, 1, 1, lo=0.85, hi=1.15), u(n, 1, 1, lo=0.85, hi=1.15)
    X, Y = (xx - cx) / sx, (yy - cy) / sy
    body = torch.sigmoid((0.9 - (X**2 / 0.95 + Y**2 / 1.2)) * 8)
    img = 0.15 + 0.55 * body
    lungs = torch.zeros_like(img)
    for side in (-1, 1):
        lungs = lungs + torch.sigmoid((1 - ((X - side * 0.42) ** 2 / 0.09 + (Y + 0.05) ** 2 / 0.33)) * 6)
    img = img - 0.35 * lungs
    ribs = 0.5 + 0.5 * torch.sin(Y * u(n, 1, 1, lo=14, hi=20) + u(n, 1, 1, hi=6.28))
    img = img + 0.06 * ribs * lungs
    img = img + 0.25 * torch.exp(-(X**2) / 0.02) * (Y > -0.6).float()  # mediastinum / spine
    opac = torch.zeros_like(img)
    for _ in range(4):
        ox = torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, -0.42, 0.42) + u(n, 1, 1, lo=-0.15, hi=0.15)
        oy = u(n, 1, 1, lo=-0.4, hi=0.4)
        r = u(n, 1, 1, lo=0.01, hi=0.04)
        opac = opac + u(n, 1, 1, lo=0.1, hi=0.3) * torch.exp(-((X - ox) ** 2 + (Y - oy) ** 2) / r)
    img = img + opac * lungs * labels.view(-1, 1, 1).float()
    coarse = torch.randn(n, 1, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    img = img * u(n, 1, 1, lo=0.85, hi=1.15) + 0.03 * smooth + 0.015 * torch.randn(n, size, size, generator=g)
    return img.clamp(0, 1).unsqueeze(1).contiguous(), labels


def test_images(data: list[str] | None, size: int, card: dict | None, n: int | None, *, seed: int = 0):
    """(images float [0, 1], labels, description): the checkpoint's test patients, or synthetic images."""
    if not data:
        n = n or 117
        x, y = synthetic_xrays(n, size, seed=seed)
        return x, y, f"{n} SYNTHETIC structured images at {size} px (no --data given; {int(y.sum())} of class 1)"
    from medrobust.data import load_dataset, split_by_patient

    if len(data) == 1 and str(data[0]).endswith(".csv"):  # a test set of its own (scripts/export_test_set.py)
        part = manifest_test_set(Path(data[0]), size, card)
        what = f"test images of the manifest {data[0]}"
    else:
        ds = load_dataset([Path(d) for d in data], image_size=size)
        info = (card or {}).get("split", {})
        split = split_by_patient(ds.records, seed=int(info.get("seed", 0)),
                                 fractions=tuple(info.get("fractions", (0.7, 0.1, 0.2))))
        part = ds.subset(split.images["test"])
        what = "real test images"
    x, y = part.float_images(), part.labels
    if n is not None and n < x.shape[0]:  # a seeded random subset: the split's order groups the classes
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[idx], y[idx]
    return x.contiguous(), y, f"{x.shape[0]} {what} at {size} px ({int(y.sum())} of class 1)"


def manifest_test_set(csv_path: Path, size: int, card: dict | None):
    """A test set exported for a checkpoint (its manifest.json must name this checkpoint's weights or split)."""
    import json

    from medrobust.checkpoints import classes_of
    from medrobust.data import load_dataset

    meta_path = csv_path.with_suffix(".json")
    if card and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        split = (card.get("split") or {}).get("hash")
        if meta.get("checkpoint_sha256") != card.get("sha256") and (not split or meta.get("split_hash") != split):
            raise SystemExit(f"{csv_path} holds the test set of another model (split {meta.get('split_hash')}, "
                             f"this model's is {split}); export one for this model with scripts/export_test_set.py.")
    return load_dataset([csv_path], image_size=size, classes=classes_of(card) if card else None)


class PassCounter(nn.Module):
    """Wraps a model and counts the images that go through its forward and its backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.fwd = 0
        self.bwd = 0
        self.train(model.training)  # a fresh Module is in train mode; eval_mode() would restore that

    def reset(self) -> None:
        self.fwd = self.bwd = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.fwd += x.shape[0]
        if out.requires_grad:
            n = x.shape[0]

            def hook(grad, _n=n):
                self.bwd += _n

            out.register_hook(hook)
        return out


def flops_per_image(model: nn.Module, size: int, device: torch.device, *, batch: int = 8) -> tuple[float, float]:
    """(forward FLOPs, input-gradient backward FLOPs) per image, as PGD runs them (fp32, FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    fwd = fc.get_total_flops() / batch
    # autograd.grad w.r.t. the input computes no weight gradients; FlopCounterMode does not support
    # autograd.grad, so freeze the weights and call backward(), which runs the same kernels.
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        xa = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as fc:
            torch.nn.functional.cross_entropy(model(xa), y, reduction="sum").backward()
        both = fc.get_total_flops() / batch
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was)
    return fwd, both - fwd


def train_step_flops(model: nn.Module, size: int, device: torch.device, *, batch: int = 8) -> float:
    """Forward + full backward (weights and input) FLOPs per image."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / batch


# ---- interleaved timing ----------------------------------------------------------------------------------


class Interleaved:
    """Run several named workloads in turn, round after round; keep every time and the last result."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {}
        self.results: dict[str, Any] = {}

    def run(self, jobs: dict[str, Callable[[], Any]], rounds: int, *, verbose: bool = True,
            rotate: bool = False) -> None:
        """``rotate``: start round r with job r (mod len), so no job always runs first."""
        for r in range(rounds):
            order = list(jobs.items())
            if rotate:
                order = order[r % len(order):] + order[: r % len(order)]
            for name, fn in order:
                sync(self.device)
                t = time.perf_counter()
                out = fn()
                sync(self.device)
                dt = time.perf_counter() - t
                self.times.setdefault(name, []).append(dt)
                self.results[name] = out
                if verbose:
                    print(f"  round {r + 1}/{rounds}: {name:<28s} {dt:8.2f} s", flush=True)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def best(self, name: str) -> float:
        return min(self.times[name])

    def ratio_best(self, slow: str, fast: str) -> float:
        """best(slow) / best(fast): background load only ever adds time, so the minimum is the cleanest."""
        return self.best(slow) / self.best(fast)

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of time(slow) / time(fast), paired round by round."""
        return statistics.median(a / b for a, b in zip(self.times[slow], self.times[fast]))


def fmt_rate(x: float) -> str:
    return f"{x / 1e9:.2f} GFLOP/s"


@contextlib.contextmanager
def num_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
