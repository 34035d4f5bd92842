"""Hosting: the Dockerfile, .dockerignore and .streamlit/config.toml meet the issue's points, and the image's
exact entry point, run outside Docker in a copy of the image's /app, serves /_stcore/health and the pages.

No Docker engine runs here: :mod:`hosting_helpers` plays the Dockerfile's file steps (COPY, WORKDIR, ENV,
chmod) into a temporary root instead of building the image.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request

import pytest

from dashboard_fixtures import png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixture
from hosting_helpers import (
    REPO,
    dockerignore_patterns,
    is_ignored,
    norm,
    parse_dockerfile,
    port_is_free,
    free_port,
    split_flags,
    stage_image,
    start_server,
    stop_server,
    with_port,
    world_readable_tree,
)

ENTRYPOINT = ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]


def _app_pages() -> list[str]:
    """The page scripts app.py registers with st.Page("...")."""
    tree = ast.parse((REPO / "app.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append(node.args[0].value)
    return out


# ----------------------------------------------------------------------------- Dockerfile, text

def test_dockerfile_meets_the_hosting_points():
    stages = parse_dockerfile()
    final = stages[-1]
    assert all(s.base == "python:3.11-slim" for s in stages), [s.base for s in stages]
    ops = [i.op for i in final.instructions]

    # Dependencies: pyproject + the one pin file, installed in exactly one RUN layer, before the app's files.
    pip_runs = [i for s in stages for i in s.of("RUN") if "pip install" in i.args]
    assert len(pip_runs) == 1 and "-c constraints.txt" in pip_runs[0].args and '".[app]"' in pip_runs[0].args
    assert pip_runs[0] in final.instructions
    pip_at = final.instructions.index(pip_runs[0])
    copies = final.of("COPY")
    dep_files = {"pyproject.toml", "constraints.txt", "README.md", "medrobust/__init__.py"}
    req_copy = [c for c in copies if set(split_flags(c.args)[1][:-1]) <= dep_files]
    copied_first = {w for c in req_copy for w in split_flags(c.args)[1][:-1]}
    assert {"pyproject.toml", "constraints.txt"} <= copied_first
    assert all(final.instructions.index(c) < pip_at for c in req_copy)
    assert all(final.instructions.index(c) > pip_at for c in copies if c not in req_copy), \
        "the app's files are copied after the dependency layer, so code changes do not reinstall torch"

    # The app and checkpoints/ come into the image (directly or through a build stage).
    copied = {norm(w) for s in stages for c in s.of("COPY") for w in split_flags(c.args)[1][:-1]}
    for needed in ("app.py", "medrobust", "checkpoints", ".streamlit"):
        assert needed in copied, needed
    for page in _app_pages():
        assert page.split("/")[0] in copied, f"{page} (registered in app.py) is not copied into the image"

    # A non-root user with uid 1000, created and switched to in the final stage.
    users = final.of("USER")
    assert users and users[-1].args.strip() in ("1000", "1000:1000"), "run as uid 1000, never root"
    assert any("--uid 1000" in r.args for r in final.of("RUN")), "create the user with uid 1000"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "USER comes after the last RUN"

    assert [w.args for w in final.of("WORKDIR")][-1] == "/app"
    assert "8501" in " ".join(e.args for e in final.of("EXPOSE")).split()
    health = final.of("HEALTHCHECK")
    assert len(health) == 1 and "/_stcore/health" in health[0].args and "8501" in health[0].args
    entry = final.of("ENTRYPOINT") or final.of("CMD")
    assert entry[-1].json_form() == ENTRYPOINT

    # Training output goes to a volume that the unprivileged user owns.
    env = {}
    for e in final.of("ENV"):
        from hosting_helpers import env_pairs

        env.update(env_pairs(e.args))
    volumes = " ".join(v.args for v in final.of("VOLUME"))
    assert "/app/runs" in volumes
    assert env["MEDROBUST_RUNS"] == "/app/runs" and env["MEDROBUST_CACHE"].startswith("/app/runs")
    assert env["MEDROBUST_CHECKPOINTS"] == "/app/checkpoints"
    assert any("chown" in r.args and "1000" in r.args and "/app/runs" in r.args for r in final.of("RUN"))


def test_dockerignore_keeps_data_runs_and_venv_out():
    patterns = dockerignore_patterns()
    for path in ("data/covid-chestxray/images/a.png", "runs/robust-cpu-s0/model.safetensors", ".venv/bin/python",
                 "results/robust.json", ".git/HEAD", ".env", ".streamlit/secrets.toml",
                 "medrobust/__pycache__/imaging.cpython-311.pyc", "checkpoints/.robust.safetensors.tmp123",
                 "tests/test_app.py", ".hypothesis/examples/x"):
        assert is_ignored(path, patterns), path
    for path in ("app.py", "pyproject.toml", "constraints.txt", "medrobust/imaging.py", "checkpoints/robust.safetensors",
                 "checkpoints/results/robust.json", ".streamlit/config.toml", *_app_pages()):
        assert not is_ignored(path, patterns), path


def test_streamlit_config_is_right_for_hosting():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["client"]["showErrorDetails"] in ("none", False, "false")
    assert 1 <= cfg["server"]["maxUploadSize"] <= 64  # MB; medrobust.imaging refuses files over 64 MiB anyway
    assert cfg["server"]["headless"] is True
    # Every key is a real Streamlit option (a typo would be ignored silently).
    from streamlit import config

    for section, values in cfg.items():
        for key in values:
            assert f"{section}.{key}" in config._config_options_template, f"{section}.{key}"


def test_readme_documents_hosting():
    text = (REPO / "README.md").read_text()
    assert "## Hosting (Docker)" in text
    section = text[text.index("## Hosting (Docker)"):]
    for needed in ("docker build", "docker run", "-v ", "MEDROBUST_ADMIN_TOKEN", "MEDROBUST_DATA", "/app/runs",
                   "8501"):
        assert needed in section, needed


# ----------------------------------------------------------------------------- the image's files

@pytest.fixture(scope="module")
def staged(tiny_checkpoints, tmp_path_factory):
    """The final image's filesystem, with the tiny model set standing in for checkpoints/.

    The stand-in weights are made owner-only (0600), as safetensors writes them, to show the image
    still lets the unprivileged user read them.
    """
    ckpt = tmp_path_factory.mktemp("ckpt-0600") / "checkpoints"
    shutil.copytree(tiny_checkpoints, ckpt)
    for p in ckpt.rglob("*"):
        if p.is_file():
            p.chmod(0o600)
    return stage_image(tmp_path_factory.mktemp("image"), substitute={"checkpoints": ckpt})


def test_the_image_holds_the_app_and_nothing_private(staged):
    app = staged.workdir
    assert staged.workdir == staged.host_path("/app")
    for needed in ("app.py", "medrobust/imaging.py", "medrobust/dashboard/hosting.py", ".streamlit/config.toml",
                   "medrobust/dashboard/favicon.svg",  # served inline: no icon fetched from the internet
                   "checkpoints/robust.safetensors", "checkpoints/robust.json", *_app_pages()):
        assert (app / needed).is_file(), needed
    for absent in ("tests", "benchmarks", "data", "results", ".git", ".venv", ".hypothesis"):
        assert not (app / absent).exists(), absent
    assert not list(app.rglob("__pycache__"))
    # uid 1000 must be able to read every file and enter every folder (runs/ is its own volume).
    assert world_readable_tree(app) == []
    assert (app / "runs").is_dir()
    assert staged.user in ("1000", "1000:1000")


# ----------------------------------------------------------------------------- the entry point, served

@pytest.fixture(scope="module")
def served(staged, tmp_path_factory):
    """The image's exact ENTRYPOINT, in the image's /app, with the image's ENV (port 8501 unless taken)."""
    port = 8501 if port_is_free(8501) else free_port()
    argv = with_port(staged.entrypoint, port)
    server = start_server(argv, cwd=staged.workdir, env=staged.env, workdir=tmp_path_factory.mktemp("srv"), port=port)
    server.argv = argv
    yield server
    stop_server(server)


