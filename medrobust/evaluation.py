"""The paper's benchmark on held-out test patients: clean, L2 PGD, three noises, calibration.

Outputs of :func:`evaluate_model` (one per model) are plain dicts, written by :func:`write_results`
as ``<name>.json`` (everything), a long CSV (model, perturbation, severity, metric, value, ci_low,
ci_high) and ``<name>.predictions.csv`` (per-sample clean probabilities).

Attack protocol: L2 PGD, random start, step 2.5·eps/steps, ``steps=20``; eps 1..5 stated at 224 px
and scaled by side/224. A sample counts as broken as soon as any iterate fools the model (the
first fooling example is kept). With ``restarts > 1`` every sample still standing is attacked again
from a fresh random start, and the restart accuracy is reported beside the single-start one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medrobust.choices import CLASS_NAMES, Norm, parse_choice
from medrobust.attacks import autocast_for, pgd_multi_eps, scale_eps
from medrobust.corruptions import SEVERITIES, apply_corruption
from medrobust.metrics import bootstrap_ci, classification_metrics, reliability_bins
from medrobust.models import XrayResNet, fold_batchnorm

NOISES = ("gaussian", "salt_and_pepper", "speckle")
PER_LEVEL_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
RESULT_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """The benchmark's settings; saved with every result."""

    eps: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)  # stated at 224 px for L2
    pgd_steps: int = 20
    norm: str = "l2"
    restarts: int = 1  # extra random starts for the sanity check (5 in the shipped evaluation)
    noises: tuple[str, ...] = NOISES
    severities: tuple[float, ...] = tuple(SEVERITIES)
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 64
    use_autocast: bool = True

    def validate(self) -> "EvalConfig":
        if any(e < 0 for e in self.eps):
            raise ValueError(f"eps must be >= 0, got {self.eps}.")
        if self.pgd_steps < 1:
            raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}.")
        parse_choice(Norm, self.norm)
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}.")
        if any(s < 0 for s in self.severities):
            raise ValueError("severities must be >= 0.")
        return self


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


@torch.no_grad()
def _probs(model, x: torch.Tensor, *, use_autocast: bool) -> torch.Tensor:
    with autocast_for(x.device, use_autocast):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    return torch.softmax(logits.float(), 1)


