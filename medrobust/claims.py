"""The paper's claims, each confirmed, refuted or left undecided by paired patient-bootstrap intervals.

Martínez-Martínez & Nabavi make four claims (:data:`CLAIMS` 1-4, in the paper's words, shortened); we add
two of our own (5, 6). Each claim is decided by one or more *comparisons*: a difference ``B - A`` between
two models on the same test images (or of one model against chance), with a 95 % percentile interval from
a bootstrap that resamples *patients* and scores both models on the same resample
(:func:`medrobust.stats.paired_cluster_bootstrap` for balanced accuracy,
:func:`medrobust.stats.cluster_bootstrap_statistic` for the debiased RMSCE), and the sign of ``B - A`` the
claim predicts.

The rule (:func:`verdict`): a claim is **confirmed** when every deciding interval excludes 0 on the claimed
side, **refuted** when any excludes 0 on the opposite side, and **undecided** otherwise: an interval that
includes 0 decides nothing. :func:`decide_claims` adds two outcomes for result sets that lack something a
claim needs (a method, per-sample logits, a condition, a fitted temperature): **not evaluable** when none of
the claim's comparisons can be made, and **partly confirmed** when only some can and all of those confirm
(a refutation needs only one counter-example, so a partial set still refutes).

* :func:`verdict` -- the rule, a pure function of intervals and claimed signs.
* :func:`decide_claims` -- every claim on one result set (the results of one split, or pooled folds).
* :func:`claims_rows`, :func:`claims_markdown` -- the decisions as rows and as a Markdown table.

Balanced accuracy differences are stated in percentage points (x100, one decimal, explicit sign), RMSCE
differences as fractions with three decimals, always as ``B − A = d [lo, hi]`` with the signs as computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medrobust.calibrate import apply_temperature
from medrobust.intervals import format_difference, format_value
from medrobust.metrics import classification_metrics
from medrobust.stats import cluster_bootstrap_ci, cluster_bootstrap_statistic, paired_cluster_bootstrap

__all__ = [
    "CHANCE",
    "CLAIMS",
    "Claim",
    "Comparison",
    "TEMPERATURE",
    "VERDICTS",
    "claims_markdown",
    "claims_rows",
    "comparison_text",
    "condition_label",
    "decide_claims",
    "verdict",
]

#: The four training methods, in the paper's order (only results of these methods are read).
METHODS: tuple[str, ...] = ("standard", "robust", "augmix", "robustaugmix")
#: The reference ``A`` of a comparison against chance: balanced accuracy ``1 / K`` for ``K`` classes.
CHANCE = "chance"
#: Suffix of a model variant whose clean logits are divided by the temperature fitted on its validation
#: patients (one per fold, ``result["trust"]["fits"]``), e.g. ``"standard + temperature"``.
TEMPERATURE = " + temperature"
#: Every outcome :func:`decide_claims` gives a claim; :func:`verdict` gives the first three.
VERDICTS: tuple[str, ...] = ("confirmed", "refuted", "undecided", "partly confirmed", "not evaluable")
#: The metrics a comparison may use.
METRICS: tuple[str, ...] = ("balanced_accuracy", "rmsce")

_MINUS = "\u2212"
# Interval ends this close to 0 touch it: float rounding in a zero difference must not decide a claim.
_ZERO = 1e-12
_LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    """One difference ``B - A`` that decides (part of) a claim.

    Attributes
    ----------
    b, a : str
        The model named first (``B``) and the reference (``A``): a method, ``"<method> + temperature"``, or
        :data:`CHANCE` (only as ``a``, only for balanced accuracy).
    condition : str
        The condition's key (:attr:`medrobust.evaluation.Condition.key`), e.g. ``"clean@0"``,
        ``"pgd_l2@2"``, ``"gaussian@0.1"``, ``"clinical/gaussian_noise@3"``.
    metric : str
        ``"balanced_accuracy"`` or ``"rmsce"`` (debiased, :func:`medrobust.metrics.classification_metrics`).
    expected : int
        The sign of ``B - A`` the claim predicts: ``+1`` or ``-1``.
    optional : bool
        Made when the results allow it, left out silently otherwise (a condition or a fit not every
        result set has); a required comparison that cannot be made makes the claim partial.
    """

    b: str
    a: str
    condition: str
    metric: str
    expected: int
    optional: bool = False


@dataclass(frozen=True)
class Claim:
    """A claim: its number, its words, whose claim it is, and the comparisons that decide it."""

    id: str
    text: str
    source: str  # "paper" or "ours"
    comparisons: tuple[Comparison, ...]
    rule: str  # how the comparisons decide it, in one line


def _cross(bs: Sequence[str], as_: Sequence[str], conditions: Sequence[str], *, metric: str, expected: int,
           optional_conditions: Sequence[str] = ()) -> tuple[Comparison, ...]:
    return tuple(Comparison(b, a, c, metric, expected, optional=c in optional_conditions)
                 for c in conditions for b in bs for a in as_)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "1", "A standard model has no robustness to PGD.", "paper",
        (Comparison("standard", CHANCE, "pgd_l2@2", "balanced_accuracy", -1),),
        "standard's balanced accuracy under the worst-case attack at eps 2 minus chance (0.5): confirmed when "
        "the whole interval is below chance, refuted when it is above (robustness left), undecided across it."),
    Claim(
        "2", "AugMix lowers robustness to attacks and to noise.", "paper",
        _cross(["augmix"], ["standard"], ["pgd_l2@2", "gaussian@0.1", "clinical/gaussian_noise@3"],
               metric="balanced_accuracy", expected=-1, optional_conditions=["clinical/gaussian_noise@3"]),
        "augmix − standard in balanced accuracy under PGD eps 2 and Gaussian noise 0.1 (and clinical Gaussian "
        "noise level 3 when evaluated): every interval below 0 confirms."),
    Claim(
        "3", "Robust and RobustAugMix beat Standard and AugMix under PGD, Gaussian and speckle noise.", "paper",
        _cross(["robust", "robustaugmix"], ["standard", "augmix"], ["pgd_l2@2", "gaussian@0.1", "speckle@0.1"],
               metric="balanced_accuracy", expected=+1),
        "each of robust, robustaugmix minus each of standard, augmix in balanced accuracy under PGD eps 2, "
        "Gaussian 0.1 and speckle 0.1 (12 intervals): every one above 0 confirms."),
    Claim(
        "4", "RobustAugMix has the lowest calibration error.", "paper",
        _cross(["robustaugmix"], ["standard", "robust", "augmix"], ["clean@0"], metric="rmsce", expected=-1)
        + (Comparison("robustaugmix", "standard" + TEMPERATURE, "clean@0", "rmsce", -1, optional=True),),
        "robustaugmix − each other method in debiased RMSCE on clean images (and − standard + temperature when "
        "standard carries a fitted temperature): every interval below 0 confirms."),
    Claim(
        "5", "RobustAugMix beats plain adversarial training.", "ours",
        (Comparison("robustaugmix", "robust", "clean@0", "balanced_accuracy", +1),
         Comparison("robustaugmix", "robust", "pgd_l2@2", "balanced_accuracy", +1),
         Comparison("robustaugmix", "robust", "clean@0", "rmsce", -1)),
        "robustaugmix − robust: balanced accuracy clean and under PGD eps 2 above 0, RMSCE below 0."),
    Claim(
        "6", "Temperature scaling alone lowers standard's calibration error (without retraining).", "ours",
        (Comparison("standard" + TEMPERATURE, "standard", "clean@0", "rmsce", -1),),
        "(standard + temperature) − standard in debiased RMSCE on clean images, the temperature fitted on "
        "validation patients only: an interval below 0 confirms (it lowers the error)."),
)
"""The paper's four claims and two of ours, each with the comparisons that decide it."""


