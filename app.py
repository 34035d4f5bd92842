"""medrobust dashboard: `streamlit run app.py`.

Pages (st.navigation; the Overview is the landing page): Overview, Stress test, Calibration,
Training, Downloads. Pages are thin: all computing lives in the medrobust package. With
``MEDROBUST_DEMO=1`` (the Docker image's documented run command) every page carries a research-use
notice, PGD steps and the flip search are capped, and training is hidden unless an admin token is set.

The page scripts live in views/, not pages/: Streamlit 1.67 routes any request through a pages/
folder beside the entry point until st.navigation first runs (runtime/pages_manager.py), so a
reload of e.g. /training ran a page without app.py (no navigation, no page config). The Stress
test's script is views/stress_lab.py: a name ending in _test.py would be collected by pytest.
"""

from pathlib import Path

import streamlit as st

from medrobust.dashboard import ui
from medrobust.dashboard.hosting import finish_sessions_on_shutdown, keep_uploads_in_memory

keep_uploads_in_memory()  # uploads never touch /tmp (Starlette would spool files over 1 MB there)
finish_sessions_on_shutdown()  # docker stop under load: no SIGSEGV from a thread inside a torch kernel
# The favicon is a local SVG, which Streamlit inlines as a data: URI. A ":material/…:" page icon would make every
# browser fetch the icon from fonts.gstatic.com on each page load: a page served inside a hospital makes no request
# beyond its own origin (tests/system/test_browser.py records every request of a full visit).
FAVICON = Path(ui.__file__).with_name("favicon.svg")
st.set_page_config(page_title="medrobust — chest X-ray robustness", page_icon=str(FAVICON), layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/stress_lab.py", title="Stress test", icon=":material/science:", url_path="stress-test"),
    st.Page("views/calibration.py", title="Calibration", icon=":material/target:", url_path="calibration"),
    st.Page("views/training.py", title="Training", icon=":material/model_training:", url_path="training"),
    st.Page("views/downloads.py", title="Downloads", icon=":material/download:", url_path="downloads"),
]

# Overview, Calibration and Downloads never import torch (tested), so the landing page is up in seconds;
# the Stress test imports it on first use. (Importing it in a background thread was measured to slow the
# landing page down: the import holds the GIL that the server needs to send the page.)
page = st.navigation(PAGES)
ui.demo_notice()  # MEDROBUST_DEMO=1: "research models, not a diagnostic device" on every page
page.run()
