"""Table I (accuracy: clean, PGD, noise) and Table II (calibration) in the paper's layout, as Markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from medrobust import audit_text, paper
from medrobust.choices import METHOD_NAMES as METHODS  # the registry's names, without importing torch
from medrobust.intervals import format_difference, format_interval, format_number, format_p, format_value

#: The paper's Table I as fractions: "clean", "pgd" (mean over eps 1-5), "gaussian", "salt_and_pepper",
#: "speckle" (probably means over ten severities); its Table II: "rmsce" (fraction), "entropy" (as printed).
#: The figures themselves live in :mod:`medrobust.paper`.
PAPER_TABLE_I: dict[str, dict[str, float | None]] = paper.as_fractions(paper.TABLE_I)
PAPER_TABLE_II: dict[str, dict[str, float | None]] = paper.as_fractions(paper.TABLE_II)

_ORDER = {name: i for i, name in enumerate(METHODS)}


# --------------------------------------------------------------------------- what a result set holds
# Every caption, chance line and bound is computed here from the results themselves (their K, the radii and
# severities they ran, how their test images were chosen), never written as a constant beside a table.


def n_classes(results: Sequence[dict[str, Any]]) -> int | None:
    """K shared by every result (None when they differ or none says)."""
    ks = {len(r.get("classes") or ()) for r in results}
    return ks.pop() if len(ks) == 1 and 0 not in ks else None


def chance_balanced_accuracy(results: Sequence[dict[str, Any]]) -> float:
    """Balanced accuracy of guessing: 1/K (0.5 when the results disagree on K)."""
    return 1.0 / (n_classes(results) or 2)


def chance_text(results: Sequence[dict[str, Any]]) -> str:
    """"balanced accuracy 50 % is chance" for K = 2, "33 %" for K = 3; below chance is explained."""
    k = n_classes(results)
    if k is None:
        return ("Balanced accuracy at chance is 1/K for K classes (the results here have different K). A value "
                "below chance means the model prefers the wrong class more often than guessing would.")
    return (f"Balanced accuracy {100.0 / k:.0f} % is chance for {k} classes (guessing); a value below it means the "
            "model picks the wrong class more often than guessing would, which is still no use to anyone.")


def entropy_text(results: Sequence[dict[str, Any]]) -> str:
    """The bound on the mean predictive entropy, ln K nats, for the K the results hold."""
    k = n_classes(results)
    if k is None:
        return "Entropy is the mean predictive entropy in nats, at most ln K for K classes (these results differ in K)."
    return f"Entropy is the mean predictive entropy in nats, at most ln {k} ≈ {math.log(k):.3f} ({k} classes)."


def _severities(results: Sequence[dict[str, Any]], perturbations: Sequence[str]) -> list[float]:
    return sorted({float(x["severity"]) for r in results for x in r.get("rows", ())
                   if x["perturbation"] in perturbations})


def _span(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{values[0]:g}–{values[-1]:g}"


def table_one_caption(results: Sequence[dict[str, Any]]) -> str:
    """What Table I's averaged cells average over, from the radii and severities the results ran."""
    norm = results[0].get("params", {}).get("norm", "l2") if results else "l2"
    eps = _severities(results, (f"pgd_{norm}",))
    noise = _severities(results, ("gaussian", "salt_and_pepper", "speckle"))
    parts = []
    if eps:
        parts.append(f"the adversarial cells over eps {_span(eps)} ({norm.upper()}, stated at 224 px and scaled to "
                     "the model's size)")
    if noise:
        parts.append(f"the noise cells over the paper's severities {_span(noise)}")
    if not parts:
        return "No attack or noise was run on these results: only the clean cells are filled."
    return "Averaged cells are accuracy / balanced accuracy in %: " + "; ".join(parts) + ". A \"–\" was not run."


def test_set_text(r: dict[str, Any]) -> str:
    """How one result's test images were chosen, in words that claim no more than the result proves."""
    if "cv" in r:
        return (f"each predicted by the one of {r['cv']['folds']} fold models that never saw its patient")
    if r.get("part") == "test-manifest":
        if r.get("test_patients_checked"):
            return ("from a test manifest the user supplied, checked against the training patients the model's card "
                    "lists: none of them is among the test images")
        return ("from a test manifest the user supplied: medrobust cannot prove these patients were not used in "
                "training (the model's card lists no training patients to check against)")
    if r.get("split_hash"):
        return "held-out test images of patients the models never saw in training (patient-level split, checked)"
    return "test images whose split is not recorded: that the models never saw them is not proven"


def _pct(v: float | None) -> str:
    return format_value("accuracy", v)


def _pair(d: dict[str, float] | None) -> str:
    """Accuracy / balanced accuracy in %; "–" for a condition the result did not evaluate."""
    return "–" if not d else f"{_pct(d['accuracy'])} / {_pct(d['balanced_accuracy'])}"


def _sorted(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: (_ORDER.get(r.get("method"), 99), r["name"]))


def _flag(r: dict[str, Any]) -> str:
    return " ⚠ DEGENERATE" if r.get("degenerate") else ""