# --------------------------------------------------------------------------- the rule


def verdict(intervals: Sequence[tuple[Sequence[float], int]]) -> str:
    """The verdict of a claim from its deciding intervals and the signs it predicts.

    Parameters
    ----------
    intervals : sequence of ((float, float), int)
        One ``((lower, upper), expected_sign)`` per deciding comparison: the interval of ``B - A`` and the
        sign the claim predicts (``+1``: "B is higher", ``-1``: "B is lower").

    Returns
    -------
    str
        ``"confirmed"`` when every interval excludes 0 on the claimed side (``lower > 0`` for ``+1``,
        ``upper < 0`` for ``-1``); ``"refuted"`` when any excludes 0 on the opposite side; ``"undecided"``
        otherwise. An interval that includes 0 (or touches it: an end within 1e-12 of 0, or is nan)
        decides nothing.

    Raises
    ------
    ValueError
        If ``intervals`` is empty, an interval is not a pair with ``lower <= upper``, or a sign is not
        ``+1`` or ``-1``.

    Examples
    --------
    >>> verdict([((0.02, 0.10), +1), ((-0.3, -0.1), -1)])
    'confirmed'
    >>> verdict([((0.02, 0.10), +1), ((-0.1, 0.2), -1)])
    'undecided'
    >>> verdict([((0.02, 0.10), +1), ((0.01, 0.2), -1)])
    'refuted'
    """
    items = list(intervals)
    if not items:
        raise ValueError("verdict needs at least one interval; a claim with no comparison decides nothing.")
    sides = []
    for i, item in enumerate(items):
        try:
            (lo, hi), sign = item
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"intervals[{i}] must be ((lower, upper), expected_sign), got {item!r}.") from exc
        if isinstance(sign, bool) or sign not in (1, -1):
            raise ValueError(f"intervals[{i}] has expected sign {sign!r}; use +1 (B higher) or -1 (B lower).")
        if lo > hi:
            raise ValueError(f"intervals[{i}] = ({lo}, {hi}) has its lower end above its upper end.")
        sides.append(_side(lo, hi, int(sign)))
    if "opposite" in sides:
        return "refuted"
    return "confirmed" if all(s == "claimed" for s in sides) else "undecided"


