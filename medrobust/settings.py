"""Every environment variable and default folder medrobust reads: one home for each, read at call time.

* ``MEDROBUST_DATA``: data roots, separated by ``os.pathsep`` (``:`` on Linux) (default ``data``)
* ``MEDROBUST_CACHE``: preprocessed data tensors (default ``~/.cache/medrobust``)
* ``MEDROBUST_CHECKPOINTS``: the shipped models and their ``results/`` (default ``checkpoints``)
* ``MEDROBUST_RESULTS``: evaluation results written by ``evaluate`` (default ``results``)
* ``MEDROBUST_RUNS``: training runs (default ``runs``)
* ``MEDROBUST_JOBS``: the dashboard's job records (default ``<runs>/.jobs``)
* ``MEDROBUST_ADMIN_TOKEN``: required to launch or cancel dashboard jobs when set (default unset (open))
* ``MEDROBUST_CPU_BF16``: ``1``/``0`` forces bf16 autocast on the CPU on/off (default hardware detection); in the
  dashboard it also pins whether single-image attacks step on a bf16 copy of each model (default: where measured faster)
* ``MEDROBUST_TORCH_THREADS``: intra-op threads of the dashboard process (default ``1``)
* ``MEDROBUST_DICOM_TIMEOUT_S``: wall-clock limit for decoding one DICOM file (seconds) (default ``15``)
* ``MEDROBUST_DEMO``: ``1`` runs the dashboard as a public demo: training hidden unless an admin token is set,
  PGD steps and the flip search capped, a "research models, not a diagnostic device" notice on every page
  (default off)
* ``MEDROBUST_BATCHING``: ``0`` turns off the dashboard's cross-session batching of model forwards (default on)
* ``MEDROBUST_BATCH_WAIT_MS``: how long a queued forward waits for others to batch with (milliseconds) (default ``2``)
* ``MEDROBUST_BATCH_MAX``: the most images one batched forward takes (default ``16``)
* ``MEDROBUST_CAM_SLOTS``: how many Grad-CAM computations (backward passes) the dashboard runs at once, across all
  sessions (default: the number of CPUs)
* ``MEDROBUST_GC_FREEZE``: ``0`` keeps the dashboard from moving the objects alive once its models are loaded out of
  the garbage collector's sight (``gc.freeze``) (default on)

Nothing is read at import time: a test (or a user) that changes a variable changes the next decision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

ENV_DATA = "MEDROBUST_DATA"
ENV_CACHE = "MEDROBUST_CACHE"
ENV_CHECKPOINTS = "MEDROBUST_CHECKPOINTS"
ENV_RESULTS = "MEDROBUST_RESULTS"
ENV_RUNS = "MEDROBUST_RUNS"
ENV_JOBS = "MEDROBUST_JOBS"
ENV_ADMIN_TOKEN = "MEDROBUST_ADMIN_TOKEN"
ENV_CPU_BF16 = "MEDROBUST_CPU_BF16"
ENV_TORCH_THREADS = "MEDROBUST_TORCH_THREADS"
ENV_DICOM_TIMEOUT = "MEDROBUST_DICOM_TIMEOUT_S"
ENV_DEMO = "MEDROBUST_DEMO"
ENV_BATCHING = "MEDROBUST_BATCHING"
ENV_BATCH_WAIT_MS = "MEDROBUST_BATCH_WAIT_MS"
ENV_BATCH_MAX = "MEDROBUST_BATCH_MAX"
ENV_GC_FREEZE = "MEDROBUST_GC_FREEZE"
ENV_CAM_SLOTS = "MEDROBUST_CAM_SLOTS"


def _path(var: str, default: str | Path) -> Path:
    return Path(os.environ.get(var) or default).expanduser()


def split_roots(text: str) -> list[Path]:
    """Roots from an ``os.pathsep``-separated string (empty parts skipped)."""
    return [Path(r).expanduser() for r in text.split(os.pathsep) if r.strip()]


def env_data_roots() -> list[Path]:
    """``MEDROBUST_DATA`` as paths; empty when unset."""
    return split_roots(os.environ.get(ENV_DATA, ""))


def data_roots(cli_roots: Sequence[str | Path] | None = None) -> list[Path]:
    """The data roots: ``--data`` (repeatable) if given, else ``MEDROBUST_DATA``, else ``data/``."""
    if cli_roots:
        return [Path(r).expanduser() for r in cli_roots]
    return env_data_roots() or [Path("data")]


def cache_dir() -> Path:
    return _path(ENV_CACHE, Path.home() / ".cache" / "medrobust")


def checkpoints_dir() -> Path:
    return _path(ENV_CHECKPOINTS, "checkpoints")


def shipped_results_dir(checkpoints: Path | None = None) -> Path:
    """The shipped models' evaluation results: ``<checkpoints>/results``."""
    return (checkpoints or checkpoints_dir()) / "results"


