"""DICOM decoding that never lets a tag value (name, id, dates, institution) escape.

Only pixel-related attributes are read: the file is parsed with pydicom's ``specific_tags``, so
identifying elements are skipped over without their values ever becoming Python objects (no
warning about a malformed name or date can quote one). Error messages are fixed strings, never
built from the dataset, so nothing identifying can reach a page, a log line or an exception.

Compressed (encapsulated) pixel data are decoded by pydicom's plugins: the pylibjpeg packages
(``pylibjpeg-libjpeg``: JPEG baseline, extended, lossless and JPEG-LS; ``pylibjpeg-openjpeg``: JPEG 2000
and HTJ2K; ``pylibjpeg-rle``: RLE), see :data:`CODESTREAM_SYNTAXES`. Before a decoder runs, the size each
frame's codestream declares (its JPEG SOF or JPEG 2000 SIZ header, which can differ from Rows/Columns)
is checked against the pixel cap.

Decoding runs under a wall-clock limit (:data:`DECODE_TIMEOUT_S`, ``MEDROBUST_DICOM_TIMEOUT_S``):
a file whose pixel data take longer (a hostile compressed stream, say) is refused with a clear
message.

* Native (uncompressed, deflated) pixel data are decoded in a worker thread of this process. Python
  cannot stop a running thread, so it is left to finish in the background; while :data:`MAX_STUCK`
  such workers are still busy, further DICOM files are refused at once rather than piling up.
* Compressed pixel data are decoded in a child process (a clean interpreter started with
  ``sys.executable``, reused for later files, at most :data:`MAX_DECODERS` at once). The codecs are C
  code that holds the GIL: in a thread, a slow stream would also freeze the caller past the limit (and a
  crash in a codec would take the server down). A child that runs past the limit is killed, and one that
  crashes costs only that file. The child writes nothing to the terminal or the log (its stderr is
  discarded); it answers with the pixels or one of this module's fixed messages.
"""

from __future__ import annotations

import atexit
import io
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medrobust import settings
from medrobust.image_types import DecodedImage, ImageDecodeError


#: Wall-clock limit for decoding one DICOM file, in seconds; None: ``settings.dicom_timeout_s()``
#: (``MEDROBUST_DICOM_TIMEOUT_S``, default 15), read per file.
DECODE_TIMEOUT_S: float | None = None
#: Timed-out decoders allowed to run on in the background before new DICOM files are refused.
MAX_STUCK = 2
#: Child processes decoding compressed pixel data at once; a further file waits (within its time limit)
#: for one to finish.
MAX_DECODERS = 2
#: Seconds a new child decoder may take to start (import pydicom and the codecs), apart from the decode limit.
WORKER_START_TIMEOUT_S = 30.0

#: The only elements read from a file: geometry, pixel encoding, the pixel data and the LUTs.
PIXEL_TAGS = (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "FloatPixelData",
    "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "PixelPaddingValue", "PixelPaddingRangeLimit", "PixelPresentation", "PresentationLUTShape",
    "SmallestImagePixelValue", "LargestImagePixelValue", "ICCProfile", "ColorSpace",
)

#: Transfer syntax UID -> the codestream it carries (one per frame), for the compressed syntaxes decoded here.
#: RLE is absent from the header check: its decoded size is Rows x Columns by construction.
CODESTREAM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "jpeg",  # JPEG Baseline (Process 1), 8-bit
    "1.2.840.10008.1.2.4.51": "jpeg",  # JPEG Extended (Process 2 and 4), 8- and 12-bit
    "1.2.840.10008.1.2.4.57": "jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14), any predictor
    "1.2.840.10008.1.2.4.70": "jpeg",  # JPEG Lossless, Process 14, Selection Value 1
    "1.2.840.10008.1.2.4.80": "jpeg",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "jpeg",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "j2k",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91": "j2k",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "j2k",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202": "j2k",  # HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203": "j2k",  # HTJ2K
}
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"

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


# ---- compressed pixel data: decoded in a child process --------------------------------------------------

#: The child's entry point; ``sys.argv[1]`` is the folder holding the ``medrobust`` package (tests swap this
#: string for one that slows the decoder down).
_WORKER_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from medrobust.dicom import _worker_main; _worker_main()"
_REQUEST = struct.Struct("<QQ")  # max_pixels, length of the file
_IMAGE = struct.Struct("<IIiI")  # rows, columns, bit depth, length of the note


class _DecoderGone(Exception):
    """The child closed its pipe: it crashed or was killed."""


