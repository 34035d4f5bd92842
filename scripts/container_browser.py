"""Drive a running medrobust dashboard from outside, in Debian's Chromium through Playwright.

    python scripts/container_browser.py URL check   # load the page, upload an X-ray, expect four predictions
    python scripts/container_browser.py URL hold    # ... then start PGD and the flip search, print READY, keep
                                                    # the session open until killed (for the stop-under-load check)

Prints one line ``ok <what> <seconds>`` per step (``check``) and exits non-zero with a reason on failure,
among them any request the page makes beyond the container's own origin (a hospital network reaches nothing else).
Used by scripts/container_check.sh; needs ``apt-get install -y chromium`` and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
EXAMPLE = REPO / "medrobust" / "dashboard" / "examples"


def _xray() -> Path:
    """One of the shipped CC BY example X-rays (a real chest X-ray, not a synthetic picture)."""
    return sorted(EXAMPLE.glob("*.png"))[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("mode", choices=["check", "hold"])
    ap.add_argument("--timeout-s", type=float, default=120.0)
    args = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    timeout_ms = int(args.timeout_s * 1000)
    expect.set_options(timeout=timeout_ms)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100})
            requests: list[str] = []
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            t0 = time.time()
            page.goto(args.url, timeout=timeout_ms)
            page.wait_for_selector(IDLE, timeout=timeout_ms)
            page.get_by_role("tab", name="Robustness").click()  # the Overview's tables sit in tabs
            expect(page.get_by_text("Table I — accuracy and balanced accuracy (%)")).to_be_visible()
            print(f"ok overview-loaded {time.time() - t0:.1f}", flush=True)
            page.get_by_test_id("stSidebarNav").get_by_text("Stress test").click()
            expect(page.get_by_test_id("stFileUploaderDropzone")).to_be_visible()
            page.wait_for_selector(IDLE, timeout=timeout_ms)
            t0 = time.time()
            with page.expect_file_chooser() as chooser:
                page.get_by_test_id("stFileUploaderDropzone").click()
            chooser.value.set_files(str(_xray()))
            # Until the upload is processed the page shows an example X-ray (with four cards of its own).
            expect(page.get_by_text("showing an example", exact=False)).to_have_count(0)
            cards = page.locator("[class*='st-key-model-card-']")
            expect(cards).to_have_count(4)
            page.wait_for_selector(IDLE, timeout=timeout_ms)
            expect(page.get_by_text("P(COVID-19) =")).to_have_count(4)
            print(f"ok upload-four-predictions {time.time() - t0:.1f}", flush=True)
            if page.get_by_test_id("stException").count():
                print("FAIL an exception is shown on the page", flush=True)
                return 1
            origin = urlsplit(args.url)
            elsewhere = sorted({u for u in requests if urlsplit(u).scheme not in ("data", "blob")
                                and (urlsplit(u).hostname, urlsplit(u).port) != (origin.hostname, origin.port)})
            if elsewhere:
                print(f"FAIL requests beyond {args.url}: {elsewhere}", flush=True)
                return 1
            print(f"ok no-request-beyond-the-origin {len(requests)}", flush=True)
            if args.mode == "hold":
                page.get_by_test_id("stRadio").first.get_by_text("PGD attack (L2)").click()
                page.wait_for_selector(IDLE, timeout=timeout_ms)
                page.get_by_role("button", name="Smallest eps that flips each prediction").click()
                time.sleep(0.5)  # the rerun with the flip search has started on the server
                print("READY", flush=True)
                time.sleep(3600)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