def cv_results_dir(checkpoints: Path | None = None) -> Path:
    """The shipped cross-validated (pooled out-of-fold) results: ``<checkpoints>/cv/results``."""
    return (checkpoints or checkpoints_dir()) / "cv" / "results"


def results_dir() -> Path:
    return _path(ENV_RESULTS, "results")


def runs_dir() -> Path:
    return _path(ENV_RUNS, "runs")


def jobs_dir() -> Path:
    return _path(ENV_JOBS, runs_dir() / ".jobs")


def admin_token() -> str | None:
    """The dashboard's admin token, or None when none is set (jobs are then open to every visitor)."""
    return os.environ.get(ENV_ADMIN_TOKEN) or None


def demo_mode() -> bool:
    """``MEDROBUST_DEMO``: True for ``1``/``true``/``yes``/``on`` (any case), else False."""
    return (os.environ.get(ENV_DEMO) or "").strip().lower() in ("1", "true", "yes", "on")


def cpu_bf16_override() -> bool | None:
    """``MEDROBUST_CPU_BF16``: True for ``1``, False for ``0``, None (detect) otherwise."""
    value = os.environ.get(ENV_CPU_BF16)
    return None if value not in ("0", "1") else value == "1"


def torch_threads() -> int:
    """Intra-op threads for the dashboard process (``MEDROBUST_TORCH_THREADS``, default 1)."""
    try:
        return max(1, int(os.environ.get(ENV_TORCH_THREADS) or 1))
    except ValueError:
        raise ValueError(f"{ENV_TORCH_THREADS} must be a whole number, got {os.environ[ENV_TORCH_THREADS]!r}.") from None


def _number(name: str, default, cast, *, ok) -> float | int:
    """The environment variable ``name`` read with ``cast``; unset, unreadable or not ``ok(value)`` means ``default``."""
    try:
        value = cast(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if ok(value) else default


def _switch(name: str) -> bool:
    """The environment variable ``name`` as an on/off switch, on by default: off for ``0``/``false``/``no``/``off``."""
    return (os.environ.get(name) or "1").strip().lower() not in ("0", "false", "no", "off")


def dicom_timeout_s(default: float = 15.0) -> float:
    """``MEDROBUST_DICOM_TIMEOUT_S``: seconds allowed to decode one DICOM (a bad value means the default)."""
    return _number(ENV_DICOM_TIMEOUT, default, float, ok=lambda v: v > 0)


def batching() -> bool:
    """``MEDROBUST_BATCHING``: False for ``0``/``false``/``no``/``off`` (any case), else True."""
    return _switch(ENV_BATCHING)


def gc_freeze() -> bool:
    """``MEDROBUST_GC_FREEZE``: False for ``0``/``false``/``no``/``off`` (any case), else True."""
    return _switch(ENV_GC_FREEZE)


def batch_wait_ms(default: float = 2.0) -> float:
    """``MEDROBUST_BATCH_WAIT_MS``: how long a queued forward waits for company (a bad value means the default)."""
    return _number(ENV_BATCH_WAIT_MS, default, float, ok=lambda v: v >= 0)


def batch_max_size(default: int = 16) -> int:
    """``MEDROBUST_BATCH_MAX``: the most images in one batched forward (a bad value means the default)."""
    return _number(ENV_BATCH_MAX, default, int, ok=lambda v: v >= 1)


def cam_slots() -> int:
    """``MEDROBUST_CAM_SLOTS``: concurrent Grad-CAM computations in the dashboard (default: the CPU count)."""
    return _number(ENV_CAM_SLOTS, os.cpu_count() or 1, int, ok=lambda v: v >= 1)


#: The fitted input check beside the shipped models (``<checkpoints>/input_check.safetensors`` + ``.json``): not a model.
INPUT_CHECK_STEM = "input_check"
