"""The benchmark on held-out test patients: clean, L2 PGD, the paper's noises, a clinically graded
corruption suite, and calibration; single splits and pooled cross-validation alike.

:func:`evaluate_model` runs one model on one test set and keeps every image's fp32 logits under every
condition (:class:`PerSample`); :func:`summarise` turns those into the result (metrics per condition with
patient-level cluster-bootstrap CIs, AUROC everywhere, means, relative robustness, calibration). Pooled
cross-validation (:func:`evaluate_cv`) concatenates the folds' per-sample logits, so every labelled image
is tested once, and summarises them in the same way, with the per-fold spread beside the pooled value.

Written by :func:`write_results`: ``<name>.json`` (everything but per-sample logits), a long CSV
(model, suite, perturbation, severity, metric, value, ci_low, ci_high), ``<name>.predictions.csv``
(clean logits and probabilities at full precision, with patient and fold) and ``<name>.logits.npz``
(every condition's logits), from which every reported number can be recomputed.

Attack protocol (RobustBench's rule): eps 1..5 stated at 224 px and scaled by side/224 (L2); an image
counts as robust only if no attack of the ensemble fools it (:func:`medrobust.attacks.worst_case`):
L2 PGD (step 2.5·eps/steps, ``steps=20``) with ``restarts`` random starts alternating inside the ball
and on its surface, and APGD-CE (Croce & Hein 2020, same steps) with ``apgd_restarts``. A sample is
broken as soon as any iterate fools the model; each attack row keeps the worst case (its logits are
each image's most damaging example) and the attacks' accuracies beside it (``accuracy_by_attack``). By
default APGD attacks only the images PGD left standing (``schedule="sequential"``, AutoAttack's rule:
the same worst case for 5-11 % fewer attack passes on a DenseNet-121), so the row has PGD's own accuracy and
``apgd_after_pgd`` (the worst case); ``schedule="independent"`` measures APGD's own accuracy too.
The radii run from the smallest up (:func:`medrobust.attacks.worst_case_radii`): the balls are nested,
so an example found at a smaller radius is a candidate at every larger one, and an attack does not
attack again, at a larger radius, an image it has already fooled (it stays fooled by that example).
Every attack row, and each attack's own accuracy, is therefore non-increasing in eps.
Attack iterations may run under bf16 autocast where the CPU has native bf16; every success decision
and every counted prediction is an fp32 forward pass (an attack row's logits are those of the fp32
verdict that judged the kept example). The model runs on at most :func:`pass_images` images per pass.
"""

from __future__ import annotations

import io
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medrobust.attacks import ENSEMBLE, cpu_bf16_is_fast, ieee_fp32, scale_eps, worst_case, worst_case_radii
from medrobust.choices import CLASS_NAMES, Norm, Schedule, parse_choice
from medrobust.clinical import CLINICAL, LEVELS, clinical_corrupt
from medrobust.corruptions import SEVERITIES, apply_corruption
from medrobust.fileio import atomic_write_bytes, atomic_write_text
from medrobust.metrics import classification_metrics, confusion_matrix, per_class_recall, reliability_bins
from medrobust.models import XrayNet, inference_copy
from medrobust.stats import cluster_bootstrap_ci, fold_spread

NOISES = ("gaussian", "salt_and_pepper", "speckle")
SUITES = ("paper", "clinical")
#: Metrics reported (with CIs) at every condition.
PER_LEVEL_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc")
#: Metrics whose per-fold spread is reported for cross-validated results.
FOLD_METRICS = ("accuracy", "balanced_accuracy", "auroc")
RESULT_VERSION = 3  # 3: attack rows are the worst case over the ensemble (PGD + APGD)


@dataclass(frozen=True)
class EvalConfig:
    """The benchmark's settings; saved with every result."""

    eps: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)  # stated at 224 px for L2
    pgd_steps: int = 20  # steps of every PGD start and every APGD run
    norm: str = "l2"
    restarts: int = 1  # PGD random starts, alternating inside the ball and on its surface (5 shipped)
    attacks: tuple[str, ...] = ENSEMBLE  # the ensemble: an image is robust only if no member fools it
    apgd_restarts: int = 1
    schedule: str = "sequential"  # APGD on PGD's survivors (AutoAttack's rule); "independent": every attack on every image
    noises: tuple[str, ...] = NOISES
    severities: tuple[float, ...] = tuple(SEVERITIES)
    suites: tuple[str, ...] = SUITES  # "paper": the paper's noises; "clinical": medrobust.clinical's ladders
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 64
    use_autocast: bool = True  # attack iterations only; counted predictions are always fp32

    def validate(self) -> "EvalConfig":
        if any(e < 0 for e in self.eps):
            raise ValueError(f"eps must be >= 0, got {self.eps}.")
        if self.pgd_steps < 1:
            raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}.")
        parse_choice(Norm, self.norm)
        if self.restarts < 1 or self.apgd_restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts} (PGD) and {self.apgd_restarts} (APGD).")
        parse_choice(Schedule, self.schedule)
        unknown_attacks = [a for a in self.attacks if a not in ENSEMBLE]
        if unknown_attacks or not self.attacks:
            raise ValueError(f"attacks must be a non-empty subset of {', '.join(ENSEMBLE)}, got {list(self.attacks)}.")
        if any(s < 0 for s in self.severities):
            raise ValueError("severities must be >= 0.")
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ValueError(f"Unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}.")
        return self


@dataclass(frozen=True)
class Condition:
    """One way of showing the test set to the model: clean, an attack radius, or a corruption level."""

    suite: str  # "clean" | "attack" | "paper" | "clinical"
    perturbation: str  # "clean", "pgd_l2", "gaussian", ..., "clinical/<name>"
    severity: float  # eps (stated at 224 px), noise variance/amount, or clinical level 1..5
    param: float | None = None  # clinical: the corruption's parameter at this level

    @property
    def key(self) -> str:
        return f"{self.perturbation}@{self.severity:g}"