def _side(lo: float, hi: float, expected: int) -> str:
    """``claimed``, ``opposite`` or ``includes 0``: where an interval lies relative to 0 and the claim."""
    if math.isnan(lo) or math.isnan(hi):
        return "includes 0"
    if lo > _ZERO:
        return "claimed" if expected > 0 else "opposite"
    if hi < -_ZERO:
        return "claimed" if expected < 0 else "opposite"
    return "includes 0"


# --------------------------------------------------------------------------- words and numbers


def condition_label(key: str) -> str:
    """A condition key in short words: ``"pgd_l2@2"`` -> ``"PGD eps 2"``, ``"gaussian@0.1"`` -> ``"Gaussian 0.1"``.

    Examples
    --------
    >>> [condition_label(k) for k in ("clean@0", "pgd_l2@2", "speckle@0.1", "clinical/gaussian_noise@3")]
    ['clean', 'PGD eps 2', 'speckle 0.1', 'clinical Gaussian noise 3']
    """
    pert, _, sev = key.rpartition("@")
    if pert == "clean":
        return "clean"
    if pert == "pgd_l2":
        return f"PGD eps {sev}"
    if pert.startswith("pgd_"):
        return f"PGD {pert[4:].upper()} eps {sev}"
    named = {"gaussian": "Gaussian", "speckle": "speckle", "salt_and_pepper": "salt & pepper"}
    if pert in named:
        return f"{named[pert]} {sev}"
    if pert.startswith("clinical/"):
        words = pert.split("/", 1)[1].replace("_", " ").replace("gaussian", "Gaussian")
        return f"clinical {words} {sev}"
    return key


