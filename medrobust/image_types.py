"""What a decoder returns, shared by :mod:`medrobust.imaging` (raster files) and :mod:`medrobust.dicom`.

Kept apart so the DICOM reader and the image pipeline need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ImageDecodeError(ValueError):
    """A file could not be turned into an X-ray image; the message is safe to show to a user."""


@dataclass(frozen=True)
class DecodedImage:
    """A grey image in [0, 1] with what was learnt while decoding it (never patient tags)."""

    pixels: np.ndarray  # float32, (H, W), values in [0, 1]
    format: str  # "PNG", "JPEG", "DICOM", ...
    bit_depth: int
    note: str = ""
