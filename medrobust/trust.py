"""What the benchmark learns about a model that must reach the place where it answers: its decision rule.

From the **validation patients** of a model (never its test patients), :func:`fit_trust` fits

* a temperature (:func:`medrobust.calibrate.fit_temperature`): calibrated probabilities;
* an operating point on the calibrated P(class 1) for two classes (Youden's J by default, or a target
  sensitivity): the verdict rule, instead of 0.5; for K > 2 classes the verdict is the most probable class;
* a referral level (:func:`medrobust.decision.referral_level`): below it the model says "uncertain — refer"
  instead of a verdict; it keeps ``coverage`` of the validation cases;
* split-conformal thresholds (LAC and APS) for prediction sets that promise ``1 - alpha`` coverage.

:func:`assess_trust` then measures each promise on the test patients, clean and under every condition
of the benchmark (attacks and corruptions): calibration before and after the temperature, the rates at
the operating point with patient-bootstrap CIs (and PPV/NPV at other prevalences), risk–coverage curves
and AURC, and the conformal sets' empirical coverage. Cross-validated results get one fit per fold, each
applied to that fold's out-of-fold test images, then pooled.

The fits live in the results file (``result["trust"]``) and the validation logits beside it
(``<name>.val.npz``), so a fit never needs the weights again; :func:`decision_for` finds the fit of a
loaded model (matched by the sha256 of its weights) for the dashboard and ``predict``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medrobust.calibrate import apply_temperature, fit_temperature
from medrobust.choices import ConformalMethod, ThresholdRule, parse_choice
from medrobust.decision import (
    choose_threshold,
    conformal_quantile,
    predictive_values,
    prediction_sets,
    rates_at_threshold,
    referral_level,
    risk_coverage,
    set_coverage,
    verdict_confidence,
    verdicts,
)
from medrobust.fileio import atomic_write_bytes, atomic_write_text
from medrobust.metrics import classification_metrics
from medrobust.stats import cluster_bootstrap_statistic

#: Prevalences at which PPV and NPV are restated (the data's own ~80 % COVID-19 is not a clinic's).
PREVALENCES = (0.05, 0.1, 0.2, 0.5)
#: Calibration metrics compared before and after the temperature.
CALIBRATION_KEYS = ("rmsce", "rmsce_plugin", "ece", "nll", "brier", "entropy")
#: Points kept of each risk–coverage curve in the results file.
CURVE_POINTS = 50
REFER = -1  # the verdict code of "uncertain — refer"


@dataclass(frozen=True)
class TrustConfig:
    """How the decision rule is chosen on validation patients."""

    rule: str = ThresholdRule.YOUDEN.value
    target_sensitivity: float = 0.9
    coverage: float = 0.8  # fraction of validation cases answered; the rest are referred
    alpha: float = 0.1  # conformal sets promise 1 - alpha coverage

    def validate(self) -> "TrustConfig":
        parse_choice(ThresholdRule, self.rule)
        if not 0.0 < self.target_sensitivity < 1.0:
            raise ValueError(f"target sensitivity must be in (0, 1), got {self.target_sensitivity}.")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"referral coverage must be in (0, 1], got {self.coverage}.")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"conformal alpha must be in (0, 1), got {self.alpha}.")
        return self


# --------------------------------------------------------------------------- validation logits


@dataclass
class ValLogits:
    """Clean fp32 logits of a model's validation patients (one fold's, or pooled over folds)."""

    keys: list[str]
    labels: np.ndarray  # (N,) int
    groups: np.ndarray  # (N,) patient keys
    folds: np.ndarray  # (N,) fold of the model that scored the image; -1 for a single split
    logits: np.ndarray  # (N, K) float32

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not (self.labels.shape[0] == self.groups.shape[0] == self.folds.shape[0] == self.logits.shape[0] == n):
            raise ValueError("validation keys, labels, patients, folds and logits differ in length.")

    @classmethod
    def concat(cls, parts: Sequence["ValLogits"]) -> "ValLogits":
        return cls(keys=[k for p in parts for k in p.keys], labels=np.concatenate([p.labels for p in parts]),
                   groups=np.concatenate([p.groups for p in parts]), folds=np.concatenate([p.folds for p in parts]),
                   logits=np.concatenate([p.logits for p in parts]))

    def fold(self, fold: int) -> "ValLogits":
        sel = np.flatnonzero(self.folds == fold)
        return ValLogits(keys=[self.keys[i] for i in sel], labels=self.labels[sel], groups=self.groups[sel],
                         folds=self.folds[sel], logits=self.logits[sel])

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, keys=np.array(self.keys), labels=self.labels, groups=self.groups.astype(str),
                            folds=self.folds, logits=self.logits)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "ValLogits":
        with np.load(path, allow_pickle=False) as z:
            return cls(keys=[str(k) for k in z["keys"]], labels=z["labels"], groups=z["groups"], folds=z["folds"],
                       logits=z["logits"])


def val_path(result_json: str | Path) -> Path:
    """Where a result's validation logits live: ``<name>.val.npz`` beside ``<name>.json``."""
    return Path(result_json).with_suffix(".val.npz")


