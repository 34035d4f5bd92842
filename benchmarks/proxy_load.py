"""The load test through nginx with session affinity, in front of 1, 2, ... replicas (deploy/nginx.conf).

    python benchmarks/proxy_load.py [--replicas 1,2] [--sessions 20] [--predictions 10] [--checkpoints DIR]

For each replica count: that many servers, each the Docker image's entry point from a staged copy of /app
(as ``benchmarks/load_test.py`` starts one, loopback only), behind nginx running ``deploy/nginx.conf``
with only its ``server app:8501`` line replaced by the replicas' ports and its ``listen`` by a free port;
each replica warmed up directly (imports and model cache, as its first visitor would), then
:func:`load_test.run_load` through the proxy: every session's upload, websocket and media go through
nginx, so a session routed to the wrong replica would lose its upload and count as dropped. Prints, per
replica count, the load test's line, the sessions each replica got (the websockets in the proxy's
access log, by upstream) and the replicas' summed memory.

Needs nginx (Debian: ``apt-get install nginx-light``). Default model set: four random 32 px models, as
``load_test.py``; the issue's figures use ``--checkpoints checkpoints``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "tests", REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import load_test  # noqa: E402

NGINX_CONF = REPO / "deploy" / "nginx.conf"
UPSTREAM_LINE = re.compile(r"^(\s*)server app:8501 (.*)$", re.M)
LISTEN_LINE = re.compile(r"^(\s*)listen 8080;$", re.M)


def nginx_conf(ports: list[int], listen: int, *, access_log: Path | None = None) -> str:
    """deploy/nginx.conf with the replicas at ``ports`` on loopback and the proxy on ``listen``."""
    text = NGINX_CONF.read_text()
    if len(UPSTREAM_LINE.findall(text)) != 1 or len(LISTEN_LINE.findall(text)) != 1:
        raise RuntimeError(f"{NGINX_CONF} no longer has one 'server app:8501 ...' and one 'listen 8080;' line")
    text = UPSTREAM_LINE.sub(lambda m: "\n".join(f"{m.group(1)}server 127.0.0.1:{p} {m.group(2)}" for p in ports), text)
    text = LISTEN_LINE.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{listen};", text)
    if access_log is not None:  # which replica answered each websocket: the sessions per replica
        text = text.replace("    access_log off;",
                            '    log_format up "$upstream_addr $request_uri";\n'
                            f"    access_log {access_log} up;")
    return text


class Proxy:
    """nginx on ``conf`` in ``workdir`` (its pid, temp files and log there); stop with :meth:`stop`."""

    def __init__(self, conf: str, workdir: Path, url: str) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
        if exe is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        workdir.mkdir(parents=True, exist_ok=True)
        conf = conf.replace("/tmp/nginx", f"{workdir}/nginx")  # its pid and temp files
        path = workdir / "nginx.conf"
        path.write_text(conf)
        self.url = url
        self.log = workdir / "nginx.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([exe, "-p", str(workdir), "-c", str(path), "-g", "daemon off;"],
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not come up: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def sessions_per_replica(access_log: Path, ports: list[int]) -> dict[int, int]:
    """How many websockets (one per browser session) nginx sent to each replica."""
    counts = {p: 0 for p in ports}
    if access_log.is_file():
        for line in access_log.read_text(errors="replace").splitlines():
            addr, _, uri = line.partition(" ")
            if uri.startswith("/_stcore/stream") and ":" in addr:
                port = int(addr.rsplit(":", 1)[1])
                counts[port] = counts.get(port, 0) + 1
    return counts


def run_behind_proxy(ckpt: Path, tmp: Path, *, replicas: int, sessions: int, predictions: int,
                     expected) -> tuple[str, bool]:
    """Start the replicas and nginx, warm up, run the load through the proxy; returns the report and whether
    every prediction came back right."""
    from hosting_helpers import free_port, stop_server
    from st_client import StreamlitSession

    servers = []
    proxy = None
    try:
        for i in range(replicas):
            servers.append(load_test.serve(ckpt, tmp / f"replica{i}"))
        for server in servers:  # the first visitor of each replica pays for the imports and the model cache
            with StreamlitSession(server.url) as s:
                s.run("stress-test")
                s.upload("upload", "warmup.png", load_test.session_image(999), "image/png")
        ports = [int(s.url.rsplit(":", 1)[1]) for s in servers]
        listen = free_port()
        access_log = tmp / "proxy" / "access.log"
        proxy = Proxy(nginx_conf(ports, listen, access_log=access_log), tmp / "proxy", f"http://127.0.0.1:{listen}")

        def rss() -> int:
            return sum(s.rss_bytes() for s in servers)

        before = rss()
        fig = load_test.run_load(proxy.url, sessions=sessions, predictions=predictions, expected=expected, rss=rss)
        time.sleep(1.0)
        mem = load_test.memory_figures(before, fig["rss_samples"], rss(), sum(s.peak_rss_bytes() for s in servers))
        per = sessions_per_replica(access_log, ports)
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            stop_server(server)
    lines = [f"{replicas} replica(s) behind nginx (cookie affinity): " + load_test.report(fig, mem),
             "sessions per replica: " + ", ".join(str(per[p]) for p in ports) + " (memory: all replicas summed)"]
    lines += [f"  problem: {p}" for p in fig["problems"][:20]]
    return "\n".join(lines), not fig["problems"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,2", help="replica counts to measure, comma-separated")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--predictions", type=int, default=10, help="per session")
    ap.add_argument("--checkpoints", type=Path, help="model set (default: four random 32 px models)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import _common as C

    print(C.machine_line(torch.device("cpu")), flush=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="medrobust-proxy-") as tmp:
        tmp = Path(tmp)
        ckpt = (args.checkpoints.resolve() if args.checkpoints else load_test.tiny_model_set(tmp / "checkpoints"))
        print(f"computing the expected answers for {args.sessions} x {args.predictions} predictions ...", flush=True)
        expected = load_test.expected_answers(ckpt, args.sessions, args.predictions)
        for n in (int(x) for x in args.replicas.split(",")):
            text, good = run_behind_proxy(ckpt, tmp / f"n{n}", replicas=n, sessions=args.sessions,
                                          predictions=args.predictions, expected=expected)
            print(text, flush=True)
            ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