def table_one(results: Sequence[dict[str, Any]]) -> str:
    """Accuracy / balanced accuracy (%) per model: clean (95 % CI, AUROC), mean over PGD eps and noise levels."""
    norm = results[0]["params"]["norm"] if results else "l2"
    pgd = f"pgd_{norm}"
    head = ("| model | method | clean acc [95 % CI] | clean bal. acc [95 % CI] | AUROC | "
            f"adversarial {norm.upper()} mean | Gaussian mean | S&P mean | Speckle mean |")
    lines = [head, "|" + "---|" * 9]
    for r in _sorted(results):
        c = r["clean"]
        ci = c["ci"]
        lines.append(
            f"| {r['name']}{_flag(r)} | {r['method']} | {_pct(c['accuracy'])} [{_pct(ci['accuracy'][0])}, {_pct(ci['accuracy'][1])}] "
            f"| {_pct(c['balanced_accuracy'])} [{_pct(ci['balanced_accuracy'][0])}, {_pct(ci['balanced_accuracy'][1])}] "
            f"| {c['auroc']:.3f} | {_pair(r['summary'].get(pgd))} | {_pair(r['summary'].get('gaussian'))} "
            f"| {_pair(r['summary'].get('salt_and_pepper'))} | {_pair(r['summary'].get('speckle'))} |"
        )
    lines.append("")
    lines.append(table_one_caption(results))
    return "\n".join(lines)


ATTACK_LABELS = {"pgd_first": "PGD 1 start", "pgd": "PGD", "apgd": "APGD-CE", "apgd_after_pgd": "PGD then APGD-CE"}


def _attack_cell(row: dict[str, Any]) -> str:
    """Worst case (accuracy / balanced accuracy) and each attack's own accuracy, as recorded."""
    cell = _pair(row)
    by = row.get("accuracy_by_attack")
    if by:
        restarts = row.get("restarts", 1)
        parts = [f"{ATTACK_LABELS.get(a, a)}{f' x{restarts}' if a == 'pgd' and restarts > 1 else ''} {_pct(v)}"
                 for a, v in by.items()]
        cell += " (" + ", ".join(parts) + ")"
    elif "accuracy_restarts" in row:  # results of medrobust < 0.3: PGD only, restarts beside
        cell += f" ({_pct(row['accuracy_restarts'])} @{row['restarts']} restarts)"
    return cell


def table_pgd(results: Sequence[dict[str, Any]]) -> str:
    """Adversarial accuracy / balanced accuracy (%) at each radius: the worst case over the ensemble, with
    each attack's own accuracy beside it (older results: PGD, with its restart accuracy)."""
    if not results:
        return ""
    norm = results[0]["params"]["norm"]
    eps = results[0]["params"]["eps"]
    lines = ["| model | " + " | ".join(f"eps {e:g}" for e in eps) + " |", "|---|" + "---|" * len(eps)]
    for r in _sorted(results):
        cells = [_attack_cell(row) for row in r["rows"] if row["perturbation"] == f"pgd_{norm}"]
        lines.append(f"| {r['name']}{_flag(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_two(results: Sequence[dict[str, Any]]) -> str:
    """Calibration on clean test images."""
    lines = ["| model | method | RMSCE (debiased) | RMSCE (plug-in) | ECE (15 bins) | entropy (nats) | NLL | Brier |",
             "|" + "---|" * 8]
    for row in table_two_rows(results):
        lines.append(f"| {row['model']} | {row['method']} | {row['RMSCE (debiased)']:.4f} | {row['RMSCE (plug-in)']:.4f} | "
                     f"{row['ECE (15 bins)']:.4f} | {row['entropy (nats)']:.4f} | {row['NLL']:.4f} | {row['Brier']:.4f} |")
    lines.append("")
    if any(_trust(r) for r in results):
        lines.append("Rows \"+ temperature\": the same logits divided by one temperature per model (per fold for "
                     "cross-validated sets), fitted on its validation patients only (`medrobust.trust`).")
    lines.append("RMSCE (debiased) is Kumar et al.'s estimator, clipped at 0 (on ~100 images it often is 0); the "
                 "plug-in value is shown beside it. " + entropy_text(results) + " The paper's 2.8–4.5 cannot be this "
                 "quantity.")
    return "\n".join(lines)


METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auroc": "AUROC"}


def _fmt(metric: str, v: float | None) -> str:
    return format_value(metric, v)


def _with_ci(metric: str, v: float, ci: Sequence[float] | None) -> str:
    return format_value(metric, v, ci)


def _spread(metric: str, d: dict[str, float] | None) -> str:
    if not d or d.get("n", 0) < 2:
        return "–"
    scale = 1.0 if metric == "auroc" else 100.0
    digits = 3 if metric == "auroc" else 1
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['sd']:.{digits}f}"


def table_cv(results: Sequence[dict[str, Any]]) -> str:
    """Pooled out-of-fold clean metrics with patient-bootstrap CIs, and the per-fold mean ± sd beside them."""
    cv = [r for r in _sorted(results) if "cv" in r]
    if not cv:
        return ""
    lines = ["| model | folds | images (patients) | accuracy [95 % CI] | balanced acc. [95 % CI] | AUROC [95 % CI] | "
             "per-fold bal. acc. | per-fold AUROC |", "|" + "---|" * 8]
    for r in cv:
        c, ci = r["clean"], r["clean"]["ci"]
        lines.append(f"| {r['name']}{_flag(r)} | {r['cv']['folds']} | {r['n_test']} ({r.get('n_patients', '–')}) | "
                     f"{_with_ci('accuracy', c['accuracy'], ci.get('accuracy'))} | "
                     f"{_with_ci('balanced_accuracy', c['balanced_accuracy'], ci.get('balanced_accuracy'))} | "
                     f"{_with_ci('auroc', c['auroc'], ci.get('auroc'))} | "
                     f"{_spread('balanced_accuracy', r['cv']['clean'].get('balanced_accuracy'))} | "
                     f"{_spread('auroc', r['cv']['clean'].get('auroc'))} |")
    lines += ["", "Every labelled image is tested once, by the fold model that never saw its patient; CIs resample "
              "patients (95 % percentile bootstrap). Accuracy and balanced accuracy in %."]
    return "\n".join(lines)


