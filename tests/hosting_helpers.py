"""Helpers for the hosting tests: read the Dockerfile, lay out the image's /app without Docker, run its
entry point as a real server, and watch what that server writes.

No Docker engine runs on the CI machines, so :func:`stage_image` plays the Dockerfile's file steps
itself: every ``COPY`` (honouring ``.dockerignore`` and ``--from`` stages), ``WORKDIR`` and ``ENV``,
and the ``chmod``/``mkdir``/``chown`` parts of ``RUN`` lines, into a temporary root. The server is then
started with the image's exact ``ENTRYPOINT`` in the image's working directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    op: str  # upper case: FROM, COPY, RUN, ...
    args: str  # the rest of the logical line
    line: int

    def json_form(self) -> list[str] | None:
        """The exec (JSON array) form's argv, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]


def parse_dockerfile(path: str | Path = REPO / "Dockerfile") -> list[Stage]:
    """The stages of a Dockerfile with their instructions (continuations joined, comments dropped)."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        logical.append((start, buf.strip()))
        buf = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM: only FROM lines may use them
    for n, text in logical:
        op, _, rest = text.partition(" ")
        ins = Instruction(op.upper(), rest.strip(), n)
        if ins.op == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)), parts[0])
            stages.append(Stage(base=base, name=name))
        elif stages:
            stages[-1].instructions.append(ins)
        elif ins.op == "ARG":
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            raise ValueError(f"line {n}: {op} before FROM")
    return stages


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=x --chmod=644 a b /dest`` -> ({"from": "x", "chmod": "644"}, ["a", "b", "/dest"])."""
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, words


def env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:  # legacy "ENV KEY value"
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def norm(path: str) -> str:
    """A context path as written in a COPY line -> "dir/file" (no leading "./", no trailing "/")."""
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


def dockerignore_patterns(path: str | Path = REPO / ".dockerignore") -> list[str]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    p = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif p.startswith("**", i):
            out += ".*"
            i += 2
        elif p[i] == "*":
            out += "[^/]*"
            i += 1
        elif p[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(p[i])
            i += 1
    return re.compile(out + r"\Z")


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Whether a context path (posix, relative) is excluded: it or one of its parents matches a pattern."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    for pat in patterns:
        if pat.startswith("!"):
            continue
        rx = _pattern_regex(pat)
        if any(rx.match(p) for p in prefixes):
            return True
    return False


# --------------------------------------------------------------------------- staging the image


@dataclass
class StagedImage:
    root: Path  # stands for "/" of the final image
    workdir: Path
    env: dict[str, str]
    entrypoint: list[str]
    healthcheck: str
    expose: list[str]
    user: str | None
    volumes: list[str]

    def host_path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")


def _remap(value: str, root: Path) -> str:
    """Absolute image paths inside a value ("/app/x", "a:/app/y") -> paths under ``root``."""
    return re.sub(r"(?<![\w.])/(app|src|data|home|tmp)\b", lambda m: str(root) + m.group(0), value)


def _copy_tree(src: Path, dst: Path, *, rel_base: Path | None, ignore: list[str]) -> None:
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copystat(src, dst)
        for child in sorted(src.iterdir()):
            rel = child.relative_to(rel_base).as_posix() if rel_base is not None else None
            if rel is not None and is_ignored(rel, ignore):
                continue
            _copy_tree(child, dst / child.name, rel_base=rel_base, ignore=ignore)
    elif src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def stage_image(dest: Path, *, context: Path = REPO, substitute: dict[str, Path] | None = None) -> StagedImage:
    """Play the Dockerfile's file steps into ``dest``; ``substitute`` swaps a context folder (e.g. checkpoints)."""
    substitute = substitute or {}
    stages = parse_dockerfile(context / "Dockerfile")
    ignore = dockerignore_patterns(context / ".dockerignore")
    roots: dict[str, Path] = {}
    final = None
    for idx, stage in enumerate(stages):
        root = dest / f"stage{idx}"
        root.mkdir(parents=True)
        roots[str(idx)] = root
        if stage.name:
            roots[stage.name] = root
        workdir, env, entry, health, expose, user, volumes = "/", {}, [], "", [], None, []
        for ins in stage.instructions:
            if ins.op == "WORKDIR":
                workdir = ins.args if ins.args.startswith("/") else f"{workdir.rstrip('/')}/{ins.args}"
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif ins.op == "ENV":
                env.update(env_pairs(ins.args))
            elif ins.op == "COPY":
                flags, words = split_flags(ins.args)
                *srcs, target = words
                base_dir = root / workdir.lstrip("/")
                tgt = root / target.lstrip("/") if target.startswith("/") else base_dir / target
                for s in srcs:
                    if "from" in flags:
                        src, rel_base = roots[flags["from"]] / s.lstrip("/"), None
                    else:
                        key = norm(s)
                        src = substitute.get(key, context / s)
                        rel_base = context if key not in substitute else None
                        if not src.exists() or (rel_base is not None and is_ignored(key, ignore)):
                            raise FileNotFoundError(f"Dockerfile line {ins.line}: COPY source {s} is not in the "
                                                    "build context (missing, or excluded by .dockerignore)")
                    if src.is_dir():
                        _copy_tree(src, tgt, rel_base=rel_base, ignore=ignore)
                    else:
                        t = tgt / src.name if (target.endswith("/") or tgt.is_dir()) else tgt
                        t.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, t)
            elif ins.op == "RUN":
                for part in ins.args.split("&&"):
                    words = shlex.split(part.strip())
                    if words and words[0] in ("chmod", "mkdir"):
                        cmd = [words[0]] + [_remap(w, root) if w.startswith("/") else w for w in words[1:]]
                        subprocess.run(cmd, check=True, cwd=root / workdir.lstrip("/"))
            elif ins.op == "ENTRYPOINT":
                entry = ins.json_form() or shlex.split(ins.args)
            elif ins.op == "HEALTHCHECK":
                health = ins.args[ins.args.index("CMD") + 3:].strip() if "CMD" in ins.args else ""
            elif ins.op == "EXPOSE":
                expose += ins.args.split()
            elif ins.op == "USER":
                user = ins.args.strip()
            elif ins.op == "VOLUME":
                volumes += json.loads(ins.args) if ins.args.strip().startswith("[") else ins.args.split()
        final = StagedImage(root=root, workdir=root / workdir.lstrip("/"), env=env, entrypoint=entry,
                            healthcheck=health, expose=expose, user=user, volumes=volumes)
    assert final is not None
    final.env = {k: _remap(v, final.root) for k, v in final.env.items()}
    return final


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def with_port(argv: list[str], port: int, address: str | None = None) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("--server.port="):
            a = f"--server.port={port}"
        elif address and a.startswith("--server.address="):
            a = f"--server.address={address}"
        out.append(a)
    return out


