"""Calibration: reliability diagrams, confidence histograms and predictive entropy per model."""

import pandas as pd
import streamlit as st

from medrobust import report
from medrobust.dashboard import plots, ui

ui.page_header("Calibration", "Does a model's confidence match how often it is right? (clean test images)")

results, _ = ui.pick_results("calibration")
if not results:
    ui.no_results_message()
    st.stop()

ui.degenerate_warnings(results)

st.subheader("Reliability diagrams")
st.caption("Bars: accuracy of the images whose confidence falls in each bin; red: the gap to the diagonal "
           "(above the bar = over-confident); below: how many images each bin holds. The confidence is the top class's "
           f"probability, so it is never below 1/K = {report.chance_balanced_accuracy(results):.2f}.")
cols = st.columns(2)
for i, r in enumerate(results):
    with cols[i % 2]:
        st.plotly_chart(plots.reliability_diagram(r), key=f"rel_{i}")

left, right = st.columns(2)
with left:
    st.subheader("Confidence histograms")
    st.plotly_chart(plots.confidence_histograms(results), key="conf_hist")
with right:
    st.subheader("Predictive entropy")
    st.plotly_chart(plots.entropy_figure(results), key="entropy")
    st.caption("Per-image entropy of the predicted probabilities (box; the dashed line inside is the mean). "
               "Near 0 = always sure. " + report.entropy_text(results) + " At the bound the model is always undecided.")

st.subheader("Table II")
t2 = pd.DataFrame(report.drop_empty_paper_columns(report.table_two_rows(results)))
st.dataframe(t2, hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="%.4f") for c in t2.columns if c not in ("model", "method")})
