"""medrobust dashboard: `streamlit run app.py`.

Pages (st.navigation; the Overview is the landing page): Overview, Stress test, Calibration,
Training, Downloads. Pages are thin: all computing lives in the medrobust package.
"""

import streamlit as st

st.set_page_config(page_title="medrobust — chest X-ray robustness", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/stress_test.py", title="Stress test", icon=":material/science:", url_path="stress-test"),
    st.Page("pages/calibration.py", title="Calibration", icon=":material/target:", url_path="calibration"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:", url_path="training"),
    st.Page("pages/downloads.py", title="Downloads", icon=":material/download:", url_path="downloads"),
]

st.navigation(PAGES).run()