#: Installed as ``sitecustomize`` in a server's PYTHONPATH: logs every open-for-writing, mkdir, rename
#: and temp-file creation of that process (and its Python children) to $MEDROBUST_AUDIT_LOG,
#: one ``time<TAB>event<TAB>path`` line each.
AUDIT_SITECUSTOMIZE = r'''
import os, sys, time
_LOG = os.environ.get("MEDROBUST_AUDIT_LOG")
if _LOG:
    _state = {"fd": None, "busy": False}
    _W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC | getattr(os, "O_TMPFILE", 0)
    _EV = ("os.rename", "os.replace", "os.mkdir", "os.symlink", "os.link", "shutil.copyfile", "shutil.move",
           "tempfile.mkstemp", "tempfile.mkdtemp")
    def _hook(event, args):
        if _state["busy"] or _state["fd"] is None:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags > 0 and flags & _W)):
                return
        elif event in _EV:
            path = args[0] if args else None
        else:
            return
        _state["busy"] = True
        try:
            p = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path)
            os.write(_state["fd"], f"{time.time():.6f}\t{event}\t{p}\n".encode("utf-8", "replace"))
        except Exception:
            pass
        finally:
            _state["busy"] = False
    _state["fd"] = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.addaudithook(_hook)
'''


def read_audit(path: Path, since: float = 0.0) -> list[tuple[float, str, str]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        t, ev, p = (line.split("\t", 2) + ["", "", ""])[:3]
        try:
            if float(t) >= since:
                out.append((float(t), ev, p))
        except ValueError:
            continue
    return out


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    audit: Path | None
    tmpdir: Path | None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the server process (the Streamlit process itself)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def peak_rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def start_server(argv: list[str], *, cwd: Path, env: dict[str, str], workdir: Path, port: int,
                 audit: bool = False, timeout: float = 180.0) -> Server:
    """Start ``argv`` (a ``streamlit run`` line) and wait for ``/_stcore/health``; stop it with :func:`stop_server`."""
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDROBUST_") and not k.startswith("STREAMLIT_")}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    full_env.update(env)
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    full_env["TMPDIR"] = str(tmpdir)
    audit_log = None
    if audit:
        site = workdir / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
        audit_log = workdir / "audit.log"
        full_env["MEDROBUST_AUDIT_LOG"] = str(audit_log)
        full_env["PYTHONPATH"] = str(site) + os.pathsep + full_env.get("PYTHONPATH", "")
    log = workdir / "server.log"
    exe = shutil.which(argv[0], path=os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", ""))
    if exe is None and argv[0] == "streamlit":
        argv = [sys.executable, "-m", "streamlit", *argv[1:]]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc=proc, url=f"http://127.0.0.1:{port}", log=log, audit=audit_log, tmpdir=tmpdir)
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_server(server)
            raise RuntimeError(f"the server did not come up (exit {proc.poll()}):\n{server.log_text()[-3000:]}")
        time.sleep(0.3)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        try:
            os.killpg(server.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)


def world_readable_tree(root: Path) -> list[str]:
    """Paths under ``root`` that an unprivileged user could not read (files) or enter (folders)."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if (p.stat().st_mode & 0o005) != 0o005:
                bad.append(str(p.relative_to(root)) + "/")
        for f in filenames:
            p = Path(dirpath) / f
            if not p.stat().st_mode & 0o004:
                bad.append(str(p.relative_to(root)))
    return bad


def private_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="medrobust-host-"))
