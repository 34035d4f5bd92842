"""Stress-test latency of the dashboard's package code (what one slider move costs), p50/p95.

    python benchmarks/dashboard_latency.py [CHECKPOINT_DIR] [--repeats N] [--threads T]

Times, on one image, for the four models of CHECKPOINT_DIR (default $MEDROBUST_CHECKPOINTS, else
checkpoints/; with no models there, four random-init ResNet-18s at 64 px are used):

* noise change -> four predictions (``run_stress`` without Grad-CAM): target < 150 ms;
* noise change -> four full cards (predictions + Grad-CAM on the perturbed input);
* PGD-20 (L2, eps 1 at 224 px) on one image for the four models, each attacked on its own: target < 3 s;
* one bisection for the smallest flipping eps (one model);
* ``--sessions N`` concurrent sessions (threads), each asking for a noise change -> four predictions at the same
  moment, with the cross-session batching of forwards (``MEDROBUST_BATCHING``) on and off, alternating rounds.

The dashboard runs torch with ``MEDROBUST_TORCH_THREADS`` intra-op threads (default 1); so does this
script unless --threads says otherwise. Figures depend on what else the machine is doing: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _xray(size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.32) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2)) + \
        np.exp(-(((xx - 0.68) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    return np.clip(0.75 - 0.45 * lungs + 0.03 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


def _random_set(folder: Path) -> Path:
    from medrobust.checkpoints import save_checkpoint
    from medrobust.models import build_model

    for i, m in enumerate(("standard", "robust", "augmix", "robustaugmix")):
        torch.manual_seed(i)
        save_checkpoint(folder / f"{m}.safetensors", build_model().eval(), {"name": m, "method": m, "image_size": 64},
                        dtype=torch.float16)
    return folder


def _timeit(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (process) seconds per call, after one warm-up call."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def _report(name: str, times: tuple[list[float], list[float]], target: float | None = None) -> None:
    """p50/p95 wall time, and the median CPU time: with one torch thread, CPU time is what the wall time
    would be on an otherwise idle core, so a busy machine shows wall >> CPU."""
    wall, cpu = times
    p50, p95 = statistics.median(wall), float(np.percentile(wall, 95))
    c50 = statistics.median(cpu)
    flag = "" if target is None else (f"  (target {target * 1000:.0f} ms: wall p95 {'OK' if p95 < target else 'over'}, "
                                      f"CPU {'OK' if c50 < target else 'over'})")
    print(f"{name:<46} wall p50 {p50 * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms  CPU p50 {c50 * 1000:8.1f} ms"
          f"  (n={len(wall)}){flag}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="?", default=os.environ.get("MEDROBUST_CHECKPOINTS", "checkpoints"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--pgd-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MEDROBUST_TORCH_THREADS", "1")))
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions for the batching comparison (0: skip)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the batching comparison, each setting")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from medrobust.dashboard import clean_analysis, flip_search, modelset, perturbation, stress_run

    folder = Path(args.checkpoints)
    tmp = None
    if not list(folder.glob("*.safetensors")):
        tmp = tempfile.TemporaryDirectory()
        folder = _random_set(Path(tmp.name))
        print(f"(no models in {args.checkpoints}: using four random-init ResNet-18s at 64 px)")
    ms = modelset.load_model_set(folder)
    ok = ms.ok_models
    print(f"models: {', '.join(f'{m.name} ({m.image_size} px)' for m in ok)}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if len(ok) == 0:
        print("no loadable model")
        return 1
    px = _xray()
    clean = clean_analysis.analyse_clean(ms, px, cam_layer="layer3")
    sev = iter(np.linspace(0.05, 1.0, 10_000))

    _report("noise change -> 4 predictions", _timeit(
        lambda: stress_run.run_stress(ms, clean, perturbation.Perturbation(kind="gaussian", severity=float(next(sev))),
                                  with_cam=False), args.repeats), target=0.150)
    _report("noise change -> 4 predictions + Grad-CAMs", _timeit(
        lambda: stress_run.run_stress(ms, clean, perturbation.Perturbation(kind="speckle", severity=float(next(sev)))),
        args.repeats))
    _report("new image -> clean analysis (4 models, CAM)", _timeit(
        lambda: clean_analysis.analyse_clean(ms, px, cam_layer="layer3"), max(3, args.repeats // 4)))
    seeds = iter(range(10_000))
    _report(f"PGD-20 x {len(ok)} models (own attack)", _timeit(
        lambda: stress_run.run_stress(ms, clean, perturbation.Perturbation(kind="pgd", eps=1.0, steps=20, seed=next(seeds)),
                                  with_cam=False), args.pgd_repeats), target=3.0)
    _report(f"PGD-20 transfer from one model to {len(ok)}", _timeit(
        lambda: stress_run.run_stress(ms, clean, perturbation.Perturbation(kind="pgd", eps=1.0, steps=20, mode="transfer",
                                                                 source=ok[0].name, seed=next(seeds)), with_cam=False),
        args.pgd_repeats))
    v = clean.views[ok[0].name]
    _report("smallest flipping eps, one model (bisection)", _timeit(
        lambda: flip_search.smallest_flip_eps(ok[0].attack_net, v.x, label=v.pred, steps=20, seed=next(seeds)), 2))
    if args.sessions > 0:
        _concurrent(ms, px, sessions=args.sessions, rounds=args.rounds)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _concurrent(ms, px: np.ndarray, *, sessions: int, rounds: int) -> None:
    """``sessions`` threads released together, each one noise change -> four predictions on its own image; batching
    on and off in alternate rounds. Prints per-request p50/p95 and the wall time of a round."""
    import threading

    from medrobust.dashboard import batching, clean_analysis, perturbation, stress_run

    rng = np.random.default_rng(1)
    cleans = [clean_analysis.analyse_clean(ms, np.clip(px + 0.05 * rng.standard_normal(px.shape), 0, 1).astype(np.float32),
                                           with_cam=False) for _ in range(sessions)]
    figures: dict[str, tuple[list[float], list[float]]] = {"on": ([], []), "off": ([], [])}
    sev = iter(np.linspace(0.05, 1.0, 10_000))
    for r in range(2 * rounds):
        flag = "on" if r % 2 == 0 else "off"
        os.environ["MEDROBUST_BATCHING"] = "1" if flag == "on" else "0"
        start, lat = threading.Barrier(sessions), []

        def one(clean) -> None:
            pert = perturbation.Perturbation(kind="gaussian", severity=float(next(sev)))
            start.wait()
            t = time.perf_counter()
            stress_run.run_stress(ms, clean, pert, with_cam=False)
            lat.append(time.perf_counter() - t)

        threads = [threading.Thread(target=one, args=(c,)) for c in cleans]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        figures[flag][0].extend(lat)
        figures[flag][1].append(time.perf_counter() - t0)
    os.environ.pop("MEDROBUST_BATCHING", None)
    for flag, (lat, walls) in figures.items():
        print(f"{sessions} sessions at once, noise change -> 4 predictions, batching {flag:<3} per request p50 "
              f"{statistics.median(lat) * 1000:7.1f} ms  p95 {np.percentile(lat, 95) * 1000:7.1f} ms; a round "
              f"{statistics.median(walls) * 1000:7.1f} ms (n={len(walls)})")
    sizes = [batching.batcher_for(m.model).stats for m in ms.ok_models]
    print("  batches formed with batching on: " + ", ".join(f"{s.rows} rows in {s.batches} (largest {s.largest})"
                                                              for s in sizes))


if __name__ == "__main__":
    raise SystemExit(main())
