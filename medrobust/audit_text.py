"""The shortcut audit in words: one decision on the lungs, every verdict set against the clean value, each fact once.

:func:`medrobust.audit.run_audit` stores numbers (clean, lungs-blanked and border-blanked scores with their
intervals, the source x label table, the Grad-CAM mass); this module turns them into sentences. The report and the
dashboard call it on stored results, so a result file written by an older version is read with today's wording.
Three rules:

* One function, :func:`lung_reading`, decides whether a model reads the lungs (``"lungs"``), something other than
  the lungs (``"elsewhere"``), or whether the audit cannot tell (``"undecided"``). Every sentence about the lungs
  follows it: no sentence says "something other than the lungs" while another says "consistent with reading the
  lungs".
* Every blanking verdict puts the clean value beside the blanked one with the signed change ("AUROC 0.430
  clean → 0.450 blanked (+0.020)", numbers as :mod:`medrobust.intervals` writes them): a score that rises is
  never said to fall.
* Facts about the test set (the source x label table, Cramér's V) belong to the set, not to a model:
  :func:`set_lines` and :func:`summary` state each once, however many models were audited on it.

Imports neither torch nor numpy: the dashboard's Overview reads it through :mod:`medrobust.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from medrobust.intervals import STYLES, format_difference, format_number

__all__ = [
    "ELSEWHERE",
    "LUNGS",
    "THRESHOLDS",
    "UNDECIDED",
    "AuditThresholds",
    "LungReading",
    "lung_reading",
    "model_sentences",
    "set_lines",
    "set_sentence",
    "source_warning",
    "summary",
    "verdicts",
]


@dataclass(frozen=True)
class AuditThresholds:
    """Every decision rule of the audit in one place.

    Attributes
    ----------
    source_v : float, default 0.5
        :func:`medrobust.audit.source_label_table` warns when the bias-corrected Cramér's V between source and
        label is at least this. 0.5 is the conventional "large" association (Cohen's 0.1 / 0.3 / 0.5 for one
        degree of freedom).
    source_bacc : float, default 0.75
        ... or when guessing each image's label as its source's majority label (leave-one-out) reaches this
        balanced accuracy: three in four right on balanced classes, from the source alone, is already a model
        that looks like it works.
    lungs_auroc : float, default 0.65
        :func:`medrobust.audit.masking_test` flags ``reads_outside_lungs`` when, with the central field
        blanked, AUROC is at least this ...
    lungs_bacc_margin : float, default 0.15
        ... or balanced accuracy is at least chance (``1/K``) plus this; in either case the interval of that
        metric must also lie wholly above chance (lower bound > 0.5 for AUROC, > ``1/K`` for balanced
        accuracy). The point threshold asks for a separation large enough to matter (AUROC 0.65 is a weak but
        real classifier); the interval asks that it is not noise from a small test set. The interval condition
        is skipped only when no interval could be computed.
    lungs_drop : float, default 0.10
        :func:`lung_reading` calls a model "reads the lungs" only when blanking the central field lowers its
        AUROC by at least this from the clean value (and leaves it at chance): a model that scores the same
        with and without the lungs has not shown that it needs them.
    border_drop : float, default 0.10
        :func:`medrobust.audit.masking_test` flags ``depends_on_border`` when blanking only the border lowers
        balanced accuracy or AUROC by at least this, on the same images. The border holds no anatomy a
        diagnosis needs, so a model reading the lungs should lose almost nothing; ten points is far beyond the
        noise of the blanking itself.
    cam_margin : float, default 0.02
        :func:`medrobust.audit.cam_mass` calls the Grad-CAM mass inside the central field below (above)
        uniform when it is smaller (larger) than the field's area fraction by more than this; within it, the
        CAM shows no preference either way.
    ci_level : float, default 0.95
        Coverage of the bootstrap intervals.
    """

    source_v: float = 0.5
    source_bacc: float = 0.75
    lungs_auroc: float = 0.65
    lungs_bacc_margin: float = 0.15
    lungs_drop: float = 0.10
    border_drop: float = 0.10
    cam_margin: float = 0.02
    ci_level: float = 0.95


THRESHOLDS = AuditThresholds()
"""The thresholds every audit function uses; reported in each result's ``config``."""

LUNGS, ELSEWHERE, UNDECIDED = "lungs", "elsewhere", "undecided"
_CHANCE_AUROC = 0.5