def suite_rows(result: dict[str, Any], suite: str) -> list[dict[str, Any]]:
    """The rows of one corruption suite ("paper" or "clinical"); results written before suites existed are "paper"."""
    return [x for x in result["rows"] if x.get("suite", "paper" if x["perturbation"] in ("gaussian", "salt_and_pepper",
                                                                                         "speckle") else "") == suite]


def table_suite_means(results: Sequence[dict[str, Any]], suite: str = "clinical") -> str:
    """Mean corruption accuracy, balanced accuracy and AUROC per model, and relative robustness (corrupted / clean)."""
    res = [r for r in _sorted(results) if suite_rows(r, suite)]
    if not res:
        return ""
    lines = [f"| model | clean bal. acc. | mean {suite} bal. acc. | relative | clean AUROC | mean {suite} AUROC | relative |",
             "|" + "---|" * 7]
    for r in res:
        rows = suite_rows(r, suite)
        bacc = sum(x["balanced_accuracy"] for x in rows) / len(rows)
        au = [x.get("auroc", math.nan) for x in rows]
        auroc = sum(au) / len(au)
        c = r["clean"]
        lines.append(f"| {r['name']}{_flag(r)} | {_pct(c['balanced_accuracy'])} | {_pct(bacc)} | "
                     f"{bacc / c['balanced_accuracy']:.2f} | {_fmt('auroc', c.get('auroc'))} | {_fmt('auroc', auroc)} | "
                     f"{auroc / c['auroc'] if c.get('auroc') else math.nan:.2f} |")
    return "\n".join(lines)