def _read_exact(stream, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise _DecoderGone
        got += k
    return buf


class _Worker:
    """One child decoder: requests go to its stdin, replies come from its stdout."""

    def __init__(self) -> None:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        root = str(Path(__file__).resolve().parent.parent)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT, root], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def talk(self, send: Callable[[], None] | None, timeout_s: float):
        """``send()`` then read one reply, in a helper thread (pipe I/O releases the GIL); None on timeout."""
        box: dict[str, Any] = {}

        def io_() -> None:
            try:
                if send is not None:
                    send()
                box["reply"] = self._read_reply()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        helper = threading.Thread(target=io_, name="medrobust-dicom-pipe", daemon=True)
        helper.start()
        helper.join(max(timeout_s, 0.0))
        if helper.is_alive():
            self.kill()
            helper.join(5)
            return None
        if "error" in box:
            raise _DecoderGone from None
        return box["reply"]

    def _read_reply(self):
        out = self.proc.stdout
        kind = bytes(_read_exact(out, 1))
        if kind == b"R":
            return "ready"
        if kind == b"E":
            (n,) = struct.unpack("<I", _read_exact(out, 4))
            return ImageDecodeError(_read_exact(out, n).decode("utf-8", "replace"))
        if kind == b"O":
            rows, cols, bits, n_note = _IMAGE.unpack(_read_exact(out, _IMAGE.size))
            note = _read_exact(out, n_note).decode("utf-8", "replace")
            pixels = np.frombuffer(_read_exact(out, rows * cols * 4), dtype=np.float32).reshape(rows, cols)
            return DecodedImage(pixels=pixels, format="DICOM", bit_depth=bits, note=note)
        raise _DecoderGone

    def decode(self, data: bytes, max_pixels: int, timeout_s: float):
        def send() -> None:
            self.proc.stdin.write(_REQUEST.pack(max_pixels, len(data)))
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

        return self.talk(send, timeout_s)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):  # pragma: no cover - already gone
            pass

    def close(self) -> None:
        """Ask an idle child to leave (it exits when its stdin closes), and make sure it did."""
        try:
            self.proc.stdin.close()
            self.proc.wait(2)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


class _Pool:
    """Idle children kept for reuse, and how many decode at this moment (per process: a fork starts afresh)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.idle: list[_Worker] = []
        self.busy = 0
        self.cond = threading.Condition()


_pool = _Pool()


def _the_pool() -> _Pool:
    global _pool
    if _pool.pid != os.getpid():  # a forked child must not share its parent's pipes
        _pool = _Pool()
    return _pool


@atexit.register
def _close_idle_workers() -> None:
    pool = _the_pool()
    with pool.cond:
        idle, pool.idle = pool.idle, []
    for w in idle:
        w.close()


def _start_worker() -> _Worker:
    w = None
    try:
        w = _Worker()
        if w.talk(None, WORKER_START_TIMEOUT_S) == "ready":
            return w
    except (OSError, ValueError, TypeError, _DecoderGone):  # no interpreter to start, or it died at once
        pass
    if w is not None:
        w.kill()
    raise ImageDecodeError("The DICOM decoder could not be started; export the image uncompressed or as PNG.")


def _decode_in_child(data: bytes, *, max_pixels: int, limit: float, start: float) -> DecodedImage:
    """Decode in an idle child (or a new one: its start-up is not charged to the file), killed at the limit."""
    pool = _the_pool()
    with pool.cond:
        free = pool.cond.wait_for(lambda: pool.busy < MAX_DECODERS,
                                  timeout=max(0.0, limit - (time.monotonic() - start)))
        if not free:
            raise ImageDecodeError("The server is still busy with earlier DICOM files; try again in a minute, or "
                                   "export the image as PNG.")
        pool.busy += 1
        worker = pool.idle.pop() if pool.idle else None
    healthy = False
    try:
        if worker is not None and worker.proc.poll() is not None:  # died while idle
            worker.kill()
            worker = None
        if worker is None:
            before = time.monotonic()
            worker = _start_worker()
            start += time.monotonic() - before
        try:
            reply = worker.decode(data, max_pixels, limit - (time.monotonic() - start))
        except _DecoderGone:
            raise ImageDecodeError("The DICOM pixel data could not be decoded (the decoder stopped on them); "
                                   "export the image uncompressed or as PNG.") from None
        if reply is None:  # killed at the limit
            raise ImageDecodeError(f"Decoding the DICOM pixel data took longer than {limit:g} s; the file was "
                                   "refused (export the image uncompressed or as PNG).")
        healthy = True
        if isinstance(reply, ImageDecodeError):
            raise reply
        return reply
    finally:
        with pool.cond:
            pool.busy -= 1
            if healthy and worker is not None and len(pool.idle) < MAX_DECODERS and _the_pool() is pool:
                pool.idle.append(worker)
                worker = None
            pool.cond.notify()
        if worker is not None:
            worker.close() if healthy else worker.kill()


def _worker_main() -> None:  # pragma: no cover - runs in the child (tests drive it through decode_dicom)
    """The child's loop: read a request, decode, answer; leave when stdin closes."""
    import logging
    import warnings

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt a reply
    requests = sys.stdin.buffer
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    import pydicom  # noqa: F401 - loaded before the first file, as are the codecs
    for codec in ("libjpeg", "openjpeg", "rle"):
        try:
            __import__(codec)
        except ImportError:
            pass
    replies.write(b"R")
    replies.flush()
    while True:
        try:
            head = _read_exact(requests, _REQUEST.size)
            max_pixels, n = _REQUEST.unpack(head)
            data = bytes(_read_exact(requests, n))
        except _DecoderGone:
            return
        try:
            img = _decode(data, max_pixels=max_pixels)
            note = img.note.encode()
            replies.write(b"O" + _IMAGE.pack(*img.pixels.shape, img.bit_depth, len(note)) + note)
            replies.write(np.ascontiguousarray(img.pixels, dtype=np.float32).tobytes())
        except BaseException as exc:  # noqa: BLE001 - every failure is one fixed message
            msg = str(exc) if isinstance(exc, ImageDecodeError) else \
                "The DICOM pixel data could not be decoded; export the image uncompressed or as PNG."
            raw = msg.encode()
            replies.write(b"E" + struct.pack("<I", len(raw)) + raw)
        replies.flush()


