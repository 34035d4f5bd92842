"""Overview: Table I and II of the shipped (and newly trained) models, curves, and a plain reading."""

import pandas as pd
import streamlit as st

from medrobust import paper, report, settings
from medrobust.dashboard import overview, plots, resultsets, ui

ui.page_header(
    "Chest X-ray classifiers under noise and attack",
    "ResNet-18 trained four ways (standard, PGD-robust, AugMix, RobustAugMix) to tell COVID-19 from other "
    "findings on public chest X-rays; reproduces Martínez-Martínez & Nabavi, “Addressing Vulnerability in "
    "Medical Deep Learning through Robust Training”. Your own models and data sets (any torchvision network, "
    "any number of classes) appear here once evaluated.",
)

results, sets = ui.pick_results("overview")
if not results:
    ui.no_results_message()
    models = resultsets.discover_models()
    if models:
        st.write(f"{len(models)} model checkpoint(s) found in `{settings.checkpoints_dir()}`: "
                 + ", ".join(f"**{m.name}**" for m in models) + ". Try them on the **Stress test** page.")
    else:
        st.write(f"No model checkpoints in `{settings.checkpoints_dir()}` either: train one on the **Training** "
                 "page, or set `MEDROBUST_CHECKPOINTS` to a folder holding the four models.")
    st.page_link("views/stress_lab.py", label="Open the Stress test", icon=":material/science:")
    st.stop()

ui.degenerate_warnings(results)

overview.glance_section(results)

(tab_claims, tab_robust, tab_cal, tab_verdicts, tab_audit, tab_paper, tab_details) = st.tabs(
    ["Claims and reading", "Robustness", "Calibration", "Verdicts", "Shortcut audit", "The paper", "Details"])

with tab_claims:
    if any("cv" in r for r in results):
        overview.cross_validation_section(results)
    overview.claims_section(results)
    st.subheader("What this means for a clinician")
    st.markdown("\n".join(f"- {line}" for line in report.clinical_reading(results)))

with tab_robust:
    st.subheader("Table I — accuracy and balanced accuracy (%)")
    rows = report.table_one_rows(results)
    st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("paper ")} for r in rows]),
                 hide_index=True)
    st.caption(
        "Clean scores with 95 % confidence intervals from a bootstrap that resamples patients (result files written "
        "before medrobust 0.2 resampled images). " + report.table_one_caption(results) + " "
        + report.chance_text(results) + " The paper's own figures are beside ours under **The paper**.")

    st.subheader("Scores as the perturbation grows")
    suite, metric = overview.curve_controls(results)
    st.plotly_chart(plots.robustness_curves(results, metric=metric, suite=suite), key="curves")
    st.caption(f"{overview.METRICS[metric]} with 95 % CI bars (patient-level bootstrap); x = 0 is the clean test set. "
               + overview.suite_caption(suite) + " Dashed lines are degenerate models.")
    if suite == "clinical":
        with st.expander("Clinical suite: mean over all corruptions and levels, and relative robustness"):
            st.markdown(report.table_suite_means(results, "clinical"))

    with st.expander("Adversarial accuracy at each radius: the worst case over PGD and APGD-CE, and each attack's own"):
        st.dataframe(pd.DataFrame(report.table_pgd_rows(results)), hide_index=True)
        checks = report.attack_check_rows(results)
        if checks:
            st.markdown("**Attack checks** (`python -m medrobust check-attacks`): a black-box attack (Square) finding "
                        "lower accuracy than the white-box worst case would point to gradient masking; a larger "
                        "budget lowering it by more than a point means the benchmark's budget is not converged there.")
            st.dataframe(pd.DataFrame(checks), hide_index=True)

with tab_cal:
    st.subheader("Table II — calibration on clean test images")
    t2 = pd.DataFrame(report.drop_empty_paper_columns(report.table_two_rows(results)))
    st.dataframe(t2, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.4f") for c in t2.columns if c not in ("model", "method")})
    st.caption("RMSCE (debiased) is Kumar et al.'s estimator clipped at 0; ECE uses 15 equal-width bins. "
               + report.entropy_text(results) + " Details on the Calibration page.")

with tab_verdicts:
    overview.decision_section(results)

with tab_audit:
    overview.audit_section(results)
    if any(len(r.get("classes") or ()) > 2 for r in results):
        st.subheader("Confusion matrices on clean test images")
        multi = [r for r in results if r.get("clean", {}).get("confusion")]
        cols = st.columns(min(3, len(multi)) or 1)
        for i, r in enumerate(multi):
            cols[i % len(cols)].plotly_chart(plots.confusion_figure(r), key=f"confusion_{i}")
        st.caption("Rows are the true class; each cell gives the share of that class's images and their count.")

with tab_paper:
    beside = report.drop_empty_paper_columns(report.table_one_rows(results))
    if any(k.startswith("paper ") for r in beside for k in r):
        st.subheader("Ours beside the paper's Table I (accuracy, %)")
        st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if k in ("model", "method", "clean acc [95% CI]")
                                    or k.startswith("paper ")} for r in beside]), hide_index=True)
        st.caption("The paper reports accuracy only (no balanced accuracy, no intervals); read its figures with "
                   "the caveats below.")
    st.subheader("The paper's own figures")
    st.markdown(paper.paper_tables_markdown())

with tab_details:
    st.subheader("Evaluation parameters")
    for r in results:
        p = r.get("params", {})
        st.markdown(f"**{r['name']}** ({r.get('method')}) — {r.get('n_test')} test images at {r.get('image_size')} px; "
                    f"attacks {'+'.join(p.get('attacks', ['pgd']))} {p.get('norm')} {p.get('pgd_steps')} steps, "
                    f"{p.get('restarts')} PGD start(s); "
                    f"{p.get('n_boot')} bootstrap resamples; seed {p.get('seed')}; test images: {report.test_set_text(r)}"
                    + (f" (split {r['split_hash']})" if r.get("split_hash") else "") + ".")
    c1, c2 = st.columns(2)
    c1.download_button("Download results (CSV, parameters included)", lambda: resultsets.results_csv(results),
                       file_name="medrobust-results.csv", mime="text/csv", on_click="ignore", key="dl_csv")
    c2.download_button("Download results (JSON)", lambda: resultsets.results_json(results),
                       file_name="medrobust-results.json", mime="application/json", on_click="ignore", key="dl_json")