def table_levels(result: dict[str, Any], *, suite: str = "clinical", metric: str = "auroc") -> str:
    """One model's metric at every level of every corruption of a suite (the severity check)."""
    rows = suite_rows(result, suite)
    if not rows:
        return ""
    perts = list(dict.fromkeys(x["perturbation"] for x in rows))
    levels = sorted({x["severity"] for x in rows})
    lines = [f"| {result['name']}: {METRIC_LABELS.get(metric, metric)} | clean | "
             + " | ".join(f"{'level' if suite == 'clinical' else 'sev.'} {v:g}" for v in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    for pert in perts:
        cells = []
        for v in levels:
            x = next((x for x in rows if x["perturbation"] == pert and x["severity"] == v), None)
            cell = _fmt(metric, x.get(metric)) if x else "–"
            if x and x.get("param") is not None:
                cell += f" ({x['param']:g})"
            cells.append(cell)
        lines.append(f"| {pert.split('/', 1)[-1]} | {_fmt(metric, result['clean'].get(metric))} | " + " | ".join(cells) + " |")
    if suite == "clinical":
        lines += ["", "In brackets: the corruption's parameter at that level (medrobust.clinical.CLINICAL)."]
    return "\n".join(lines)


def paired_differences(results: Sequence[dict[str, Any]], *, baseline: str = "standard",
                       metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "auroc"),
                       n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Each method against ``baseline`` on the same images: difference, paired patient-bootstrap CI, p-value.

    Uses the per-sample logits (``<name>.logits.npz`` beside a result, or in memory); pairs only results
    with the same images under the same conditions (e.g. the pooled cross-validations of two methods).
    Conditions: clean and every PGD radius.
    """
    from medrobust.evaluation import per_sample_of
    from medrobust.stats import paired_cluster_bootstrap

    by_method = {}
    for r in results:
        by_method.setdefault(r.get("method"), r)
    base = by_method.get(baseline)
    ps_base = per_sample_of(base) if base else None
    if ps_base is None:
        return []
    out = []
    for r in _sorted(results):
        if r is base or r.get("method") == baseline:
            continue
        ps = per_sample_of(r)
        if ps is None or ps.keys != ps_base.keys or [c.key for c in ps.conditions] != [c.key for c in ps_base.conditions]:
            continue
        for i, cond in enumerate(ps.conditions):
            if cond.suite not in ("clean", "attack"):
                continue
            d = paired_cluster_bootstrap(labels=ps.labels, probs_a=ps_base.probs(i), probs_b=ps.probs(i),
                                         groups=ps.groups, metrics=tuple(metrics), n_boot=n_boot, seed=seed)
            out.append({"model": r["name"], "method": r.get("method"), "baseline": base["name"],
                        "condition": "clean" if cond.suite == "clean" else f"PGD eps {cond.severity:g}",
                        "differences": d})
    return out


def table_paired(pairs: Sequence[dict[str, Any]], *, metric: str = "balanced_accuracy") -> str:
    from medrobust.stats import describe_difference

    if not pairs:
        return ""
    lines = ["| B − A | condition | B − A [95 % CI] | p | in words |", "|---|---|---|---|---|"]
    for p in pairs:
        d = p["differences"][metric]
        lines.append(f"| {p['model']} − {p['baseline']} | {p['condition']} | "
                     f"{format_difference(metric, d['difference'], d['ci'])} | {format_p(d['p_value'])} | "
                     f"{describe_difference(metric, d, a_name=p['baseline'], b_name=p['model'])} |")
    return "\n".join(lines)


def result_groups(results: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Results grouped by the set they belong to (the folder of their file): claims compare models on the same
    images, so each set is decided on its own."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        key = str(Path(r["_path"]).parent) if r.get("_path") else "results"
        groups.setdefault(key, []).append(r)
    return list(groups.items())


def table_claims(results: Sequence[dict[str, Any]]) -> list[str]:
    """The paper's claims decided on each result set (Markdown lines; a set that cannot be paired is said so)."""
    from medrobust.claims import claims_markdown, decide_claims

    parts = []
    for folder, group in result_groups(results):
        kind = "cross-validated, pooled out-of-fold" if any("cv" in r for r in group) else "single split"
        try:
            text = claims_markdown(decide_claims(group))
        except ValueError as exc:
            text = f"Not decided: {exc}"
        where = "/".join(Path(folder).parts[-2:])
        parts += [f"### The paper's claims, decided on the {kind} set ({where}/)", text, ""]
    return parts


def table_seed_spread(results: Sequence[dict[str, Any]]) -> list[str]:
    """The seed spread kept beside each result set (``seed_spread.json``), as Markdown lines."""
    from medrobust.seed_spread import load_spread, spread_markdown

    parts = []
    for folder, _ in result_groups(results):
        spread = load_spread(folder)
        if spread is not None:
            parts += ["### Seed spread: how much a reseed alone moves the results", spread_markdown(spread), ""]
    return parts


def render_report(results: Sequence[dict[str, Any]]) -> str:
    """Both tables plus the per-eps table and warnings, as Markdown."""
    if not results:
        raise ValueError("No evaluation results to report; run `python -m medrobust evaluate` first.")
    parts = []
    cv = table_cv(results)
    if cv:
        parts += ["### Cross-validated: pooled out-of-fold results", cv, ""]
    pairs = paired_differences(results)
    for metric in ("balanced_accuracy", "auroc", "accuracy") if pairs else ():
        parts += [f"### Paired differences against standard: {METRIC_LABELS[metric]}", table_paired(pairs, metric=metric), ""]
    parts += table_seed_spread(results)
    parts += table_claims(results)
    parts += ["### Table I — accuracy / balanced accuracy (%)", table_one(results), "",
              "### Adversarial accuracy per radius (worst case over the attack ensemble)", table_pgd(results), "",
              "### Table II — calibration (clean test images)", table_two(results)]
    checks = table_attack_checks(results)
    if checks:
        parts += ["", "### Attack checks: a black-box attack (Square) and a larger budget against the worst case", checks]
    clinical = table_suite_means(results, "clinical")
    if clinical:
        parts += ["", "### Clinical corruption suite: means over 9 corruptions x 5 levels", clinical]
        std = next((r for r in _sorted(results) if r.get("method") == "standard" and suite_rows(r, "clinical")), None)
        if std is not None:
            parts += ["", "#### Severity check: the standard model at every level", table_levels(std, metric="auroc"),
                      "", table_levels(std, metric="balanced_accuracy")]
    decisions = table_decisions(results)
    if decisions:
        parts += ["", "### Decision rules: temperature, operating point, referral, conformal sets", decisions]
    audit = table_audit(results)
    if audit:
        parts += ["", "### Shortcut audit (lungs blanked, border blanked, Grad-CAM mass)", audit]
    parts += ["", "### The paper's figures, for comparison", paper.paper_tables_markdown()]
    warns = [r for r in results if r.get("degenerate")]
    for r in warns:
        parts.append(f"\n**Warning:** {r['name']} answers one class for {100 * r['majority_fraction']:.0f} % of test "
                     "images; its robustness numbers are an artefact of that, not robustness.")
    sanity = [(r["name"], r["sanity"]) for r in results if not r["sanity"].get("monotone_in_eps", True)
              or not r["sanity"].get("restart_gap_ok", True)]
    for name, s in sanity:
        parts.append(f"\n**Attack sanity:** {name}: monotone={s.get('monotone_in_eps')}, restart gap={s.get('restart_gap')}")
    return "\n".join(parts)


def audit_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per audited result: balanced accuracy / AUROC clean, lungs blanked, border blanked; CAM share."""
    rows = []
    for r in _sorted(results):
        a = r.get("audit")
        if not a:
            continue
        cond = a["masking"]["conditions"]
        cam = a.get("cam") or {}

        def pair(c: str) -> str:
            m = cond[c]
            return (f"{100 * m['balanced_accuracy']:.0f} % / {m['auroc']:.2f}"
                    if m.get("balanced_accuracy") is not None and m.get("auroc") is not None else "–")

        inside = cam.get("mass_fraction_inside")
        reading = audit_text.lung_reading(a["masking"], a.get("cam"))
        rows.append({"model": r["name"], "clean (bal. acc / AUROC)": pair("clean"),
                     "lungs blanked": pair("lungs_blanked"), "border blanked": pair("border_blanked"),
                     "Grad-CAM mass in the central field": (f"{100 * inside:.0f} % (area {100 * cam['area_fraction']:.0f} %)"
                                                            if inside is not None else "–"),
                     "flags": ", ".join(k.replace("_", " ") for k, v in a.get("flags", {}).items() if v) or "none",
                     "reads the lungs?": reading.headline})
    return rows


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Row dicts (the first row's keys are the columns) as a Markdown table."""
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for row in rows])