# --------------------------------------------------------------------------- numbers in words


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _fmt(x: Any, decimals: int = 2) -> str:
    v = _num(x)
    return "undefined" if v is None else f"{v:.{decimals}f}"


def _ci(ci: Sequence[Any] | None) -> tuple[float | None, float | None]:
    if not ci or len(ci) != 2:
        return None, None
    return _num(ci[0]), _num(ci[1])


def _value(metric: str, x: Any, ci: Sequence[Any] | None = None) -> str:
    """A score with its interval in :mod:`medrobust.intervals`' style: "0.688 [0.549, 0.803]", "59.8 % [47.6, 72.2]"."""
    if _num(x) is None:
        return "undefined"
    style = STYLES[metric]
    unit = " %" if style.scale == 100.0 else ""
    text = format_number(_num(x), decimals=style.decimals, scale=style.scale) + unit
    lo, hi = _ci(ci)
    if lo is None or hi is None:
        return text
    return (f"{text} [{format_number(lo, decimals=style.decimals, scale=style.scale)}, "
            f"{format_number(hi, decimals=style.decimals, scale=style.scale)}]")


def _sign(metric: str, before: Any, after: Any) -> int | None:
    """+1, -1 or 0: the direction of ``after - before`` as printed (0 when it prints as zero); None if undefined."""
    a, b = _num(before), _num(after)
    if a is None or b is None:
        return None
    style = STYLES[metric]
    shown = round(style.scale * (b - a), style.decimals)
    return (shown > 0) - (shown < 0)


def _change(metric: str, before: Any, after: Any) -> str:
    """'+0.020', '−2.7 pts', 'no change' (as printed) or 'change undefined'."""
    sign = _sign(metric, before, after)
    if sign is None:
        return "change undefined"
    return "no change" if sign == 0 else format_difference(metric, _num(after) - _num(before))  # type: ignore[operator]


def _against(x: float, threshold: float, decimals: int = 3) -> str:
    """``x`` with ``decimals`` digits, or more where it would otherwise print as ``threshold`` (0.0996 < 0.10)."""
    for d in range(decimals, decimals + 4):
        if round(x, d) != round(threshold, d):
            return f"{x:.{d}f}"
    return f"{x:.6f}"


def _thresholds(masking: Mapping[str, Any]) -> AuditThresholds:
    """The thresholds the result was computed with (its ``config``), today's defaults for any it lacks."""
    stored = ((masking.get("config") or {}).get("thresholds") or {})
    names = {f.name for f in fields(AuditThresholds)}
    return AuditThresholds(**{k: float(v) for k, v in stored.items() if k in names and _num(v) is not None})


