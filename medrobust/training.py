"""One training loop for the four methods (airbench style: the data set is one tensor on the device).

Deviations from the paper, each switchable, each recorded in the saved config:

* ``class_balance="weights"`` (default): inverse-frequency class weights in every loss term. With
  plain CE a PGD-trained model collapsed here to always answering COVID-19 (85 % "accuracy").
* ``eps_ramp_epochs=15`` (default, PGD methods): eps grows linearly from eps/15 to eps over the
  first 15 epochs; without it, class-weighted adversarial training from scratch collapsed too.
* ``weight_decay=5e-4`` (the paper does not state one).
* ``init``: start from a medrobust checkpoint (adversarial fine-tuning) or ImageNet weights.

Final-model rule: ``select="last"`` (default) ships the last epoch; ``"best_val_bacc"`` ships the
epoch with the best validation balanced accuracy (ties: the later epoch).

Every epoch ends with an atomic ``state.safetensors`` (model, optimiser momentum, RNG state,
history), so a killed run resumes from its last complete epoch and loses at most one epoch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open

from medrobust import __version__, distributed
from medrobust.attacks import autocast_for, pgd, scale_eps
from medrobust.augmix import AugMixConfig, augmix
from medrobust.choices import Arch, Norm, parse_choice
from medrobust.checkpoints import classes_of, load_checkpoint, save_checkpoint
from medrobust.fileio import atomic_save_tensors, atomic_write_text
from medrobust.data import (Dataset, Split, check_split_parts, check_training_classes, load_dataset, split_by_patient,
                            split_kfold)
from medrobust.methods import LossTools, get_method
from medrobust.metrics import DEGENERATE_THRESHOLD, classification_metrics
from medrobust.models import build_model, load_imagenet_into

COLLAPSE_BACC = 0.55


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved as ``config.json`` beside its results."""

    method: str = "standard"
    preset: str = "custom"
    arch: str = "resnet18"  # a torchvision network of the registry (medrobust.choices.Arch)
    classes: tuple[str, ...] | None = None  # class names and order; None: from the data
    image_size: int = 224
    epochs: int = 41
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm: str = "l2"
    eps: float = 4.0  # stated at 224 px for L2, scaled by image_size/224
    pgd_steps: int = 7
    eps_ramp_epochs: int = 15
    class_balance: str = "weights"  # "weights" | "none"
    flip_augment: bool = True  # random horizontal flip of every training batch
    augmix_ops: tuple[str, ...] = ("hflip", "vflip")
    augmix_width: int = 3
    augmix_depth: int = -1
    augmix_alpha: float = 1.0
    jsd_weight: float = 12.0
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    folds: int = 0  # 0: one split by split_fractions; K >= 2: patient-level K-fold, test = fold ``fold``
    fold: int = 0
    init: str | None = None  # None, "imagenet" or a checkpoint path
    select: str = "last"  # "last" | "best_val_bacc"
    max_batches: int | None = None  # cap per epoch (smoke runs)
    device: str = "auto"

    def validate(self) -> "TrainConfig":
        get_method(self.method)
        parse_choice(Norm, self.norm)
        parse_choice(Arch, self.arch)
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes must be at least two distinct names, got {list(self.classes)}.")
        checks = [
            (self.image_size >= 32, f"image_size must be >= 32, got {self.image_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.pgd_steps >= 1, f"pgd_steps must be >= 1, got {self.pgd_steps}"),
            (self.eps_ramp_epochs >= 0, f"eps_ramp_epochs must be >= 0, got {self.eps_ramp_epochs}"),
            (self.class_balance in ("weights", "none"), f"class_balance must be 'weights' or 'none', got {self.class_balance!r}"),
            (self.select in ("last", "best_val_bacc"), f"select must be 'last' or 'best_val_bacc', got {self.select!r}"),
            (self.max_batches is None or self.max_batches >= 1, "max_batches must be >= 1"),
            (self.folds == 0 or self.folds >= 2, f"folds must be 0 (no cross-validation) or >= 2, got {self.folds}"),
            (0 <= self.fold < max(self.folds, 1), f"fold must be in 0..{max(self.folds, 1) - 1}, got {self.fold}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg + ".")
        AugMixConfig(ops=tuple(self.augmix_ops), width=self.augmix_width, depth=self.augmix_depth,
                     alpha=self.augmix_alpha).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        for k in ("augmix_ops", "split_fractions", "classes"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"image_size": 224, "epochs": 41},
    "cpu": {"image_size": 128, "epochs": 41},
    # 64 px: what a 2-core AVX2 laptop can train for all four methods in about an hour (see README).
    "cpu-small": {"image_size": 64, "epochs": 41},
    "smoke": {"image_size": 64, "epochs": 1, "max_batches": 3, "batch_size": 16},
}


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    base = {**PRESETS[preset], "preset": preset}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base).validate()


def eps_for_epoch(config: TrainConfig, epoch: int) -> float:
    """The training radius at ``epoch`` (0-based), stated at 224 px."""
    if config.eps_ramp_epochs <= 0:
        return config.eps
    return config.eps * min(1.0, (epoch + 1) / config.eps_ramp_epochs)


def class_weights(labels: torch.Tensor, *, num_classes: int = 2, classes: Sequence[str] | None = None) -> torch.Tensor:
    """Inverse-frequency weights, normalised so the average training sample weighs 1.

    Parameters
    ----------
    labels
        The training labels (0 .. num_classes - 1).
    num_classes
        K, the number of classes.
    classes
        The class names (index = label), for the error message; default "0", "1", ...

    Raises
    ------
    ValueError
        If a class has no training image (naming it, with every class's image count).
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        names = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        absent = ", ".join(names[i] for i in range(num_classes) if counts[i] == 0)
        listing = ", ".join(f"{names[i]} {int(counts[i])}" for i in range(num_classes))
        raise ValueError(f"The training split lacks a class: no training image of {absent} (training images per "
                         f"class: {listing}); every class needs training patients: give it more images, or "
                         "fix --classes or the split column.")
    counts = counts.float()
    return counts.sum() / (num_classes * counts)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128, device=None,
                  use_autocast: bool = True) -> torch.Tensor:
    """Softmax probabilities (N, K) for uint8 or float images; the model is left in its mode."""
    device = device or next(model.parameters()).device
    out = []
    was = model.training
    model.eval()
    try:
        for i in range(0, images.shape[0], batch_size):
            xb = images[i : i + batch_size].to(device)
            xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
            with autocast_for(device, use_autocast):
                logits = model(xb.contiguous(memory_format=torch.channels_last))
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty((0, int(getattr(model, "num_classes", 2))))


def is_collapsed(metrics: dict[str, float], *, num_classes: int = 2) -> bool:
    """One class for (nearly) every image, or balanced accuracy within 5 points of chance (1/K)."""
    floor = COLLAPSE_BACC - 0.5 + 1.0 / num_classes
    return metrics["balanced_accuracy"] <= floor or metrics["majority_fraction"] >= DEGENERATE_THRESHOLD


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    card: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class ProgressLog:
    """JSON lines a UI can follow: one object per line, each with ``event`` and ``time``.

    ``path=None`` makes a silent log (ranks other than 0 under torchrun).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, event: str, **payload: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **payload}, default=float) + "\n"
        with open(self.path, "a+b") as fh:
            if fh.seek(0, os.SEEK_END) > 0:  # a run killed mid-line left a torn last line: start a new one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode("utf-8"))
            fh.flush()


