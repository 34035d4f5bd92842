"""The dashboard in a real browser: `streamlit run app.py` driven by Playwright through Debian's Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard_fixtures import png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixture

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
            expect(page.get_by_text("Table I — accuracy and balanced accuracy (%)")).to_be_visible(timeout=30_000)
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
            # Choose Gaussian noise, then move the severity slider with the keyboard.
            page.get_by_test_id("stRadio").first.get_by_text("Gaussian noise").click()
            expect(page.get_by_text("Gaussian noise, severity 0.3 (seed 0)")).to_be_visible(timeout=60_000)
            thumb = page.get_by_test_id("stSlider").first.get_by_role("slider")
            thumb.focus()
            for _ in range(2):
                thumb.press("ArrowRight")
            expect(page.get_by_text("Gaussian noise, severity 0.4 (seed 0)")).to_be_visible(timeout=60_000)
            _wait_idle(page)
            expect(cards).to_have_count(4)
            expect(page.get_by_text("P(COVID-19) =")).to_have_count(4)
            if shots:
                page.screenshot(path=f"{shots}/stress.png", full_page=True)
            assert not page.get_by_test_id("stException").count()
        finally:
            browser.close()
