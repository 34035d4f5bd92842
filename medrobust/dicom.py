"""DICOM decoding that never lets a tag value (name, id, dates, institution) escape.

Only pixel-related attributes are read. Error messages are fixed strings, never built from the
dataset, so nothing identifying can reach a page, a log line or an exception.
"""

from __future__ import annotations

import io

import numpy as np

from medrobust.imaging import DecodedImage, ImageDecodeError


def decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode a DICOM Part 10 file: modality LUT, then VOI LUT, MONOCHROME1 inverted, scaled to [0, 1]."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a requirement
        raise ImageDecodeError("DICOM support needs the package pydicom (pip install pydicom).") from exc

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception:
        raise ImageDecodeError("The file looks like DICOM but its header cannot be read.") from None
    if "PixelData" not in ds:
        raise ImageDecodeError("The DICOM file holds no pixel data (PixelData is missing).")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except Exception:
        raise ImageDecodeError("The DICOM file lacks valid Rows/Columns.") from None
    if rows < 1 or cols < 1 or rows * cols * frames > max_pixels:
        raise ImageDecodeError(
            f"The DICOM image is {cols}x{rows}x{frames}, outside the limit of {max_pixels:,} pixels."
        )
    try:
        arr = ds.pixel_array
    except Exception:
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(tsyntax, "name", "unknown") if tsyntax is not None else "unknown"
        compressed = bool(getattr(tsyntax, "is_compressed", False))
        if compressed:
            raise ImageDecodeError(
                f"The DICOM pixel data use a compressed transfer syntax ({name}) that cannot be decoded "
                "here; export the image uncompressed or as PNG."
            ) from None
        raise ImageDecodeError("The DICOM pixel data are truncated or malformed.") from None
    if arr.ndim == 3 and frames > 1:
        arr = arr[0]
    try:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds, index=0)
    except Exception:
        raise ImageDecodeError("The DICOM LUTs could not be applied.") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:  # colour DICOM: luminance
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ImageDecodeError("The DICOM pixel data are not a 2-D image.")
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageDecodeError("The DICOM image holds no finite pixel values.")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
    arr = np.nan_to_num(np.where(finite, arr, 0.0), nan=0.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr  # MONOCHROME1 shows low values as white
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    return DecodedImage(pixels=np.clip(arr, 0, 1).astype(np.float32), format="DICOM", bit_depth=bits)