def _state_tensors(model, optimizer, generator, dev_generator=None) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{i}.{j}"] = buf
    tensors["rng.torch"] = generator.get_state()
    if dev_generator is not None:
        tensors["rng.device"] = dev_generator.get_state()
    return tensors


def _load_state(path: Path, model, optimizer, generator, dev_generator=None) -> dict[str, Any]:
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
        keys = list(fh.keys())
        model.load_state_dict({k[6:]: fh.get_tensor(k) for k in keys if k.startswith("model.")})
        for i, group in enumerate(optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                key = f"optim.{i}.{j}"
                if key in keys:
                    optimizer.state[p]["momentum_buffer"] = fh.get_tensor(key).to(p.device)
        generator.set_state(fh.get_tensor("rng.torch"))
        if dev_generator is not None and "rng.device" in keys:
            dev_generator.set_state(fh.get_tensor("rng.device"))
    return json.loads(meta.get("progress", "{}"))


def _remove_stale_temps(run_dir: Path) -> None:
    """Delete the temp files (``.NAME.tmpPID``) of writers that were killed mid-write (their pid is gone)."""
    for tmp in run_dir.glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that writer is still alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            tmp.unlink()
        except OSError:
            pass


def _initialise(model, init: str | None, *, split: Split, classes: tuple[str, ...]) -> None:
    """Load the starting weights; a medrobust checkpoint must not have trained on this run's test patients
    and must have the same architecture and classes."""
    if init is None:
        return
    if init == "imagenet":
        load_imagenet_into(model)
        return
    source, card = load_checkpoint(init)
    seen = card.get("split", {}).get("train_patients", []) + card.get("split", {}).get("val_patients", [])
    leaked = set(seen) & set(split.patients["test"])
    if leaked:
        raise ValueError(f"--init {init} was trained on {len(leaked)} of this run's test patient(s); start from a "
                         "model of the same split or fold (for cross-validation: the same fold's model).")
    if tuple(classes_of(card)) != tuple(classes) or getattr(source, "arch", "resnet18") != getattr(model, "arch", "resnet18"):
        raise ValueError(f"--init {init} is a {getattr(source, 'arch', 'resnet18')} for classes "
                         f"{', '.join(classes_of(card))}; this run trains a {getattr(model, 'arch', 'resnet18')} for "
                         f"{', '.join(classes)}.")
    model.load_state_dict(source.state_dict())


def prepare_data(config: TrainConfig, roots, *, run_dir: Path, progress: bool = False) -> tuple[Dataset, Split]:
    """Load the data and the run's split (reusing ``split.json`` when the run already has one).

    Refuses (:class:`~medrobust.data.DataError`) probably mistyped class labels
    (:func:`~medrobust.data.check_training_classes`) and a new split with an empty training, test or (when
    the split fractions give it a share) validation part (:func:`~medrobust.data.check_split_parts`).
    """
    data = load_dataset(roots, image_size=config.image_size, progress=progress, classes=config.classes)
    check_training_classes(data.report, listed=config.classes)
    split_file = run_dir / "split.json"
    if split_file.is_file():
        split = Split.load(split_file)
        missing = set(split.images["train"] + split.images["val"]) - {r.key for r in data.records}
        if missing:
            raise ValueError(f"The run's split names {len(missing)} image(s) not in the data folders given.")
    else:
        if config.folds:
            split = split_kfold(data.records, seed=config.seed, folds=config.folds, fold=config.fold,
                                val_fraction=config.split_fractions[1])
        else:
            split = split_by_patient(data.records, seed=config.seed, fractions=config.split_fractions)
        parts = ("train", "val", "test") if config.split_fractions[1] > 0 else ("train", "test")
        check_split_parts(split, records=data.records, parts=parts, classes=data.classes)
    return data, split


@dataclass
class _Session:
    """Everything one training run holds between its steps (built by :func:`_prepare`)."""

    config: TrainConfig
    method: Any
    run_dir: Path
    dinfo: Any
    data: Dataset
    split: Split
    log: ProgressLog
    model: torch.nn.Module
    net: torch.nn.Module  # ``model``, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # orders the data; identical on every rank
    dev_generator: torch.Generator  # flips, AugMix and PGD starts; differs per rank
    train_set: Dataset
    val_set: Dataset
    class_weight: torch.Tensor | None
    steps_per_epoch: int
    show_progress: bool
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"bacc": -1.0, "epoch": -1})

    @property
    def device(self) -> torch.device:
        return self.dinfo.device

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.safetensors"

    def cpu_generator(self) -> torch.Generator | None:
        """The per-rank generator when its state can be checkpointed (CPU only)."""
        return self.dev_generator if self.device.type == "cpu" else None


