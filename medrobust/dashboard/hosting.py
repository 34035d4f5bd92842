"""Server-side hardening for the hosted dashboard (called once from app.py; no effect on the CLI).

Uploads must stay in memory. Streamlit stores an uploaded file's bytes in memory, but its HTTP
server (Starlette) parses the multipart upload first, and spools any file part larger than 1 MB to
a temporary file in ``/tmp`` while doing so. :func:`keep_uploads_in_memory` raises that threshold
above ``server.maxUploadSize``, so no byte of an upload (a DICOM with its tags, say) ever reaches
a disk. ``tests/system/test_privacy.py`` checks it against a real server.

Shutdown must be clean under load. On SIGTERM (``docker stop``) Streamlit stops its server and the
interpreter exits while a visitor's script thread (a daemon thread) may still be inside a PyTorch kernel;
Python then ends that thread with ``pthread_exit`` during finalisation, which killed the container with
SIGSEGV (exit code 139) in 3 of 5 stops measured under a PGD flip search (scripts/container_check.sh).
:func:`finish_sessions_on_shutdown` sets :data:`SHUTTING_DOWN` as soon as the interpreter starts to exit
(before worker threads are joined), so long computations (the flip search) stop at their next step; it
then gives script threads a moment to end and, if one is still computing, leaves without finalising.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

#: Room for the multipart framing around the largest accepted file.
_FRAMING_BYTES = 1024 * 1024


def keep_uploads_in_memory(max_upload_mb: float | None = None) -> int | None:
    """Make Starlette keep multipart uploads up to ``max_upload_mb`` (default ``server.maxUploadSize``) in memory.

    Returns the spool threshold in bytes now in force, or None where Starlette is not in use.
    Idempotent and cheap: safe to call on every script run.
    """
    try:
        from starlette.formparsers import MultiPartParser
    except ImportError:  # pragma: no cover - Streamlit without Starlette keeps uploads in memory itself
        return None
    if max_upload_mb is None:
        try:
            from streamlit import config

            max_upload_mb = float(config.get_option("server.maxUploadSize"))
        except Exception:  # noqa: BLE001 - no Streamlit config: fall back to its default cap
            max_upload_mb = 200.0
    need = int(max_upload_mb * 1024 * 1024) + _FRAMING_BYTES
    if getattr(MultiPartParser, "spool_max_size", 0) < need:
        MultiPartParser.spool_max_size = need
    return MultiPartParser.spool_max_size


_SHUTDOWN_HOOK = {"registered": False}
#: Set when the process starts to exit: long dashboard computations check it between steps and stop.
SHUTTING_DOWN = threading.Event()
#: Streamlit names its per-session script threads "ScriptRunner.scriptThread".
_SCRIPT_THREAD_PREFIX = "ScriptRunner"


def _finish_script_threads(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.daemon and t.name.startswith(_SCRIPT_THREAD_PREFIX):
            t.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in threading.enumerate() if t.daemon and t.name.startswith(_SCRIPT_THREAD_PREFIX) and t.is_alive()]
    if busy:
        print(f"medrobust: shutdown: {len(busy)} session(s) still computing after {timeout_s:g} s; exiting now.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


def finish_sessions_on_shutdown(timeout_s: float = 1.5) -> bool:
    """At interpreter exit, stop long computations, wait up to ``timeout_s`` for visitors' script threads,
    then exit without finalising if one is still running.

    Registered once per process (later calls do nothing and return False). :data:`SHUTTING_DOWN` is set by
    ``threading``'s exit hook, which runs before non-daemon worker threads (the attack pool) are joined;
    the wait runs from ``atexit``, after the server has stopped.
    """
    if _SHUTDOWN_HOOK["registered"]:
        return False
    _SHUTDOWN_HOOK["registered"] = True
    register = getattr(threading, "_register_atexit", None)  # what concurrent.futures uses for the same purpose
    if register is not None:
        register(SHUTTING_DOWN.set)
    atexit.register(_finish_script_threads, timeout_s)
    atexit.register(SHUTTING_DOWN.set)  # atexit runs last-in first-out: this one first
    return True