def _level_row(perturbation: str, severity: float, labels: np.ndarray, probs: np.ndarray, *, n_boot: int, seed: int,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    m = classification_metrics(labels=labels, probs=probs)
    cis = bootstrap_ci(labels=labels, probs=probs, metrics=PER_LEVEL_METRICS, n_boot=n_boot, seed=seed)
    row = {"perturbation": perturbation, "severity": float(severity),
           **{k: m[k] for k in (*PER_LEVEL_METRICS, "majority_fraction", "positive_rate")},
           "ci": {k: list(v) for k, v in cis.items()}}
    row.update(extra or {})
    return row


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _generator(device, *, seed: int, stage: int, batch_index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stage * 10_007 + batch_index)


def _evaluate_batch(model, xb: torch.Tensor, yb: torch.Tensor, *, config: EvalConfig, eps_px: list[float],
                    batch_index: int, timing: dict[str, float]) -> dict[str, Any]:
    """Everything the benchmark needs from one batch: clean, adversarial and noisy probabilities."""
    device = xb.device
    use_ac = config.use_autocast
    out: dict[str, Any] = {"clean": _probs(model, xb, use_autocast=use_ac).cpu().numpy()}
    t0 = time.time()
    advs = pgd_multi_eps(model, xb, yb, eps_list=eps_px, steps=config.pgd_steps, norm=config.norm,
                         generator=_generator(device, seed=config.seed, stage=1, batch_index=batch_index),
                         use_autocast=use_ac)
    out["adv"] = [_probs(model, advs[ep], use_autocast=use_ac).cpu().numpy() for ep in eps_px]
    y_cpu = yb.cpu().numpy()
    restart_ok = [a.argmax(1) == y_cpu for a in out["adv"]]
    for r in range(config.restarts - 1):
        g = _generator(device, seed=config.seed, stage=2 + r, batch_index=batch_index)
        for i, ep in enumerate(eps_px):
            idx = np.flatnonzero(restart_ok[i])
            if idx.size == 0:
                continue
            ti = torch.as_tensor(idx, device=device)
            adv = pgd_multi_eps(model, xb[ti], yb[ti], eps_list=[ep], steps=config.pgd_steps, norm=config.norm,
                                generator=g, use_autocast=use_ac)[ep]
            ok = _probs(model, adv, use_autocast=use_ac).argmax(1).cpu().numpy() == y_cpu[idx]
            restart_ok[i] = restart_ok[i].copy()
            restart_ok[i][idx] = ok
    out["restart_ok"] = restart_ok
    timing["pgd_s"] += time.time() - t0
    t0 = time.time()
    out["noise"] = []
    for ni, noise in enumerate(config.noises):
        per_level = []
        for li, sev in enumerate(config.severities):
            g = _generator(device, seed=config.seed, stage=100 + 10 * ni + li, batch_index=batch_index)
            xc = apply_corruption(xb, name=noise, severity=sev, generator=g)
            per_level.append(_probs(model, xc, use_autocast=use_ac).cpu().numpy())
        out["noise"].append(per_level)
    timing["noise_s"] += time.time() - t0
    return out


def evaluate_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: EvalConfig,
    name: str,
    card: dict[str, Any] | None = None,
    keys: Sequence[str] | None = None,
    split_hash: str | None = None,
    on_progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark for one model on one test set.

    Parameters
    ----------
    model
        Any module mapping (N, 1, H, W) in [0, 1] to two logits; put in eval mode.
    images, labels
        The test set: uint8 (or float in [0, 1]) images and 0/1 labels.
    config
        Benchmark settings (:class:`EvalConfig`).
    """
    config.validate()
    t_start = time.time()
    device = next(model.parameters()).device
    model.eval()
    if isinstance(model, XrayResNet):
        model = fold_batchnorm(model)  # same function, ~1.2x faster passes
    x_all = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    y_all = labels.long()
    y_np = y_all.numpy()
    n = x_all.shape[0]
    if n == 0:
        raise ValueError("The test set is empty.")
    side = int(x_all.shape[-1])
    progress = on_progress or (lambda stage, frac: None)
    eps_px = [scale_eps(e, norm=config.norm, side=side) for e in config.eps]
    # Every batch is seeded from (seed, stage, batch index), so results do not depend on which
    # process handles which batch: a torchrun evaluation equals the single-process one.
    slices = list(_batches(n, config.batch_size))
    rank, world = _rank_world()
    outputs: dict[int, dict[str, Any]] = {}
    timing = {"pgd_s": 0.0, "noise_s": 0.0}
    for bi in range(rank, len(slices), world):
        outputs[bi] = _evaluate_batch(model, x_all[slices[bi]].to(device), y_all[slices[bi]].to(device),
                                      config=config, eps_px=eps_px, batch_index=bi, timing=timing)
        progress("batches", (bi + 1) / len(slices))
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = {k: v for part in gathered for k, v in part.items()}
    order = range(len(slices))
    clean = np.concatenate([outputs[b]["clean"] for b in order])
    clean_m = classification_metrics(labels=y_np, probs=clean)
    clean_ci = bootstrap_ci(labels=y_np, probs=clean, metrics=(*PER_LEVEL_METRICS, "auroc"), n_boot=config.n_boot,
                            seed=config.seed)
    rows = [_level_row("clean", 0.0, y_np, clean, n_boot=config.n_boot, seed=config.seed,
                       extra={"auroc": clean_m["auroc"]})]
    rows[0]["ci"]["auroc"] = list(clean_ci["auroc"])
    degenerate = bool(clean_m["degenerate"])
    correct_single = {e: np.concatenate([outputs[b]["adv"][i].argmax(1) == y_np[slices[b]] for b in order])
                      for i, e in enumerate(config.eps)}
    correct_restart = {e: np.concatenate([outputs[b]["restart_ok"][i] for b in order]) for i, e in enumerate(config.eps)}
    for i, e in enumerate(config.eps):
        extra = {"eps_pixels": eps_px[i], "norm": config.norm, "steps": config.pgd_steps}
        if config.restarts > 1:
            extra["accuracy_restarts"] = float(correct_restart[e].mean())
            extra["restarts"] = config.restarts
        adv = np.concatenate([outputs[b]["adv"][i] for b in order])
        rows.append(_level_row(f"pgd_{config.norm}", e, y_np, adv, n_boot=config.n_boot, seed=config.seed, extra=extra))
    for ni, noise in enumerate(config.noises):
        for li, sev in enumerate(config.severities):
            probs = np.concatenate([outputs[b]["noise"][ni][li] for b in order])
            rows.append(_level_row(noise, sev, y_np, probs, n_boot=config.n_boot, seed=config.seed))
    pgd_seconds, noise_seconds = timing["pgd_s"], timing["noise_s"]
    # ---- summaries and sanity ----------------------------------------------------------------
    summary: dict[str, Any] = {"clean": {k: clean_m[k] for k in (*PER_LEVEL_METRICS, "auroc")}}
    for pert in (f"pgd_{config.norm}", *config.noises):
        sel = [r for r in rows if r["perturbation"] == pert]
        summary[pert] = {k: float(np.mean([r[k] for r in sel])) for k in PER_LEVEL_METRICS}
    pgd_rows = [r for r in rows if r["perturbation"] == f"pgd_{config.norm}"]
    accs = [clean_m["accuracy"]] + [r["accuracy"] for r in pgd_rows]
    sanity = {
        "eps0_equals_clean": True,  # eps = 0 returns the input unchanged (tested in tests/test_attacks.py)
        "monotone_in_eps": bool(all(b <= a + 1e-12 for a, b in zip(accs, accs[1:]))),
        "restart_gap": {str(e): float(correct_single[e].mean() - correct_restart[e].mean()) for e in config.eps}
        if config.restarts > 1 else {},
    }
    if config.restarts > 1:
        sanity["restart_gap_ok"] = bool(max(sanity["restart_gap"].values()) <= 0.02)
    calibration = {k: clean_m[k] for k in ("rmsce", "rmsce_plugin", "ece", "entropy", "nll", "brier")}
    card = card or {}
    return {
        "result_version": RESULT_VERSION,
        "name": name,
        "method": card.get("method", "unknown"),
        "image_size": side,
        "n_test": n,
        "n_per_class": {CLASS_NAMES[c]: int((y_np == c).sum()) for c in range(len(CLASS_NAMES))},
        "degenerate": degenerate,
        "majority_fraction": clean_m["majority_fraction"],
        "params": {**asdict(config), "eps_pixels": eps_px,
                   "eps_note": f"L2 budgets stated at 224 px, scaled by {side}/224" if config.norm == "l2" else "L-inf per pixel"},
        "split_hash": split_hash or card.get("split", {}).get("hash"),
        "model_sha256": card.get("sha256"),
        "checkpoint_card": {k: card.get(k) for k in ("name", "method", "epochs_done", "selected_epoch", "collapsed",
                                                       "train_seconds", "device") if k in card},
        "clean": {**clean_m, "ci": {k: list(v) for k, v in clean_ci.items()}},
        "calibration": calibration,
        "calibration_note": "rmsce = Kumar et al. debiased L2 CE (15 equal-mass bins, clipped at 0); rmsce_plugin = the "
                            "same without debiasing; entropy = mean per-sample predictive entropy in nats (<= ln 2).",
        "reliability": reliability_bins(labels=y_np, probs=clean, n_bins=15),
        "rows": rows,
        "summary": summary,
        "sanity": sanity,
        "predictions": {"keys": list(keys) if keys is not None else list(range(n)), "labels": y_np.tolist(),
                        "p_covid": clean[:, 1].tolist()},
        "timing": {"total_s": time.time() - t_start, "pgd_s": pgd_seconds, "noise_s": noise_seconds},
    }


def long_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The long-format table: one line per (perturbation, severity, metric)."""
    out = []
    for r in result["rows"]:
        for metric in (*PER_LEVEL_METRICS, "auroc", "accuracy_restarts"):
            if metric not in r:
                continue
            lo, hi = r["ci"].get(metric, (math.nan, math.nan))
            out.append({"model": result["name"], "method": result["method"], "perturbation": r["perturbation"],
                        "severity": r["severity"], "metric": metric, "value": r[metric], "ci_low": lo, "ci_high": hi})
    for k, v in result["calibration"].items():
        out.append({"model": result["name"], "method": result["method"], "perturbation": "clean", "severity": 0.0,
                    "metric": k, "value": v, "ci_low": math.nan, "ci_high": math.nan})
    return out


def write_results(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``<name>.json``, ``<name>.csv`` (long format) and ``<name>.predictions.csv``."""
    from medrobust.fileio import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["name"]
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.csv", out_dir / f"{name}.predictions.csv"]
    atomic_write_text(paths[0], json.dumps(result, indent=1, default=float))
    rows = long_rows(result)
    lines = [",".join(rows[0].keys())] if rows else []
    for r in rows:
        lines.append(",".join(_csv_cell(v) for v in r.values()))
    atomic_write_text(paths[1], "\n".join(lines) + "\n")
    pred = result["predictions"]
    plines = ["key,label,p_covid"] + [f"{_csv_cell(k)},{l},{p:.6f}" for k, l, p in zip(pred["keys"], pred["labels"], pred["p_covid"])]
    atomic_write_text(paths[2], "\n".join(plines) + "\n")
    return paths


def _csv_cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    s = str(v)
    # RFC 4180: quote cells holding a separator, quote or line break, and double embedded quotes.
    if any(c in s for c in ',"\r\n'):
        return '"' + s.replace('"', '""') + '"'
    return s


def load_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read result JSONs (files, or folders whose ``*.json`` results are all read)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"No result file or folder at {p}.")
    results = []
    for f in files:
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f} is not valid JSON ({exc}).") from None
        if isinstance(d, dict) and "rows" in d and "summary" in d:
            results.append(d)
    return results
