"""The pictures of a model card (NumPy only): the input, the perturbation and the Grad-CAM overlays, as RGB, and
the caption of each Grad-CAM tile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from medrobust.dashboard.stress_run import Outcome


_CAM_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                         [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)  # inferno
_DIV_ANCHORS = np.array([[5, 48, 97], [67, 147, 195], [209, 229, 240], [247, 247, 247], [253, 219, 199],
                         [214, 96, 77], [103, 0, 31]], dtype=np.float64)  # RdBu reversed (blue = darker)


def _colormap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(v).astype(int).clip(0, len(anchors) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * anchors[lo] + t * anchors[lo + 1]).round().astype(np.uint8)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so the model's pixels stay visible as pixels."""
    factor = max(1, int(factor))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def display_factor(size: int, target: int = 256) -> int:
    return max(1, int(round(target / max(size, 1))))


def grey_rgb(x: np.ndarray) -> np.ndarray:
    g = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def diverging_rgb(delta: np.ndarray, vmax: float) -> np.ndarray:
    """Signed perturbation on a diverging scale: white = unchanged, red = brighter, blue = darker."""
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    return _colormap(0.5 + 0.5 * np.asarray(delta, dtype=np.float64) / vmax, _DIV_ANCHORS)


def cam_is_flat(cam: np.ndarray | None) -> bool:
    """A Grad-CAM with no spatial information (absent, all zero, or uniform)."""
    return cam is None or float(np.ptp(cam)) < 1e-6


def cam_overlay(x: np.ndarray, cam: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """The image in grey with the Grad-CAM heat map (inferno) blended on top."""
    base = grey_rgb(x).astype(np.float64)
    if cam_is_flat(cam):  # no spatial information to show
        return base.astype(np.uint8)
    heat = _colormap(cam, _CAM_ANCHORS).astype(np.float64)
    a = alpha * np.clip(cam, 0, 1)[..., None]
    return ((1 - a) * base + a * heat).round().clip(0, 255).astype(np.uint8)


def shared_delta_scale(outcomes: Sequence[Outcome]) -> float:
    """One colour scale for all cards: the largest |perturbation| over the models (0 if none)."""
    vals = [float(np.abs(o.delta).max()) for o in outcomes if o.ok and o.delta is not None]
    return max(vals, default=0.0)


def card_images(o: Outcome, *, vmax: float, target: int = 256, with_clean_cam: bool = True) -> dict[str, np.ndarray]:
    """The RGB pictures of one model card, enlarged for display (the model's pixels, not the upload's).

    When the model saw its input unchanged (no perturbation, or one of size 0) there is no perturbation to draw and
    the perturbed map would repeat the clean one: only ``perturbed`` (the input) and ``cam_clean`` are returned.
    ``cam_perturbed`` is left out too when the outcome holds no perturbed map (run without Grad-CAM).
    ``with_clean_cam=False`` leaves ``cam_clean`` out (it depends on the image only: :func:`clean_cam_image`).
    """
    f = display_factor(o.image_size, target)
    out = {"perturbed": upscale(grey_rgb(o.x_pert), f)}
    if input_changed(o):
        out["perturbation"] = upscale(diverging_rgb(o.delta, vmax), f)
    if with_clean_cam:
        out["cam_clean"] = clean_cam_image(o, target=target)
    if input_changed(o) and o.cam_pert is not None:  # None: the perturbed input's Grad-CAM was not asked for
        out["cam_perturbed"] = upscale(cam_overlay(o.x_pert, o.cam_pert), f)
    return out


def clean_cam_image(o: Outcome, *, target: int = 256) -> np.ndarray:
    """The clean image's Grad-CAM overlay of one card, enlarged for display: the same whatever the perturbation."""
    return upscale(cam_overlay(o.x_clean, o.cam_clean), display_factor(o.image_size, target))


def input_changed(o: Outcome) -> bool:
    """Whether the perturbation changed any pixel the model saw (if not, its maps and answer are the clean ones)."""
    return o.delta is not None and bool(np.any(o.delta != 0))


def magnification(vmax: float) -> float:
    """How much the perturbation picture amplifies the change (the largest change spans the scale)."""
    return 1.0 / vmax if vmax > 0 else 1.0


def cam_caption(o: "Outcome", which: str, flat: bool = False) -> str:
    """The caption of one Grad-CAM tile: the class it explains and which input ("clean" / "perturbed" / "")."""
    idx = o.clean_pred if which in ("clean", "") else o.pred
    cls = o.classes[idx] if 0 <= idx < len(o.classes) else "?"
    where = {"clean": ", clean input", "perturbed": ", perturbed input", "": ""}[which]
    return f"Grad-CAM for {cls}{where}" + (" (flat: the map marks no region)" if flat else "")


#: JPEG at quality 90 without chroma subsampling: a card's sixteen pictures at 128 px are 155 KiB and take 3 ms to
#: encode here, against 934 KiB (JPEG quality 100 at 256 px, Streamlit's encoding of an array) or 50 ms (PNG).
TILE_QUALITY = 90


def encode_tile(rgb: np.ndarray, *, grey: bool = False) -> bytes:
    """One picture (H, W, 3) uint8 as JPEG bytes; ``grey`` (all three channels equal) stores one channel."""
    import io

    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb[..., 0] if grey else rgb))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=TILE_QUALITY, subsampling=0)
    return buf.getvalue()


def card_tiles(o: "Outcome", *, vmax: float, target: int, cam_clean: bytes | None = None) -> dict[str, bytes]:
    """:func:`card_images` encoded for the screen (:func:`encode_tile`), enlarged to about ``target`` px; the clean
    Grad-CAM tile is ``cam_clean`` when given (encoded once per image), else encoded here."""
    tiles = {name: encode_tile(rgb, grey=name == "perturbed")
             for name, rgb in card_images(o, vmax=vmax, target=target, with_clean_cam=cam_clean is None).items()}
    if cam_clean is not None:
        tiles["cam_clean"] = cam_clean
    return tiles
