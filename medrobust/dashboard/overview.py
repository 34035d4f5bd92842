"""The Overview page's cross-validation section and curve controls (Streamlit widgets, numbers from medrobust.report)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import streamlit as st

from medrobust import audit_text, report
from medrobust.seed_spread import load_spread, spread_markdown

METRICS = {k: report.METRIC_LABELS[k][0].upper() + report.METRIC_LABELS[k][1:] for k in ("balanced_accuracy", "auroc", "accuracy")}
SUITES = {"clinical": "clinical (graded, MedMNIST-C)", "paper": "paper scale (noise variance 0.1-1.0)"}


def suite_caption(suite: str) -> str:
    """What the x axis of a suite's curves means, in the units a reader can picture."""
    if suite == "clinical":
        return ("Clinical suite: nine corruptions at five graded levels (medrobust.clinical): level 1 is a mild "
                "artefact a reader barely notices, level 5 one that brings a standard model near chance.")
    return ("The paper's scale: Gaussian and speckle variance, salt-and-pepper amount 0.1-1.0 (skimage). Even 0.1 "
            "is a standard deviation of 0.32, about 80 grey levels out of 255: far stronger than any detector's noise.")


def curve_controls(results: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The suite chooser and the metric switch for every curve on the page."""
    has_clinical = any(report.suite_rows(r, "clinical") for r in results)
    suites = [s for s in SUITES if s != "clinical" or has_clinical]
    c1, c2 = st.columns(2)
    suite = c1.radio("Corruption suite", suites, format_func=SUITES.get, horizontal=True, key="ov_suite")
    metric = c2.radio("Metric on every curve", list(METRICS), format_func=METRICS.get, horizontal=True, key="ov_metric")
    return suite, metric


# cache_resource, not cache_data: the pairs are read-only and cache_data would pickle them on every hit.
@st.cache_resource(show_spinner="Paired patient-level bootstrap…", max_entries=8)
def _pairs(signature: tuple, _results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    del signature  # the cache key: which result files
    return report.paired_differences(_results)


def _plain_sentences(pairs: list[dict[str, Any]]) -> list[str]:
    from medrobust.stats import describe_difference

    out = []
    for p in pairs:
        for metric in ("accuracy", "balanced_accuracy", "auroc"):
            if p["condition"] not in ("clean", "PGD eps 2") or (metric == "auroc" and p["condition"] != "clean"):
                continue
            text = describe_difference(metric, p["differences"][metric], a_name=p["baseline"], b_name=p["model"])
            out.append(f"**{p['condition']}**, {report.METRIC_LABELS[metric]}: {text}.")
    return out


def glance_section(results: Sequence[dict[str, Any]]) -> None:
    """The page's opening: a few lines with the headline numbers and how the claims came out."""
    groups = report.result_groups(results)
    decided: list[dict[str, Any]] = []
    if len(groups) == 1:
        group = groups[0][1]
        try:
            decided = _claims(tuple(r.get("_path", r["name"]) for r in group), group)
        except ValueError:
            decided = []
    st.markdown("#### At a glance\n" + "\n".join(f"- {line}" for line in report.at_a_glance(results, claims=decided)))


def cross_validation_section(results: Sequence[dict[str, Any]]) -> None:
    """Pooled out-of-fold metrics with patient-bootstrap CIs, the per-fold spread, and paired differences."""
    cv = [r for r in results if "cv" in r]
    first = cv[0]
    st.subheader("Cross-validated results: every labelled image tested once")
    st.markdown(f"{first['cv']['folds']}-fold patient-level cross-validation: **{first['n_test']} images of "
                f"{first.get('n_patients', '?')} patients** ({', '.join(f'{v} {k}' for k, v in first['n_per_class'].items())}), "
                "each predicted by the fold model that never saw its patient. Intervals resample patients, so "
                "several images of one patient are not counted as independent evidence.")
    st.markdown(report.table_cv(cv))
    pairs = _pairs(tuple(r.get("_path", r["name"]) for r in cv), cv)
    if pairs:
        st.markdown("**Is a method better than standard?** Paired on the same images and patients (95 % CI from a "
                    "paired patient-level bootstrap):")
        st.markdown("\n".join(f"- {line}" for line in _plain_sentences(pairs)))
        with st.expander("Every paired difference (clean and each PGD radius)"):
            for metric in ("balanced_accuracy", "auroc", "accuracy"):
                st.markdown(f"**{report.METRIC_LABELS[metric]}**")
                st.markdown(report.table_paired(pairs, metric=metric))
    else:
        st.caption("Paired differences need the standard method's pooled result and its per-sample logits "
                   "(`<name>.logits.npz`) beside the others'.")
    seed_spread_section(cv)
    spread = [{"model": r["name"], **{f"fold {f['fold']} {k}": round(f['clean'][k], 3)
                                      for f in r["cv"]["fold_results"] for k in ("balanced_accuracy", "auroc")}}
              for r in cv]
    with st.expander("Per-fold clean scores"):
        st.dataframe(pd.DataFrame(spread), hide_index=True)


def seed_spread_section(results: Sequence[dict[str, Any]]) -> None:
    """Fold 0 retrained with other seeds (``seed_spread.json`` beside the results): how much a reseed alone moves
    a number, so a reader can weigh a method difference against it."""
    for folder, _ in report.result_groups(results):
        try:
            spread = load_spread(folder)
        except ValueError as exc:
            st.warning(f"The seed spread kept with these results cannot be read: {exc}")
            continue
        if spread is not None:
            st.markdown("**Is a difference more than a reseed?** The same fold trained again with other seeds:")
            st.markdown(spread_markdown(spread))


def audit_section(results: Sequence[dict[str, Any]]) -> None:
    """The shortcut audit: does a model read the lungs, or the hospital's text, markers and borders?"""
    audited = [r for r in results if r.get("audit")]
    st.subheader("Shortcut audit: does the model look at the lungs?")
    if not audited:
        st.caption("No result in this set carries a shortcut audit; run `python -m medrobust evaluate MODEL --audit`.")
        return
    st.markdown("Most published COVID-19 X-ray models turned out to read the hospital (text, markers, borders) "
                "instead of the lungs. Each model is shown its test images three times: as they are, with the "
                "central lung field blanked, and with only the outer border blanked.")
    st.dataframe(pd.DataFrame(report.audit_rows(audited)), hide_index=True)
    # Worded from the stored numbers (medrobust.audit_text): the test set's sentence once, then each model's own.
    for line in audit_text.set_lines(audited):
        st.markdown(line)
    for r in audited:
        verdicts = audit_text.model_sentences(r["audit"]["masking"], r["audit"].get("cam"), name=r["name"])
        st.markdown(f"**{r['name']}**\n" + "\n".join(f"- {v}" for v in verdicts))
    st.caption("Lungs blanked: pixels in the central 60 % x 60 % of the image set to mid-grey; border blanked: the "
               "outer 12 % band. A model well above chance with the lungs blanked reads something other than the "
               "lungs. Intervals and thresholds are in each result's `audit.config`.")


def decision_section(results: Sequence[dict[str, Any]]) -> None:
    """Where the benchmark meets a verdict: operating points with their rates, referral (risk–coverage, AURC) and
    conformal coverage clean and under shift, for every result with a fitted decision rule (medrobust.trust)."""
    from medrobust.dashboard import plots

    fitted = [r for r in results if (r.get("trust") or {}).get("assessment")]
    st.subheader("Verdicts: operating point, referral and conformal sets")
    if not fitted:
        st.caption("No result in this set carries a decision rule (temperature, operating point, referral level, "
                   "conformal sets). The shipped single-split models carry theirs: choose that set in the sidebar. A "
                   "cross-validated set needs its fold models' validation patients, and these fold weights are not "
                   "shipped; for your own models run `python -m medrobust fit-decision MODEL` (or evaluate again).")
        return
    st.markdown("Each model's verdict uses a **threshold chosen on its validation patients** (Youden's J), applied to "
                "its **temperature-scaled** probability; the rates below are measured on the test patients.")
    st.dataframe(pd.DataFrame(report.decision_rows(fitted)), hide_index=True)
    prev = next((r["trust"]["assessment"]["operating_point"].get("prevalence") for r in fitted
                 if "prevalence" in r["trust"]["assessment"]["operating_point"]), None)
    if prev is not None:
        st.caption(f"PPV and NPV hold for the test data's prevalence ({100 * prev:.0f} % {fitted[0]['classes'][1]}); a "
                   "clinic's patients are rarely like that, so the last columns restate them by Bayes' rule at 10 % "
                   "and 50 %. For more than two classes the verdict is the most probable class.")
    with st.expander("Referral: answering only when confident (risk–coverage)"):
        conds = [c["condition"] for c in fitted[0]["trust"]["assessment"]["conditions"] if c.get("curve")]
        cond = st.selectbox("Condition", conds, key="ov_rc_condition",
                            format_func=lambda k: "clean" if k.startswith("clean") else k.replace("pgd_l2@", "L2 attack, eps "))
        st.plotly_chart(plots.risk_coverage_figure(fitted, condition=cond), key="ov_rc")
        st.dataframe(pd.DataFrame(report.referral_rows(fitted)), hide_index=True)
        st.caption("A model says \"uncertain — refer\" below the confidence that answers 80 % of its validation "
                   "cases. AURC is the mean error over all coverages (lower is better); eps is the L2 radius stated at "
                   "224 px.")
    with st.expander("Conformal prediction sets: does the 90 % promise survive a shift?"):
        st.dataframe(pd.DataFrame(report.conformal_rows(fitted)), hide_index=True)
        st.caption("LAC sets calibrated on validation patients; cell = share of test images whose set holds the true "
                   "class (mean set size). The promise is for clean images like the validation ones: under attack or "
                   "corruption coverage can fall below it.")
    with st.expander("Calibration before and after the temperature (95 % patient-bootstrap CIs)"):
        st.dataframe(pd.DataFrame(report.calibration_change_rows(fitted)), hide_index=True)


@st.cache_resource(show_spinner="Deciding the paper's claims (paired patient bootstrap)…", max_entries=8)
def _claims(signature: tuple, _results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    from medrobust.claims import decide_claims

    del signature  # the cache key: which result files
    return decide_claims(_results)


def claims_section(results: Sequence[dict[str, Any]]) -> None:
    """Each of the paper's claims with the paired differences that decide it and a verdict in plain words."""
    from medrobust.claims import claims_rows

    st.subheader("The paper's claims, decided")
    for folder, group in report.result_groups(results):
        try:
            decided = _claims(tuple(r.get("_path", r["name"]) for r in group), group)
        except ValueError as exc:
            st.caption(f"The claims cannot be decided on this set: {exc}")
            continue
        st.dataframe(pd.DataFrame(claims_rows(decided)), hide_index=True)
        first = decided[0]
        st.caption(f"On the same {first['n_images']} images of {first['n_patients']} patients; differences are "
                   "B − A with 95 % intervals from a paired patient bootstrap. Confirmed: every deciding interval "
                   "excludes 0 on the claimed side; refuted: one excludes 0 on the other side; undecided: an interval "
                   "includes 0; not evaluable: a method the claim needs is not in this set.")