def _condition_phrase(key: str) -> str:
    """A condition key as it reads in a sentence: ``"pgd_l2@2"`` -> ``"under PGD attack at eps 2"``."""
    pert, _, sev = key.rpartition("@")
    if pert == "clean":
        return "on clean images"
    if pert.startswith("pgd_"):
        return f"under PGD attack at eps {sev}" + ("" if pert == "pgd_l2" else f" ({pert[4:].upper()})")
    named = {"gaussian": "Gaussian noise", "speckle": "speckle noise", "salt_and_pepper": "salt & pepper noise"}
    if pert in named:
        return f"under {named[pert]} {sev}"
    if pert.startswith("clinical/"):
        return f"under {condition_label(key).rsplit(' ', 1)[0]} level {sev}"
    return f"under {key}"


def _display(variant: str) -> str:
    """A model variant as it stands in ``B − A``: bracketed when it has words of its own."""
    return f"({variant})" if " " in variant else variant


def _unsigned(x: float, metric: str) -> str:
    return format_value(metric, abs(x))


def comparison_text(comparison: Mapping[str, Any]) -> str:
    """One decided comparison as ``"robust − standard, PGD eps 2: +34.4 [+30.4, +39.0] pts"``.

    Balanced accuracy in percentage points ("pts"), RMSCE as a fraction with its name:
    ``"robustaugmix − augmix, RMSCE clean: −0.206 [−0.262, −0.139]"``.
    """
    metric = comparison["metric"]
    lo, hi = comparison["ci"]
    where = condition_label(comparison["condition"])
    if metric == "rmsce":
        where = f"RMSCE {where}"
    pair = f"{_display(comparison['b'])} {_MINUS} {_display(comparison['a'])}"
    d, lo, hi = (0.0 if abs(v) <= _ZERO else v for v in (comparison["difference"], lo, hi))
    return f"{pair}, {where}: {format_difference(metric, d, (lo, hi))}"


def _plain(c: Mapping[str, Any]) -> str:
    """The comparison in words, with its numbers in brackets."""
    d, metric = float(c["difference"]), c["metric"]
    a = f"chance ({100.0 * c['a_value']:.0f} %)" if c["a"] == CHANCE else c["a"]
    noun = "balanced accuracy" if metric == "balanced_accuracy" else "RMSCE"
    phrase = _condition_phrase(c["condition"])
    if math.isnan(d):
        words = f"{c['b']} and {a} cannot be compared {phrase} (the metric is undefined)"
    elif d == 0.0:
        words = f"{c['b']} and {a} have the same {noun} {phrase}"
    elif metric == "balanced_accuracy":
        words = (f"{c['b']} scores {_unsigned(d, metric)} points {'higher' if d > 0 else 'lower'} in balanced "
                 f"accuracy than {a} {phrase}")
    else:
        words = f"{c['b']} has an RMSCE {_unsigned(d, metric)} {'higher' if d > 0 else 'lower'} than {a} {phrase}"
    return f"{words} ({comparison_text(c)})"


def _strength(c: Mapping[str, Any]) -> float:
    """How far the interval lies on the claimed side of 0, in interval widths (negative: on the other side)."""
    lo, hi = c["ci"]
    if math.isnan(lo) or math.isnan(hi):
        return -math.inf
    margin = lo if c["expected_sign"] > 0 else -hi
    width = hi - lo
    return margin / width if width > 0 else math.copysign(math.inf, margin) if margin else 0.0


def _listed(cs: Sequence[Mapping[str, Any]], most: int = 3) -> str:
    text = "; ".join(_plain(c) for c in cs[:most])
    return text + (f"; and {len(cs) - most} more" if len(cs) > most else "")