class _Audit:
    """The numbers one sentence needs, read once from a stored masking result."""

    def __init__(self, masking: Mapping[str, Any], cam: Mapping[str, Any] | None) -> None:
        self.th = _thresholds(masking)
        cond = masking["conditions"]
        self.clean, self.lungs, self.border = cond["clean"], cond["lungs_blanked"], cond["border_blanked"]
        self.chance_bacc = _num((masking.get("chance") or {}).get("balanced_accuracy"))
        self.reads_outside = bool(masking.get("reads_outside_lungs"))
        self.depends_on_border = bool(masking.get("depends_on_border"))
        self.border_width = _num(((masking.get("config") or {}).get("border") or {}).get("width"))
        self.cam = cam if cam and "error" not in cam and _num(cam.get("mass_fraction_inside")) is not None else None
        self.cam_error = cam.get("error") if cam and "error" in cam else None

    def value(self, cond: Mapping[str, Any], metric: str) -> float | None:
        return _num(cond.get(metric))

    def interval(self, cond: Mapping[str, Any], metric: str) -> tuple[float | None, float | None]:
        return _ci((cond.get("ci") or {}).get(metric))

    # -- the facts every decision uses
    @property
    def clean_auc(self) -> float | None:
        return self.value(self.clean, "auroc")

    @property
    def lungs_auc(self) -> float | None:
        return self.value(self.lungs, "auroc")

    @property
    def clean_separates(self) -> bool:
        """Clean AUROC above chance, with its interval above 0.5 where there is one."""
        auc = self.clean_auc
        if auc is None or auc <= _CHANCE_AUROC:
            return False
        lo, _ = self.interval(self.clean, "auroc")
        return lo is None or lo > _CHANCE_AUROC

    @property
    def lungs_drop(self) -> float | None:
        a, b = self.clean_auc, self.lungs_auc
        return None if a is None or b is None else a - b

    @property
    def lungs_weakly_above(self) -> bool:
        """With the lungs blanked the AUROC interval still lies above chance (below the clear threshold)."""
        lo, _ = self.interval(self.lungs, "auroc")
        return self.lungs_auc is not None and lo is not None and lo > _CHANCE_AUROC

    @property
    def lungs_fall_to(self) -> str:
        """Where the lungs-blanked AUROC lands: 'below chance', 'to chance', or (no interval) under the clear bar."""
        if self.lungs_below_chance:
            return "below chance"
        lo, _ = self.interval(self.lungs, "auroc")
        return "to chance" if lo is not None else f"under the {self.th.lungs_auroc:.2f} counted as clear"

    @property
    def lungs_below_chance(self) -> bool:
        _, hi = self.interval(self.lungs, "auroc")
        return hi is not None and hi < _CHANCE_AUROC

    # -- the comparisons, in words
    def comparison(self, cond: Mapping[str, Any], metrics: Sequence[str] = ("auroc", "balanced_accuracy"), *,
                   with_ci: bool = True, chance: bool = True) -> str:
        """'AUROC 0.688 clean → 0.590 [0.453, 0.725] blanked (−0.098), ...': the clean value always first."""
        parts = []
        for m in metrics:
            name = "AUROC" if m == "auroc" else "balanced accuracy"
            before, after = self.value(self.clean, m), self.value(cond, m)
            ci = (cond.get("ci") or {}).get(m) if with_ci else None
            parts.append(f"{name} {_value(m, before)} clean → {_value(m, after, ci)} blanked "
                         f"({_change(m, before, after)})")
        if not chance:
            return ", ".join(parts)
        if len(metrics) > 1:
            return ", ".join(parts) + (f"; chance 0.5 for AUROC, {_value('balanced_accuracy', self.chance_bacc)} "
                                       "for balanced accuracy")
        return ", ".join(parts) + "; chance 0.5"

    def fell(self, cond: Mapping[str, Any], metric: str = "auroc") -> bool:
        """The score is lower blanked than clean, as printed."""
        return _sign(metric, self.value(self.clean, metric), self.value(cond, metric)) == -1

    def largest_drop(self, cond: Mapping[str, Any]) -> float | None:
        drops = [b - a for m in ("auroc", "balanced_accuracy")
                 if (b := self.value(self.clean, m)) is not None and (a := self.value(cond, m)) is not None]
        return max(drops) if drops else None

    @property
    def cam_inside_vs_area(self) -> str:
        assert self.cam is not None
        return (f"{100 * self.cam['mass_fraction_inside']:.0f} % of its Grad-CAM mass in a central field covering "
                f"{100 * self.cam['area_fraction']:.0f} % of the image")


# --------------------------------------------------------------------------- the one decision


@dataclass(frozen=True)
class LungReading:
    """What the audit concludes about where a model looks, and why.

    Attributes
    ----------
    conclusion : {"lungs", "elsewhere", "undecided"}
        :data:`LUNGS`: with the central lung field blanked the model falls to (or below) chance, from a clear
        separation on the clean images, it does not depend on the border, and Grad-CAM does not say otherwise.
        :data:`ELSEWHERE`: it still separates the classes with the lungs blanked, or it depends on the border.
        :data:`UNDECIDED`: anything else (no clear separation even on clean images, a small drop, a weak
        residue, or the blanking and Grad-CAM disagree).
    reason : str
        A clause giving the deciding numbers, clean beside blanked.
    """

    conclusion: str
    reason: str

    @property
    def headline(self) -> str:
        """The conclusion in a few words (the report's table column)."""
        return {LUNGS: "consistent with reading the lungs", ELSEWHERE: "reads something other than the lungs",
                UNDECIDED: "cannot tell"}[self.conclusion]

    def sentence(self, subject: str) -> str:
        """The conclusion about ``subject`` (a model's name) with its reason, clean beside blanked."""
        head = {LUNGS: f"{subject} is consistent with a model that reads the lungs.",
                ELSEWHERE: f"{subject} reads something other than the lungs.",
                UNDECIDED: f"For {subject} the audit cannot tell whether the model reads the lungs."}[self.conclusion]
        return f"{head} {self.reason[0].upper()}{self.reason[1:]}."