def table_audit(results: Sequence[dict[str, Any]]) -> str:
    """The shortcut audit of every audited result, with its verdicts, as Markdown ('' when none is audited)."""
    rows = audit_rows(results)
    if not rows:
        return ""
    lines = [_markdown(rows)]
    # Re-worded from the stored numbers (audit_text): the test set's sentence once, then each model's own.
    audited = [r for r in _sorted(results) if r.get("audit")]
    verdicts = [f"- {line}" for line in audit_text.set_lines(audited)]
    verdicts += [f"- {r['name']}: {v}" for r in audited
                 for v in audit_text.model_sentences(r["audit"]["masking"], r["audit"].get("cam"), name=r["name"])]
    return "\n".join(lines + ([""] + verdicts if verdicts else []))


# --------------------------------------------------------------------------- rows for the dashboard


def _ci_text(v: float | None, ci: Sequence[float] | None) -> str:
    return format_value("accuracy", v, ci)


def _paper(table: dict[str, dict[str, float | None]], method: str, key: str) -> str:
    v = table.get(method, {}).get(key)
    return "–" if v is None else (_pct(v) if v <= 1.0 else f"{v:g}")


def _paper_value(table: dict[str, dict[str, float | None]], method: str, key: str) -> float:
    v = table.get(method, {}).get(key)
    return math.nan if v is None else float(v)


def drop_empty_paper_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Remove the "paper …" columns that hold no number for any row."""
    def empty(v: Any) -> bool:
        return v is None or v == "–" or (isinstance(v, float) and math.isnan(v))

    keep = {k for r in rows for k, v in r.items() if not k.startswith("paper ") or not empty(v)}
    return [{k: v for k, v in r.items() if k in keep} for r in rows]


def table_one_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table I as rows (strings, %): clean accuracy and balanced accuracy with 95 % CIs, AUROC, the
    mean accuracy / balanced accuracy under PGD and each noise, and the paper's values beside them."""
    rows = []
    for r in _sorted(results):
        norm = r.get("params", {}).get("norm", "l2")
        c, ci, s = r["clean"], r["clean"].get("ci", {}), r["summary"]
        auroc = c.get("auroc")
        au_ci = ci.get("auroc")
        row = {
            "model": r["name"] + _flag(r),
            "method": r.get("method", "unknown"),
            "clean acc [95% CI]": _ci_text(c["accuracy"], ci.get("accuracy")),
            "clean bal. acc [95% CI]": _ci_text(c["balanced_accuracy"], ci.get("balanced_accuracy")),
            "AUROC [95% CI]": format_value("auroc", auroc, au_ci),
            f"adversarial {norm.upper()} acc / bal.": _pair(s.get(f"pgd_{norm}")),
        }
        for noise, label in (("gaussian", "Gaussian"), ("salt_and_pepper", "S&P"), ("speckle", "Speckle")):
            row[f"{label} acc / bal."] = _pair(s.get(noise, {"accuracy": None, "balanced_accuracy": None}))
        m = r.get("method", "")
        row["paper clean acc"] = _paper(PAPER_TABLE_I, m, "clean")
        row["paper PGD acc"] = _paper(PAPER_TABLE_I, m, "pgd")
        row["paper Gaussian acc"] = _paper(PAPER_TABLE_I, m, "gaussian")
        row["paper S&P acc"] = _paper(PAPER_TABLE_I, m, "salt_and_pepper")
        row["paper speckle acc"] = _paper(PAPER_TABLE_I, m, "speckle")
        rows.append(row)
    return rows


def table_two_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table II as rows: calibration on clean test images, with the paper's values beside them."""
    rows = []
    for r in _sorted(results):
        c = r["calibration"]
        m = r.get("method", "")
        rows.append({"model": r["name"] + _flag(r), "method": m, "RMSCE (debiased)": c["rmsce"],
                     "RMSCE (plug-in)": c["rmsce_plugin"], "ECE (15 bins)": c["ece"], "entropy (nats)": c["entropy"],
                     "NLL": c["nll"], "Brier": c["brier"], "paper RMSCE": _paper_value(PAPER_TABLE_II, m, "rmsce"),
                     "paper entropy": _paper_value(PAPER_TABLE_II, m, "entropy")})
        t = _trust(r)
        if t:
            c = t["assessment"]["calibration"]["temperature_scaled"]
            rows.append({"model": r["name"] + " + temperature", "method": m + " + temperature",
                         "RMSCE (debiased)": c["rmsce"], "RMSCE (plug-in)": c["rmsce_plugin"], "ECE (15 bins)": c["ece"],
                         "entropy (nats)": c["entropy"], "NLL": c["nll"], "Brier": c["brier"],
                         "paper RMSCE": math.nan, "paper entropy": math.nan})
    return rows


# --------------------------------------------------------------------------- decision rules (medrobust.trust)


def _trust(r: dict[str, Any]) -> dict[str, Any] | None:
    t = r.get("trust")
    return t if t and t.get("assessment") else None