def conditions_for(config: EvalConfig) -> list[Condition]:
    """Every condition of the benchmark, in the order the result lists them."""
    out = [Condition("clean", "clean", 0.0)]
    out += [Condition("attack", f"pgd_{config.norm}", float(e)) for e in config.eps]
    if "paper" in config.suites:
        out += [Condition("paper", n, float(s)) for n in config.noises for s in config.severities]
    if "clinical" in config.suites:
        out += [Condition("clinical", f"clinical/{n}", float(lv), float(CLINICAL[n][lv - 1]))
                for n in CLINICAL for lv in LEVELS]
    return out


@dataclass
class PerSample:
    """Every test image's fp32 logits under every condition: enough to recompute each reported number."""

    keys: list[str]
    labels: np.ndarray  # (N,) int
    groups: np.ndarray  # (N,) patient keys (clusters for the bootstrap)
    folds: np.ndarray  # (N,) int: the test fold of each image, -1 for a single split
    conditions: list[Condition]
    logits: np.ndarray  # (C, N, K) float32; attack conditions hold each image's most damaging example
    attack_ok: np.ndarray  # (A, E, N) bool: still correct after attack ``attack_names[a]`` at eps ``e``
    attack_names: tuple[str, ...] = ("pgd",)

    def probs(self, index: int) -> np.ndarray:
        z = self.logits[index].astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @classmethod
    def concat(cls, parts: Sequence["PerSample"]) -> "PerSample":
        first = parts[0]
        if any([c.key for c in p.conditions] != [c.key for c in first.conditions] for p in parts):
            raise ValueError("Cannot pool results evaluated under different conditions.")
        keys = [k for p in parts for k in p.keys]
        if len(set(keys)) != len(keys):
            raise ValueError("Pooled folds test an image twice; the folds do not partition the data.")
        if any(tuple(p.attack_names) != tuple(first.attack_names) for p in parts):
            raise ValueError("Cannot pool results attacked by different ensembles.")
        return cls(keys=keys, labels=np.concatenate([p.labels for p in parts]),
                   groups=np.concatenate([p.groups for p in parts]), folds=np.concatenate([p.folds for p in parts]),
                   conditions=list(first.conditions), logits=np.concatenate([p.logits for p in parts], axis=1),
                   attack_ok=np.concatenate([p.attack_ok for p in parts], axis=2), attack_names=first.attack_names)

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, keys=np.array(self.keys), labels=self.labels, groups=self.groups.astype(str),
                            folds=self.folds, logits=self.logits, attack_ok=self.attack_ok,
                            attack_names=np.array(list(self.attack_names)),
                            conditions=np.array(json.dumps([asdict(c) for c in self.conditions])))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "PerSample":
        with np.load(path, allow_pickle=False) as z:
            if "attack_ok" in z:
                attack_ok, names = z["attack_ok"], tuple(str(a) for a in z["attack_names"])
            else:  # written before the ensemble (medrobust < 0.3): PGD with restarts only
                attack_ok, names = z["restart_ok"][None], ("pgd",)
            return cls(keys=[str(k) for k in z["keys"]], labels=z["labels"], groups=z["groups"], folds=z["folds"],
                       conditions=[Condition(**c) for c in json.loads(str(z["conditions"]))],
                       logits=z["logits"], attack_ok=attack_ok, attack_names=names)


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


#: Pixels per model pass (32 images at 128 px, 10 at 224 px): see :func:`pass_images`.
PASS_PIXELS = 32 * 128 * 128


