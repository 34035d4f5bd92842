"""What the Stress test keeps per browser session, through Streamlit's own caches (only the page imports this).

A slider move reruns only the page's panel (an ``st.fragment``); what the panel needs from the rest of the page comes
from these caches, each keyed by what its result depends on, so nothing is computed twice for one visitor:

* :func:`decoded_upload`: the decoded upload, once per file (Streamlit's file id);
* :func:`clean_analysis`: every model's clean prediction and Grad-CAM, once per (image, models, Grad-CAM layer);
* :func:`outcomes`: every model's answer and Grad-CAM on the perturbed image, per (image, models, layer,
  perturbation, true class): going back to an earlier setting costs nothing;
* :func:`card_tiles`, :func:`clean_cam_tile` and :func:`preview_tile`: the encoded pictures, so an unchanged
  picture (a clean Grad-CAM when only the perturbation moves) is not drawn or encoded again.

They are ``st.cache_resource(scope="session")``: the objects are shared read-only within the session (never copied
or pickled) and dropped when the session disconnects, so one visitor's upload never reaches another's page and the
server's memory does not grow with past visitors. The shipped example X-rays are public and the same for everyone:
:func:`decoded_example` is process-wide.

The functions look the computations up on their modules at call time (``clean_analysis.analyse_clean``), so a test
can count them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import streamlit as st

from medrobust.dashboard import clean_analysis as _clean
from medrobust.dashboard import stress_run, tiles
from medrobust.dashboard.clean_analysis import CleanState
from medrobust.dashboard.modelset import ModelSet
from medrobust.dashboard.perturbation import Perturbation
from medrobust.dashboard.stress_run import Outcome
from medrobust.image_types import DecodedImage
from medrobust.input_check import InputCheck, InputVerdict, check_decoded

#: The size (CSS pixels) a card's picture takes on screen: four cards side by side, two pictures per row, in the wide
#: layout of a 1280-1920 px window. Pictures are encoded at the model's own resolution enlarged to about this size.
TILE_PX = 160
#: The small preview of the model input beside the controls.
PREVIEW_PX = 128


@dataclass(frozen=True)
class HeldImage:
    """A decoded image and its content hash, or why the file could not be used.

    A session holds its image for as long as it stays, so the pixels are kept as the integers they were decoded from
    where that is exact (an 8-bit file: a quarter of the float32 memory, 0.75 MB less per visitor for a 512 px upload);
    :attr:`decoded` gives them back as float32, bit for bit what the decoder returned. The caches below take the held
    image and ask for the float32 pixels only when they compute; :attr:`stored` answers everything else (format, bit
    depth, size, note).
    """

    stored: DecodedImage | None
    digest: str = ""
    error: str | None = None
    #: ``stored.pixels`` are integers to divide by this (255 or 65535); 0: they are the float32 pixels themselves.
    scale: float = 0.0

    @property
    def decoded(self) -> DecodedImage | None:
        """The decoded image, float32 pixels in [0, 1]."""
        if self.stored is None or not self.scale:
            return self.stored
        return replace(self.stored, pixels=_as_float(self.stored.pixels, self.scale))


@functools.lru_cache(maxsize=2)
def _levels(scale: float) -> np.ndarray:
    """The float32 pixel of every integer level: the decoder divides in float64, then rounds to float32."""
    return (np.arange(int(scale) + 1, dtype=np.float64) / scale).astype(np.float32)


def _as_float(q: np.ndarray, scale: float) -> np.ndarray:
    """Integer levels back to the decoder's float32 pixels (a table lookup: no float64 copy of the image)."""
    return _levels(scale)[q]


def _compact(decoded: DecodedImage, digest: str) -> HeldImage:
    """``decoded`` held with 8- or 16-bit integer pixels where they give back exactly its pixels, else as it is."""
    for scale, dtype in ((255.0, np.uint8), (65535.0, np.uint16)):
        q = np.rint(decoded.pixels.astype(np.float64) * scale).astype(dtype)
        if np.array_equal(_as_float(q, scale), decoded.pixels):
            return HeldImage(replace(decoded, pixels=q), digest=digest, scale=scale)
    return HeldImage(decoded, digest=digest)