def validation_logits(model, card: dict[str, Any], data, *, device="cpu", batch_size: int = 64) -> ValLogits | None:
    """Clean fp32 logits of the validation patients of ``card``'s split in ``data`` (None when it has none).

    ``data`` is the :class:`medrobust.data.Dataset` the model was trained on (rebuilt with the same classes);
    the split is rebuilt from the card and checked against the training patients.
    """
    from medrobust.data import check_no_overlap, split_from_info
    from medrobust.evaluation import _logits, map_labels
    from medrobust.checkpoints import classes_of

    info = card.get("split") or {}
    if not info.get("train_patients"):
        return None
    split = split_from_info(data.records, info)
    keys = split.images.get("val") or []
    if not keys:
        return None
    check_no_overlap(train_patients=info.get("train_patients", []), eval_patients=split.patients["val"])
    part = data.subset(keys)
    labels = map_labels(part.labels, data_classes=data.classes, model_classes=classes_of(card)).numpy()
    model.eval()
    x = part.float_images()  # uint8 -> [0, 1], as every evaluation sees the images
    out = [_logits(model, x[i:i + batch_size].to(device)) for i in range(0, len(part), batch_size)]
    fold = int(info.get("fold", -1)) if info.get("folds") else -1
    return ValLogits(keys=[r.key for r in part.records], labels=labels.astype(np.int64),
                     groups=np.array([r.patient for r in part.records]), folds=np.full(len(part), fold),
                     logits=np.concatenate(out).astype(np.float32))


def fold_validation_logits(ckpt: str | Path, fold: int, *, roots, device: torch.device | str = "cpu",
                           cache_dir: str | Path | None = None, data=None):
    """The clean logits of fold ``fold``'s validation patients (:class:`medrobust.trust.ValLogits`), kept as
    ``fold<i>.val.npz`` in ``cache_dir`` keyed by the weights' sha256; None when the fold has no validation part."""
    from medrobust.checkpoints import image_size_of, load_checkpoint, read_card
    from medrobust.data import load_dataset
    from medrobust.evaluation import _require_fold

    card = read_card(ckpt)
    _require_fold(card, fold)
    cache = Path(cache_dir) if cache_dir is not None else None
    kept = cache / f"fold{fold}.val.npz" if cache is not None else None
    if kept is not None and kept.is_file() and kept.with_suffix(".json").is_file():
        if json.loads(kept.with_suffix(".json").read_text()).get("sha256") == card.get("sha256"):
            return ValLogits.load(kept)
    model, card = load_checkpoint(ckpt, device=device)
    classes = (card.get("config") or {}).get("classes")
    size = image_size_of(card, name=f"fold {fold}")
    if data is None or data.image_size != size or (classes and tuple(data.classes) != tuple(classes)):
        data = load_dataset(roots, image_size=size, classes=classes)
    val = validation_logits(model, card, data, device=device)
    if val is not None and kept is not None:
        cache.mkdir(parents=True, exist_ok=True)
        val.save(kept)
        atomic_write_text(kept.with_suffix(".json"), json.dumps({"sha256": card.get("sha256")}))
    return val



# --------------------------------------------------------------------------- the fit


