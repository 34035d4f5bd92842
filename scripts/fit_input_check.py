"""Fit the shipped input check and measure it on in-scope and out-of-scope images.

    python scripts/fit_input_check.py --data ../shared/data/covid-chestxray --data ../shared/data/actualmed

Fits :func:`medrobust.input_check.fit_input_check` with the shipped standard model as the feature model on
its TRAINING patients, sets the thresholds on its VALIDATION patients, and writes
``checkpoints/input_check.safetensors`` + ``checkpoints/input_check.json``. Then it measures, through
:func:`medrobust.input_check.check_decoded` on PNG bytes decoded by :func:`medrobust.imaging.decode_image`
(exactly the path of an upload):

* the pass rate of the TEST patients' frontal X-rays (never used for fitting or thresholds), and
* the flag rate of an out-of-scope set built here from what is on the machine (see :func:`out_of_scope`;
  each category says how it was made). The set only measures: nothing is fitted or tuned on it.

The table goes to stdout, to the card (``measured``) and, with ``--readme``, into ``benchmarks/README.md``.
No image is written to disk: the X-rays are licensed per image.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- out-of-scope set


@dataclass(frozen=True)
class Category:
    """One row of the table: a name, how its images were made, and the images as PNG bytes."""

    name: str
    how: str
    images: list[bytes]


def png(arr: np.ndarray) -> bytes:
    """A [0, 1] float (H, W) or (H, W, 3) array, or a uint8 one, as PNG bytes (8-bit L or RGB)."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGBA" if a.shape[2] == 4 else "RGB")
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    u8 = a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(u8).resize((max(1, w), max(1, h)), Image.Resampling.BILINEAR))


def _grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    return a / 255.0 if a.max(initial=0) > 1.0 else a


def photographs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Natural images that ship with scikit-image / scikit-learn (no download): (colour, grey)."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    colour = {n: np.asarray(getattr(skd, n)())[..., :3] for n in
              ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
               "retina", "colorwheel", "logo")}
    left, right, _ = skd.stereo_motorcycle()
    colour["motorcycle_left"], colour["motorcycle_right"] = left, right
    china, flower = load_sample_images().images
    colour["china"], colour["flower"] = china, flower
    grey = {n: np.asarray(getattr(skd, n)()) for n in
            ("camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel", "cell")}
    grey["horse"] = np.asarray(skd.horse(), dtype=np.uint8) * 255
    return colour, grey


def _crops(images: dict[str, np.ndarray], n: int, rng: np.random.Generator, *, grey: bool) -> list[bytes]:
    """Each image whole, then random crops (40-100 % of each side) rescaled to a short side of 160-600 px."""
    out = [png(_grey(a) if grey else a) for a in images.values()]
    names = list(images)
    while len(out) < n:
        a = images[names[int(rng.integers(len(names)))]]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = a[y : y + ch, x : x + cw]
        short = int(rng.integers(160, 601))
        s = short / min(ch, cw)
        crop = _resize(crop, int(ch * s), int(cw * s))
        out.append(png(_grey(crop) if grey else crop))
    return out