def pass_images(side: int, *, pixels: int = PASS_PIXELS) -> int:
    """How many images of ``side`` px one forward (and backward) pass of the model takes at most.

    Measured on 2 cores (Xeon with AMX, torch 2.14.1; benchmarks/README.md, "Evaluation cost by
    architecture"): per image, a DenseNet-121 pass at 128 px costs about twice as much in a batch of
    320 as in a batch of 32 (bf16 forward + input gradient 41 vs 20 ms, fp32 forward 22 vs 14 ms), a
    ResNet-50 1.4x and a ResNet-18 1.2x: large batches of large feature maps fall out of the caches.
    The optimum scales with the pixels of a batch (DenseNet-121: 16-32 images at 128 px, 8-16 at
    224 px), hence one pixel budget for every architecture.

    Examples
    --------
    >>> pass_images(128), pass_images(224), pass_images(64)
    (32, 10, 128)
    """
    return max(1, pixels // (side * side))


class Chunked(torch.nn.Module):
    """``model`` run on at most ``size`` images per pass: the same function, cache-sized batches.

    The outputs are concatenated, so gradients flow to every image as one batch's would. Per-image
    results equal one big batch's to float rounding (oneDNN's per-image result depends on the batch
    size at the 1e-7..1e-5 level; the memory format does not change it).
    """

    def __init__(self, model: torch.nn.Module, *, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        self.inner = model
        self.size = int(size)
        self.train(model.training)  # a fresh Module starts in train mode; eval_mode() restores that mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.size:
            return self.inner(x)
        return torch.cat([self.inner(part) for part in x.split(self.size)])


@torch.no_grad()
def _fp32_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The counted prediction: an IEEE fp32 forward pass (no TF32 on CUDA), whatever the attack iterations used."""
    with ieee_fp32(x.device):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def _logits(model, x: torch.Tensor) -> np.ndarray:
    """:func:`_fp32_forward` as a NumPy array."""
    return _fp32_forward(model, x).cpu().numpy()


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _generator(device, *, seed: int, stage: int, batch_index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stage * 10_007 + batch_index)


def _perturbed(xb: torch.Tensor, cond: Condition, *, config: EvalConfig, stage: int, batch_index: int) -> torch.Tensor:
    g = _generator(xb.device, seed=config.seed, stage=stage, batch_index=batch_index)
    if cond.suite == "paper":
        return apply_corruption(xb, name=cond.perturbation, severity=cond.severity, generator=g)
    return clinical_corrupt(xb, name=cond.perturbation.split("/", 1)[1], level=int(cond.severity), generator=g)


def attack_names(config: EvalConfig) -> tuple[str, ...]:
    """The per-attack verdicts a result keeps: PGD's first start, all PGD starts, APGD (those run); with the
    sequential schedule APGD's is ``apgd_after_pgd`` (what PGD then APGD leave: the worst case)."""
    pgd = "pgd" in config.attacks
    after = pgd and config.schedule == Schedule.SEQUENTIAL.value
    apgd = (("apgd_after_pgd" if after else "apgd",) if "apgd" in config.attacks else ())
    return (("pgd_first", "pgd") if pgd else ()) + apgd


def _evaluate_batch(model, xb: torch.Tensor, yb: torch.Tensor, *, config: EvalConfig, conditions: list[Condition],
                    eps_px: list[float], batch_index: int, timing: dict[str, float]) -> dict[str, Any]:
    """Every condition's fp32 logits for one batch, and which samples each attack leaves standing."""
    device, use_ac = xb.device, config.use_autocast
    t0 = time.time()
    clean = _fp32_forward(model, xb)
    logits: list[np.ndarray] = [clean.cpu().numpy()]
    timing["clean_s"] += time.time() - t0
    t0 = time.time()
    names = attack_names(config)
    attack_ok = np.ones((len(names), len(eps_px), xb.shape[0]), dtype=bool)
    if eps_px:
        # The radii from the smallest up, each attack skipping the images it fooled at a smaller one
        # (nested balls); every example comes with the fp32 logits of the verdict that judged it.
        cases = worst_case_radii(model, xb, yb, radii=eps_px, steps=config.pgd_steps, norm=config.norm,
                                 pgd_restarts=config.restarts, apgd_restarts=config.apgd_restarts,
                                 attacks=config.attacks, use_autocast=use_ac, clean_logits=clean, schedule=config.schedule,
                                 generator=_generator(device, seed=config.seed, stage=1, batch_index=batch_index))
        logits += [wc.logits.cpu().numpy() for wc in cases]
        for a, name in enumerate(names):
            attack_ok[a] = np.stack([wc.ok_by_attack[name].cpu().numpy() for wc in cases])
    timing["pgd_s"] += time.time() - t0
    for ci, cond in enumerate(conditions):
        if cond.suite in ("paper", "clinical"):
            t0 = time.time()
            logits.append(_logits(model, _perturbed(xb, cond, config=config, stage=100 + ci, batch_index=batch_index)))
            timing[f"{cond.suite}_s"] += time.time() - t0
    timing["corruption_s"] = timing["paper_s"] + timing["clinical_s"]
    return {"logits": np.stack(logits), "attack_ok": attack_ok}


def precision_info(device: torch.device | str, *, attack_autocast: bool) -> dict[str, Any]:
    """Which arithmetic produced a result, and on what: recorded with every result."""
    device = torch.device(device)
    bf16 = attack_autocast and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_is_fast()))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"counted_predictions": "fp32 (IEEE: TF32 off on CUDA)" if device.type == "cuda" else "fp32",
            "attack_iterations": "bf16 autocast" if bf16 else "fp32",
            "device": str(device), "cpu": cpu, "cpu_native_bf16": bool(device.type == "cpu" and cpu_bf16_is_fast()),
            "torch": torch.__version__}


