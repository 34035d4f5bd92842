"""DICOM decoding that never lets a tag value (name, id, dates, institution) escape.

Only pixel-related attributes are read: the file is parsed with pydicom's ``specific_tags``, so
identifying elements are skipped over without their values ever becoming Python objects (no
warning about a malformed name or date can quote one). Error messages are fixed strings, never
built from the dataset, so nothing identifying can reach a page, a log line or an exception.

Decoding runs under a wall-clock limit (:data:`DECODE_TIMEOUT_S`, ``MEDROBUST_DICOM_TIMEOUT_S``):
a file whose pixel data take longer (a hostile compressed stream, say) is refused with a clear
message. Python cannot stop a running decoder, so the worker thread is left to finish in the
background; while :data:`MAX_STUCK` such workers are still busy, further DICOM files are refused
at once rather than piling up.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Callable

import numpy as np

from medrobust import settings
from medrobust.image_types import DecodedImage, ImageDecodeError


#: Wall-clock limit for decoding one DICOM file, in seconds; None: ``settings.dicom_timeout_s()``
#: (``MEDROBUST_DICOM_TIMEOUT_S``, default 15), read per file.
DECODE_TIMEOUT_S: float | None = None
#: Timed-out decoders allowed to run on in the background before new DICOM files are refused.
MAX_STUCK = 2

#: The only elements read from a file: geometry, pixel encoding, the pixel data and the LUTs.
PIXEL_TAGS = (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "FloatPixelData",
    "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "PixelPaddingValue", "PixelPaddingRangeLimit", "PixelPresentation", "PresentationLUTShape",
    "SmallestImagePixelValue", "LargestImagePixelValue", "ICCProfile", "ColorSpace",
)

_stuck = 0
_stuck_lock = threading.Lock()


def _run_with_time_limit(fn: Callable[[], Any], timeout_s: float) -> Any:
    """``fn()`` in a daemon thread; ImageDecodeError if it takes longer than ``timeout_s``."""
    global _stuck
    with _stuck_lock:
        if _stuck >= MAX_STUCK:
            raise ImageDecodeError("The server is still busy with earlier DICOM files that took too long to decode; "
                                   "try again in a minute, or export the image as PNG.")
    out: dict[str, Any] = {}
    state = {"timed_out": False}
    lock = threading.Lock()

    def work() -> None:
        global _stuck
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            out["error"] = exc
        finally:
            with lock:
                if state["timed_out"]:
                    with _stuck_lock:
                        _stuck -= 1

    worker = threading.Thread(target=work, name="medrobust-dicom-decode", daemon=True)
    worker.start()
    worker.join(timeout_s)
    with lock:
        if worker.is_alive():
            state["timed_out"] = True
            with _stuck_lock:
                _stuck += 1
            raise ImageDecodeError(f"Decoding the DICOM pixel data took longer than {timeout_s:g} s; the file was "
                                   "refused (export the image uncompressed or as PNG).")
    if "error" in out:
        raise out["error"]
    return out["value"]


def decode_dicom(data: bytes, *, max_pixels: int, timeout_s: float | None = None) -> DecodedImage:
    """Decode a DICOM Part 10 file: modality LUT, then VOI LUT, MONOCHROME1 inverted, scaled to [0, 1].

    Raises :class:`ImageDecodeError` (fixed messages, never a tag value) for anything unusable,
    including a decode that runs past ``timeout_s`` (default :data:`DECODE_TIMEOUT_S`).
    """
    limit = float(timeout_s if timeout_s is not None else DECODE_TIMEOUT_S or settings.dicom_timeout_s())
    return _run_with_time_limit(lambda: _decode(data, max_pixels=max_pixels), limit)


def _pixels(ds) -> np.ndarray:
    """The stored pixel values (first frame decoded with the rest); separate so tests can slow it down."""
    return ds.pixel_array


_FAILED = object()


def _attempt(fn: Callable[[], Any]) -> Any:
    """``fn()``, or :data:`_FAILED` if it raises. The original exception (pydicom's messages can quote values
    from the file, a transfer syntax UID for one) is dropped here, so the ImageDecodeError raised afterwards
    carries neither it as ``__cause__`` nor as ``__context__``."""
    try:
        return fn()
    except ImageDecodeError:
        raise
    except Exception:  # noqa: BLE001 - any failure of a hostile file becomes a fixed message
        return _FAILED


def _decode(data: bytes, *, max_pixels: int) -> DecodedImage:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
        from pydicom.uid import UID_dictionary
    except ImportError as exc:  # pragma: no cover - pydicom is a requirement
        raise ImageDecodeError("DICOM support needs the package pydicom (pip install pydicom).") from exc

    # Value validation would warn (and log) with the offending value quoted, and the file meta group
    # (always read) can hold identifying text such as application entity titles: medrobust never
    # validates DICOM values, it only reads pixels, so validation is off for reading (process-wide).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    ds = _attempt(lambda: pydicom.dcmread(io.BytesIO(data), force=False, specific_tags=list(PIXEL_TAGS)))
    if ds is _FAILED:
        raise ImageDecodeError("The file looks like DICOM but its header cannot be read.")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("The DICOM file holds no pixel data (PixelData is missing).")
    geometry = _attempt(lambda: (int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1),
                                 int(getattr(ds, "SamplesPerPixel", 1) or 1)))
    if geometry is _FAILED:
        raise ImageDecodeError("The DICOM file lacks valid Rows/Columns.")
    rows, cols, frames, samples = geometry
    if rows < 1 or cols < 1 or frames < 1 or rows * cols * frames * max(samples, 1) > max_pixels:
        raise ImageDecodeError(
            f"The DICOM image is {cols}x{rows}x{frames}, outside the limit of {max_pixels:,} pixels."
        )
    arr = _attempt(lambda: _pixels(ds))
    if arr is _FAILED:
        tsyntax = _attempt(lambda: str(ds.file_meta.TransferSyntaxUID))
        known = isinstance(tsyntax, str) and tsyntax in UID_dictionary  # never echo a string from the file
        name = UID_dictionary[tsyntax][0] if known else "unknown"
        compressed = known and _attempt(lambda: bool(pydicom.uid.UID(tsyntax).is_compressed)) is True
        if compressed:
            raise ImageDecodeError(
                f"The DICOM pixel data use a compressed transfer syntax ({name}) that cannot be decoded "
                "here; export the image uncompressed or as PNG."
            )
        raise ImageDecodeError("The DICOM pixel data are truncated or malformed.")
    if arr.ndim == 3 and frames > 1:
        arr = arr[0]
    elif arr.ndim == 4:  # several colour frames
        arr = arr[0]
    arr = _attempt(lambda: apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0))
    if arr is _FAILED:
        raise ImageDecodeError("The DICOM LUTs could not be applied.")
    arr = _attempt(lambda: np.asarray(arr, dtype=np.float64))
    if arr is _FAILED:
        raise ImageDecodeError("The DICOM pixel data are not numeric.")
    if arr.ndim == 3 and arr.shape[-1] >= 3:  # colour DICOM: luminance
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError("The DICOM pixel data are not a 2-D image.")
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageDecodeError("The DICOM image holds no finite pixel values.")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi <= lo:
        arr = np.zeros_like(arr)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            if not np.isfinite(hi - lo):  # a range too wide for float64: scale down first
                scale = max(abs(lo), abs(hi))
                arr, lo, hi = arr / scale, lo / scale, hi / scale
            arr = (arr - lo) / (hi - lo)
    arr = np.nan_to_num(np.where(finite, arr, 0.0), nan=0.0, posinf=1.0, neginf=0.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr  # MONOCHROME1 shows low values as white
    bits = _attempt(lambda: int(getattr(ds, "BitsStored", 16) or 16))
    bits = 16 if bits is _FAILED else bits
    return DecodedImage(pixels=np.clip(arr, 0, 1).astype(np.float32), format="DICOM", bit_depth=bits)
