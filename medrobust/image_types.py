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
    #: Hasler & Süsstrunk's colourfulness M of the file's colour pixels (0 for grey files, DICOM and
    #: grey images stored as RGB; about 15 "slightly", 33 "moderately", 59 "quite", 82 "highly" colourful).
    colourfulness: float = 0.0
    #: The colour a tint cannot explain: the 75th percentile of the chroma left once each opponent
    #: channel is fitted as an affine function of luminance (0 for a grey film scanned with any tint or
    #: colour cast, large for a colour photograph). See :func:`medrobust.imaging.colour_measures`.
    colour_beyond_tint: float = 0.0