def _reading(outcome: str, comparisons: Sequence[Mapping[str, Any]], missing: Sequence[str], *,
             n_images: int | None, n_patients: int | None) -> str:
    """One sentence a reader can take away without opening the numbers."""
    if outcome == "not evaluable":
        return f"Not evaluable: {'; '.join(missing)}."
    k = len(comparisons)
    where = f"on the same {n_images} images of {n_patients} patients"
    by_side = {s: [c for c in comparisons if c["side"] == s] for s in ("claimed", "opposite", "includes 0")}
    not_tested = f"; not tested: {', '.join(missing)}" if missing else ""
    if outcome == "refuted":
        opposite = sorted(by_side["opposite"], key=_strength)
        if k == 1:
            side = "below" if opposite[0]["expected_sign"] > 0 else "above"
            body = f"{_plain(opposite[0])}, the whole interval {side} 0, against the claim"
        else:
            lie = "intervals lie" if len(opposite) > 1 else "intervals lies"
            body = f"{len(opposite)} of {k} {lie} on the side opposite to the claim: {_listed(opposite)}"
    elif outcome in ("confirmed", "partly confirmed"):
        weakest = min(comparisons, key=_strength)
        if k == 1:
            side = "above" if weakest["expected_sign"] > 0 else "below"
            body = f"{_plain(weakest)}, the whole interval {side} 0 as claimed"
        else:
            lead = (f"all {k} intervals lie" if outcome == "confirmed"
                    else f"all {k} intervals that could be computed lie")
            body = f"{lead} on the claimed side, the closest to 0: {_plain(weakest)}"
    else:
        open_ = by_side["includes 0"]
        verb = "includes" if len(open_) == 1 else "include"
        body = (f"no interval contradicts the claim, but {len(open_)} of {k} {verb} 0: {_listed(open_)}"
                if k > 1 else f"{_plain(open_[0])}, an interval that includes 0")
    return f"{outcome.capitalize()}: {where}, {body}{not_tested}."


# --------------------------------------------------------------------------- the models on common images


