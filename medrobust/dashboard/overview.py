"""The Overview page's cross-validation section and curve controls (Streamlit widgets, numbers from medrobust.report)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import streamlit as st

from medrobust import report

METRICS = {k: report.METRIC_LABELS[k][0].upper() + report.METRIC_LABELS[k][1:] for k in ("balanced_accuracy", "auroc", "accuracy")}
SUITES = {"clinical": "clinical (graded, MedMNIST-C)", "paper": "paper (noise variance 0.1-1.0)"}


def curve_controls(results: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The suite chooser and the metric switch for every curve on the page."""
    has_clinical = any(report.suite_rows(r, "clinical") for r in results)
    suites = [s for s in SUITES if s != "clinical" or has_clinical]
    c1, c2 = st.columns(2)
    suite = c1.radio("Corruption suite", suites, format_func=SUITES.get, horizontal=True, key="ov_suite")
    metric = c2.radio("Metric on every curve", list(METRICS), format_func=METRICS.get, horizontal=True, key="ov_metric")
    return suite, metric


@st.cache_data(show_spinner="Paired patient-level bootstrap…", max_entries=8)
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
    spread = [{"model": r["name"], **{f"fold {f['fold']} {k}": round(f['clean'][k], 3)
                                      for f in r["cv"]["fold_results"] for k in ("balanced_accuracy", "auroc")}}
              for r in cv]
    with st.expander("Per-fold clean scores"):
        st.dataframe(pd.DataFrame(spread), hide_index=True)


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
    for r in audited:
        verdicts = r["audit"].get("verdicts", [])
        if verdicts:
            st.markdown(f"**{r['name']}**\n" + "\n".join(f"- {v}" for v in verdicts))
    st.caption("Lungs blanked: pixels in the central 60 % x 60 % of the image set to mid-grey; border blanked: the "
               "outer 12 % band. A model well above chance with the lungs blanked reads something other than the "
               "lungs. Intervals and thresholds are in each result's `audit.config`.")