def _fitted(results: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(result, its trust block) for each result with a fitted decision rule, in method order."""
    return [(r, t) for r in _sorted(results) if (t := _trust(r))]


def _num(v: float | None, digits: int = 2) -> str:
    return format_number(v, decimals=digits)


def _interval(v: float | None, ci: Sequence[float] | None, digits: int = 2) -> str:
    return format_interval(v, ci, decimals=digits)


def _temps(fits: dict[str, Any], key: str, digits: int) -> str:
    vals = [f[key] for f in fits.values() if f.get(key) is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return _num(vals[0], digits)
    return f"{_num(min(vals), digits)}–{_num(max(vals), digits)} ({len(vals)} folds)"


def decision_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operating point of each model: its threshold(s) and temperature(s), and sensitivity, specificity, PPV and
    NPV on the test patients with 95 % patient-bootstrap CIs, at the data's prevalence and restated for others."""
    rows = []
    for r, t in _fitted(results):
        op = t["assessment"]["operating_point"]
        row = {"model": r["name"], "temperature": _temps(t["fits"], "temperature", 2),
               "threshold on calibrated P": _temps(t["fits"], "threshold", 3)}
        if "sensitivity" in op:
            ci = op.get("ci", {})
            row.update({k: _interval(op[k], ci.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")})
            row["prevalence in the test data"] = f"{100 * op['prevalence']:.0f} %"
            for prev in (0.1, 0.5):
                row[f"PPV / NPV at {100 * prev:.0f} % prevalence"] = (
                    f"{_num(op.get(f'ppv@{prev:g}'))} / {_num(op.get(f'npv@{prev:g}'))}")
        else:
            row["sensitivity"] = op.get("note", "")
        rows.append(row)
    return rows


def referral_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Selective answering: how many test images each model answers at its referral level and how often it is
    wrong then; AURC clean, at each attack radius and at the worst clinical corruption."""
    rows = []
    for r, t in _fitted(results):
        a = t["assessment"]
        ref = a["referral"]
        conds = a["conditions"]
        row = {"model": r["name"], "answered (target)": f"{100 * ref['coverage']:.0f} % ({100 * ref['target_coverage']:.0f} %)",
               "error when answering all": f"{100 * ref['risk_all']:.1f} %",
               "error on answered": f"{100 * ref['risk_answered']:.1f} %" if ref["risk_answered"] == ref["risk_answered"] else "–",
               "AURC clean": _num(conds[0]["aurc"], 3)}
        for c in conds:
            if c["suite"] == "attack":
                row[f"AURC eps {c['severity']:g}"] = _num(c["aurc"], 3)
        clinical = [c for c in conds if c["suite"] == "clinical"]
        if clinical:
            worst = max(clinical, key=lambda c: c["aurc"])
            row["AURC worst clinical"] = f"{_num(worst['aurc'], 3)} ({worst['condition'].split('/', 1)[-1]})"
        rows.append(row)
    return rows


def conformal_rows(results: Sequence[dict[str, Any]], *, method: str = "lac") -> list[dict[str, Any]]:
    """Empirical coverage (and mean set size) of the conformal sets on the test patients: clean, at each attack
    radius, and at the worst clinical corruption level (the promise holds only for exchangeable, clean data)."""
    rows = []
    for r, t in _fitted(results):
        a = t["assessment"]
        conds = a["conditions"]

        def cell(c):
            return f"{100 * c[f'{method}_coverage']:.0f} % ({c[f'{method}_size']:.2f})"

        row = {"model": r["name"], "promised": f"{100 * a['promised_coverage']:.0f} %", "clean": cell(conds[0])}
        for c in conds:
            if c["suite"] == "attack":
                row[f"eps {c['severity']:g}"] = cell(c)
        clinical = [c for c in conds if c["suite"] == "clinical"]
        if clinical:
            worst = min(clinical, key=lambda c: c[f"{method}_coverage"])
            row["worst clinical"] = f"{cell(worst)} {worst['condition'].split('/', 1)[-1]}"
        rows.append(row)
    return rows


CALIBRATION_LABELS = {"rmsce": "RMSCE (debiased)", "rmsce_plugin": "RMSCE (plug-in)", "ece": "ECE",
                      "nll": "NLL (nats)", "brier": "Brier", "entropy": "entropy (nats)"}


def calibration_change_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """RMSCE (debiased and plug-in), ECE, NLL and Brier before and after the temperature, with 95 % patient-bootstrap
    CIs of each and of the change."""
    rows = []
    for r, t in _fitted(results):
        c = t["assessment"]["calibration"]
        ci = c.get("ci", {})
        row = {"model": r["name"]}
        for k, label in CALIBRATION_LABELS.items():
            row[label] = (f"{_num(c['raw'][k], 3)} → {_num(c['temperature_scaled'][k], 3)} "
                          f"(change {format_interval(c['change'][k], ci.get(f'change.{k}'), decimals=3, signed=True)})")
        rows.append(row)
    return rows


def table_decisions(results: Sequence[dict[str, Any]]) -> str:
    """Operating points, referral and conformal coverage as Markdown ('' when no result carries a fitted rule)."""
    rows = decision_rows(results)
    if not rows:
        return ""
    parts = ["#### Operating point (chosen on validation patients; rates on the test patients, 95 % CI)", _markdown(rows),
             "", "PPV and NPV depend on prevalence: the test data are mostly COVID-19, a clinic's patients are not; "
                 "the last columns restate them by Bayes' rule.",
             "", "#### Calibration before and after the temperature", _markdown(calibration_change_rows(results))]
    ref = referral_rows(results)
    if ref:
        parts += ["", "#### Referral: answer only above a confidence level chosen on validation patients", _markdown(ref),
                  "", "AURC: area under the risk–coverage curve (mean error over all coverages; lower is better)."]
    conf = conformal_rows(results)
    if conf:
        parts += ["", "#### Conformal prediction sets (LAC): empirical coverage (mean set size)", _markdown(conf)]
    return "\n".join(parts)


def table_pgd_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adversarial accuracy / balanced accuracy (%) with 95 % CI at each radius (the worst case over the
    ensemble), and each attack's own accuracy where the result records it."""
    rows = []
    for r in _sorted(results):
        norm = r.get("params", {}).get("norm", "l2")
        row = {"model": r["name"] + _flag(r)}
        for x in (x for x in r["rows"] if x["perturbation"] == f"pgd_{norm}"):
            ci = x.get("ci", {})
            row[f"eps {x['severity']:g} acc %"] = _ci_text(x["accuracy"], ci.get("accuracy"))
            row[f"eps {x['severity']:g} bal. %"] = _ci_text(x["balanced_accuracy"], ci.get("balanced_accuracy"))
            for a, v in x.get("accuracy_by_attack", {}).items():
                row[f"eps {x['severity']:g} {ATTACK_LABELS.get(a, a)} acc %"] = _pct(v)
        rows.append(row)
    return rows


def attack_check_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and radius checked by ``check-attacks`` (``sanity.attack_checks``): the white-box
    worst case, the same with a larger budget, the Square attack's accuracy, and the verdicts."""
    rows = []
    for r in _sorted(results):
        checks = (r.get("sanity") or {}).get("attack_checks")
        if not checks:
            continue
        for c in checks.get("by_eps", [checks]):  # older files hold one radius at the top level
            sq, b = c["square"], c["budget"]
            problems = (["gradient masking suspected"] if sq.get("masking_suspected") else []) + (
                [f"{b['factor']}x budget lowers it by {100 * b['gap']:.1f} points"] if not b.get("gap_ok") else [])
            rows.append({"model": r["name"] + _flag(r), "eps (224 px)": f"{c['eps']:g}", "images": c["n"],
                         "worst case %": _pct(b["accuracy"]),
                         "larger budget %": f"{_pct(b['accuracy_larger_budget'])} ({b['factor']}x steps and restarts)",
                         "Square %": _pct(sq["square_accuracy"]), "Square queries": sq["n_queries"],
                         "verdict": "; ".join(problems) or "ok"})
    return rows


def table_attack_checks(results: Sequence[dict[str, Any]]) -> str:
    """The attack checks as Markdown ('' when no result carries them)."""
    rows = attack_check_rows(results)
    if not rows:
        return ""
    return _markdown(rows)


def at_a_glance(results: Sequence[dict[str, Any]], *, claims: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The Overview's opening: at most five short Markdown lines, each number with its interval.

    What was tested and on how many images and patients; the best clean balanced accuracy against chance;
    who keeps most under the smallest-but-one attack radius; the best calibrated model; and how the paper's
    claims came out (``claims`` from :func:`medrobust.claims.decide_claims`, when decided).
    """
    res = _sorted(results)
    if not res:
        return []
    first = res[0]
    where = (f"{first['cv']['folds']}-fold cross-validation, pooled" if "cv" in first else "one held-out split")
    patients = f" of {first['n_patients']} patients" if first.get("n_patients") else ""
    out = [f"**{len(res)} model(s)** on **{first.get('n_test', '?')} test images{patients}** ({where})."]
    usable = [r for r in res if not r.get("degenerate")]
    if usable:
        best = max(usable, key=lambda r: r["clean"]["balanced_accuracy"])
        c = best["clean"]
        out.append(f"Best on clean images: **{best['name']}**, balanced accuracy "
                   f"{format_value('balanced_accuracy', c['balanced_accuracy'], c.get('ci', {}).get('balanced_accuracy'))} % "
                   f"(chance {100 * chance_balanced_accuracy(res):.0f} %), AUROC "
                   f"{format_value('auroc', c.get('auroc'), c.get('ci', {}).get('auroc'))}.")
        norm = first.get("params", {}).get("norm", "l2")
        eps = _severities(usable, (f"pgd_{norm}",))
        if eps:
            e = eps[1] if len(eps) > 1 else eps[0]
            cells = []
            for r in usable:
                row = next((x for x in r["rows"] if x["perturbation"] == f"pgd_{norm}" and x["severity"] == e), None)
                if row:
                    cells.append(f"{r['name']} {format_value('balanced_accuracy', row['balanced_accuracy'])} %")
            out.append(f"Under attack (PGD, eps {e:g}, invisible to the eye): balanced accuracy " + ", ".join(cells) + ".")
        cal = min(usable, key=lambda r: r["calibration"]["rmsce"])
        out.append(f"Best calibrated: **{cal['name']}** (RMSCE {format_value('rmsce', cal['calibration']['rmsce'])}).")
    else:
        out.append("No model here separates the classes: none of its numbers support a conclusion.")
    if claims:
        counts: dict[str, int] = {}
        for d in claims:
            counts[d["verdict"]] = counts.get(d["verdict"], 0) + 1
        out.append("The paper's claims on this set: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    return out


def _noise_reading(usable: Sequence[dict[str, Any]]) -> list[str]:
    """One bullet on random noise, in the units a reader can picture (the clinical suite's level 2 when run)."""
    from medrobust.clinical_scale import level_meaning

    def cells(perturbation: str, severity: float) -> list[str]:
        return [f"{r['name']} {format_value('balanced_accuracy', x['balanced_accuracy'])} %" for r in usable
                for x in r["rows"] if x["perturbation"] == perturbation and abs(x["severity"] - severity) < 1e-9]

    clinical = cells("clinical/gaussian_noise", 2)
    if clinical:
        return [f"Random noise of the kind a noisy or low-dose detector adds (clinical Gaussian noise, level 2 of 5: "
                f"{level_meaning('gaussian_noise', 2)}) gives balanced accuracy {', '.join(clinical)}."]
    paper_scale = cells("gaussian", 0.1)
    if paper_scale:
        return ["The paper's weakest Gaussian noise (variance 0.1: σ 0.32, about 81 of 255 grey levels, far more than "
                f"any detector adds) gives balanced accuracy {', '.join(paper_scale)}."]
    return []


def clinical_reading(results: Sequence[dict[str, Any]]) -> list[str]:
    """A short, plain-language reading of the results for a clinician (Markdown bullet texts)."""
    if not results:
        return []
    out: list[str] = []
    res = _sorted(results)
    usable = [r for r in res if not r.get("degenerate")]
    bad = [r for r in res if r.get("degenerate")]
    n_test = res[0].get("n_test")
    npc = res[0].get("n_per_class") or {}
    if n_test and "cv" in res[0]:
        per = ", ".join(f"{v} {k}" for k, v in npc.items())
        out.append(f"All numbers come from **{n_test} images** ({per}) of {res[0].get('n_patients', '?')} patients, "
                   f"{test_set_text(res[0])}. "
                   "The 95 % intervals resample patients; where they overlap, the data do not tell the models apart.")
    elif n_test:
        per = ", ".join(f"{v} {k}" for k, v in npc.items())
        out.append(f"All numbers come from **{n_test} images** ({per}): {test_set_text(res[0])}. With so few images "
                   "the 95 % intervals are wide: differences of a few points between models are not evidence that one "
                   "is better.")
    classes = list(res[0].get("classes") or ("non-COVID", "COVID-19"))
    k = len(classes)
    if npc:
        common = max(npc, key=npc.get)
        out.append(f"**Accuracy** counts how many images are classified correctly; because the test set holds more "
                   f"{common} than other images, a model that always says {common} scores high. **Balanced accuracy** "
                   f"averages the hit rate of the {k} classes, so read it first. " + chance_text(res))
    for r in bad:
        out.append(f"⚠ **{r['name']}** gives the same answer for {100 * r.get('majority_fraction', 1):.0f} % of "
                   "images. It does not tell patients apart, and its robustness numbers mean nothing.")
    if usable:
        best = max(usable, key=lambda r: r["clean"]["balanced_accuracy"])
        c = best["clean"]
        if k == 2:
            out.append(f"On clean images the best model ({best['name']}) finds {100 * c['sensitivity']:.0f} of 100 "
                       f"{classes[1]} cases (sensitivity) and correctly clears {100 * c['specificity']:.0f} of 100 "
                       f"{classes[0]} cases (specificity); balanced accuracy {100 * c['balanced_accuracy']:.0f} %.")
        else:
            recall = c.get("recall_per_class") or {}
            per = ", ".join(f"{100 * v:.0f} of 100 {name}" for name, v in recall.items() if v == v)
            out.append(f"On clean images the best model ({best['name']}) recognises {per} cases; balanced "
                       f"accuracy {100 * c['balanced_accuracy']:.0f} %.")
        norm = best.get("params", {}).get("norm", "l2")
        drops = []
        for r in usable:
            pgd_rows = [x for x in r["rows"] if x["perturbation"] == f"pgd_{norm}"]
            if pgd_rows:
                drops.append((r, pgd_rows[0]))
        if drops:
            parts = [f"{r['name']} {100 * x['balanced_accuracy']:.0f} %" for r, x in drops]
            out.append(f"A deliberate change of the pixels too small to see (PGD, eps {drops[0][1]['severity']:g}) "
                       f"moves balanced accuracy to: {', '.join(parts)}. Such attacks need access to the model; "
                       "they show how fragile the decision is, not how often it fails in a clinic.")
        out += _noise_reading(usable)
        cal = min(usable, key=lambda r: r["calibration"]["ece"])
        out.append(f"**Calibration**: when a model says “90 % sure” it should be right 9 times in 10. The best "
                   f"calibrated model here is {cal['name']} (expected calibration error "
                   f"{100 * cal['calibration']['ece']:.1f} points); see the Calibration page.")
        # The test set's facts once (not once per model), then each model's one conclusion on the lungs.
        audit_lines = audit_text.summary(usable)
        if audit_lines:
            out += [f"**Shortcut audit** (central lung field or border blanked): {audit_lines[0]}", *audit_lines[1:]]
    else:
        out.append("No model in this result set separates the classes, so none of its numbers support a "
                   "clinical conclusion.")
    out.append("These are research models on a small public data set; they are not medical devices and must not "
               "guide the care of a patient.")
    return out
