"""Load (short form of benchmarks/load_test.py): 20 concurrent browser sessions on the Stress test page of one
real server (the Docker image's entry point, loopback only), a fixed number of predictions each; none may be
dropped or wrong, p50/p95 latency is printed, and the server's memory must not keep growing.

``MEDROBUST_LOAD_PREDICTIONS`` (default 2 per session) sets the length; the benchmark's full form is 20 x 10.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from dashboard_fixtures import tiny_checkpoints  # noqa: F401 - fixture

import load_test  # benchmarks/ is on the test path (pytest.ini)

pytestmark = pytest.mark.load

SESSIONS = 20
PREDICTIONS = int(os.environ.get("MEDROBUST_LOAD_PREDICTIONS", "2"))
MIB = 2**20


def test_twenty_concurrent_sessions_get_every_prediction_right(tiny_checkpoints, tmp_path, capsys):
    from hosting_helpers import stop_server
    from st_client import StreamlitSession

    expected = load_test.expected_answers(tiny_checkpoints, SESSIONS, PREDICTIONS)
    server = load_test.serve(tiny_checkpoints, tmp_path)
    try:
        with StreamlitSession(server.url) as s:  # the first visitor pays for the imports and the model cache
            s.run("stress-test")
            assert len(s.upload("upload", "warmup.png", load_test.session_image(999), "image/png").predictions) == 4
        before = server.rss_bytes()
        fig = load_test.run_load(server.url, sessions=SESSIONS, predictions=PREDICTIONS, expected=expected,
                                 rss=server.rss_bytes, timeout=300)
        time.sleep(1.0)
        mem = load_test.memory_figures(before, fig["rss_samples"], server.rss_bytes(), server.peak_rss_bytes())
        log = server.log_text()
    finally:
        stop_server(server)
    with capsys.disabled():
        print("\nload: " + load_test.report(fig, mem).replace("\n", "\n      "))
    assert fig["problems"] == [], fig["problems"][:10]
    assert fig["predictions"] == SESSIONS * PREDICTIONS
    assert "Traceback" not in log
    # Bounded memory: 20 sessions' state costs little, and it does not keep growing as predictions go on.
    assert mem["rss_after"] - mem["rss_before"] < 400 * MIB, mem
    assert mem["rss_second_half_max"] - mem["rss_first_half_max"] < 150 * MIB, mem