def _check_same_config(config: TrainConfig, config_file: Path) -> None:
    if config_file.is_file():
        old = TrainConfig.from_dict(json.loads(config_file.read_text()))
        if replace(old, epochs=config.epochs, device=config.device) != replace(config, epochs=config.epochs, device=config.device):
            raise ValueError(f"{config_file.parent} holds a run with a different config; choose another --out or delete it.")


def _prepare(config: TrainConfig, roots, run_dir: Path, *, show_progress: bool) -> _Session:
    """Check the config, load data and split, build model, optimiser and generators (no epoch run yet)."""
    config.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(run_dir)
    config_file = run_dir / "config.json"
    _check_same_config(config, config_file)
    dinfo = distributed.setup(config.device)
    data, split = prepare_data(config, roots, run_dir=run_dir, progress=show_progress and dinfo.is_main)
    if dinfo.is_main:
        for warning in data.report.warnings:
            print(f"medrobust: warning: {warning}", file=sys.stderr)
    # Written only once the data are known to be usable, so a failed start leaves no stale config.
    if dinfo.is_main:
        atomic_write_text(config_file, json.dumps(config.to_dict(), indent=1))
        split.save(run_dir / "split.json")
    device = dinfo.device
    torch.manual_seed(config.seed)  # torchvision's init draws from the global RNG
    model = build_model(arch=config.arch, num_classes=len(data.classes))
    _initialise(model, config.init, split=split, classes=data.classes)
    model = model.to(device).to(memory_format=torch.channels_last)
    train_set = data.subset(split.images["train"])
    steps = max(1, len(train_set) // config.batch_size)  # drop the last partial batch (BN needs > 1 sample)
    session = _Session(
        config=config, method=get_method(config.method), run_dir=run_dir, dinfo=dinfo, data=data, split=split,
        log=ProgressLog(run_dir / "progress.jsonl" if dinfo.is_main else None), model=model,
        # Under torchrun the loss runs through DDP (gradients averaged over ranks); attacks and
        # validation use the bare module, which needs no gradient synchronisation.
        net=torch.nn.parallel.DistributedDataParallel(model) if dinfo.enabled else model,
        optimizer=torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay),
        generator=torch.Generator(device="cpu").manual_seed(config.seed),
        dev_generator=torch.Generator(device=device).manual_seed(config.seed + 1 + 1000 * dinfo.rank),
        train_set=train_set, val_set=data.subset(split.images["val"]),
        class_weight=(class_weights(train_set.labels, num_classes=len(data.classes), classes=data.classes).to(device)
                      if config.class_balance == "weights" else None),
        steps_per_epoch=min(steps, config.max_batches) if config.max_batches else steps,
        show_progress=show_progress,
    )
    if dinfo.is_main:  # said once the run is known to start, so a refusal stays one line
        print(f"medrobust: data: {data.report.counts_line()}", file=sys.stderr)
        print("medrobust: split: " + ", ".join(f"{part} {len(split.images[part])} images of "
                                               f"{len(split.patients[part])} patients" for part in split.images),
              file=sys.stderr)
    return session