def _decide(a: _Audit) -> LungReading:
    if a.reads_outside:
        return LungReading(ELSEWHERE, f"with the central lung field blanked it still separates the classes: "
                                      f"{a.comparison(a.lungs)}")
    if a.clean_auc is None or a.lungs_auc is None:
        return LungReading(UNDECIDED, "its AUROC is undefined (the test images hold one class only)")
    if not a.clean_separates:
        auc = _value("auroc", a.clean_auc, (a.clean.get("ci") or {}).get("auroc"))
        return LungReading(UNDECIDED, f"it does not clearly separate the classes even on the unaltered images "
                                      f"(AUROC {auc}, chance 0.5), so blanking has nothing to take away")
    if a.depends_on_border:
        return LungReading(ELSEWHERE, f"blanking only the image border costs it at least {a.th.border_drop:.2f}: "
                                      f"{a.comparison(a.border, with_ci=False, chance=False)}")
    auc_cmp = a.comparison(a.lungs, ("auroc",))
    if a.lungs_weakly_above:
        return LungReading(UNDECIDED, f"with the central lung field blanked it keeps a little ability to separate "
                                      f"the classes, its interval above chance but the point below the "
                                      f"{a.th.lungs_auroc:.2f} counted as clear: {auc_cmp}")
    drop = a.lungs_drop
    assert drop is not None
    if drop < a.th.lungs_drop:
        how = ("does not lower its AUROC" if not a.fell(a.lungs)
               else f"lowers its AUROC by only {_against(drop, a.th.lungs_drop)}, less than the "
                    f"{a.th.lungs_drop:.2f} that would show it needs the lungs")
        return LungReading(UNDECIDED, f"blanking the central lung field {how}: {auc_cmp}")
    if a.cam is not None and a.cam.get("below_uniform"):
        return LungReading(UNDECIDED, f"its AUROC falls with the lungs blanked ({auc_cmp}), but Grad-CAM puts "
                                      f"{a.cam_inside_vs_area}, less than an even spread would give")
    return LungReading(LUNGS, f"with the central lung field blanked its AUROC falls {a.lungs_fall_to}: {auc_cmp}; "
                              f"blanking only the border costs it less than {a.th.border_drop:.2f}")


def lung_reading(masking: Mapping[str, Any], cam: Mapping[str, Any] | None = None) -> LungReading:
    """Does the model read the lungs, something else, or can the audit not tell? The one place that decides.

    Parameters
    ----------
    masking : mapping
        :func:`medrobust.audit.masking_test`'s result (as stored in a result file's ``audit.masking``).
    cam : mapping or None
        :func:`medrobust.audit.cam_mass`'s result, ``{"error": ...}`` or None.

    Returns
    -------
    LungReading
        In this order: the ``reads_outside_lungs`` flag gives ELSEWHERE; an undefined AUROC, or a clean AUROC
        whose interval reaches chance, gives UNDECIDED (nothing to take away); the ``depends_on_border`` flag
        gives ELSEWHERE; a lungs-blanked AUROC interval still above chance, a drop from the clean AUROC smaller
        than ``THRESHOLDS.lungs_drop`` (a rise included), or Grad-CAM mass below uniform give UNDECIDED;
        otherwise LUNGS. Grad-CAM (coarse) never turns a blanking result round by itself: it can only withhold
        "reads the lungs".

    Examples
    --------
    >>> cond = lambda auc: {"auroc": auc, "balanced_accuracy": 0.5, "ci": None}
    >>> m = {"conditions": {"clean": cond(0.43), "lungs_blanked": cond(0.45), "border_blanked": cond(0.44)},
    ...      "chance": {"balanced_accuracy": 0.5}, "reads_outside_lungs": False, "depends_on_border": False}
    >>> r = lung_reading(m)
    >>> r.conclusion
    'undecided'
    >>> print(r.sentence("standard"))  # doctest: +NORMALIZE_WHITESPACE
    For standard the audit cannot tell whether the model reads the lungs. It does not clearly separate the
    classes even on the unaltered images (AUROC 0.430, chance 0.5), so blanking has nothing to take away.
    """
    return _decide(_Audit(masking, cam))


