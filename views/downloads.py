"""Downloads: the results (CSV/JSON, parameters included) and the latest stress-test snapshot."""

import streamlit as st

from medrobust.dashboard import resultsets, ui

ui.page_header("Downloads")

st.subheader("Evaluation results")
results, sets = ui.pick_results("downloads")
if results:
    st.write(f"{len(results)} model result(s): " + ", ".join(r["name"] for r in results))
    c1, c2 = st.columns(2)
    c1.download_button("Results (CSV, long format, parameters on every line)", lambda: resultsets.results_csv(results),
                       file_name="medrobust-results.csv", mime="text/csv", on_click="ignore", key="dl_csv")
    c2.download_button("Results (JSON, everything incl. parameters and predictions)",
                       lambda: resultsets.results_json(results), file_name="medrobust-results.json",
                       mime="application/json", on_click="ignore", key="dl_json")
else:
    ui.no_results_message()

st.subheader("Stress-test snapshot")
snap = st.session_state.get("stress_snapshot")
if snap:
    st.write(f"Latest snapshot: {snap['description']}")
    c1, c2 = st.columns(2)
    c1.download_button("Snapshot (ZIP: JSON + images)", snap["zip"], file_name="medrobust-stress-snapshot.zip",
                       mime="application/zip", on_click="ignore", key="dl_snap_zip")
    c2.download_button("Snapshot (JSON only)", snap["json"], file_name="medrobust-stress-snapshot.json",
                       mime="application/json", on_click="ignore", key="dl_snap_json")
else:
    st.info("No stress test in this session yet: upload an X-ray on the Stress test page.", icon=":material/info:")
    st.page_link("views/stress_lab.py", label="Open the Stress test", icon=":material/science:")
