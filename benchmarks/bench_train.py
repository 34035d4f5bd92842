"""Training throughput per method: the real loss functions of medrobust.methods, ours vs a naive step.

    python benchmarks/bench_train.py [--quick] [--sizes 128,64] [--methods standard,robust,augmix,robustaugmix]

Ours: what medrobust.training does per batch: channels_last model and inputs, LossTools built as in
training.py (autocast_for(device), L2 PGD-7 at eps 4 @224 px via medrobust.attacks.pgd, AugMix), SGD with
momentum and weight decay, random flips. Naive: the same losses on a contiguous fp32 model, with the
adversarial view from torchattacks.PGDL2(model, eps, alpha=2.5*eps/7, steps=7, random_start=True). After a
warm-up step (1 PGD step), --steps timed steps (default 3; --quick 1), interleaved ours/naive. Prints
images/s, the extrapolated seconds per epoch for --epoch-images (400) training images, our achieved
FLOP/s (FlopCounterMode) against the fp32 matmul peak, and the ratio.
"""

from __future__ import annotations

import _common as C
import torch

from medrobust.attacks import autocast_for, pgd, scale_eps
from medrobust.augmix import augmix
from medrobust.methods import LossTools, get_method
from medrobust.models import build_model
from medrobust.training import PRESETS, TrainConfig, class_weights


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="128,64", help="image sides (128 = preset cpu, 64 = cpu-small)")
    p.add_argument("--methods", default="standard,robust,augmix,robustaugmix")
    p.add_argument("--steps", type=int, help="timed steps per method and size (default 3; --quick 1)")
    p.add_argument("--epoch-images", type=int, default=400, help="training images per epoch for the s/epoch column")
    p.add_argument("--no-peer", action="store_true", help="time ours only")
    return p.parse_args()