# --------------------------------------------------------------------------- sentences


def source_warning(*, v_corrected: float, bacc_loo: float) -> str:
    """The warning when the source alone predicts the label (see :func:`medrobust.audit.source_label_table`)."""
    return ("The source (site/collection) alone predicts the label "
            f"(Cramér's V {v_corrected:.2f}, bias-corrected; guessing each source's majority label gives balanced "
            f"accuracy {_value('balanced_accuracy', bacc_loo)}): a model can score well by recognising the hospital "
            "rather than the disease.")


def set_sentence(source_table: Mapping[str, Any] | None) -> str:
    """The one sentence about the test set: does its source (site/collection) give the label away?"""
    if source_table is None:
        return ("No source (site/collection) was given for the test images, so whether the hospital alone gives "
                "the label away was not checked.")
    v, loo = _num(source_table.get("cramers_v_corrected")), _num(source_table.get("source_only_balanced_accuracy_loo"))
    if source_table.get("warning"):
        return source_warning(v_corrected=v, bacc_loo=loo) if v is not None and loo is not None \
            else str(source_table["warning"])
    guess = (f"; guessing each source's majority label gives balanced accuracy {_value('balanced_accuracy', loo)}"
             if loo is not None else "")
    return (f"The source (site/collection) does not predict the label on its own (Cramér's V {_fmt(v)}, "
            f"bias-corrected{guess}): no sign of a hospital shortcut in the data.")


def model_sentences(masking: Mapping[str, Any], cam: Mapping[str, Any] | None = None, *,
                    name: str | None = None) -> list[str]:
    """The sentences about one model: clean check, lungs blanked, border blanked, Grad-CAM, and the conclusion.

    Every comparison puts the clean value first; every remark on the lungs follows :func:`lung_reading`; no
    sentence is said twice. Facts about the test set are not here (see :func:`set_sentence`). ``name`` (the
    model's) stands in the sentences that carry no number, so that two models' lists share no sentence.
    """
    a = _Audit(masking, cam)
    subject = name or "the model"
    reading = _decide(a)
    out: list[str] = []

    if a.clean_auc is None:
        out.append(f"The AUROC of {subject} on the unaltered images is undefined (the test images hold one class "
                   "only), so the blanking tests cannot be read.")
    elif not a.clean_separates:
        auc = _value("auroc", a.clean_auc, (a.clean.get("ci") or {}).get("auroc"))
        out.append(f"On the unaltered images {subject} does not clearly separate the classes (AUROC {auc}, "
                   "chance 0.5), so the blanking tests below cannot show what it reads.")

    # Lungs blanked, against the clean value.
    facts = f"Blanking the central lung field: {a.comparison(a.lungs)}"
    drop = a.lungs_drop
    if a.reads_outside:
        out.append(f"{facts}. It still separates the classes well above chance without the lungs.")
    elif not a.clean_separates or drop is None:
        out.append(f"{facts}.")
    elif a.lungs_weakly_above:
        out.append(f"{facts}. The AUROC stays a little above chance (interval above 0.5, point below the "
                   f"{a.th.lungs_auroc:.2f} counted as clear): weak evidence that it also reads outside the lungs.")
    elif drop >= a.th.lungs_drop and a.lungs_below_chance:
        out.append(f"{facts}. Without the lungs it ranks the classes the wrong way round: it no longer works, "
                   "though the blanking shifts its output.")
    elif drop >= a.th.lungs_drop:
        out.append(f"{facts}. Without the lungs it falls {a.lungs_fall_to}.")
    elif a.fell(a.lungs):
        out.append(f"{facts}. The AUROC drops by only {_against(drop, a.th.lungs_drop)}, less than the "
                   f"{a.th.lungs_drop:.2f} that would count: this test does not show that the model needs the lungs.")
    else:
        out.append(f"{facts}. The AUROC does not drop: this test does not show that the model needs the lungs.")

    # Border blanked, against the clean value.
    width = a.border_width if a.border_width is not None else 0.12
    where = (f"the outer border ({100 * width:.0f} % of each side, where text, markers and collimation edges "
             "are)")
    facts = f"Blanking only {where}: {a.comparison(a.border, with_ci=False, chance=False)}"
    bar = (f"{a.th.border_drop:.2f} of AUROC or {100 * a.th.border_drop:.0f} pts of balanced accuracy, the drop "
           "that would count")
    if not a.clean_separates or a.largest_drop(a.border) is None:
        out.append(f"{facts}.")
    elif a.depends_on_border:
        out.append(f"{facts}. That reaches {bar}: it depends on the image border.")
    elif a.fell(a.border) or a.fell(a.border, "balanced_accuracy"):
        out.append(f"{facts}. Neither drop reaches {bar}: no sign that it depends on text or markers at the edge.")
    else:
        out.append(f"{facts}. No drop: no sign that it depends on text or markers at the edge.")

    # Grad-CAM, read in the light of the one decision.
    if a.cam is not None:
        inside, area = float(a.cam["mass_fraction_inside"]), float(a.cam["area_fraction"])
        head = (f"Grad-CAM puts on average {100 * inside:.0f} % of its mass in the central lung field, which covers "
                f"{100 * area:.0f} % of the image")
        if a.cam.get("above_uniform"):
            tail = {LUNGS: "consistent with the blanking test (Grad-CAM is coarse; supporting evidence only)",
                    ELSEWHERE: "but Grad-CAM is coarse and does not outweigh the blanking tests, which show the model "
                               "relies on more than the lungs",
                    UNDECIDED: "supporting evidence only (Grad-CAM is coarse), not enough to settle where it looks"}
            ratio = f"{inside / area:.1f} times" if area > 0 else "more than"
            out.append(f"{head}: {ratio} what an even spread would give, {tail[reading.conclusion]}.")
        elif a.cam.get("below_uniform"):
            tail = {LUNGS: "which withholds the lungs verdict",  # not reached: below uniform never gives LUNGS
                    ELSEWHERE: "in line with the blanking tests",
                    UNDECIDED: "so Grad-CAM shows no preference for the lungs"}
            out.append(f"{head}: less than an even spread would give, {tail[reading.conclusion]}.")
        else:
            out.append(f"{head}: about what an even spread would give, so Grad-CAM shows no preference either way.")
    elif a.cam_error is not None:
        out.append(f"Grad-CAM could not be computed for {subject} ({a.cam_error}).")

    out.append({LUNGS: f"In short: {subject} is consistent with a model that reads the lungs.",
                ELSEWHERE: f"In short: {subject} reads something other than the lungs.",
                UNDECIDED: f"In short: the audit cannot tell whether {subject} reads the lungs."}[reading.conclusion])
    return out