def fit_trust(*, logits: np.ndarray, labels: np.ndarray, groups: Sequence[Any] | None = None,
              config: TrustConfig = TrustConfig()) -> dict[str, Any]:
    """The decision rule of one model from its validation logits (N, K) and labels.

    Returns a JSON-ready dict: ``temperature``, ``threshold`` (on the calibrated P(class 1); None for
    K > 2), ``referral_level`` (on :func:`medrobust.decision.verdict_confidence` of the calibrated
    probabilities), ``conformal`` (``{"lac": qhat, "aps": qhat}``), the config and the validation counts.
    """
    config.validate()
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = z.shape[1]
    if k == 2 and len(set(y.tolist())) < 2:
        raise ValueError("the validation patients hold one class only; no operating point can be chosen.")
    t = fit_temperature(logits=z, labels=y)
    p = apply_temperature(logits=z, temperature=t)
    threshold = (choose_threshold(labels=y, scores=p[:, 1], rule=config.rule,
                                  target_sensitivity=config.target_sensitivity) if k == 2 else None)
    conf = verdict_confidence(probs=p, threshold=threshold)
    return {
        "temperature": float(t),
        "threshold": None if threshold is None else float(threshold),
        "referral_level": float(referral_level(confidence=conf, coverage=config.coverage)),
        "conformal": {m.value: float(conformal_quantile(probs=p, labels=y, alpha=config.alpha, method=m.value))
                      for m in ConformalMethod},
        "config": asdict(config),
        "n_val": int(y.size),
        "n_val_patients": int(len(set(np.asarray(groups).tolist()))) if groups is not None else None,
        "n_val_per_class": [int((y == c).sum()) for c in range(k)],
    }


