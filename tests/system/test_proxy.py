"""Scale-out behind a reverse proxy (deploy/): the nginx configuration keeps every browser on one replica.

The configuration's facts are checked without nginx (upload cap equal to Streamlit's, websocket upgrade,
cookie affinity by a hash of the route, the compose file keeping the image's health check and demo mode).
Where nginx is installed (Debian: ``nginx-light``), two real replicas run behind the real configuration
(``benchmarks/proxy_load.py`` rewrites only its upstream and listen lines): requests without the route
cookie spread over both replicas, requests with one all reach the same replica, and concurrent sessions
through the proxy (upload, websocket, media) all get their right predictions.
"""

from __future__ import annotations

import re
import shutil
import tomllib
import urllib.request
from pathlib import Path

import pytest

from dashboard_fixtures import tiny_checkpoints  # noqa: F401 - fixture

import load_test  # benchmarks/ is on the test path (pytest.ini)
import proxy_load

REPO = Path(__file__).resolve().parents[2]
CONF = (REPO / "deploy" / "nginx.conf").read_text()
COMPOSE = (REPO / "deploy" / "compose.yaml").read_text()


def test_the_proxy_passes_what_streamlit_needs_and_routes_by_a_cookie():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    cap = re.search(r"client_max_body_size (\d+)m;", CONF)
    assert cap and int(cap.group(1)) == config["server"]["maxUploadSize"]  # one limit, not two
    assert "proxy_set_header Upgrade $http_upgrade;" in CONF and "proxy_http_version 1.1;" in CONF
    # an upload is never spooled to the proxy's disk (the app keeps uploads in memory only)
    assert "proxy_request_buffering off;" in CONF and "proxy_max_temp_file_size 0;" in CONF
    # A plain hash of the route: a consistent hash places its points by the server's name, which compose's replicas
    # share ("app"), so one browser's requests reached both replicas (measured with podman-compose, deploy/nginx.conf).
    assert re.search(r"upstream medrobust \{\s*hash \$route;", CONF)
    assert "map $cookie_medrobust_route $route" in CONF and "medrobust_route=$route" in CONF
    # compose: every replica is the image as documented (health check kept, demo mode, admin token required)
    assert "healthcheck" not in COMPOSE  # the image's own HEALTHCHECK applies
    assert 'MEDROBUST_DEMO: "1"' in COMPOSE and "MEDROBUST_ADMIN_TOKEN: ${MEDROBUST_ADMIN_TOKEN:?" in COMPOSE
    assert "condition: service_healthy" in COMPOSE


def test_the_benchmark_rewrites_only_the_upstream_and_listen_lines():
    conf = proxy_load.nginx_conf([9001, 9002], 9100)
    assert "server 127.0.0.1:9001 max_fails=0;" in conf and "server 127.0.0.1:9002 max_fails=0;" in conf
    assert "listen 127.0.0.1:9100;" in conf and "server app:8501 max_fails" not in conf and "listen 8080" not in conf
    assert conf.count("\n") == CONF.count("\n") + 1  # one server line more, nothing else added or lost


def _route_cookie(response) -> str:
    (route,) = [c.split(";")[0] for c in response.headers.get_all("Set-Cookie") if c.startswith("medrobust_route=")]
    return route


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)


@pytest.mark.slow
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)")
def test_two_replicas_behind_nginx_keep_every_session_on_its_replica(tiny_checkpoints, tmp_path):
    from hosting_helpers import free_port, stop_server

    servers = [load_test.serve(tiny_checkpoints, tmp_path / f"replica{i}") for i in range(2)]
    proxy = None
    try:
        ports = [int(s.url.rsplit(":", 1)[1]) for s in servers]
        listen = free_port()
        log = tmp_path / "proxy" / "access.log"
        proxy = proxy_load.Proxy(proxy_load.nginx_conf(ports, listen, access_log=log), tmp_path / "proxy",
                                 f"http://127.0.0.1:{listen}")
        cookies = []
        for _ in range(24):  # new browsers: a random route each, remembered in the cookie
            with urllib.request.urlopen(f"{proxy.url}/_stcore/health?new", timeout=10) as r:
                cookies.append(_route_cookie(r))
        assert len(set(cookies)) == 24
        for _ in range(6):  # one browser: every request to the same replica
            req = urllib.request.Request(f"{proxy.url}/_stcore/health?same", headers={"Cookie": cookies[0]})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert _route_cookie(r) == cookies[0]  # the route is kept
        expected = load_test.expected_answers(tiny_checkpoints, 6, 1)
        fig = load_test.run_load(proxy.url, sessions=6, predictions=1, expected=expected, timeout=240)
    finally:
        if proxy is not None:
            proxy.stop()
        for s in servers:
            stop_server(s)
    lines = [ln.split(" ", 1) for ln in log.read_text().splitlines()]
    new = {addr for addr, uri in lines if uri.endswith("?new")}
    same = {addr for addr, uri in lines if uri.endswith("?same")}
    assert new == {f"127.0.0.1:{p}" for p in ports}  # 24 random routes reach both (odds of one: 2 in 2**24)
    assert len(same) == 1
    assert fig["problems"] == [], fig["problems"][:5]  # uploads and websockets met on the same replica
    assert fig["predictions"] == 6