def evaluate_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: EvalConfig,
    name: str,
    card: dict[str, Any] | None = None,
    keys: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    fold: int = -1,
    split_hash: str | None = None,
    classes: Sequence[str] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
    max_pass_images: int | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark for one model on one test set.

    Parameters
    ----------
    model
        Any module mapping (N, 1, H, W) in [0, 1] to K >= 2 logits; put in eval mode.
    images, labels
        The test set: uint8 (or float in [0, 1]) images, shape (N, 1, H, W), and labels in 0..K-1, shape (N,).
    config
        Benchmark settings (:class:`EvalConfig`).
    keys, groups
        Per-image identifiers and patient keys (N,); CIs resample patients. Without ``groups`` every
        image counts as its own patient (say so when you report it).
    fold
        The cross-validation fold this test set is (-1 for a single split).
    classes
        The class names, index = label (default: the card's, else the COVID task's two).
    max_pass_images
        The most images one forward/backward pass of the model takes (default :func:`pass_images` of
        the image side); ``config.batch_size`` stays the unit of seeding and of the attack's batches.

    Returns
    -------
    dict
        The result (see :func:`summarise`); ``result["_per_sample"]`` holds the :class:`PerSample` logits.
        ``result["timing"]`` gives the seconds of each stage: clean forward, attacks (``pgd_s``: the whole
        ensemble at every radius), the ``paper`` and ``clinical`` suites (``corruption_s`` = both),
        ``summary_s`` (metrics and bootstrap CIs), ``total_s``, and ``pass_images``.
    """
    config.validate()
    t_start = time.time()
    device = next(model.parameters()).device
    model.eval()
    if isinstance(model, XrayNet):
        model = inference_copy(model)  # same function: BatchNorms folded, weights channels-last
    x_all = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    y_all = labels.long()
    n = x_all.shape[0]
    if n == 0:
        raise ValueError("The test set is empty.")
    side = int(x_all.shape[-1])
    model = Chunked(model, size=pass_images(side) if max_pass_images is None else max_pass_images)
    progress = on_progress or (lambda stage, frac: None)
    eps_px = [scale_eps(e, norm=config.norm, side=side) for e in config.eps]
    conditions = conditions_for(config)
    # Every batch is seeded from (seed, stage, batch index), so results do not depend on which
    # process handles which batch: a torchrun evaluation equals the single-process one.
    slices = list(_batches(n, config.batch_size))
    rank, world = _rank_world()
    outputs: dict[int, dict[str, Any]] = {}
    timing = {"clean_s": 0.0, "pgd_s": 0.0, "paper_s": 0.0, "clinical_s": 0.0, "corruption_s": 0.0}
    for bi in range(rank, len(slices), world):
        outputs[bi] = _evaluate_batch(model, x_all[slices[bi]].to(device), y_all[slices[bi]].to(device),
                                      config=config, conditions=conditions, eps_px=eps_px, batch_index=bi,
                                      timing=timing)
        progress("batches", (bi + 1) / len(slices))
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = {k: v for part in gathered for k, v in part.items()}
    order = range(len(slices))
    keys = list(keys) if keys is not None else [str(i) for i in range(n)]
    per_sample = PerSample(
        keys=keys, labels=y_all.numpy().astype(np.int64),
        groups=np.asarray(list(groups) if groups is not None else keys, dtype=str),
        folds=np.full(n, int(fold), dtype=np.int64), conditions=conditions,
        logits=np.concatenate([outputs[b]["logits"] for b in order], axis=1).astype(np.float32),
        attack_ok=np.concatenate([outputs[b]["attack_ok"] for b in order], axis=2), attack_names=attack_names(config))
    t0 = time.time()
    result = summarise(per_sample, config=config, name=name, card=card, split_hash=split_hash, image_size=side,
                       classes=classes)
    timing["summary_s"] = time.time() - t0
    result["precision"] = precision_info(device, attack_autocast=config.use_autocast)
    result["timing"] = {"total_s": time.time() - t_start, **timing, "pass_images": model.size}
    return result


def attack_checks(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, config: EvalConfig,
                  eps: float = 2.0, n: int = 64, square_queries: int = 1000, budget_factor: int = 2,
                  seed: int = 0) -> dict[str, Any]:
    """Is the worst case trustworthy? A gradient-masking check and a budget check on a subset at one radius.

    On a seeded random ``n`` of the images (all when ``n`` >= their number) at ``eps`` (stated at 224 px): (1) the Square attack (score-based, black-box,
    ``square_queries`` queries) must not find lower accuracy than the white-box worst case
    (:func:`medrobust.square.gradient_masking_check`); (2) the ensemble with ``budget_factor`` times the
    steps and restarts must not find more than one point lower accuracy than the benchmark's budget.

    Returns
    -------
    dict
        ``square`` (the masking check), ``budget`` (accuracies at both budgets and the gap), ``ok`` (no
        masking suspected and gap <= 0.01), and the settings.
    """
    from medrobust.square import gradient_masking_check

    model.eval()
    x_all = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    total = int(x_all.shape[0])
    # A seeded random subset (a split's order groups the classes), in the original order; all when n >= total.
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.to(x_all.device)
    x, y = x_all[idx], labels.long().to(x_all.device)[idx]
    side = int(x.shape[-1])
    eps_px = scale_eps(eps, norm=config.norm, side=side)
    t0 = time.time()

    def ensemble(steps: int, restarts: int, apgd_restarts: int):
        return worst_case(model, x, y, eps=eps_px, steps=steps, norm=config.norm, pgd_restarts=restarts,
                          apgd_restarts=apgd_restarts, attacks=config.attacks, use_autocast=config.use_autocast,
                          generator=torch.Generator(device=x.device).manual_seed(seed))

    base = ensemble(config.pgd_steps, config.restarts, config.apgd_restarts)
    big = ensemble(config.pgd_steps * budget_factor, config.restarts * budget_factor,
                   config.apgd_restarts * budget_factor)
    t_white = time.time() - t0
    t0 = time.time()
    square = gradient_masking_check(model=model, x=x, y=y, eps=eps_px, white_box_correct=base.ok,
                                    n_queries=square_queries, norm=config.norm,
                                    generator=torch.Generator().manual_seed(seed))  # CPU draws: same on every device
    gap = float(base.ok.float().mean() - big.ok.float().mean())
    budget = {"steps": config.pgd_steps, "restarts": config.restarts, "apgd_restarts": config.apgd_restarts,
              "factor": budget_factor, "accuracy": float(base.ok.float().mean()),
              "accuracy_larger_budget": float(big.ok.float().mean()), "gap": gap, "gap_ok": gap <= 0.01 + 1e-12}
    subset = f"all {total} images" if x.shape[0] == total else f"a seed-{seed} random {x.shape[0]} of {total} images"
    return {"n": int(x.shape[0]), "subset": subset, "eps": float(eps), "eps_pixels": eps_px, "square": square,
            "budget": budget,
            "ok": bool(not square["masking_suspected"] and budget["gap_ok"]),
            "seconds": {"white_box": t_white, "square": time.time() - t0}}


def _ci_dict(cis: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    return {k: [float(v[0]), float(v[1])] for k, v in cis.items()}


def _condition_row(ps: PerSample, index: int, *, config: EvalConfig, eps_px: dict[float, float]) -> dict[str, Any]:
    cond = ps.conditions[index]
    probs = ps.probs(index)
    m = classification_metrics(labels=ps.labels, probs=probs)
    cis = cluster_bootstrap_ci(labels=ps.labels, probs=probs, groups=ps.groups, metrics=PER_LEVEL_METRICS,
                               n_boot=config.n_boot, seed=config.seed)
    row: dict[str, Any] = {"suite": cond.suite, "perturbation": cond.perturbation, "severity": cond.severity,
                           **{k: m[k] for k in (*PER_LEVEL_METRICS, "majority_fraction", "positive_rate")},
                           "ci": _ci_dict(cis)}
    if cond.param is not None:
        row["param"] = cond.param
    if cond.suite == "attack":
        e = list(eps_px).index(cond.severity)
        row.update({"eps_pixels": eps_px[cond.severity], "norm": config.norm, "steps": config.pgd_steps,
                    "restarts": config.restarts, "ensemble": list(config.attacks), "schedule": config.schedule,
                    "accuracy_by_attack": {a: float(ps.attack_ok[i, e].mean()) for i, a in enumerate(ps.attack_names)}})
    folds = sorted(set(ps.folds.tolist()) - {-1})
    if len(folds) > 1:
        per_fold = {k: [] for k in FOLD_METRICS}
        for f in folds:
            sel = ps.folds == f
            fm = classification_metrics(labels=ps.labels[sel], probs=probs[sel])
            for k in FOLD_METRICS:
                per_fold[k].append(float(fm[k]))
        row["folds"] = per_fold
    return row


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    def mean(values: list[float]) -> float:
        finite = [v for v in values if not math.isnan(v)]
        return float(np.mean(finite)) if finite else math.nan

    return {k: mean([r[k] for r in rows]) for k in PER_LEVEL_METRICS}


def result_classes(card: dict[str, Any] | None, num_classes: int) -> tuple[str, ...]:
    """The class names of a result: the card's, else the COVID task's (K = 2), else "0".."K-1"."""
    names = tuple((card or {}).get("classes") or (CLASS_NAMES if num_classes == 2 else range(num_classes)))
    names = tuple(str(c) for c in names)
    if len(names) != num_classes:
        raise ValueError(f"The model gives {num_classes} logits but its card names {len(names)} classes "
                         f"({', '.join(names)}).")
    return names


def map_labels(labels: torch.Tensor, *, data_classes: Sequence[str], model_classes: Sequence[str]) -> torch.Tensor:
    """Data labels re-indexed to the model's class order (matched by name).

    Raises
    ------
    ValueError
        If the data hold a class the model does not know.

    Examples
    --------
    >>> map_labels(torch.tensor([0, 1, 1]), data_classes=["a", "b"], model_classes=["b", "a", "c"]).tolist()
    [1, 0, 0]
    """
    from medrobust.data import similar_names

    data_classes, model_classes = [str(c) for c in data_classes], [str(c) for c in model_classes]
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        named = ", ".join(c + (f" (did you mean {' or '.join(sim)}?)" if (sim := similar_names(c, model_classes))
                               else "") for c in unknown)
        raise ValueError(f"The data's class(es) {named} are not among the model's classes "
                         f"({', '.join(model_classes)}); give data with the model's classes (fix the labels).")
    lut = torch.tensor([model_classes.index(c) for c in data_classes], dtype=torch.long)
    return lut[labels.long()]


def _clean_extras(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The confusion matrix (rows = true class) and every class's recall on clean images."""
    k = len(classes)
    cm = confusion_matrix(labels=labels, preds=probs.argmax(1), num_classes=k)
    recall = per_class_recall(labels=labels, probs=probs)
    return {"confusion": cm.tolist(), "recall_per_class": {c: float(r) for c, r in zip(classes, recall)}}


