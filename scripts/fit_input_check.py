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
import math
import sys
import time
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


# ----------------------------------------------------------------------------- measuring


def _file_stats(paths: list[str]) -> dict[str, float]:
    """What the cheap checks look at, over the given files decoded as an upload would be."""
    from medrobust.imaging import decode_image
    from medrobust.input_check import grey_spread

    rows = []
    for p in paths:
        with open(p, "rb") as fh:
            d = decode_image(fh.read())
        h, w = d.pixels.shape
        rows.append((min(h, w), max(h, w) / min(h, w), d.colourfulness, d.colour_beyond_tint, grey_spread(d.pixels)))
    a = np.asarray(rows)
    return {"n": len(rows), "min_side": int(a[:, 0].min()), "max_aspect": round(float(a[:, 1].max()), 3),
            "max_colourfulness": round(float(a[:, 2].max()), 2), "max_colour_beyond_tint": round(float(a[:, 3].max()), 2),
            "min_spread": round(float(a[:, 4].min()), 3)}


def _rate_row(name: str, how: str, verdicts: list, *, in_scope: bool) -> dict:
    from collections import Counter

    n = len(verdicts)
    hit = sum(v.ok for v in verdicts) if in_scope else sum(not v.ok for v in verdicts)
    codes = Counter(c for v in verdicts for c in v.codes if c != "no_learned_check")
    return {"category": name, "n": n, "rate": hit / n if n else math.nan, "measure": "pass" if in_scope else "flagged",
            "codes": dict(codes.most_common()), "how": how}


