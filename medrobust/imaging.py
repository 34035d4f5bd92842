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


#: Pillow modes that hold one grey channel (plus alpha): their colour measures are 0 without looking.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Colour measures look at most this many pixels (a regular sub-grid): a 60-megapixel upload costs
#: the same few milliseconds as a 512 px one, and the statistics barely move.
COLOUR_SAMPLE_PIXELS = 1 << 16


def colour_measures(rgb: np.ndarray) -> tuple[float, float]:
    """Colourfulness of an RGB image, and the part of it that no tint of a grey image explains.

    Parameters
    ----------
    rgb
        (H, W, 3) array in 0..255 (uint8 or float). Images larger than :data:`COLOUR_SAMPLE_PIXELS`
        are measured on a regular sub-grid.

    Returns
    -------
    (colourfulness, beyond_tint)
        ``colourfulness`` is Hasler & Süsstrunk's M (2003, "Measuring colourfulness in natural images"):
        with the opponent channels rg = R - G and yb = (R + G) / 2 - B,
        M = sqrt(sd(rg)² + sd(yb)²) + 0.3 sqrt(mean(rg)² + mean(yb)²); 0 for any grey image, about 33
        for a "moderately" and 59 for a "quite" colourful photograph. A grey film scanned with a tint
        (purple, blue, sepia) scores high too, because its chroma grows with its brightness.
        ``beyond_tint`` is the 75th percentile, over pixels, of the chroma left once rg and yb are each
        fitted (least squares) as an affine function of the luminance: sqrt(res_rg² + res_yb²), in the
        same 0..255 units. A tint or colour cast of any strength leaves ~0; colours that vary
        independently of brightness (a photograph) remain. The percentile ignores coloured arrows or
        labels drawn on less than a quarter of the image.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"Expected an (H, W, 3) RGB array, got shape {a.shape}.")
    h, w = a.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / COLOUR_SAMPLE_PIXELS)))
    a = a[::step, ::step, :3].reshape(-1, 3).astype(np.float64)
    if a.shape[0] == 0:
        return 0.0, 0.0
    r, g, b = a[:, 0], a[:, 1], a[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    m = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    # Least-squares residual of c ~ alpha + beta * luminance, in closed form: var(c) - cov(c, L)² / var(L).
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    lum = lum - lum.mean()
    # Element-wise sums, not BLAS dot products: a threaded BLAS waits ~40 ms for cores on a busy machine.
    var_l = float((lum * lum).sum())
    resid2 = np.zeros_like(lum)
    for c in (rg, yb):
        c = c - c.mean()
        slope = float((c * lum).sum()) / var_l if var_l > 0 else 0.0
        resid2 += (c - slope * lum) ** 2
    return float(m), float(np.percentile(np.sqrt(resid2), 75.0))


def _grey_from_pil(img: Image.Image) -> tuple[np.ndarray, int, tuple[float, float]]:
    """Grey pixels in [0, 1], the bit depth, and :func:`colour_measures` (zeros for grey modes)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        return arr, 16, (0.0, 0.0)
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as mode "I"; treat values above 255 as a 16-bit range.
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / scale, 0.0, 1.0), 16 if scale > 255 else 8, (0.0, 0.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return _minmax(arr), 32, (0.0, 0.0)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0, 1, (0.0, 0.0)
    # Measured on the colours as stored (alpha dropped), before the grey conversion below, which is
    # left exactly as it was so that every cached data set keeps its pixels.
    colour = (0.0, 0.0) if mode in _GREY_MODES else colour_measures(np.asarray(img.convert("RGB")))
    if mode in ("LA", "RGBA", "PA"):
        # Alpha carries no radiographic information: drop it rather than composite on a colour.
        img = img.convert("RGBA").convert("RGB")
    if mode not in ("L",):
        img = img.convert("L")
    return np.asarray(img, dtype=np.float64) / 255.0, 8, colour


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
        arr, depth, (colourfulness, beyond_tint) = _grey_from_pil(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError) as exc:
        raise ImageDecodeError(f"The {fmt} image uses a pixel format that cannot be read as a grey image.") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(f"The {fmt} image is not a 2-D picture.")
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return DecodedImage(pixels=np.clip(arr, 0.0, 1.0).astype(np.float32), format=fmt, bit_depth=depth,
                        colourfulness=colourfulness, colour_beyond_tint=beyond_tint)


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
        colour is converted to luminance and alpha is dropped. For colour files (RGB, RGBA, palette,
        CMYK, ...) ``colourfulness`` and ``colour_beyond_tint`` say how coloured they were
        (:func:`colour_measures`); grey files and DICOM carry 0.

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