def _resume(s: _Session) -> None:
    """Continue after the last complete epoch of ``state.safetensors``, if the run has one."""
    if not s.state_file.is_file():
        return
    try:
        saved = _load_state(s.state_file, s.model, s.optimizer, s.generator, s.cpu_generator())
    except Exception as exc:  # written atomically, so only outside damage gets here
        raise ValueError(f"{s.state_file} cannot be read ({type(exc).__name__}); delete it to restart this run "
                         "from scratch.") from None
    s.start_epoch, s.history, s.best = saved.get("epoch", 0), saved.get("history", []), saved.get("best", s.best)
    if s.start_epoch > s.config.epochs:
        raise ValueError(f"{s.run_dir} already holds {s.start_epoch} epochs, more than the {s.config.epochs} asked "
                         "for; ask for at least that many, or use another --out.")
    s.log.write("resume", epoch=s.start_epoch)


def _loss_tools(s: _Session, epoch: int) -> LossTools:
    config, device = s.config, s.device
    eps_px = scale_eps(eps_for_epoch(config, epoch), norm=config.norm, side=config.image_size)
    aug = AugMixConfig(ops=tuple(config.augmix_ops), width=config.augmix_width, depth=config.augmix_depth,
                       alpha=config.augmix_alpha)

    def adversarial(x, y):
        return pgd(s.model, x, y, eps=eps_px, steps=config.pgd_steps, norm=config.norm, generator=s.dev_generator)

    return LossTools(autocast=lambda: autocast_for(device), adversarial=adversarial,
                     augmix=lambda x: augmix(x, ops=aug.ops, width=aug.width, depth=aug.depth, alpha=aug.alpha,
                                             generator=s.dev_generator),
                     jsd_weight=config.jsd_weight)