def _table(rows: list[dict]) -> str:
    out = ["| category | n | measure | rate | target | codes that fired (images) | how it was made |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "" if r.get("target") is None else f">= {r['target']:.0%}"
        codes = ", ".join(f"{k} {v}" for k, v in r["codes"].items())
        out.append(f"| {r['category']} | {r['n']} | {r['measure']} | {r['rate']:.1%} | {target} | {codes} | {r['how']} |")
    return "\n".join(out)


README_START = "<!-- input-check:start -->"
README_END = "<!-- input-check:end -->"


def _write_readme(path: Path, text: str) -> None:
    body = path.read_text()
    block = f"{README_START}\n{text.rstrip()}\n{README_END}"
    if README_START in body and README_END in body:
        head, rest = body.split(README_START, 1)
        body = head + block + rest.split(README_END, 1)[1]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    path.write_text(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", type=Path, required=True, help="data folder(s) of the checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None, help="feature model (default: <checkpoints>/standard.safetensors)")
    p.add_argument("--out", type=Path, default=None, help="stem of the two files (default: <checkpoints>/input_check)")
    p.add_argument("--pass-rate", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0, help="seeds the fit's augmentations")
    p.add_argument("--ood-seed", type=int, default=0, help="seeds the out-of-scope set")
    p.add_argument("--n-synthetic", type=int, default=60, help="images per synthetic out-of-scope category")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--readme", type=Path, default=None, help="write the table into this markdown file")
    args = p.parse_args(argv)

    import torch

    from medrobust import settings
    from medrobust.checkpoints import image_size_of, load_checkpoint
    from medrobust.data import load_dataset, split_from_info
    from medrobust.imaging import decode_image, to_square
    from medrobust.input_check import DEFAULT_LIMITS, InputCheck, check_decoded, fit_input_check

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or settings.checkpoints_dir() / "standard.safetensors"
    out = args.out or settings.checkpoints_dir() / "input_check"
    model, card = load_checkpoint(ckpt)
    size = image_size_of(card, name=ckpt.name)
    if not (card.get("split") or {}).get("train_patients"):
        print(f"fit_input_check: {ckpt.name}'s card lists no split; fit it with fit_input_check() on your own split.",
              file=sys.stderr)
        return 2
    data = load_dataset(args.data, image_size=size, progress=True)
    split = split_from_info(data.records, card["split"])
    if card["split"].get("hash") and split.hash != card["split"]["hash"]:
        print(f"fit_input_check: these data give split {split.hash}, not the card's {card['split']['hash']}.",
              file=sys.stderr)
        return 2
    # Training X-rays at 4x the model's size, so the zoomed crops the orientation classifier learns from
    # are as sharp as a crop of a full-size upload (at the model's size they would be blurry).
    big = load_dataset(args.data, image_size=4 * size, progress=True)
    train = big.subset(split.images["train"]).images
    val = data.subset(split.images["val"]).images
    path = {r.key: r.path for r in data.records}

    print("cheap-check statistics of the files (decoded as uploads):")
    evidence = {part: _file_stats([path[k] for k in split.images[part]]) for part in ("train", "val", "test")}
    for part, st in evidence.items():
        print(f"  {part:5s} {st}")
    print(f"  limits {DEFAULT_LIMITS}")

    t0 = time.perf_counter()
    checker = fit_input_check(feature_model=model, card=card, train_images=train, val_images=val,
                              pass_rate=args.pass_rate, seed=args.seed, progress=True)
    fit_s = time.perf_counter() - t0
    arrays, card_file = checker.save(out)
    checker = InputCheck.load(card_file, feature_model_path=ckpt)  # exactly what the dashboard will load
    print(f"fitted in {fit_s:.0f} s: threshold {checker.threshold:.3f} (Gaussian {checker.card['threshold_gaussian']:.3f}, "
          f"validation quantile {checker.card['threshold_empirical']:.3f}); validation pass rate "
          f"{checker.card['val_pass_rate']:.1%}; wrote {arrays} ({arrays.stat().st_size / 1e6:.2f} MB) and {card_file}")

    def uploads(keys: list[str]) -> list[bytes]:
        blobs = []
        for k in keys:
            with open(path[k], "rb") as fh:
                blobs.append(fh.read())
        return blobs

    def run(blobs: list[bytes]) -> list:
        return [check_decoded(decode_image(b), checker=checker) for b in blobs]

    test_files = uploads(split.images["test"])
    t0 = time.perf_counter()
    test_verdicts = run(test_files)
    per_upload_ms = (time.perf_counter() - t0) / len(test_files) * 1e3
    rows = [dict(_rate_row("test patients' frontal X-rays", "the TEST patients' original files (JPEG/PNG) as uploaded",
                           test_verdicts, in_scope=True), target=0.98),
            dict(_rate_row("validation patients' X-rays", "the VALIDATION patients' files (they set the threshold)",
                           run(uploads(split.images["val"])), in_scope=True), target=None)]
    test_pixels = [decode_image(b).pixels for b in test_files]
    rows.append(dict(_rate_row("test X-rays mirrored (in scope)", "the test X-rays flipped left-right (the models "
                               "were trained with such flips)", run([png(x[:, ::-1]) for x in test_pixels]),
                               in_scope=True), target=None))
    for cat in out_of_scope(test_pixels, seed=args.ood_seed, n_synthetic=args.n_synthetic):
        rows.append(dict(_rate_row(cat.name, cat.how, run(cat.images), in_scope=False), target=0.95))

    # timing of the learned check alone, one image at a time and in a batch of 32
    x = torch.stack([to_square(px, size=checker.image_size) for px in test_pixels[:32]])
    checker.check_images(x[:1])
    times = []
    for i in range(32):
        t0 = time.perf_counter()
        checker.check_images(x[i : i + 1])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    checker.check_images(x)
    batch_ms = (time.perf_counter() - t0) / 32 * 1e3
    timing = {"learned_one_image_median_ms": float(np.median(times) * 1e3), "learned_batch32_per_image_ms": batch_ms,
              "upload_decode_and_all_checks_ms": per_upload_ms, "threads": args.threads}

    table = _table(rows)
    print(table)
    print(f"timing ({args.threads} thread): {timing}")
    checker.card["measured"] = {"rows": rows, "timing": timing, "ood_seed": args.ood_seed,
                                "cheap_limit_evidence": evidence,
                                "command": "python scripts/fit_input_check.py " + " ".join(
                                    f"--data {d}" for d in args.data)}
    checker.save(out)
    if args.readme:
        rel = lambda r: r["rate"]  # noqa: E731
        misses = [r["category"] for r in rows if r.get("target") and rel(r) < r["target"]]
        text = (
            "## Input check\n\n"
            "Is an upload plausibly a frontal chest X-ray of the kind the models learnt from? "
            "`medrobust.input_check` answers before any verdict: cheap checks (size, aspect, colour, flatness) on "
            "the decoded file, then a learned check on the standard model's `layer2`/`layer3` features "
            "(Ledoit-Wolf Mahalanobis distance to the training X-rays, and a logistic regression trained "
            "self-supervised on rotated / inverted / zoomed training X-rays), fitted on the TRAINING patients, "
            "threshold on the VALIDATION patients. The out-of-scope set below only measures; nothing was "
            "fitted or tuned on it or on the test patients. Every image goes as PNG (or the original file) "
            "through `decode_image` and `check_decoded`, as an upload does.\n\n"
            f"    python scripts/fit_input_check.py {' '.join(f'--data {d}' for d in args.data)} --readme benchmarks/README.md\n\n"
            f"Fitted on {checker.card['fitted_on']['train_images']} training X-rays (split "
            f"{checker.card['fitted_on']['split_hash']}), threshold {checker.threshold:.2f} on "
            f"{checker.card['fitted_on']['val_images']} validation X-rays; files "
            f"`checkpoints/{arrays.name}` ({arrays.stat().st_size / 1e6:.1f} MB) + `checkpoints/{card_file.name}`. "
            f"Learned check: {timing['learned_one_image_median_ms']:.0f} ms for one image, "
            f"{timing['learned_batch32_per_image_ms']:.0f} ms per image in a batch of 32; decoding plus every "
            f"check of an upload: {per_upload_ms:.0f} ms (this CPU, {args.threads} thread, with background load).\n\n"
            + table + "\n\n"
            + ("Every category meets its target." if not misses else
               f"Below target: {', '.join(misses)} (see the rates above).") + "\n"
        )
        _write_readme(args.readme, text)
        print(f"wrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