def _predictions(ps: PerSample, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": list(ps.keys), "labels": ps.labels.tolist()}
    if len(classes) == 2:
        out["p_covid"] = probs[:, 1].tolist()  # P(second class); the name stays for the COVID task's files
    else:
        out["probs"] = probs.tolist()
    return out


def attack_sanity(rows: list[dict[str, Any]], *, clean_accuracy: float, config: EvalConfig) -> dict[str, Any]:
    """The usual signs that an attack evaluation is sound: accuracy falls monotonically with eps, more starts
    change little (PGD first start vs all starts; at most 2 points), and each attack's own accuracy."""
    attack_rows = [r for r in rows if r["suite"] == "attack"]
    accs = [clean_accuracy] + [r["accuracy"] for r in attack_rows]
    by = [r.get("accuracy_by_attack", {}) for r in attack_rows]
    restart_gap = ({f"{e:g}": float(b["pgd_first"] - b["pgd"]) for e, b in zip(config.eps, by) if "pgd_first" in b}
                   if config.restarts > 1 else {})
    sanity: dict[str, Any] = {
        "eps0_equals_clean": True,  # eps = 0 returns the input unchanged (tested in tests/science/test_attacks.py)
        "monotone_in_eps": bool(all(b <= a + 1e-12 for a, b in zip(accs, accs[1:]))),
        "restart_gap": restart_gap,
        "ensemble": list(config.attacks),
        "schedule": config.schedule,
        "worst_case_gain": {f"{e:g}": {a: float(b[a] - r["accuracy"]) for a in b if a != "pgd_first"}
                            for e, b, r in zip(config.eps, by, attack_rows)},
    }
    if restart_gap:
        sanity["restart_gap_ok"] = bool(max(restart_gap.values()) <= 0.02)
    return sanity


def summarise(ps: PerSample, *, config: EvalConfig, name: str, card: dict[str, Any] | None = None,
              split_hash: str | None = None, image_size: int | None = None,
              classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The result of one model from its per-sample logits (one test set, or pooled folds).

    Every condition gets accuracy, balanced accuracy, sensitivity, specificity and AUROC with 95 %
    patient-level cluster-bootstrap CIs (``ps.groups``); the summary gives means per perturbation,
    mean corruption metrics per suite and relative robustness (mean corrupted / clean); clean images
    get the calibration metrics. With several folds, each row carries its per-fold values too.
    """
    card = card or {}
    classes = tuple(classes) if classes is not None else result_classes(card, int(ps.logits.shape[-1]))
    if len(classes) != ps.logits.shape[-1]:
        raise ValueError(f"{len(classes)} class names for {ps.logits.shape[-1]} logits.")
    side = int(image_size or card.get("image_size") or 0)
    eps_px = {float(e): scale_eps(e, norm=config.norm, side=side or 224) for e in config.eps}
    rows = [_condition_row(ps, i, config=config, eps_px=eps_px) for i in range(len(ps.conditions))]
    clean_probs = ps.probs(0)
    clean_m = classification_metrics(labels=ps.labels, probs=clean_probs)
    clean = {**clean_m, "ci": rows[0]["ci"], **_clean_extras(ps.labels, clean_probs, classes)}
    summary: dict[str, Any] = {"clean": {k: clean_m[k] for k in PER_LEVEL_METRICS}}
    for pert in dict.fromkeys(r["perturbation"] for r in rows[1:]):
        summary[pert] = _means([r for r in rows if r["perturbation"] == pert])
    suites: dict[str, Any] = {}
    for suite in ("paper", "clinical"):
        sel = [r for r in rows if r["suite"] == suite]
        if sel:
            mean = _means(sel)
            suites[suite] = {"mean": mean, "relative": {k: (mean[k] / clean_m[k] if clean_m[k] else math.nan)
                                                        for k in PER_LEVEL_METRICS}}
    sanity = attack_sanity(rows, clean_accuracy=clean_m["accuracy"], config=config)
    folds = sorted(set(ps.folds.tolist()) - {-1})
    y = ps.labels
    result = {
        "result_version": RESULT_VERSION,
        "name": name,
        "method": card.get("method", "unknown"),
        "image_size": side,
        "n_test": int(y.size),
        "n_patients": int(len(set(ps.groups.tolist()))),
        "classes": list(classes),
        "n_per_class": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "degenerate": bool(clean_m["degenerate"]),
        "majority_fraction": clean_m["majority_fraction"],
        "params": {**asdict(config), "eps_pixels": list(eps_px.values()),
                   "eps_note": f"L2 budgets stated at 224 px, scaled by {side}/224" if config.norm == "l2" else "L-inf per pixel",
                   "ci_note": "95 % percentile bootstrap resampling patients (stratified by the patient's label)"},
        "split_hash": split_hash or card.get("split", {}).get("hash"),
        "model_sha256": card.get("sha256"),
        "checkpoint_card": {k: card.get(k) for k in ("name", "method", "epochs_done", "selected_epoch", "collapsed",
                                                       "train_seconds", "device") if k in card},
        "clean": clean,
        "calibration": {k: clean_m[k] for k in ("rmsce", "rmsce_plugin", "ece", "entropy", "nll", "brier")},
        "calibration_note": "rmsce = Kumar et al. debiased top-label L2 CE (15 equal-mass bins, clipped at 0); "
                            "rmsce_plugin = the same without debiasing; entropy = mean per-sample predictive entropy "
                            f"in nats (<= ln {len(classes)}).",
        "reliability": reliability_bins(labels=y, probs=clean_probs, n_bins=15),
        "rows": rows,
        "summary": summary,
        "suites": suites,
        "sanity": sanity,
        "predictions": _predictions(ps, clean_probs, classes),
        "_per_sample": ps,
    }
    if len(folds) > 1:
        result["cv"] = {"folds": len(folds),
                        "clean": {k: fold_spread(rows[0]["folds"][k]) for k in FOLD_METRICS},
                        "note": "pooled out-of-fold predictions: every labelled image tested once, by the fold model "
                                "that never saw its patient; per-fold mean ± sd beside the pooled value"}
    return result


def long_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The long-format table: one line per (suite, perturbation, severity, metric)."""
    out = []
    for r in result["rows"]:
        values = {m: r[m] for m in (*PER_LEVEL_METRICS, "accuracy_restarts") if m in r}
        values.update({f"accuracy_{a}": v for a, v in r.get("accuracy_by_attack", {}).items()})
        for metric, value in values.items():
            lo, hi = r["ci"].get(metric, (math.nan, math.nan))
            out.append({"model": result["name"], "method": result["method"], "suite": r.get("suite", ""),
                        "perturbation": r["perturbation"], "severity": r["severity"], "metric": metric,
                        "value": value, "ci_low": lo, "ci_high": hi})
    for k, v in result["calibration"].items():
        out.append({"model": result["name"], "method": result["method"], "suite": "clean", "perturbation": "clean",
                    "severity": 0.0, "metric": k, "value": v, "ci_low": math.nan, "ci_high": math.nan})
    return out


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its in-memory parts (keys starting with ``_``)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_results(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``<name>.json``, ``<name>.csv`` (long format), ``<name>.predictions.csv`` and ``<name>.logits.npz``.

    The predictions CSV holds each test image's key, patient, fold, label, the K clean fp32 logits and
    the probabilities (P(COVID-19), i.e. of the second class, when K = 2) with full float precision; the ``.npz`` holds every condition's logits (:class:`PerSample`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["name"]
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.csv", out_dir / f"{name}.predictions.csv"]
    atomic_write_text(paths[0], json.dumps(public(result), indent=1, default=float))
    rows = long_rows(result)
    lines = [",".join(rows[0].keys())] if rows else []
    for r in rows:
        lines.append(",".join(_csv_cell(v) for v in r.values()))
    atomic_write_text(paths[1], "\n".join(lines) + "\n")
    ps: PerSample | None = result.get("_per_sample")
    if ps is not None:
        clean = ps.probs(0)
        k = clean.shape[1]
        p_cols = ["p_covid"] if k == 2 else [f"p_{i}" for i in range(k)]
        p_vals = clean[:, 1:] if k == 2 else clean
        plines = [",".join(["key,patient,fold,label", *(f"logit_{i}" for i in range(k)), *p_cols])] + [
            ",".join([_csv_cell(key), _csv_cell(str(g)), str(f), str(l), *(repr(float(v)) for v in z),
                      *(repr(float(v)) for v in p)])
            for key, g, f, l, z, p in zip(ps.keys, ps.groups, ps.folds, ps.labels, ps.logits[0], p_vals)]
        paths.append(out_dir / f"{name}.logits.npz")
        ps.save(paths[-1])
    else:  # a result read back from JSON: the clean probabilities it carries
        pred = result["predictions"]
        probs = pred.get("probs") or [[p] for p in pred["p_covid"]]
        head = ["p_covid"] if "p_covid" in pred else [f"p_{i}" for i in range(len(probs[0]) if probs else 0)]
        plines = [",".join(["key,label", *head])] + [",".join([_csv_cell(k), str(l), *(repr(float(v)) for v in p)])
                                                      for k, l, p in zip(pred["keys"], pred["labels"], probs)]
    atomic_write_text(paths[2], "\n".join(plines) + "\n")
    if result.get("_val") is not None:  # the validation logits the decision rule was fitted on (medrobust.trust)
        paths.append(paths[0].with_suffix(".val.npz"))  # medrobust.trust.val_path
        result["_val"].save(paths[-1])
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
    """Read result JSONs (files, or folders whose ``*.json`` results are all read); each gets ``_path``."""
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
            d["_path"] = str(f)
            results.append(d)
    return results


def per_sample_of(result: dict[str, Any]) -> PerSample | None:
    """The per-sample logits of a result: in memory, or the ``.logits.npz`` written beside its JSON."""
    if result.get("_per_sample") is not None:
        return result["_per_sample"]
    path = result.get("_path")
    if path and Path(path).with_suffix(".logits.npz").is_file():
        result["_per_sample"] = PerSample.load(Path(path).with_suffix(".logits.npz"))
        return result["_per_sample"]
    return None


# --------------------------------------------------------------------------- cross-validation


def fold_checkpoints(cv_dir: str | Path) -> list[Path]:
    """``CVDIR/fold<i>/model.safetensors`` for i = 0..K-1; raises when a fold is missing or unfinished."""
    cv_dir = Path(cv_dir)
    folds = sorted((p for p in cv_dir.glob("fold*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    if not folds:
        raise FileNotFoundError(f"{cv_dir} holds no fold<i>/ run folders; train them with `python -m medrobust cv`.")
    missing = [p.name for p in folds if not (p / "model.safetensors").is_file()]
    expected = [f"fold{i}" for i in range(len(folds))]
    if missing or [p.name for p in folds] != expected:
        raise FileNotFoundError(f"{cv_dir}: folds {', '.join(missing) or 'out of sequence'} are not finished; "
                                "run the same `cv` command again to complete them.")
    return [p / "model.safetensors" for p in folds]


def is_cv_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "fold0").is_dir() and not (path / "model.safetensors").exists()


def config_digest(config: EvalConfig) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True, default=float).encode()).hexdigest()[:16]


def _folds_precision(precisions: list[dict[str, Any] | None]) -> dict[str, Any]:
    """One precision record for pooled folds: the folds' own when they agree; else the common keys, the
    devices listed, and each fold's record (``None`` where an older fold file kept none)."""
    if precisions and all(p is not None and p == precisions[0] for p in precisions):
        return dict(precisions[0])
    known = [p for p in precisions if p]

    def common(key: str, fallback: str) -> str:
        values = {str(p.get(key)) for p in known}
        return values.pop() if len(values) == 1 and len(known) == len(precisions) else fallback

    counted = {str(p.get("counted_predictions")) for p in known}
    return {"counted_predictions": ("fp32" if counted and all(c.startswith("fp32") for c in counted)
                                    and len(known) == len(precisions) else "unknown for some folds"),
            "attack_iterations": common("attack_iterations", "mixed"),
            "device": ", ".join(sorted({str(p.get("device")) for p in known})) + (" (and unknown)" if len(known) < len(precisions) else ""),
            "per_fold": precisions}


def _require_fold(card: dict[str, Any], fold: int) -> None:
    from medrobust.data import DataError

    info = card.get("split", {})
    if int(info.get("folds", 0)) < 2 or int(info.get("fold", -1)) != fold:
        raise DataError(f"{card.get('name') or 'this model'} is not fold {fold} of a cross-validation (its card "
                        f"says folds={info.get('folds')}, fold={info.get('fold')}).")


def fold_cache_key(card: dict[str, Any], config: EvalConfig) -> dict[str, str | None]:
    """What a kept fold evaluation must match to be reused: the weights' sha256 and the config's digest."""
    return {"sha256": card.get("sha256"), "config": config_digest(config)}


def evaluate_fold(
    ckpt: str | Path,
    fold: int,
    *,
    roots,
    config: EvalConfig,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    data=None,
    log: Callable[[str], None] = lambda text: None,
) -> tuple[PerSample, dict[str, Any], dict[str, Any]]:
    """One fold model on its own test patients: its per-sample logits, a summary, and its card.

    With ``cache_dir`` the fold's logits and summary are kept as ``fold<i>.npz`` / ``fold<i>.json``,
    keyed by the checkpoint's sha256 and the config, so an interrupted or incremental cross-validated
    evaluation never repeats a finished fold.
    """
    from medrobust.checkpoints import load_checkpoint

    model, card = load_checkpoint(ckpt, device=device)
    _require_fold(card, fold)
    key = fold_cache_key(card, config)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and (cache / f"fold{fold}.json").is_file() and (cache / f"fold{fold}.npz").is_file():
        saved = json.loads((cache / f"fold{fold}.json").read_text())
        if saved.get("key") == key:
            log(f"fold {fold}: reusing its evaluation in {cache}")
            return PerSample.load(cache / f"fold{fold}.npz"), saved["summary"], card
        log(f"fold {fold}: the evaluation kept in {cache} was made with other weights or settings "
            f"({saved.get('key')} vs {key}); evaluating again")
    part = fold_part(card, fold, roots=roots, data=data)
    log(f"fold {fold}: {len(part.keys)} test images of {len(set(part.groups))} patients ...")
    ps, summary = evaluate_fold_part(model, card, part, config=config, cache_dir=cache)
    return ps, summary, card


@dataclass
class FoldPart:
    """One fold's test images as :func:`evaluate_fold` rebuilds them from the data and the fold's card."""

    fold: int
    images: torch.Tensor  # (N, 1, H, W) as the data set holds them
    labels: torch.Tensor  # (N,)
    keys: list[str]
    groups: list[str]  # patient of each image
    split_hash: str
    n_labelled: int  # images in the whole labelled data set (the pooled folds must test them all)

    def save(self, path: str | Path) -> None:
        torch.save({f: getattr(self, f) for f in self.__dataclass_fields__}, path)

    @classmethod
    def load(cls, path: str | Path) -> "FoldPart":
        return cls(**torch.load(path, weights_only=True))


def fold_part(card: dict[str, Any], fold: int, *, roots, data=None) -> FoldPart:
    """Fold ``fold``'s test images, rebuilt from the data and the fold model's card (patient overlap checked)."""
    from medrobust.checkpoints import image_size_of
    from medrobust.data import check_no_overlap, load_dataset, split_from_info

    _require_fold(card, fold)
    split_info = card.get("split", {})
    size = image_size_of(card, name=str(card.get("name") or f"fold {fold}"))
    classes = (card.get("config") or {}).get("classes")  # the training run's class order, if it fixed one
    if data is None or data.image_size != size or (classes and tuple(data.classes) != tuple(classes)):
        data = load_dataset(roots, image_size=size, classes=classes)
    split = split_from_info(data.records, split_info)
    check_no_overlap(train_patients=split_info.get("train_patients", []), eval_patients=split.patients["test"])
    test = data.subset(split.images["test"])
    return FoldPart(fold=fold, images=test.images, labels=test.labels, keys=[x.key for x in test.records],
                    groups=[x.patient for x in test.records], split_hash=split.hash, n_labelled=len(data.records))


def evaluate_fold_part(model: torch.nn.Module, card: dict[str, Any], part: FoldPart, *, config: EvalConfig,
                       cache_dir: str | Path | None = None) -> tuple[PerSample, dict[str, Any]]:
    """Evaluate a fold model on its test part; with ``cache_dir`` keep ``fold<i>.npz`` / ``fold<i>.json``
    keyed by the checkpoint's sha256 and the config, as :func:`evaluate_fold` reuses them."""
    split_info = card.get("split", {})
    if int(split_info.get("fold", -1)) != part.fold:
        raise ValueError(f"these test images are fold {part.fold}'s, but the model's card says fold "
                         f"{split_info.get('fold')}.")
    t0 = time.time()
    r = evaluate_model(model, part.images, part.labels, config=config, name=f"fold{part.fold}", card=card,
                       keys=part.keys, groups=part.groups, fold=part.fold, split_hash=part.split_hash)
    summary = {"fold": part.fold, "n_test": r["n_test"], "n_labelled": part.n_labelled, "split_hash": part.split_hash,
               "seconds": time.time() - t0, "train_seconds": card.get("train_seconds"),
               "clean": {k: r["clean"][k] for k in PER_LEVEL_METRICS}, "degenerate": r["degenerate"],
               "precision": r["precision"]}
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        key = fold_cache_key(card, config)
        r["_per_sample"].save(cache / f"fold{part.fold}.npz")
        atomic_write_text(cache / f"fold{part.fold}.json",
                          json.dumps({"key": key, "summary": summary}, indent=1, default=float))
    return r["_per_sample"], summary


def evaluate_cv(
    cv_dir: str | Path,
    *,
    roots,
    config: EvalConfig,
    device: torch.device | str = "cpu",
    name: str | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Evaluate every fold model on its own test patients and pool the out-of-fold predictions.

    Each fold's split is rebuilt from its card and checked for patient overlap with that fold's
    training patients; the pooled set must test every labelled image exactly once. With
    ``cache_dir``, finished folds are reused (:func:`evaluate_fold`).

    Returns
    -------
    dict
        The pooled result (:func:`summarise` of the concatenated per-sample logits) with ``cv``
        (number of folds, per-fold spread, each fold's clean metrics and wall times).
    """
    from medrobust.data import DataError

    cv_dir = Path(cv_dir)
    parts, fold_summaries, cards = [], [], []
    for i, ckpt in enumerate(fold_checkpoints(cv_dir)):
        ps, summary, card = evaluate_fold(ckpt, i, roots=roots, config=config, device=device, cache_dir=cache_dir,
                                          log=log)
        parts.append(ps)
        fold_summaries.append(summary)
        cards.append(card)
    pooled = PerSample.concat(parts)
    n_labelled = fold_summaries[0].get("n_labelled")
    if n_labelled is not None and len(pooled.keys) != n_labelled:
        raise DataError(f"The folds test {len(pooled.keys)} images but the data hold {n_labelled}: the data "
                        "differ from those the folds were trained on.")
    card = {**cards[0], "name": name or cv_dir.name, "sha256": None}
    result = summarise(pooled, config=config, name=name or cv_dir.name, card=card, split_hash=None,
                       image_size=int(cards[0].get("image_size") or 0))
    result["cv"].update({"dir": cv_dir.name, "fold_results": fold_summaries,
                         "model_sha256": [c.get("sha256") for c in cards],
                         "train_seconds": [c.get("train_seconds") for c in cards]})
    # The arithmetic of the folds (a fold evaluated elsewhere, e.g. on a GPU, keeps its own record).
    result["precision"] = _folds_precision([f.get("precision") for f in fold_summaries])
    result["timing"] = {"total_s": sum(f["seconds"] for f in fold_summaries)}
    return result