def test_entry_point_answers_health_and_the_page(served, staged):
    assert served.argv == with_port(ENTRYPOINT, int(served.url.rsplit(":", 1)[1]))  # the exact command
    with urllib.request.urlopen(f"{served.url}/_stcore/health", timeout=30) as r:
        assert r.status == 200 and r.read() == b"ok"
        cookies = r.headers.get_all("Set-Cookie") or []
    assert any(c.startswith("_streamlit_xsrf=") for c in cookies), "XSRF protection hands out its cookie"
    with urllib.request.urlopen(f"{served.url}/", timeout=30) as r:
        assert r.status == 200 and b'id="root"' in r.read()
    # The image's HEALTHCHECK command itself, pointed at this port.
    cmd = staged.healthcheck.replace("8501", served.url.rsplit(":", 1)[1])
    cmd = re.sub(r"^python3?\b", lambda m: shlex_quote(sys.executable), cmd)
    assert subprocess.run(["/bin/sh", "-c", cmd], timeout=60).returncode == 0


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_entry_point_renders_the_pages_over_the_websocket(served):
    from st_client import StreamlitSession

    with StreamlitSession(served.url) as s:
        page = s.run()
        assert page.status == 0 and not page.exceptions, page.exceptions
        assert "Table I" in page.text()  # the Overview, from the tiny set's results
        # The server read .streamlit/config.toml: no usage statistics, viewer toolbar.
        assert s.config.gather_usage_stats is False and s.config.toolbar_mode == s.config.VIEWER
        page = s.run("stress-test")
        assert not page.exceptions
        page = s.upload("upload", "chest.png", png_bytes(xray_like(96)), "image/png")
        assert not page.exceptions and not page.errors
        assert len(page.predictions) == 4
        assert all(p in ("COVID-19", "non-COVID") for p in page.predictions)
        # XSRF protection: an upload without the token is refused.
        status, _, _ = s._http("PUT", f"/_stcore/upload_file/{s.session_id}/x", body=b"x",
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert status == 403
    assert "Traceback" not in served.log_text()


@pytest.mark.parametrize("work_s, expect_note", [(0.2, False), (30.0, True)])
def test_shutdown_waits_for_script_threads_then_leaves_without_finalising(work_s, expect_note):
    """A visitor's script thread still computing at exit gets its few seconds, then the process leaves with 0."""
    code = (
        "import threading, time\n"
        "from medrobust.dashboard.hosting import finish_sessions_on_shutdown\n"
        f"t = threading.Thread(target=time.sleep, args=({work_s},), name='ScriptRunner.scriptThread', daemon=True)\n"
        "t.start()\n"
        "assert finish_sessions_on_shutdown(0.5) and not finish_sessions_on_shutdown(0.5)\n"
        "print('main done', flush=True)\n"
    )
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "main done" in proc.stdout
    assert ("still computing" in proc.stderr) is expect_note
    assert time.time() - t0 < 10