@dataclass(frozen=True)
class Decision:
    """A fitted decision rule, applied to new logits (what the Stress test and ``predict`` show)."""

    fit: dict[str, Any]
    classes: tuple[str, ...]
    source: str = ""  # where the fit came from (results file)

    @property
    def temperature(self) -> float:
        return float(self.fit["temperature"])

    @property
    def threshold(self) -> float | None:
        t = self.fit.get("threshold")
        return None if t is None else float(t)

    def apply(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: calibrated ``probs`` (N, K), ``verdict`` (class index, or :data:`REFER`),
        ``answer`` (the verdict before referral), ``confidence`` and the conformal ``sets`` (N, K) bool by method."""
        z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
        p = apply_temperature(logits=z, temperature=self.temperature)
        answer = verdicts(probs=p, threshold=self.threshold)
        conf = verdict_confidence(probs=p, threshold=self.threshold)
        verdict = np.where(conf >= float(self.fit["referral_level"]), answer, REFER)
        sets = {m: prediction_sets(probs=p, qhat=float(q), method=m) for m, q in self.fit["conformal"].items()}
        return {"probs": p, "answer": answer, "verdict": verdict, "confidence": conf, "sets": sets}

    def describe(self) -> str:
        cfg = self.fit.get("config", {})
        rule = ("Youden's J" if cfg.get("rule") == ThresholdRule.YOUDEN.value
                else f"sensitivity ≥ {cfg.get('target_sensitivity', 0.9):.0%}")
        point = (f"verdict {self.classes[1]} when the calibrated P({self.classes[1]}) ≥ {self.threshold:.3f} "
                 f"({rule})" if self.threshold is not None else "verdict = the most probable class")
        return (f"temperature {self.temperature:.2f}; {point}; 'refer' below the confidence that answers "
                f"{cfg.get('coverage', 0.8):.0%} of validation cases; conformal sets promise "
                f"{1 - cfg.get('alpha', 0.1):.0%} coverage; fitted on {self.fit.get('n_val')} validation images")


# --------------------------------------------------------------------------- the assessment on test patients


def _fit_of(fits: dict[str, Any], fold: int) -> dict[str, Any]:
    key = str(int(fold))
    if key not in fits:
        raise ValueError(f"no decision rule was fitted for fold {fold} (have {', '.join(sorted(fits))}).")
    return fits[key]


def _apply_by_fold(logits: np.ndarray, folds: np.ndarray, fits: dict[str, Any]) -> dict[str, Any]:
    """:meth:`Decision.apply` with each image's own fold's rule: calibrated ``probs``, ``answer``, ``confidence``,
    ``kept`` (answered, not referred) and the conformal ``sets`` by method."""
    z = np.asarray(logits, dtype=np.float64)
    n, k = z.shape
    out = {"probs": np.empty((n, k)), "answer": np.empty(n, np.int64), "confidence": np.empty(n),
           "kept": np.empty(n, bool), "sets": {m.value: np.zeros((n, k), bool) for m in ConformalMethod}}
    for f in np.unique(folds):
        sel = folds == f
        d = Decision(fit=_fit_of(fits, int(f)), classes=()).apply(z[sel])
        out["probs"][sel], out["answer"][sel], out["confidence"][sel] = d["probs"], d["answer"], d["confidence"]
        out["kept"][sel] = d["verdict"] != REFER
        for m, v in d["sets"].items():
            out["sets"][m][sel] = v
    return out


def _thin(curve: dict[str, Any], points: int = CURVE_POINTS) -> dict[str, list[float]]:
    cov, risk = np.asarray(curve["coverage"]), np.asarray(curve["risk"])
    idx = np.unique(np.linspace(0, cov.size - 1, min(points, cov.size)).round().astype(int))
    return {"coverage": cov[idx].round(4).tolist(), "risk": risk[idx].round(4).tolist()}


def _binary_rates(y: np.ndarray, answer: np.ndarray) -> dict[str, float]:
    r = rates_at_threshold(labels=y, scores=answer.astype(np.float64), threshold=0.5)
    out = {k: float(r[k]) for k in ("sensitivity", "specificity", "ppv", "npv")}
    for prev in PREVALENCES:
        ppv, npv = (predictive_values(sensitivity=out["sensitivity"], specificity=out["specificity"], prevalence=prev)
                    if math.isfinite(out["sensitivity"]) and math.isfinite(out["specificity"]) else (math.nan, math.nan))
        out[f"ppv@{prev:g}"], out[f"npv@{prev:g}"] = float(ppv), float(npv)
    return out


def _calibration(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = classification_metrics(labels=y, probs=p)
    return {k: float(m[k]) for k in CALIBRATION_KEYS}


def _keeps_curve(cond) -> bool:
    """Risk–coverage curves kept in the file: clean, every attack radius, each clinical corruption at its worst level
    (every condition keeps its AURC)."""
    suite = getattr(cond, "suite", "clean")
    return suite in ("clean", "attack") or (suite == "clinical" and float(getattr(cond, "severity", 0)) >= 5)


def _condition_key(cond) -> str:
    return cond.key if hasattr(cond, "key") else str(cond)


def assess_trust(ps, fits: dict[str, Any], *, classes: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Measure the fitted decision rules on the test images of a :class:`~medrobust.evaluation.PerSample`.

    ``fits`` maps the fold (as a string; ``"-1"`` for a single split) to :func:`fit_trust`'s dict.
    """
    y = np.asarray(ps.labels, dtype=np.int64)
    groups = np.asarray(ps.groups)
    folds = np.asarray(ps.folds)
    raw = ps.probs(0)
    clean = _apply_by_fold(ps.logits[0], folds, fits)
    cal = clean["probs"]
    k = raw.shape[1]

    # calibration before/after, with patient-bootstrap CIs of each and of the change
    def calib_stat(idx):
        a, b = _calibration(y[idx], raw[idx]), _calibration(y[idx], cal[idx])
        return {**{f"raw.{k_}": v for k_, v in a.items()}, **{f"cal.{k_}": v for k_, v in b.items()},
                **{f"change.{k_}": b[k_] - a[k_] for k_ in CALIBRATION_KEYS}}

    calib_ci = cluster_bootstrap_statistic(calib_stat, labels=y, groups=groups, n_boot=n_boot, seed=seed)
    before, after = _calibration(y, raw), _calibration(y, cal)
    calibration = {"raw": before, "temperature_scaled": after,
                   "change": {k_: after[k_] - before[k_] for k_ in CALIBRATION_KEYS},
                   "ci": {name: list(v) for name, v in calib_ci.items()}}

    answer, kept = clean["answer"], clean["kept"]
    out: dict[str, Any] = {"calibration": calibration, "classes": list(classes)}
    if k == 2:
        point = _binary_rates(y, answer)
        point_ci = cluster_bootstrap_statistic(lambda idx: _binary_rates(y[idx], answer[idx]), labels=y,
                                               groups=groups, n_boot=n_boot, seed=seed)
        out["operating_point"] = {**point, "ci": {name: list(v) for name, v in point_ci.items()},
                                  "prevalence": float(np.mean(y == 1)), "prevalences": list(PREVALENCES),
                                  "thresholds": {f: fit["threshold"] for f, fit in sorted(fits.items())},
                                  "note": "verdict positive when the calibrated P(class 1) reaches the threshold "
                                          "chosen on the validation patients; ppv/npv at the data's prevalence, "
                                          "ppv@p/npv@p restated by Bayes' rule for prevalence p"}
    else:
        out["operating_point"] = {"note": f"{k} classes: the verdict is the most probable class", "thresholds": None}
    answered = kept.sum()
    out["referral"] = {
        "coverage": float(kept.mean()),
        "risk_answered": float(np.mean(answer[kept] != y[kept])) if answered else math.nan,
        "risk_all": float(np.mean(answer != y)),
        "levels": {f: fit["referral_level"] for f, fit in sorted(fits.items())},
        "target_coverage": float(next(iter(fits.values()))["config"]["coverage"]),
    }
    # every condition: risk–coverage, AURC, conformal coverage (the fold's temperature, threshold and qhat)
    conditions = []
    for i, cond in enumerate(ps.conditions):
        d = _apply_by_fold(ps.logits[i], folds, fits)
        a, c, kp = d["answer"], d["confidence"], d["kept"]
        correct = a == y
        rc = risk_coverage(confidence=c, correct=correct)
        row = {"condition": _condition_key(cond), "suite": getattr(cond, "suite", ""),
               "perturbation": getattr(cond, "perturbation", ""), "severity": float(getattr(cond, "severity", 0.0)),
               "risk_all": float(1.0 - correct.mean()), "aurc": float(rc["aurc"]), "e_aurc": float(rc["e_aurc"]),
               "answered": float(kp.mean()),
               "risk_answered": float(1.0 - correct[kp].mean()) if kp.any() else math.nan,
               "curve": _thin(rc) if _keeps_curve(cond) else None}
        for m in ConformalMethod:
            sc = set_coverage(sets=d["sets"][m.value], labels=y)
            row[f"{m.value}_coverage"] = float(sc["coverage"])
            row[f"{m.value}_size"] = float(sc["mean_size"])
        conditions.append(row)
    out["conditions"] = conditions
    out["promised_coverage"] = 1.0 - float(next(iter(fits.values()))["config"]["alpha"])
    return out


def add_cv_trust(result: dict[str, Any], cv_dir: str | Path, *, roots, device="cpu", cache_dir=None,
                 config: TrustConfig = TrustConfig(), n_boot: int | None = None, seed: int = 0,
                 log=lambda text: None) -> bool:
    """Fit each fold's decision rule from its validation patients and assess the pooled result (False when a fold
    has no validation patients)."""
    from medrobust.evaluation import fold_checkpoints

    vals = [fold_validation_logits(c, i, roots=roots, device=device, cache_dir=cache_dir)
            for i, c in enumerate(fold_checkpoints(cv_dir))]
    if any(v is None for v in vals):
        log("some folds have no validation patients: no decision rule (temperature, operating point) fitted")
        return False
    add_trust(result, ValLogits.concat(vals), config=config, n_boot=n_boot, seed=seed)
    return True


def add_trust(result: dict[str, Any], val: ValLogits, *, config: TrustConfig = TrustConfig(), n_boot: int | None = None,
              seed: int = 0) -> dict[str, Any]:
    """Fit the decision rule of every fold of ``result`` from ``val`` and assess it; sets ``result["trust"]``.

    ``result`` needs its per-sample logits (in memory or the ``.logits.npz`` beside its file).
    """
    from medrobust.evaluation import per_sample_of

    ps = per_sample_of(result)
    if ps is None:
        raise ValueError(f"{result.get('name')}: the per-sample logits (.logits.npz) are missing; evaluate it again.")
    test_folds = sorted(set(np.asarray(ps.folds).tolist()))
    fits = {}
    for f in test_folds:
        v = val.fold(int(f))
        if not v.keys:
            raise ValueError(f"{result.get('name')}: no validation logits for fold {f}.")
        overlap = set(v.keys) & set(k for k, ff in zip(ps.keys, ps.folds) if ff == f)
        if overlap:
            raise ValueError(f"{result.get('name')}: {len(overlap)} validation image(s) of fold {f} are also its "
                             "test images; the decision rule must never see the test patients.")
        fits[str(int(f))] = fit_trust(logits=v.logits, labels=v.labels, groups=v.groups, config=config)
    n_boot = int(n_boot or (result.get("params") or {}).get("n_boot") or 1000)
    result["trust"] = {"fits": fits,
                       "assessment": assess_trust(ps, fits, classes=result["classes"], n_boot=n_boot, seed=seed),
                       "note": "fitted on each model's validation patients (never its test patients); "
                               "assessed on the test patients, pooled over folds"}
    result["_val"] = val
    return result


# --------------------------------------------------------------------------- finding a model's fit


def decision_for(card: dict[str, Any], results_dirs: Sequence[str | Path]) -> Decision | None:
    """The fitted decision rule of the model whose card is ``card``: the result named after it, in one of
    ``results_dirs``, whose ``model_sha256`` equals the card's sha256 (a fit of other weights never applies)."""
    from medrobust.checkpoints import classes_of

    name, sha = card.get("name"), card.get("sha256")
    if not name or not sha:
        return None
    for d in results_dirs:
        path = Path(d) / f"{name}.json"
        if not path.is_file():
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        fits = (result.get("trust") or {}).get("fits") or {}
        if result.get("model_sha256") == sha and "-1" in fits:
            return Decision(fit=fits["-1"], classes=tuple(classes_of(card)), source=str(path))
    return None

