"""The dashboard in a real browser: `streamlit run app.py` driven by Playwright through Debian's Chromium.

The full visit runs the Docker image's own entry point in a staged copy of its /app (:mod:`hosting_helpers`), so
the settings it checks are those the container ships.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import ast
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dashboard_fixtures import png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixture
from hosting_helpers import free_port, stage_image, start_server, stop_server, with_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny_checkpoints, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium); "
                    "the real-browser test cannot run here")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port = _free_port()
    env = {**os.environ, "MEDROBUST_CHECKPOINTS": str(tiny_checkpoints), "MEDROBUST_RESULTS": str(tmp_path / "results"),
           "MEDROBUST_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}
    for var in ("MEDROBUST_DATA", "MEDROBUST_ADMIN_TOKEN", "MEDROBUST_JOBS"):
        env.pop(var, None)
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_idle(page, timeout=60_000):
    page.wait_for_selector(IDLE, timeout=timeout)


def test_upload_an_xray_move_a_slider_and_see_four_model_cards(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a loaded 2-core machine can take a while per rerun
    shots = os.environ.get("MEDROBUST_SCREENSHOTS")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(server, timeout=60_000)
            _wait_idle(page)
            # The Overview opens with a short summary; its sections sit in tabs, so the page stays short.
            expect(page.get_by_text("At a glance")).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Robustness").click()
            expect(page.get_by_text("Table I — accuracy and balanced accuracy (%)")).to_be_visible(timeout=30_000)
            _wait_idle(page)
            height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
            assert height < 3000, f"the Overview is {height} px long at 1500 px width"
            # Table I's columns fit the grid: no table is wider than the main column.
            main = page.evaluate("document.querySelector('[data-testid=stMainBlockContainer]').clientWidth")
            widths = page.evaluate("[...document.querySelectorAll('[data-testid=stDataFrame]')]"
                                   ".filter(e => e.offsetParent).map(e => e.scrollWidth)")
            assert widths and max(widths) <= main + 1, (widths, main)
            if shots:
                page.screenshot(path=f"{shots}/overview.png", full_page=True)
            page.get_by_test_id("stSidebarNav").get_by_text("Stress test").click()
            expect(page.get_by_test_id("stFileUploaderDropzone")).to_be_visible(timeout=30_000)
            _wait_idle(page)
            (tmp_path / "chest.png").write_bytes(png_bytes(xray_like(128)))
            with page.expect_file_chooser() as chooser:
                page.get_by_test_id("stFileUploaderDropzone").click()
            chooser.value.set_files(str(tmp_path / "chest.png"))
            cards = page.locator("[class*='st-key-model-card-']")
            expect(cards).to_have_count(4, timeout=60_000)
            expect(page.get_by_text("P(COVID-19) =")).to_have_count(4)
            for name in ("standard", "robust", "augmix", "robustaugmix"):
                expect(cards.filter(has_text=name).first).to_be_visible()
            # The clinical suite is the default; then the paper's Gaussian noise, its slider moved with the keyboard.
            expect(page.get_by_text("Gaussian noise, level 2: σ 0.08 (about 20 of 255 grey levels) (seed 0)")
                   ).to_be_visible(timeout=60_000)
            _wait_idle(page)  # a click that lands while the page is being redrawn can miss its widget
            page.get_by_test_id("stRadio").first.get_by_text("Gaussian noise (paper scale)").click()
            expect(page.get_by_text("Gaussian noise (paper scale), severity 0.1 (seed 0)")).to_be_visible(timeout=60_000)
            thumb = page.get_by_test_id("stSlider").first.get_by_role("slider")
            thumb.focus()
            for _ in range(2):
                thumb.press("ArrowRight")
            expect(page.get_by_text("Gaussian noise (paper scale), severity 0.2 (seed 0)")).to_be_visible(timeout=60_000)
            _wait_idle(page)
            expect(cards).to_have_count(4)
            expect(page.get_by_text("P(COVID-19) =")).to_have_count(4)
            if shots:
                page.screenshot(path=f"{shots}/stress.png", full_page=True)
            assert not page.get_by_test_id("stException").count()
        finally:
            browser.close()


# ----------------------------------------------------------------------------- no request beyond the origin

def _page_paths() -> list[str]:
    """The URL path of every page app.py registers with st.Page (the default page is "")."""
    out = []
    for node in ast.walk(ast.parse((REPO / "app.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args:
            kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            out.append("" if kw.get("default") else kw.get("url_path", Path(node.args[0].value).stem))
    return out


@pytest.fixture()
def image_server(tiny_checkpoints, tmp_path):
    """The Docker image's exact entry point in a staged copy of its /app (its .streamlit/config.toml, its ENV),
    with the documented MEDROBUST_DEMO=1 and the tiny model set standing in for checkpoints/."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium); "
                    "the real-browser test cannot run here")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    staged = stage_image(tmp_path / "image", substitute={"checkpoints": tiny_checkpoints})
    port = free_port()
    server = start_server(with_port(staged.entrypoint, port, address="127.0.0.1"), cwd=staged.workdir,
                          env={**staged.env, "MEDROBUST_DEMO": "1"}, workdir=tmp_path / "srv", port=port)
    try:
        yield server
    finally:
        stop_server(server)


def test_a_full_visit_makes_no_request_beyond_the_origin(image_server):
    """Every page, every expander opened, the Stress test on its example X-ray: every request the page makes (the
    favicon included) goes to the server's own host and port. A ":material/...:" page icon, for one, made Chromium
    fetch the favicon from fonts.gstatic.com (net::ERR_NAME_NOT_RESOLVED inside a hospital's network)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)
    origin = urlsplit(image_server.url)
    requests: list[str] = []
    console: list[str] = []
    icons: dict[str, list[str]] = {}
    paths = _page_paths()
    assert len(paths) == 5 and "" in paths and "stress-test" in paths
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100})
            context.on("request", lambda r: requests.append(r.url))  # every frame, worker and fetch
            page = context.new_page()
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            for path in paths:
                page.goto(f"{image_server.url}/{path}", timeout=90_000)
                _wait_idle(page, 180_000)
                if path == "stress-test":  # no upload: the page runs every model on a shipped example X-ray
                    expect(page.get_by_text("showing an example")).to_be_visible()
                    expect(page.locator("[class*='st-key-model-card-']")).to_have_count(4)
                for summary in page.locator("[data-testid='stExpander'] summary").all():
                    if summary.is_visible():
                        summary.click()
                _wait_idle(page, 180_000)
                page.wait_for_timeout(1_000)  # late fetches (icons, fonts, chart tiles) get their chance
                icons[path] = page.evaluate(
                    "Array.from(document.querySelectorAll('link[rel~=icon]')).map(l => l.getAttribute('href'))")
                assert not page.get_by_test_id("stException").count(), path
        finally:
            browser.close()
    assert len(requests) > 20  # the recording really ran
    elsewhere = sorted({u for u in requests if urlsplit(u).scheme not in ("data", "blob")
                        and (urlsplit(u).hostname, urlsplit(u).port) != (origin.hostname, origin.port)})
    assert elsewhere == [], f"requests beyond {image_server.url}: {elsewhere}"
    for path, hrefs in icons.items():
        assert hrefs and all(h.startswith("data:") or h.startswith("/") or h.startswith(image_server.url)
                             for h in hrefs), (path, hrefs)
    assert not [c for c in console if "ERR_NAME_NOT_RESOLVED" in c or "ERR_INTERNET_DISCONNECTED" in c], console