class _Models:
    """The results of one set, aligned on the first one's images, and the probabilities of each variant."""

    def __init__(self, results: Sequence[Mapping[str, Any]]) -> None:
        from medrobust.evaluation import per_sample_of

        self.results: dict[str, Mapping[str, Any]] = {}
        for r in results:
            method = r.get("method")
            if method not in METHODS:
                continue
            if method in self.results:
                raise ValueError(f"two results of method {method} ({self.results[method].get('name')} and "
                                 f"{r.get('name')}); decide the claims on one result set at a time.")
            self.results[method] = r
        self.per_sample: dict[str, Any] = {}
        self.order: dict[str, np.ndarray] = {}
        ref_name: str | None = None
        for method in METHODS:
            r = self.results.get(method)
            ps = per_sample_of(r) if r is not None else None  # type: ignore[arg-type]
            if ps is None:
                continue
            if ref_name is None:
                ref_name, ref = method, ps
                self.keys, self.labels = list(ps.keys), np.asarray(ps.labels, dtype=np.int64)
                self.groups = np.asarray(ps.groups).astype(str)
                self.num_classes = int(ps.logits.shape[-1])
                self.order[method] = np.arange(len(ps.keys))
            else:
                self.order[method] = self._align(method, ps, ref_name, ref)
            self.per_sample[method] = ps
        self.n_images = len(self.keys) if ref_name is not None else None
        self.n_patients = len(set(self.groups.tolist())) if ref_name is not None else None

    def _align(self, method: str, ps: Any, ref_name: str, ref: Any) -> np.ndarray:
        """Indices that put ``ps``'s images in the reference's order; refuse other images."""
        pos = {k: i for i, k in enumerate(ps.keys)}
        a, b = self.name(ref_name), self.name(method)
        if len(pos) != len(ps.keys) or set(pos) != set(ref.keys) or len(ref.keys) != len(ps.keys):
            common = len(set(pos) & set(ref.keys))
            raise ValueError(f"{a} and {b} were not tested on the same images ({len(ref.keys)} and {len(ps.keys)} "
                             f"images, {common} in common), so no paired comparison of them is possible.")
        order = np.array([pos[k] for k in ref.keys], dtype=np.intp)
        if not np.array_equal(np.asarray(ps.labels)[order], np.asarray(ref.labels)):
            raise ValueError(f"{a} and {b} give different labels to the same images, so they were not scored "
                             "against the same ground truth.")
        if not np.array_equal(np.asarray(ps.groups).astype(str)[order], np.asarray(ref.groups).astype(str)):
            raise ValueError(f"{a} and {b} assign the same images to different patients, so no patient bootstrap "
                             "can pair them.")
        return order

    def name(self, method: str) -> str:
        return str(self.results[method].get("name") or method)

    def missing(self, variant: str, condition: str) -> str | None:
        """Why ``variant`` has no probabilities at ``condition`` (None when it has them)."""
        if variant == CHANCE:
            return None
        method = variant[: -len(TEMPERATURE)] if variant.endswith(TEMPERATURE) else variant
        if method not in self.results:
            return f"no {method} result"
        if method not in self.per_sample:
            return f"{self.name(method)} has no per-sample logits (.logits.npz beside its result)"
        if condition not in [c.key for c in self.per_sample[method].conditions]:
            return f"{self.name(method)} was not evaluated at {condition_label(condition)}"
        if variant.endswith(TEMPERATURE):
            fits = ((self.results[method].get("trust") or {}).get("fits")) or {}
            lacking = sorted({str(int(f)) for f in self.per_sample[method].folds} - set(fits), key=int)
            if lacking:
                return (f"{self.name(method)} carries no fitted temperature"
                        + (f" for fold {', '.join(lacking)}" if fits else ""))
        return None

    def probs(self, variant: str, condition: str) -> np.ndarray:
        """``(n, K)`` probabilities of a variant at a condition, in the reference's image order."""
        temperature = variant.endswith(TEMPERATURE)
        method = variant[: -len(TEMPERATURE)] if temperature else variant
        ps = self.per_sample[method]
        index = [c.key for c in ps.conditions].index(condition)
        order = self.order[method]
        if not temperature:
            return ps.probs(index)[order]
        fits = self.results[method]["trust"]["fits"]
        logits = np.asarray(ps.logits[index], dtype=np.float64)[order]
        folds = np.asarray(ps.folds)[order]  # each image gets the temperature of the fold model that tested it
        out = np.empty_like(logits)
        for f in np.unique(folds):
            sel = folds == f
            out[sel] = apply_temperature(logits=logits[sel], temperature=fits[str(int(f))]["temperature"])
        return out


# --------------------------------------------------------------------------- deciding