def verdicts(masking: Mapping[str, Any], source_table: Mapping[str, Any] | None,
             cam: Mapping[str, Any] | None) -> list[str]:
    """The sentence on the test set, then :func:`model_sentences`: one model's audit, each sentence once."""
    return [set_sentence(source_table), *model_sentences(masking, cam)]


# --------------------------------------------------------------------------- several models


def _audited(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(r.get("name", "?")), r["audit"]) for r in results if r.get("audit")]


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def set_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The test-set sentence of every audited result, each distinct sentence once.

    Results audited on the same test set share their source table, so the Cramér's V sentence appears once
    however many models there are; where the sets differ, each line names the models it covers.
    """
    groups: dict[str, list[str]] = {}
    for name, a in _audited(results):
        groups.setdefault(set_sentence(a.get("source_table")), []).append(name)
    if len(groups) <= 1:
        return list(groups)
    return [f"Test images of {_join(names)}: {s}" for s, names in groups.items()]


def summary(results: Sequence[Mapping[str, Any]], *, bold: bool = True) -> list[str]:
    """A clinician's reading of the audit of several models: the set's facts once, then one line per conclusion.

    Parameters
    ----------
    results : sequence of mapping
        Result dicts with ``name`` and ``audit`` (:func:`medrobust.audit.run_audit`'s result); others are
        skipped.
    bold : bool, default True
        Model names in Markdown bold.

    Returns
    -------
    list of str
        :func:`set_lines`, then for each model :func:`lung_reading`'s sentence, clean beside blanked; models
        whose sentences would be the same word for word share one line. No line repeats another.
    """
    lines = set_lines(results)
    by_reading: dict[LungReading, list[str]] = {}
    for name, a in _audited(results):
        by_reading.setdefault(lung_reading(a["masking"], a.get("cam")), []).append(
            f"**{name}**" if bold else name)
    lines += [reading.sentence(_join(names)) for reading, names in by_reading.items()]
    return lines
