"""Background training/evaluation jobs for the dashboard: one at a time, surviving page reloads.

A job is ``python -m medrobust train ...`` (or ``evaluate``) started with
``subprocess.Popen(start_new_session=True)``: it has its own process group, so it outlives the
browser tab and a restart of the Streamlit server, and cancelling kills the whole group. Its
record (``JOBS/<id>.json``: pid, run folder, command, start time, data folders) and its output
(``JOBS/<id>.log``) live in a jobs folder (default ``$MEDROBUST_RUNS/.jobs``), and
``JOBS/current.json`` names the job holding the single slot. A launch takes an exclusive
``flock`` on ``JOBS/.lock`` and refuses while the current job's process is alive, so two sessions
(or two threads) can never start two jobs.

The exit status is written by a ``/bin/sh`` wrapper to ``JOBS/<id>.rc`` when the command ends,
so a job's outcome is known even after the server that launched it has gone.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medrobust import settings
from medrobust.fileio import atomic_write_text

ENV_TOKEN = settings.ENV_ADMIN_TOKEN

_THREAD_LOCK = threading.Lock()
_CHILDREN: dict[int, subprocess.Popen] = {}  # pid -> Popen, so this process reaps its own children


class JobError(RuntimeError):
    """A job cannot be started or controlled; the message is safe to show."""


# --------------------------------------------------------------------------- admin token


def token_required() -> bool:
    return settings.admin_token() is not None


def check_token(given: str | None) -> bool:
    """True when no token is configured, or ``given`` equals it (constant-time comparison)."""
    expected = settings.admin_token()
    if not expected:
        return True
    return hmac.compare_digest((given or "").encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------- commands


def train_command(*, method: str, preset: str, out: str | Path, data: Sequence[str | Path], epochs: int | None = None,
                  image_size: int | None = None, eps: float | None = None, seed: int = 0,
                  max_batches: int | None = None, arch: str | None = None, python: str | None = None) -> list[str]:
    """The ``python -m medrobust train`` command line, validated first (bad values raise ValueError)."""
    from medrobust.training import preset_config

    preset_config(preset, method=method, epochs=epochs, image_size=image_size, eps=eps, seed=seed,
                  max_batches=max_batches, arch=arch)
    if not data:
        raise ValueError("Give at least one data folder.")
    cmd = [python or sys.executable, "-m", "medrobust", "train", "--method", method, "--preset", preset,
           "--seed", str(int(seed)), "--out", str(out), "--no-progress"]
    for d in data:
        cmd += ["--data", str(d)]
    if epochs is not None:
        cmd += ["--epochs", str(int(epochs))]
    if image_size is not None:
        cmd += ["--image-size", str(int(image_size))]
    if eps is not None:
        cmd += ["--eps", repr(float(eps))]
    if arch is not None:
        cmd += ["--arch", str(arch)]
    if max_batches is not None:
        cmd += ["--max-batches", str(int(max_batches))]
    return cmd


def evaluate_command(*, run_dir: str | Path, data: Sequence[str | Path], out: str | Path | None = None,
                     steps: int = 20, n_boot: int = 1000, python: str | None = None) -> list[str]:
    """``python -m medrobust evaluate RUN --out RUN/eval`` for a finished run."""
    if not data:
        raise ValueError("Give at least one data folder.")
    run_dir = Path(run_dir)
    cmd = [python or sys.executable, "-m", "medrobust", "evaluate", str(run_dir),
           "--out", str(out or run_dir / "eval"), "--steps", str(int(steps)), "--n-boot", str(int(n_boot))]
    for d in data:
        cmd += ["--data", str(d)]
    return cmd


def check_data_folders(data: Sequence[str | Path]) -> str:
    """Read the data's index (metadata, manifest, folder tree or .npz labels; cheap) and return a one-line
    summary; raise ValueError if unusable."""
    from medrobust.data import DataError, read_records

    if not data:
        raise ValueError("Give at least one data folder.")
    try:
        records, report = read_records([Path(d).expanduser() for d in data])
    except DataError as exc:
        raise ValueError(str(exc)) from None
    if not records:
        raise ValueError(f"No usable labelled X-ray in {', '.join(map(str, data))}.")
    return report.summary()


# --------------------------------------------------------------------------- job records


@dataclass
class Job:
    id: str
    kind: str  # "train" | "evaluate"
    pid: int
    run_dir: str
    command: list[str]
    started: float
    data: list[str] = field(default_factory=list)
    cwd: str = "."
    cancelled: bool = False
    ended: float | None = None
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class JobStatus:
    job: Job
    state: str  # "running" | "done" | "failed" | "cancelled"
    returncode: int | None
    log_tail: str

    @property
    def running(self) -> bool:
        return self.state == "running"


class JobManager:
    """One-job-at-a-time launcher over a jobs folder (see the module docstring)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else settings.jobs_dir()

    # -- paths
    def _record(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def log_path(self, job: Job) -> Path:
        return self.folder / f"{job.id}.log"

    def _rc_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.rc"

    @contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with _THREAD_LOCK, open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- reading
    def load(self, job_id: str) -> Job | None:
        try:
            return Job.from_dict(json.loads(self._record(job_id).read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def _save(self, job: Job) -> None:
        atomic_write_text(self._record(job.id), json.dumps(job.to_dict(), indent=1))

    def current(self) -> Job | None:
        """The job holding the slot (running or the last one started), or None."""
        try:
            job_id = json.loads((self.folder / "current.json").read_text())["id"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None
        return self.load(job_id)

    def history(self, limit: int = 20) -> list[Job]:
        if not self.folder.is_dir():
            return []
        jobs = [j for p in self.folder.glob("*.json") if p.name != "current.json" and (j := self.load(p.stem))]
        return sorted(jobs, key=lambda j: j.started, reverse=True)[:limit]

    def returncode(self, job: Job) -> int | None:
        child = _CHILDREN.get(job.pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(job.pid, None)
        try:
            return int(self._rc_path(job.id).read_text().strip())
        except (OSError, ValueError):
            return None

    def is_alive(self, job: Job) -> bool:
        child = _CHILDREN.get(job.pid)
        if child is not None:
            if child.poll() is None:
                return True
            _CHILDREN.pop(job.pid, None)
            return False
        return _pid_alive(job.pid, job.id)

    def status(self, job: Job) -> JobStatus:
        alive = self.is_alive(job)
        rc = self.returncode(job)
        if alive and rc is None:
            state = "running"
        elif job.cancelled:
            state = "cancelled"
        elif rc == 0:
            state = "done"
        else:
            state = "failed"
        return JobStatus(job=job, state=state, returncode=rc, log_tail=self.log_tail(job))

    def log_tail(self, job: Job, n_bytes: int = 4000) -> str:
        try:
            with open(self.log_path(job), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - n_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- control
    def launch(self, command: Sequence[str], *, kind: str, run_dir: str | Path, data: Sequence[str | Path] = (),
               token: str | None = None, cwd: str | Path | None = None, label: str = "") -> Job:
        """Start ``command`` in its own session; refuses while another job runs, the token is wrong, or in demo
        mode (``MEDROBUST_DEMO``) when no admin token is set."""
        if settings.demo_mode() and settings.admin_token() is None:
            raise JobError("Jobs are switched off on this public demo (MEDROBUST_DEMO without MEDROBUST_ADMIN_TOKEN).")
        if not check_token(token):
            raise JobError("The admin token is wrong; launching jobs needs the token set in MEDROBUST_ADMIN_TOKEN.")
        try:
            return self._launch(command, kind=kind, run_dir=run_dir, data=data, cwd=cwd, label=label)
        except OSError as exc:  # a read-only or full runs volume: say so instead of a traceback
            raise JobError(f"Cannot write the jobs folder {self.folder}: {exc.strerror or exc}.") from None

    def _launch(self, command: Sequence[str], *, kind: str, run_dir: str | Path, data: Sequence[str | Path],
                cwd: str | Path | None, label: str) -> Job:
        with self._locked():
            cur = self.current()
            if cur is not None and self.is_alive(cur):
                raise JobError(f"A {cur.kind} job is already running ({cur.label or cur.id}, pid {cur.pid}); "
                               "only one job runs at a time. Wait for it or cancel it.")
            job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}-{int(time.time() * 1000) % 1000:03d}"
            log = open(self.folder / f"{job_id}.log", "ab")
            wrapper = ["/bin/sh", "-c", 'rc_file="$1"; shift; "$@"; echo $? > "$rc_file"', "medrobust-job",
                       str(self._rc_path(job_id).resolve()), *command]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop(ENV_TOKEN, None)  # the child never needs the admin token
            try:
                proc = subprocess.Popen(wrapper, cwd=str(cwd or Path.cwd()), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, env=env, close_fds=True)
            except OSError as exc:
                raise JobError(f"Could not start the job: {exc.strerror or exc}.") from None
            finally:
                log.close()
            _CHILDREN[proc.pid] = proc
            job = Job(id=job_id, kind=kind, pid=proc.pid, run_dir=str(run_dir), command=list(command),
                      started=time.time(), data=[str(d) for d in data], cwd=str(cwd or Path.cwd()), label=label)
            self._save(job)
            atomic_write_text(self.folder / "current.json", json.dumps({"id": job_id}))
            return job

    def cancel(self, job: Job, *, token: str | None = None, grace_s: float = 5.0) -> bool:
        """Kill the job's process group (SIGTERM, then SIGKILL after ``grace_s``). True if it was running."""
        if not check_token(token):
            raise JobError("The admin token is wrong; cancelling jobs needs the token set in MEDROBUST_ADMIN_TOKEN.")
        if not self.is_alive(job):
            return False
        job.cancelled = True
        job.ended = time.time()
        self._save(job)
        try:
            os.killpg(job.pid, signal.SIGTERM)  # start_new_session: the pid is the group id
        except ProcessLookupError:
            return False
        deadline = time.time() + grace_s
        while time.time() < deadline and self.is_alive(job):
            time.sleep(0.05)
        if self.is_alive(job):
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.05)
            self.is_alive(job)
        return True


def _pid_alive(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process that is still our job (guards pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                try:  # our own zombie child (e.g. launched before a module reload): reap it
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            return b"medrobust" in cmdline
        except (OSError, IndexError):
            return False
    return True


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """What a training run's ``progress.jsonl`` says so far."""

    started: bool = False
    done: bool = False
    method: str | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    epoch: int = 0
    step: int = 0
    fraction: float = 0.0
    images_per_s: float | None = None
    eta_s: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"t": global step, "loss": ...}
    epoch_records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    collapsed: bool = False
    wall_seconds: float | None = None
    final_val: dict[str, Any] = field(default_factory=dict)


def read_progress(run_dir: str | Path) -> Progress:
    """Parse ``RUN/progress.jsonl``, tolerating a half-written last line."""
    p = Progress()
    path = Path(run_dir) / "progress.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return p
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = ev.get("event")
        if kind == "start":
            p.started = True
            p.method = ev.get("method")
            p.epochs = ev.get("epochs")
            p.steps_per_epoch = ev.get("steps_per_epoch")
        elif kind == "step":
            p.epoch, p.step = int(ev.get("epoch", 0)), int(ev.get("step", 0))
            spe = int(ev.get("steps_per_epoch") or p.steps_per_epoch or 1)
            p.steps_per_epoch = spe
            p.images_per_s = ev.get("images_per_s")
            p.eta_s = ev.get("eta_s")
            p.steps.append({"step": (p.epoch - 1) * spe + p.step, "epoch": p.epoch, "loss": ev.get("loss")})
        elif kind == "epoch":
            p.epoch_records.append(ev)
            p.epoch = int(ev.get("epoch", p.epoch))
            p.step = p.steps_per_epoch or p.step  # the epoch is complete
        elif kind == "warning":
            p.warnings.append(str(ev.get("message", "")))
        elif kind == "done":
            p.done = True
            p.checkpoint = ev.get("checkpoint")
            p.collapsed = bool(ev.get("collapsed"))
            p.wall_seconds = ev.get("wall_seconds")
            p.final_val = ev.get("val") or {}
    if p.epochs and p.steps_per_epoch:
        total = p.epochs * p.steps_per_epoch
        done_steps = max(0, p.epoch - 1) * p.steps_per_epoch + p.step
        p.fraction = 1.0 if p.done else max(0.0, min(1.0, done_steps / total))
    elif p.done:
        p.fraction = 1.0
    return p


def new_run_dir(method: str, preset: str, seed: int, *, runs: str | Path | None = None) -> Path:
    """A fresh run folder name under ``runs`` (never an existing one)."""
    root = Path(runs) if runs is not None else settings.runs_dir()
    base = f"{method}-{preset}-s{int(seed)}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, i = root / base, 1
    while out.exists():
        i += 1
        out = root / f"{base}-{i}"
    return out