class Trainer:
    def __init__(self, method: str, size: int, device, *, naive: bool, seed: int, cfg: TrainConfig) -> None:
        torch.manual_seed(seed)
        self.method, self.cfg, self.device, self.naive = get_method(method), cfg, device, naive
        fmt = torch.contiguous_format if naive else torch.channels_last
        self.fmt = fmt
        self.model = build_model().to(device).to(memory_format=fmt).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.eps_px = scale_eps(cfg.eps, norm=cfg.norm, side=size)
        self.pgd_steps = cfg.pgd_steps

    def adversarial(self, x, y):
        if self.naive:
            import torchattacks

            atk = torchattacks.PGDL2(self.model, eps=self.eps_px, alpha=2.5 * self.eps_px / self.pgd_steps,
                                     steps=self.pgd_steps, random_start=True)
            return atk(x, y)
        return pgd(self.model, x, y, eps=self.eps_px, steps=self.pgd_steps, norm=self.cfg.norm, generator=self.gen)

    def step(self, images: torch.Tensor, labels: torch.Tensor, cw: torch.Tensor, *, pgd_steps: int | None = None) -> float:
        cfg = self.cfg
        self.pgd_steps = pgd_steps or cfg.pgd_steps
        tools = LossTools(autocast=lambda: autocast_for(self.device), adversarial=self.adversarial,
                          augmix=lambda x: augmix(x, ops=cfg.augmix_ops, width=cfg.augmix_width, depth=cfg.augmix_depth,
                                                  alpha=cfg.augmix_alpha, generator=self.gen),
                          jsd_weight=cfg.jsd_weight)
        self.model.train()
        x = images.float().div_(255.0).contiguous(memory_format=self.fmt)
        flip = torch.rand(x.shape[0], generator=self.gen, device=self.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.naive:
            x = x.contiguous()
        out = self.method.loss(self.model, x, labels, class_weight=cw, tools=tools)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return float(out.loss.detach())


def step_flops(method: str, size: int, device, cfg: TrainConfig) -> float:
    """FLOPs per training image of one step of ``method``."""
    m = build_model().to(device)
    train_f = C.train_step_flops(m, size, device)
    fwd_f, bwd_f = C.flops_per_image(m, size, device)
    meth = get_method(method)
    views = 3 if meth.uses_augmix else 1
    return views * train_f + (cfg.pgd_steps * (fwd_f + bwd_f) if meth.uses_pgd else 0.0)


def main() -> None:
    args = parse()
    device = C.setup(args)
    steps = args.steps or (1 if args.quick else 3)
    C.print_header("bench_train: training throughput per method, ours vs naive", device)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = TrainConfig()
    print(f"batch {base.batch_size}, SGD lr {base.lr} momentum {base.momentum} wd {base.weight_decay}, L2 PGD-{base.pgd_steps} "
          f"at eps {base.eps} (@224 px), AugMix ops {base.augmix_ops}; {steps} timed step(s) after a warm-up step; "
          f"synthetic images")
    peaks: list[float] = []
    rows = []
    for size in sizes:
        preset = {128: "cpu", 64: "cpu-small", 224: "paper"}.get(size, "custom")
        cfg = TrainConfig(image_size=size, **{k: v for k, v in PRESETS.get(preset, {}).items() if k not in ("image_size", "epochs")})
        x, y = C.synthetic_xrays(cfg.batch_size, size, seed=args.seed)
        images = (x * 255).round().to(torch.uint8).to(device)
        labels = y.to(device)
        cw = class_weights(torch.tensor([0] * 12 + [1] * 88)).to(device)  # the data's ~12 % non-COVID
        for method in methods:
            ours = Trainer(method, size, device, naive=False, seed=args.seed, cfg=cfg)
            peer = None if args.no_peer else Trainer(method, size, device, naive=True, seed=args.seed, cfg=cfg)
            ours.step(images, labels, cw, pgd_steps=1)
            if peer:
                peer.step(images, labels, cw, pgd_steps=1)
            jobs = {f"ours {method} {size}px": lambda: ours.step(images, labels, cw)}
            if peer:
                jobs[f"naive {method} {size}px"] = lambda: peer.step(images, labels, cw)
            block_peaks: list[float] = []
            jobs["fp32 matmul 2048^3"] = lambda: block_peaks.append(C.matmul_peak(torch.float32, device))
            bench = C.Interleaved(device)
            bench.run(jobs, steps)
            t_o = bench.median(f"ours {method} {size}px")
            t_p = bench.median(f"naive {method} {size}px") if peer else float("nan")
            ratio = bench.ratio(f"naive {method} {size}px", f"ours {method} {size}px") if peer else float("nan")
            ratio_b = bench.ratio_best(f"naive {method} {size}px", f"ours {method} {size}px") if peer else float("nan")
            fl = step_flops(method, size, device, cfg) * cfg.batch_size
            peaks += block_peaks
            rows.append((method, size, preset, cfg.batch_size / t_o, args.epoch_images * t_o / cfg.batch_size,
                         cfg.batch_size / t_p, args.epoch_images * t_p / cfg.batch_size, ratio, fl / t_o,
                         max(block_peaks), ratio_b))
    print(f"\n{'method':<13s} {'size':>4s} {'preset':<9s} {'ours img/s':>10s} {'ours s/epoch':>12s} "
          f"{'naive img/s':>11s} {'naive s/epoch':>13s} {'ratio':>6s} {'best-of':>7s} {'ours GFLOP/s':>12s} {'% fp32 peak':>11s}")
    for method, size, preset, ips, spe, ips_p, spe_p, ratio, rate, peak, ratio_b in rows:
        print(f"{method:<13s} {size:>4d} {preset:<9s} {ips:10.2f} {spe:12.1f} {ips_p:11.2f} {spe_p:13.1f} "
              f"{ratio:5.2f}x {ratio_b:6.2f}x {rate / 1e9:12.2f} {100 * rate / peak:10.0f}%")
    print(f"(s/epoch extrapolated to {args.epoch_images} training images; ratio = naive time / ours, median of paired steps; best-of = best naive step / best ours step; "
          f"% fp32 peak against the best 2048^3 matmul timed between that row's steps)")
    print("fp32 matmul peaks measured: " + ", ".join(f"{p / 1e9:.1f}" for p in peaks) + " GFLOP/s")


if __name__ == "__main__":
    main()