def _train_epoch(s: _Session, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """One pass over the shuffled training set; returns loss, accuracy, images/s and seconds."""
    config, device, dinfo = s.config, s.device, s.dinfo
    if device.type != "cpu":  # a CUDA generator's state is not checkpointed: reseed per epoch
        s.dev_generator.manual_seed(config.seed + 1 + 1000 * dinfo.rank + 7919 * epoch)
    tools = _loss_tools(s, epoch)
    s.model.train()
    n, steps = images.shape[0], s.steps_per_epoch
    perm = torch.randperm(n, generator=s.generator).to(device)
    t0 = time.time()
    correct, seen, loss_sum = 0, 0, 0.0
    bar = None
    if s.show_progress and dinfo.is_main:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"{config.method} epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False)
    for step in range(steps):
        idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
        if dinfo.enabled:  # each rank takes its share of the global batch
            idx = idx[dinfo.rank :: dinfo.world]
        x = images[idx].float().div_(255.0).contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        if config.flip_augment:
            flip = torch.rand(x.shape[0], generator=s.dev_generator, device=device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        out = s.method.loss(s.net, x, y, class_weight=s.class_weight, tools=tools)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"Loss became {float(out.loss)} at epoch {epoch + 1}, step {step + 1}.")
        s.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        s.optimizer.step()
        seen += y.shape[0]
        loss_sum += float(out.loss.detach()) * y.shape[0]
        correct += int((out.logits.argmax(1) == y).sum())
        ips = seen * dinfo.world / max(time.time() - t0, 1e-9)
        remaining = ((steps - step - 1) + (config.epochs - epoch - 1) * steps) * config.batch_size / ips
        if bar is not None:
            bar.set_postfix(loss=f"{float(out.loss.detach()):.3f}", img_s=f"{ips:.1f}")
            bar.update(1)
        if step % 5 == 0 or step == steps - 1:
            s.log.write("step", epoch=epoch + 1, step=step + 1, steps_per_epoch=steps, loss=float(out.loss.detach()),
                        parts=out.parts, images_per_s=ips, eta_s=remaining)
    if bar is not None:
        bar.close()
    seconds = time.time() - t0
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "seconds": seconds,
            "images_per_s": seen * dinfo.world / max(seconds, 1e-9)}


def _validate(s: _Session, model: torch.nn.Module, device: torch.device) -> tuple[dict[str, float], bool]:
    probs = predict_proba(model, s.val_set.images, device=device).numpy()
    val = classification_metrics(labels=s.val_set.labels.numpy(), probs=probs) if len(s.val_set) else {}
    return val, bool(val) and is_collapsed(val, num_classes=len(s.data.classes))


def _end_epoch(s: _Session, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
    """Validate, remember the best epoch, save the resumable state atomically, log."""
    val, collapsed = _validate(s, s.model, s.device)
    record = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_accuracy": stats["train_accuracy"],
              "eps": eps_for_epoch(s.config, epoch) if s.method.uses_pgd else 0.0, "seconds": stats["seconds"],
              "images_per_s": stats["images_per_s"],
              "val": {k: val[k] for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc",
                                          "nll", "majority_fraction") if k in val},
              "collapsed": collapsed}
    s.history.append(record)
    main = s.dinfo.is_main
    if val and val["balanced_accuracy"] >= s.best["bacc"]:
        s.best = {"bacc": val["balanced_accuracy"], "epoch": epoch + 1}
        if s.config.select == "best_val_bacc" and main:
            atomic_save_tensors(s.run_dir / "best.safetensors", {k: v for k, v in s.model.state_dict().items()})
    if main:
        atomic_save_tensors(s.state_file, _state_tensors(s.model, s.optimizer, s.generator, s.cpu_generator()),
                            metadata={"progress": json.dumps({"epoch": epoch + 1, "history": s.history, "best": s.best})})
    distributed.barrier(s.dinfo)
    s.log.write("epoch", **record)
    return record


