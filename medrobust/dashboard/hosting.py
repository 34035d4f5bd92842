"""Server-side hardening for the hosted dashboard (called once from app.py; no effect on the CLI).

Uploads must stay in memory. Streamlit stores an uploaded file's bytes in memory, but its HTTP
server (Starlette) parses the multipart upload first, and spools any file part larger than 1 MB to
a temporary file in ``/tmp`` while doing so. :func:`keep_uploads_in_memory` raises that threshold
above ``server.maxUploadSize``, so no byte of an upload (a DICOM with its tags, say) ever reaches
a disk. ``tests/system/test_privacy.py`` checks it against a real server.
"""

from __future__ import annotations

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