def _held(data: bytes) -> HeldImage:
    from medrobust.imaging import ImageDecodeError, decode_image

    try:
        decoded = decode_image(data)
    except ImageDecodeError as exc:
        return HeldImage(None, error=str(exc))
    except Exception:  # noqa: BLE001 - never let a hostile file take the page down
        return HeldImage(None, error="The file could not be read as an image.")
    return _compact(decoded, _clean.image_digest(decoded.pixels))


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def decoded_upload(*, file_id: str, _upload: Any) -> HeldImage:
    """The upload ``_upload`` (a Streamlit ``UploadedFile``) decoded, once per ``file_id`` in this session."""
    return _held(_upload.getvalue())


@st.cache_resource(max_entries=16, show_spinner=False)
def decoded_example(*, file: str, _data: bytes) -> HeldImage:
    """A shipped example X-ray (``file``, its bytes ``_data``) decoded, once per process: it is public."""
    return _held(_data)


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def input_verdict(*, source_id: str, checker_id: str, _image: HeldImage, _checker: InputCheck | None,
                  ) -> InputVerdict:
    """The input check of the image ``source_id`` (see :func:`medrobust.input_check.check_decoded`)."""
    del checker_id  # only part of the cache key
    return check_decoded(_image.decoded, checker=_checker)


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def clean_analysis(*, source_id: str, set_key: tuple, cam_layer: str, _model_set: ModelSet,
                   _image: HeldImage) -> CleanState:
    """Every model's clean prediction and Grad-CAM of the image ``source_id``, once per (image, models, layer)."""
    del set_key  # only part of the cache key
    return _clean.analyse_clean(_model_set, _image.decoded.pixels, cam_layer=cam_layer)


#: A set of outcomes holds each model's pictures at its own size (about 1.3 MB for four 128 px models): the current
#: setting and the one before it per session (100 sessions x 3 predictions peaked at 1.77 GiB RSS with four each).
@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def outcomes(*, clean_key: tuple, pert: Perturbation, true_label: str | None, with_cam: bool, _model_set: ModelSet,
             _clean: CleanState) -> list[Outcome]:
    """Every model's answer (and, ``with_cam``, its Grad-CAM) under ``pert``, once per (image, models, layer,
    perturbation, true class, Grad-CAM or not)."""
    del clean_key  # only part of the cache key
    return stress_run.run_stress(_model_set, _clean, pert, true_class=true_label, with_cam=with_cam)


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def card_tiles(*, clean_key: tuple, outcome_key: tuple, _outcomes: Sequence[Outcome]) -> list[dict[str, bytes]]:
    """The encoded pictures of every card (:func:`medrobust.dashboard.tiles.card_tiles`), once per outcome set; the
    clean Grad-CAM tiles once per image (:func:`clean_cam_tile`)."""
    del outcome_key  # only part of the cache key
    vmax = tiles.shared_delta_scale(_outcomes)
    return [tiles.card_tiles(o, vmax=vmax, target=TILE_PX,
                             cam_clean=clean_cam_tile(clean_key=clean_key, name=o.name, _outcome=o)) if o.ok
            else {} for o in _outcomes]


@st.cache_resource(scope="session", max_entries=8, show_spinner=False)
def clean_cam_tile(*, clean_key: tuple, name: str, _outcome: Outcome) -> bytes:
    """Model ``name``'s clean Grad-CAM tile of the image behind ``clean_key``: unchanged by the perturbation."""
    return tiles.encode_tile(tiles.clean_cam_image(_outcome, target=TILE_PX))


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def preview_tile(*, source_id: str, size: int, _image: HeldImage) -> bytes:
    """The model input of image ``source_id`` at ``size`` px, encoded for the preview beside the controls."""
    x = _clean.prepare_input(_image.decoded.pixels, size)[0, 0].numpy()
    return tiles.encode_tile(tiles.upscale(tiles.grey_rgb(x), tiles.display_factor(size, PREVIEW_PX)), grey=True)


@st.cache_resource(scope="session", max_entries=2, show_spinner=False)
def decoded_sample(*, path: str) -> HeldImage:
    """A test-split image read from ``path`` and decoded, once per image in this session."""
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return HeldImage(None, error=str(exc))
    return _held(data)


@st.cache_resource(max_entries=32, show_spinner=False)
def flip_figure(*, rows: tuple[tuple[str, str, float | None], ...], max_eps: float) -> Any:
    """The chart of the smallest flipping radii ((name, colour, eps) per model), built once per set of results."""
    from medrobust.dashboard import plots

    return plots.flip_eps_figure(list(rows), max_eps=max_eps)