def _finish(s: _Session, *, wall_start: float) -> TrainResult:
    """Pick the final weights, validate them on the CPU, write ``model.safetensors`` and its card."""
    config = s.config
    final_epoch = config.epochs
    model = s.model
    if config.select == "best_val_bacc" and (s.run_dir / "best.safetensors").is_file():
        with safe_open(str(s.run_dir / "best.safetensors"), framework="pt", device="cpu") as fh:
            model.load_state_dict({k: fh.get_tensor(k) for k in fh.keys()})
        final_epoch = s.best["epoch"]
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    val, collapsed = _validate(s, model, torch.device("cpu"))
    split = s.split
    card = {
        "name": s.run_dir.name,
        "method": config.method,
        "method_summary": s.method.summary,
        "config": config.to_dict(),
        "epochs_done": len(s.history),
        "selected_epoch": final_epoch,
        "selection_rule": config.select,
        "image_size": config.image_size,
        "classes": list(s.data.classes),
        "split": {"hash": split.hash, "seed": split.seed, "fractions": list(split.fractions),
                  "folds": split.folds, "fold": split.fold,
                  "train_patients": split.patients["train"], "val_patients": split.patients["val"],
                  "counts": {k: len(v) for k, v in split.images.items()}},
        "data": s.data.report.to_dict(),
        "val_metrics": val,
        "collapsed": collapsed,
        "train_seconds": sum(h["seconds"] for h in s.history),
        "device": str(s.device),
        "world_size": s.dinfo.world,
        "medrobust_version": __version__,
        "history": s.history,
    }
    if collapsed:
        card["warning"] = ("COLLAPSED: the final model answers one class for most validation images "
                           f"(balanced accuracy {val['balanced_accuracy']:.3f}, majority fraction "
                           f"{val['majority_fraction']:.3f}); its robustness numbers are meaningless.")
        s.log.write("warning", message=card["warning"])
    ckpt = s.run_dir / "model.safetensors"
    if s.dinfo.is_main:
        card = save_checkpoint(ckpt, model, card)
    distributed.barrier(s.dinfo)
    s.log.write("done", checkpoint=str(ckpt), epochs_done=len(s.history), collapsed=collapsed,
                wall_seconds=time.time() - wall_start, val=val)
    return TrainResult(run_dir=s.run_dir, checkpoint=ckpt, card=card, history=s.history)


def train(
    config: TrainConfig,
    *,
    roots,
    run_dir: str | Path,
    show_progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or resume) one model; writes config, split, progress, state and the final checkpoint.

    Parameters
    ----------
    config
        The run's settings (see :class:`TrainConfig` and :data:`PRESETS`).
    roots
        Data folders in the upstream layout.
    run_dir
        Output folder. If it holds a ``state.safetensors`` from the same config, training resumes
        after its last complete epoch.
    on_epoch
        Called with each epoch's record (loss, accuracy, validation metrics, seconds).
    """
    s = _prepare(config, roots, Path(run_dir), show_progress=show_progress)
    _resume(s)
    images, labels = s.train_set.images.to(s.device), s.train_set.labels.to(s.device)
    if s.start_epoch == 0:
        s.log.write("start", method=config.method, config=config.to_dict(), n_train=len(s.train_set),
                    n_val=len(s.val_set), steps_per_epoch=s.steps_per_epoch, epochs=config.epochs,
                    device=str(s.device), split_hash=s.split.hash, data=s.data.report.to_dict())
    wall_start = time.time()
    for epoch in range(s.start_epoch, config.epochs):
        stats = _train_epoch(s, epoch, images, labels)
        record = _end_epoch(s, epoch, stats)
        if on_epoch is not None:
            on_epoch(record)
    return _finish(s, wall_start=wall_start)