def _p_value(diff: float, reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "no difference", as :func:`medrobust.stats.paired_cluster_bootstrap`."""
    reps = reps[np.isfinite(reps)]
    if math.isnan(diff) or reps.size == 0:
        return math.nan
    if diff == 0.0:
        return 1.0
    other = np.mean(reps <= 0.0) if diff > 0.0 else np.mean(reps >= 0.0)
    return float(min(1.0, 2.0 * other))


def _rmsce(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(classification_metrics(labels=labels, probs=probs)["rmsce"])


def _compute(models: _Models, wanted: Sequence[Comparison], *, n_boot: int, seed: int) -> dict[Comparison, dict]:
    """Every wanted comparison's difference, interval and p-value (one bootstrap per kind, same seed)."""
    if not models.per_sample or not wanted:  # no result of the set carries per-sample logits
        return {}
    y, g = models.labels, models.groups
    out: dict[Comparison, dict] = {}
    for c in wanted:
        if c.metric != "balanced_accuracy" or c in out:
            continue
        pb = models.probs(c.b, c.condition)
        if c.a == CHANCE:
            chance = 1.0 / models.num_classes
            b = float(classification_metrics(labels=y, probs=pb)["balanced_accuracy"])
            lo, hi = cluster_bootstrap_ci(labels=y, probs=pb, groups=g, metrics=("balanced_accuracy",),
                                          n_boot=n_boot, seed=seed, level=_LEVEL)["balanced_accuracy"]
            out[c] = {"a_value": chance, "b_value": b, "difference": b - chance,
                      "ci": [float(lo) - chance, float(hi) - chance], "p_value": None}
        else:
            r = paired_cluster_bootstrap(labels=y, probs_a=models.probs(c.a, c.condition), probs_b=pb, groups=g,
                                         metrics=("balanced_accuracy",), n_boot=n_boot, seed=seed,
                                         level=_LEVEL)["balanced_accuracy"]
            out[c] = {"a_value": r["a"], "b_value": r["b"], "difference": r["difference"],
                      "ci": [float(v) for v in r["ci"]], "p_value": r["p_value"]}
    # RMSCE: one patient bootstrap for all of them, each variant's RMSCE computed once per resample.
    rmsce = [c for c in wanted if c.metric == "rmsce"]
    if rmsce:
        variants = {(v, c.condition) for c in rmsce for v in (c.a, c.b)}
        probs = {vc: models.probs(*vc) for vc in variants}
        point = {vc: _rmsce(y, p) for vc, p in probs.items()}
        reps: dict[Comparison, list[float]] = {c: [] for c in rmsce}

        def statistic(idx: np.ndarray) -> dict[str, float]:
            values = {vc: _rmsce(y[idx], p[idx]) for vc, p in probs.items()}
            named = {}
            for i, c in enumerate(rmsce):
                d = values[(c.b, c.condition)] - values[(c.a, c.condition)]
                reps[c].append(d)
                named[str(i)] = d
            return named

        cis = cluster_bootstrap_statistic(statistic, labels=y, groups=g, n_boot=n_boot, seed=seed, level=_LEVEL)
        for i, c in enumerate(rmsce):
            a, b = point[(c.a, c.condition)], point[(c.b, c.condition)]
            out[c] = {"a_value": a, "b_value": b, "difference": b - a, "ci": [float(v) for v in cis[str(i)]],
                      "p_value": _p_value(b - a, np.asarray(reps[c], dtype=np.float64))}
    return out


def decide_claims(results: Sequence[Mapping[str, Any]], *, n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Decide every claim of :data:`CLAIMS` on one result set.

    Parameters
    ----------
    results : sequence of dict
        Results of one set (as :func:`medrobust.evaluation.load_results` reads them, or in memory with
        ``_per_sample``): at most one per method (standard, robust, augmix, robustaugmix; others are
        ignored), all tested on the same images (matched by image key, in any order). The per-sample logits
        (``<name>.logits.npz``) are needed; ``result["trust"]["fits"]`` gives the ``+ temperature`` variants.
    n_boot : int, default 2000
        Patient-bootstrap resamples of every interval.
    seed : int, default 0
        One seed for every interval, so every comparison is made on the same resampled patients.

    Returns
    -------
    list of dict
        One per claim, in the order of :data:`CLAIMS`: ``id``, ``claim`` (its words), ``source``, ``rule``,
        ``verdict`` (one of :data:`VERDICTS`), ``reading`` (one sentence), ``missing`` (why required
        comparisons could not be made), ``comparisons`` (each: ``b``, ``a``, ``condition``, ``metric``,
        ``expected_sign``, ``difference`` = B - A, ``ci`` = [lower, upper], ``p_value`` (None against
        chance), ``a_value``, ``b_value``, ``side`` ("claimed", "opposite" or "includes 0") and ``text``),
        and the set's ``n_images``, ``n_patients``, ``models``, ``n_boot`` and ``seed``.

    Raises
    ------
    ValueError
        If ``results`` is empty, holds two results of one method, two results were not tested on the same
        images (or disagree on their labels or patients), or ``n_boot`` is not a positive integer.
    """
    if not results:
        raise ValueError("no results to decide the claims on; evaluate the models first (`medrobust evaluate`).")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    models = _Models(results)
    plans = []
    for claim in CLAIMS:
        made, missing = [], []
        for c in claim.comparisons:
            why = models.missing(c.b, c.condition) or models.missing(c.a, c.condition)
            if why is None:
                made.append(c)
            elif not c.optional and why not in missing:
                missing.append(why)
        plans.append((claim, made, missing))
    computed = _compute(models, [c for _, made, _ in plans for c in made], n_boot=int(n_boot), seed=int(seed))
    decided = []
    for claim, made, missing in plans:
        comps = []
        for c in made:
            r = computed[c]
            comp = {"b": c.b, "a": c.a, "condition": c.condition, "metric": c.metric, "expected_sign": c.expected,
                    **r, "side": _side(r["ci"][0], r["ci"][1], c.expected)}
            comp["text"] = comparison_text(comp)
            comps.append(comp)
        if not comps:
            outcome = "not evaluable"
        else:
            outcome = verdict([(c["ci"], c["expected_sign"]) for c in comps])
            if outcome == "confirmed" and missing:
                outcome = "partly confirmed"
        decided.append({
            "id": claim.id, "claim": claim.text, "source": claim.source, "rule": claim.rule, "verdict": outcome,
            "reading": _reading(outcome, comps, missing, n_images=models.n_images, n_patients=models.n_patients),
            "missing": missing, "comparisons": comps, "n_images": models.n_images, "n_patients": models.n_patients,
            "models": {m: models.name(m) for m in METHODS if m in models.results}, "n_boot": int(n_boot),
            "seed": int(seed)})
    return decided


# --------------------------------------------------------------------------- rows and Markdown


def _claim_cell(d: Mapping[str, Any]) -> str:
    return f"{d['id']}. {d['claim']}" + (" (ours)" if d.get("source") == "ours" else "")


def claims_rows(decided: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The decided claims as rows for a table: ``claim``, ``verdict``, ``deciding differences``, ``reading``.

    ``deciding differences`` lists every comparison as ``"B − A, condition: d [lo, hi]"`` (balanced accuracy
    in percentage points, RMSCE as a fraction), separated by ``"; "``; ``"–"`` when none could be made.
    """
    return [{"claim": _claim_cell(d), "verdict": d["verdict"],
             "deciding differences": "; ".join(c["text"] for c in d["comparisons"]) or "–",
             "reading": d["reading"]} for d in decided]


def claims_markdown(decided: Sequence[Mapping[str, Any]]) -> str:
    """The decided claims as a Markdown table, with the images, the bootstrap and the rule stated below it.

    Raises
    ------
    ValueError
        If ``decided`` is empty.
    """
    if not decided:
        raise ValueError("no decided claims to show; call decide_claims first.")
    rows = claims_rows(decided)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    first = decided[0]
    models = ", ".join(first.get("models", {}).values()) or "no models"
    if first.get("n_images") is None:
        where = f"No per-sample logits among the results ({models})."
    else:
        where = (f"On the same {first['n_images']} images of {first['n_patients']} patients ({models}); "
                 f"95 % percentile intervals from {first['n_boot']} patient-bootstrap resamples (seed "
                 f"{first['seed']}), both models scored on the same resampled patients.")
    lines += ["", where,
              "Differences are B − A: balanced accuracy in percentage points (pts), debiased RMSCE on clean "
              "images as a fraction; \"chance\" is balanced accuracy 1/K.",
              "Rule: confirmed when every deciding interval excludes 0 on the claimed side; refuted when any "
              "excludes 0 on the opposite side; undecided otherwise (an interval including 0 decides nothing); "
              "partly confirmed when only some comparisons could be made and all of them confirm; not evaluable "
              "when none could."]
    return "\n".join(lines)