def _uniform(n: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for i in range(n):
        h, w = int(rng.integers(128, 600)), int(rng.integers(128, 600))
        level = rng.uniform(0.0, 1.0) if i % 3 else float(i % 2)
        kind = i % 4
        if kind == 0:  # a constant level
            a = np.full((h, w), level)
        elif kind == 1:  # a gentle linear gradient (a range of 2-15 % of full scale) in a random direction
            yy, xx = np.mgrid[0:h, 0:w]
            t = np.cos(rng.uniform(0, 2 * np.pi)) * xx / w + np.sin(rng.uniform(0, 2 * np.pi)) * yy / h
            a = level + rng.uniform(0.02, 0.15) * (t - t.mean())
        elif kind == 2:  # a constant plus slight Gaussian noise (sd 0.5-3 %)
            a = level + rng.uniform(0.005, 0.03) * rng.standard_normal((h, w))
        else:  # a gentle radial vignette
            yy, xx = np.mgrid[0:h, 0:w]
            r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
            a = level + rng.uniform(0.02, 0.15) * (0.5 - r)
        out.append(png(a))
    return out


def _noise(n: int, rng: np.random.Generator) -> list[bytes]:
    from scipy.ndimage import gaussian_filter

    out = []
    for i in range(n):
        h, w = int(rng.integers(128, 600)), int(rng.integers(128, 600))
        kind = i % 5
        if kind == 0:
            a = rng.uniform(0, 1, (h, w))
        elif kind == 1:
            a = rng.uniform(0.3, 0.7) + rng.uniform(0.05, 0.3) * rng.standard_normal((h, w))
        elif kind == 2:  # salt-and-pepper on a mid-grey or random level
            a = np.full((h, w), rng.uniform(0.2, 0.8))
            m = rng.uniform(size=(h, w))
            p = rng.uniform(0.05, 0.4)
            a[m < p / 2], a[m > 1 - p / 2] = 0.0, 1.0
        elif kind == 3:  # blurred white noise (sigma 1-12 px), stretched to the full range
            a = gaussian_filter(rng.standard_normal((h, w)), rng.uniform(1, 12))
            a = (a - a.min()) / (np.ptp(a) + 1e-12)
        else:  # colour noise
            a = rng.uniform(0, 1, (h, w, 3))
        out.append(png(a))
    return out


def _tiny(n: int, rng: np.random.Generator, xrays: list[np.ndarray]) -> list[bytes]:
    """1x1 .. 48x48: noise, constants and X-rays shrunk to that size."""
    out = []
    sides = [1, 2, 3, 4, 8, 12, 16, 24, 32, 40, 48]
    for i in range(n):
        s = sides[i % len(sides)]
        h, w = s, max(1, int(round(s * rng.uniform(0.8, 1.25))))
        kind = i % 3
        if kind == 0:
            a = rng.uniform(0, 1, (h, w))
        elif kind == 1:
            a = np.full((h, w), rng.uniform())
        else:
            a = _resize(xrays[int(rng.integers(len(xrays)))], h, w)
        out.append(png(a))
    return out


def _crop_zoom(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 25-35 % (of each side) crop at a corner or the centre, scaled back up to the original size."""
    h, w = x.shape
    f = rng.uniform(0.25, 0.35)
    ch, cw = max(2, int(h * f)), max(2, int(w * f))
    where = int(rng.integers(5))
    y = [0, 0, h - ch, h - ch, (h - ch) // 2][where]
    xx = [0, w - cw, 0, w - cw, (w - cw) // 2][where]
    return _resize(x[y : y + ch, xx : xx + cw], h, w)


def _pad(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The X-ray scaled to 25-40 % of a black or white canvas 1.0-1.3x its size, at a random place."""
    h, w = x.shape
    H, W = int(h * rng.uniform(1.0, 1.3)), int(w * rng.uniform(1.0, 1.3))
    f = rng.uniform(0.25, 0.40)
    sh, sw = max(4, int(H * f)), max(4, int(W * f * w / h * H / W))
    small = _resize(x, sh, sw) / 255.0
    canvas = np.full((H, W), float(rng.integers(2)))
    y, xx = int(rng.integers(0, H - sh + 1)), int(rng.integers(0, W - sw + 1))
    canvas[y : y + sh, xx : xx + sw] = small
    return canvas


def _screenshot(i: int, rng: np.random.Generator, xrays: list[np.ndarray]) -> np.ndarray:
    """A PIL-drawn window: title bar, buttons, lines of text, on a light or dark theme; every other one
    with a small X-ray inset (20-40 % of the width)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H = int(rng.integers(480, 1000)), int(rng.integers(320, 700))
    dark = bool(rng.integers(2))
    bg = (30, 30, 34) if dark else (245, 245, 245)
    fg = (220, 220, 220) if dark else (20, 20, 20)
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    accent = tuple(int(c) for c in rng.integers(0, 256, 3)) if i % 4 else (128, 128, 128)
    d.rectangle([0, 0, W, 28], fill=accent)
    font = ImageFont.load_default(size=int(rng.integers(12, 22)))
    d.text((8, 6), "Patient viewer  -  report.pdf", fill=(255, 255, 255), font=font)
    x0 = 10
    if i % 2:
        xr = xrays[int(rng.integers(len(xrays)))]
        iw = int(W * rng.uniform(0.2, 0.4))
        ih = int(iw * xr.shape[0] / xr.shape[1])
        inset = Image.fromarray(_resize(xr, ih, iw)).convert("RGB")
        img.paste(inset, (10, 40))
        x0 = 20 + iw
    words = ("Findings impression bilateral opacities lung zones consolidation effusion heart size normal "
             "clinical history cough fever follow up recommended compared prior study no acute").split()
    y = 40
    while y < H - 30:
        line = " ".join(rng.choice(words, int(rng.integers(3, 9))))
        d.text((x0, y), line, fill=fg, font=font)
        y += int(font.size * 1.6)
    for b in range(int(rng.integers(1, 4))):
        bx = W - 90 * (b + 1)
        d.rounded_rectangle([bx, H - 26, bx + 80, H - 6], radius=5, fill=accent)
        d.text((bx + 10, H - 24), "OK" if b == 0 else "Cancel", fill=(255, 255, 255), font=font)
    return np.asarray(img)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-12)


def _bone(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], width: float, level: float) -> None:
    """Draw a bone from p0 to p1 (y, x): a bright shaft with a brighter cortex and knobbly ends."""
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    L2 = dy * dy + dx * dx + 1e-9
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / L2, 0, 1)
    dist = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
    wid = width * (1 + 0.5 * (np.abs(t - 0.5) * 2) ** 4)  # wider at the ends (epiphyses)
    inside = dist < wid
    cortex = inside & (dist > 0.6 * wid)
    canvas[inside] = np.maximum(canvas[inside], level * 0.8)
    canvas[cortex] = np.maximum(canvas[cortex], level)


def _other_body_part(i: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic radiograph-like images of other body parts (drawn here; none is a real radiograph).

    hand: five digits of three phalanges plus metacarpals in a soft-tissue envelope; long bone: one or two
    shafts (femur/tibia-like) with a joint; skull: a bright elliptical vault with a jaw; phantom:
    scikit-image's Shepp-Logan head phantom. All on a dark background, blurred, with noise and film grain.
    """
    from scipy.ndimage import gaussian_filter, rotate
    from skimage.data import shepp_logan_phantom

    S = int(rng.integers(256, 512))
    a = np.full((S, S), rng.uniform(0.02, 0.12))
    kind = i % 4
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    if kind == 0:  # hand
        cy, cx = S * 0.7, S * 0.5
        palm = ((yy - cy) / (S * 0.2)) ** 2 + ((xx - cx) / (S * 0.18)) ** 2 < 1
        a[palm] = 0.3
        for f in range(5):
            ang = np.deg2rad(-40 + f * 20 + rng.uniform(-5, 5))
            base = (cy - S * 0.1, cx + (f - 2) * S * 0.07)
            length = S * rng.uniform(0.12, 0.18)
            prev = base
            for seg in range(4):
                nxt = (prev[0] - length * math.cos(ang) * (0.9 if seg else 1.3), prev[1] + length * math.sin(ang))
                _bone(a, prev, nxt, S * 0.014 * (1.3 if seg == 0 else 1.0), rng.uniform(0.6, 0.9))
                prev = (nxt[0] - S * 0.01 * math.cos(ang), nxt[1] + S * 0.01 * math.sin(ang))
                length *= 0.75
        for f in range(5):  # metacarpals
            _bone(a, (cy + S * 0.15, cx + (f - 2) * S * 0.035), (cy - S * 0.1, cx + (f - 2) * S * 0.07),
                  S * 0.015, rng.uniform(0.6, 0.9))
    elif kind == 1:  # long bones with a joint
        a[((xx - S / 2) / (S * 0.22)) ** 2 < 1] = 0.28  # the limb's soft tissue
        _bone(a, (S * 0.02, S * rng.uniform(0.42, 0.58)), (S * 0.48, S * 0.5), S * rng.uniform(0.05, 0.08), 0.85)
        _bone(a, (S * 0.52, S * 0.5), (S * 0.98, S * rng.uniform(0.42, 0.58)), S * rng.uniform(0.04, 0.07), 0.8)
        if rng.integers(2):
            _bone(a, (S * 0.55, S * 0.62), (S * 0.98, S * 0.64), S * 0.02, 0.7)  # fibula
    elif kind == 2:  # skull
        cy, cx = S * 0.45, S * 0.5
        ry, rx = S * rng.uniform(0.32, 0.4), S * rng.uniform(0.26, 0.34)
        r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
        a[r < 1.0] = 0.75
        a[r < 0.93] = 0.35 + 0.08 * _smooth_noise((S, S), rng, 6)[r < 0.93]
        jaw = (np.hypot((yy - S * 0.72) / (S * 0.15), (xx - cx) / (S * 0.22)) < 1) & (yy > S * 0.72)
        a[jaw] = 0.7
        orbit = lambda ox: np.hypot((yy - S * 0.5) / (S * 0.06), (xx - ox) / (S * 0.07)) < 1  # noqa: E731
        a[orbit(cx - S * 0.12) | orbit(cx + S * 0.12)] = 0.2
    else:  # Shepp-Logan phantom, scaled, rotated
        ph = shepp_logan_phantom()
        ph = _resize(ph, int(S * rng.uniform(0.6, 1.0)), int(S * rng.uniform(0.6, 1.0))) / 255.0
        ph = rotate(ph, rng.uniform(-30, 30), reshape=False, order=1)
        y, x = (S - ph.shape[0]) // 2, (S - ph.shape[1]) // 2
        a[y : y + ph.shape[0], x : x + ph.shape[1]] = np.maximum(a[y : y + ph.shape[0], x : x + ph.shape[1]], ph)
    if kind != 3 and rng.integers(2):
        a = rotate(a, rng.uniform(-25, 25), reshape=False, order=1, mode="nearest")
    a = gaussian_filter(a, rng.uniform(0.8, 2.5)) + rng.uniform(0.01, 0.04) * rng.standard_normal((S, S))
    a += 0.04 * _smooth_noise((S, S), rng, 20)
    return np.clip(a, 0, 1)


def out_of_scope(xrays: list[np.ndarray], *, seed: int, n_synthetic: int = 60) -> list[Category]:
    """The out-of-scope set, with how each category was made.

    Parameters
    ----------
    xrays
        Grey (H, W) float arrays in [0, 1] of X-rays the check was never fitted on (the test patients' for the
        report), decoded at their stored resolution; the transformed categories derive from them.
    seed
        Seeds every random choice (crops, sizes, noise).
    n_synthetic
        Images per synthetic category (photographs, uniform, noise, tiny, screenshots, other body parts).
    """
    rng = np.random.default_rng(seed)
    colour, grey = photographs()
    grey_all = {**grey, **{f"{k} (grey)": _grey(v) for k, v in colour.items()}}
    cats = [
        Category("photo, colour", f"{len(colour)} colour photographs of scikit-image/scikit-learn (astronaut, coffee, "
                 "chelsea, rocket, hubble, immunohistochemistry, retina, colour wheel, logo, motorcycle x2, china, "
                 "flower) + random crops (40-100 % per side) rescaled to a short side of 160-600 px",
                 _crops(colour, n_synthetic, rng, grey=False)),
        Category("photo, grey", "the same colour photographs converted to grey, plus scikit-image's grey ones (camera, "
                 "coins, moon, page, text, clock, brick, grass, gravel, cell, horse) + random crops/rescales",
                 _crops(grey_all, n_synthetic, rng, grey=True)),
        Category("near-uniform", "constant levels (incl. black and white), gentle gradients (2-15 % range), "
                 "constant + slight noise (sd 0.5-3 %), gentle vignettes; 128-600 px", _uniform(n_synthetic, rng)),
        Category("noise", "uniform, Gaussian, salt-and-pepper, blurred (sigma 1-12 px) and colour noise; 128-600 px",
                 _noise(n_synthetic, rng)),
        Category("tiny (1-48 px)", "1x1 .. 48x48: noise, constants and X-rays shrunk to that size",
                 _tiny(n_synthetic, rng, xrays)),
        Category("X-ray rotated 90°", "held-out X-rays rotated 90° counter-clockwise", [png(np.rot90(x, 1)) for x in xrays]),
        Category("X-ray rotated 180°", "held-out X-rays rotated 180°", [png(np.rot90(x, 2)) for x in xrays]),
        Category("X-ray rotated 270°", "held-out X-rays rotated 270° counter-clockwise", [png(np.rot90(x, 3)) for x in xrays]),
        Category("X-ray inverted", "held-out X-rays with inverted polarity (1 - x: bones dark, lungs white)",
                 [png(1.0 - x) for x in xrays]),
        Category("X-ray cropped", "a 25-35 % (per side) corner or central crop of each held-out X-ray, scaled up",
                 [png(_crop_zoom(x, rng)) for x in xrays]),
        Category("X-ray padded", "each held-out X-ray at 25-40 % of a black or white canvas",
                 [png(_pad(x, rng)) for x in xrays]),
        Category("screenshot", "PIL-drawn windows (title bar, buttons, report text; light/dark theme); half with a "
                 "small held-out X-ray inset (20-40 % of the width)",
                 [png(_screenshot(i, rng, xrays)) for i in range(n_synthetic)]),
        Category("other body part", "synthetic radiograph-like drawings, not real radiographs: hands (digits, "
                 "metacarpals), long bones with a joint, skulls with jaw and orbits, and scikit-image's Shepp-Logan "
                 "head phantom; blurred, noisy", [png(_other_body_part(i, rng)) for i in range(n_synthetic)]),
    ]
    return cats
