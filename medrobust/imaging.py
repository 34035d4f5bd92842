"""Decode X-ray files (PNG, JPEG, DICOM) into one grey channel in [0, 1] and resize them.

Every image in medrobust goes through :func:`decode_image` and :func:`to_square`, so the data set,
the CLI and the dashboard's uploads all see the same pixels.

Resize rule (documented once, used everywhere): scale so the *short* side equals ``size``
(bilinear, antialiased), then centre-crop the long side to ``size``. Chest X-rays are roughly
square, so the crop removes at most a margin of the long side.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from medrobust.image_types import DecodedImage, ImageDecodeError

#: Largest pixel count we decode (a 30000x30000 "decompression bomb" is 9e8 pixels).
MAX_PIXELS = 60_000_000
#: Largest file we accept, in bytes.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The only raster formats Pillow may open (no EPS/PDF/PSD/... plugins, which widen the attack surface).
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
#: ``to_square`` first cuts the long side to this many times the short one, so a 1 x 100000 strip is
#: never upsampled into a gigabyte-sized tensor before the centre crop (ordinary X-rays are untouched).
MAX_ASPECT = 4.0


def _is_dicom(data: bytes) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their extension.
    return len(data) >= 132 and data[128:132] == b"DICM"


def _grey_from_pil(img: Image.Image) -> tuple[np.ndarray, int]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        return arr, 16
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as mode "I"; treat values above 255 as a 16-bit range.
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / scale, 0.0, 1.0), 16 if scale > 255 else 8
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return _minmax(arr), 32
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0, 1
    if mode in ("LA", "RGBA", "PA"):
        # Alpha carries no radiographic information: drop it rather than composite on a colour.
        img = img.convert("RGBA").convert("RGB")
    if mode not in ("L",):
        img = img.convert("L")
    return np.asarray(img, dtype=np.float64) / 255.0, 8


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageDecodeError("The image holds no finite pixel values.")
    arr = np.where(finite, arr, np.nan)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    out = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
    return np.nan_to_num(out, nan=0.0)


def _decode_pil(data: bytes, *, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Pillow warns (and errors at 2x) on large images; we enforce our own, lower cap below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"The image is {w}x{h} pixels, more than the limit of {max_pixels:,} pixels."
                )
            if w < 1 or h < 1:
                raise ImageDecodeError("The image has no pixels.")
            fmt = img.format or "image"
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"The image declares more than {max_pixels:,} pixels; refusing to decode it."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            "The file is not a readable PNG, JPEG or DICOM image (it may be truncated or corrupt)."
        ) from exc
    try:
        arr, depth = _grey_from_pil(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError) as exc:
        raise ImageDecodeError(f"The {fmt} image uses a pixel format that cannot be read as a grey image.") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(f"The {fmt} image is not a 2-D picture.")
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return DecodedImage(pixels=np.clip(arr, 0.0, 1.0).astype(np.float32), format=fmt, bit_depth=depth)


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM file held in memory into a grey image in [0, 1].

    Parameters
    ----------
    data
        The file's bytes. Nothing is written to disk.
    max_pixels, max_bytes
        Limits that protect the process from decompression bombs and huge uploads.

    Returns
    -------
    DecodedImage
        ``pixels`` is float32 (H, W) in [0, 1]; 8- and 16-bit data are scaled by their full range,
        colour is converted to luminance and alpha is dropped.

    Raises
    ------
    ImageDecodeError
        With a message that is safe to show (it never contains DICOM tag values).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError("Expected the file's bytes.")
    data = bytes(data)
    if len(data) == 0:
        raise ImageDecodeError("The file is empty.")
    if len(data) > max_bytes:
        raise ImageDecodeError(
            f"The file is {len(data) / 2**20:.1f} MiB, more than the limit of {max_bytes / 2**20:.0f} MiB."
        )
    if _is_dicom(data):
        from medrobust.dicom import decode_dicom  # pydicom is imported only when a DICOM arrives

        return decode_dicom(data, max_pixels=max_pixels)
    return _decode_pil(data, max_pixels=max_pixels)


def to_square(pixels: np.ndarray | torch.Tensor, *, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` (bilinear, antialiased) and centre-crop to ``size``².

    Returns a float32 tensor of shape (1, size, size) in [0, 1].
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}.")
    t = torch.as_tensor(np.asarray(pixels, dtype=np.float32)) if not torch.is_tensor(pixels) else pixels.float()
    if t.ndim != 2:
        raise ValueError(f"Expected a 2-D grey image, got shape {tuple(t.shape)}.")
    h, w = t.shape
    if h < 1 or w < 1:
        raise ValueError(f"Expected a non-empty image, got shape {tuple(t.shape)}.")
    if max(h, w) > MAX_ASPECT * min(h, w):  # cut an extreme strip before it is upsampled
        keep = int(math.ceil(MAX_ASPECT * min(h, w)))
        if h > w:
            t = t[(h - keep) // 2 : (h - keep) // 2 + keep]
        else:
            t = t[:, (w - keep) // 2 : (w - keep) // 2 + keep]
        h, w = t.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    t = F.interpolate(t[None, None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return t[:, top : top + size, left : left + size].clamp_(0.0, 1.0).contiguous()


def load_image_file(path, *, size: int) -> torch.Tensor:
    """Read an image file from disk and return it as a (1, size, size) float tensor in [0, 1]."""
    with open(path, "rb") as fh:
        data = fh.read()
    return to_square(decode_image(data).pixels, size=size)