def decode_dicom(data: bytes, *, max_pixels: int, timeout_s: float | None = None) -> DecodedImage:
    """Decode a DICOM Part 10 file: modality LUT, then VOI LUT, MONOCHROME1 inverted, scaled to [0, 1].

    Raises :class:`ImageDecodeError` (fixed messages, never a tag value) for anything unusable,
    including a decode that runs past ``timeout_s`` (default :data:`DECODE_TIMEOUT_S`). The header is
    read here; compressed pixel data are decoded in a child process (see the module's docstring), and the
    time limit covers both.
    """
    limit = float(timeout_s if timeout_s is not None else DECODE_TIMEOUT_S or settings.dicom_timeout_s())
    start = time.monotonic()
    out = _run_with_time_limit(lambda: _decode(data, max_pixels=max_pixels, compressed_here=False), limit)
    if out is _IN_CHILD:
        return _decode_in_child(data, max_pixels=max_pixels, limit=limit, start=start)
    return out


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
    except (ImageDecodeError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - any failure of a hostile file becomes a fixed message (a codec
        return _FAILED  # written in Rust reports a bad stream with a panic, which is no Exception)


#: What :func:`_decode` returns when the header is fine and the compressed pixel data are for a child.
_IN_CHILD = object()

_CORRUPT = "The DICOM pixel data ({name}) are truncated or corrupt; export the image uncompressed or as PNG."


def _syntax(ds, uid_dictionary) -> tuple[str | None, str]:
    """The transfer syntax UID if pydicom knows it (never a string of the file's own), and its name."""
    ts = _attempt(lambda: str(ds.file_meta.TransferSyntaxUID))
    if isinstance(ts, str) and ts in uid_dictionary:
        return ts, uid_dictionary[ts][0]
    return None, "unknown"


def _deflated_size_ok(data: bytes, limit: int) -> bool:
    """False if the file is a deflated data set that inflates to more than ``limit`` bytes, measured in 1 MiB
    steps (pydicom inflates it whole before any element is read, and zlib compresses zeros ~1000-fold)."""
    from pydicom.filereader import _read_file_meta_info  # the public read_file_meta_info takes a path only

    fp = io.BytesIO(data)
    fp.seek(132)
    if str(_read_file_meta_info(fp).get("TransferSyntaxUID", "")) != DEFLATED:
        return True
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[fp.tell():], 0
    while pending:
        total += len(inflater.decompress(pending, 1 << 20))
        pending = inflater.unconsumed_tail
        if total > limit:
            return False
    return True


def _jpeg_pixels(s: bytes) -> int | None:
    """Samples declared by a JPEG (T.81) or JPEG-LS (T.87) codestream's frame header; None if none is found or
    the stream lacks its end marker (cut short: the decoders would fill the missing rows without a word).
    EOI (FF D9) cannot occur inside entropy-coded data, so finding it among the last bytes (a frame may
    carry a few bytes of padding) means the stream was not truncated."""
    if s[:2] != b"\xff\xd8" or b"\xff\xd9" not in s[-16:]:
        return None
    i = 2
    while i + 4 <= len(s):
        if s[i] != 0xFF:
            return None
        marker = s[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        length = int.from_bytes(s[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or i + 10 > len(s):
                return None
            rows, cols, comps = int.from_bytes(s[i + 5:i + 7], "big"), int.from_bytes(s[i + 7:i + 9], "big"), s[i + 9]
            return rows * cols * comps if rows and cols and comps else None  # rows 0: set by a DNL, refused
        if marker in (0xDA, 0xD9) or length < 2:  # a scan or the end before any frame header
            return None
        i += 2 + length
    return None


#: SOF0-3, 5-7, 9-11, 13-15 (T.81) and SOF55 (JPEG-LS, T.87); C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def _j2k_pixels(s: bytes) -> int | None:
    """Samples declared by a JPEG 2000 codestream's SIZ marker (in a JP2 file: its jp2c box), or None."""
    if s[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # a JP2 file rather than a bare codestream
        i = 0
        while i + 8 <= len(s):
            size, kind, head = int.from_bytes(s[i:i + 4], "big"), s[i + 4:i + 8], 8
            if size == 1:
                size, head = int.from_bytes(s[i + 8:i + 16], "big"), 16
            elif size == 0:
                size = len(s) - i
            if kind == b"jp2c":
                return _j2k_pixels(s[i + head:i + size])
            if size < head:
                return None
            i += size
        return None
    if s[:4] != b"\xff\x4f\xff\x51" or len(s) < 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", s[8:24])
    comps = int.from_bytes(s[40:42], "big")
    if xsiz <= xosiz or ysiz <= yosiz or comps == 0:
        return None
    return (xsiz - xosiz) * (ysiz - yosiz) * comps


def _check_codestreams(ds, ts: str, name: str, frames: int, max_pixels: int) -> None:
    """Refuse compressed pixel data whose codestreams declare more samples than ``max_pixels`` in all, or
    whose headers cannot be read, before any decoder allocates for them."""
    from pydicom.encaps import generate_frames

    kind = CODESTREAM_SYNTAXES.get(ts)
    if kind is None:  # RLE: decoded into Rows x Columns x frames, checked already
        return
    parse = _jpeg_pixels if kind == "jpeg" else _j2k_pixels

    def sizes() -> int | None:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        total, seen = 0, 0
        for frame in generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=offsets):
            n = parse(frame)
            if n is None:
                return None
            total, seen = total + n, seen + 1
            if total > max_pixels:
                break
        return total if seen else None

    total = _attempt(sizes)
    if total is _FAILED or total is None:
        raise ImageDecodeError(_CORRUPT.format(name=name))
    if total > max_pixels:
        raise ImageDecodeError(f"The DICOM image's compressed data declare {total:,} pixels, outside the limit of "
                               f"{max_pixels:,} pixels.")


def _decode(data: bytes, *, max_pixels: int, compressed_here: bool = True) -> DecodedImage | object:
    """Read the header, check it, then decode; with ``compressed_here`` False, compressed pixel data are
    left for a child process (:data:`_IN_CHILD` is returned once the header passed every check)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
        from pydicom.uid import UID_dictionary
    except ImportError as exc:  # pragma: no cover - pydicom is a requirement
        raise ImageDecodeError("DICOM support needs the package pydicom (pip install pydicom).") from exc

    # Value validation would warn (and log) with the offending value quoted, and the file meta group
    # (always read) can hold identifying text such as application entity titles: medrobust never
    # validates DICOM values, it only reads pixels, so validation is off for reading (process-wide).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # At most 8 bytes a pixel (float64 data) and 16 MiB of other elements; a meta group that cannot be read
    # is left to dcmread's own refusal.
    if _attempt(lambda: _deflated_size_ok(data, 8 * max_pixels + (16 << 20))) is False:
        raise ImageDecodeError(f"The deflated DICOM data set inflates to more than the limit of "
                               f"{max_pixels:,} pixels allows.")
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
    ts, name = _syntax(ds, UID_dictionary)
    encapsulated = ts is not None and _attempt(lambda: bool(pydicom.uid.UID(ts).is_encapsulated)) is True
    if encapsulated:
        supported = (ts in CODESTREAM_SYNTAXES or ts == RLE_LOSSLESS) and \
            _attempt(lambda: "pylibjpeg" in get_decoder(ts).available_plugins) is True
        if not supported:
            raise ImageDecodeError(
                f"The DICOM pixel data use a compressed transfer syntax ({name}) that cannot be decoded "
                "here; export the image uncompressed or as PNG."
            )
        _check_codestreams(ds, ts, name, frames, max_pixels)
        if not compressed_here:
            return _IN_CHILD
        # The pylibjpeg codecs, whichever others are installed (Pillow, pyjpegls): the same decoder in tests and use.
        _attempt(lambda: ds.pixel_array_options(decoding_plugin="pylibjpeg"))
    arr = _attempt(lambda: _pixels(ds))
    if arr is _FAILED:
        if encapsulated:
            raise ImageDecodeError(_CORRUPT.format(name=name))
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
