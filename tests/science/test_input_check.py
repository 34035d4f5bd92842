"""Tests for medrobust.input_check and the colour measures of medrobust.imaging.

Every out-of-scope image is made here (scikit-image / scikit-learn sample photographs, drawn screenshots,
synthetic chest-like pictures, constants, noise); the real X-rays are read from ``../shared/data`` only by
the test that needs them, which is skipped when they are absent. Two checks are used:

* a tiny one fitted here on synthetic chest-like pictures with a randomly initialised ResNet-18 at 64 px
  (save/load, tampering, rotation/inversion codes), and
* the shipped one (``checkpoints/input_check.*`` with ``checkpoints/standard.safetensors``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from medrobust.checkpoints import load_checkpoint, save_checkpoint
from medrobust.image_types import DecodedImage
from medrobust.imaging import colour_measures, decode_image, to_square
from medrobust.input_check import (
    CODES,
    InputCheck,
    InputCheckError,
    InputVerdict,
    check_decoded,
    cheap_checks,
    default_input_check_path,
    fit_input_check,
    ledoit_wolf,
)
from medrobust.models import XrayNet

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CHECK = REPO / "checkpoints" / "input_check.json"
SHIPPED_MODEL = REPO / "checkpoints" / "standard.safetensors"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


# ----------------------------------------------------------------------------- synthetic images

def png(arr: np.ndarray) -> bytes:
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L" if a.ndim == 2 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def upload(arr: np.ndarray) -> DecodedImage:
    """As an upload goes: PNG bytes through decode_image."""
    return decode_image(png(arr))


def chest_like(seed: int, size: int = 256) -> np.ndarray:
    """A synthetic frontal chest-like picture in [0, 1]: body, two dark lungs with ribs, a bright
    mediastinum and a bright abdomen below the diaphragm (so up and down differ), blurred and noisy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = np.full((size, size), 0.08)
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.55) / 0.6) ** 2 < 1
    a[body] = 0.55 + rng.uniform(-0.05, 0.05)
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        lung = ((xx - cx) / rng.uniform(0.13, 0.16)) ** 2 + ((yy - 0.45) / rng.uniform(0.25, 0.3)) ** 2 < 1
        ribs = 0.08 * (np.sin(yy * 60 + side * xx * 8) > 0.6)
        a[lung] = (0.18 + ribs)[lung]
    a[(yy > 0.72) & body] = 0.75  # abdomen below the diaphragm
    a[(np.abs(xx - 0.5) < 0.06) & (yy < 0.72)] = 0.8  # mediastinum and spine
    a = gaussian_filter(a, size / 128) + 0.02 * rng.standard_normal((size, size))
    return np.clip(a, 0, 1)


def screenshot(*, inset: bool, size: tuple[int, int] = (640, 400)) -> np.ndarray:
    """A drawn window with a title bar, lines of report text and a button (grey), optionally a chest-like inset."""
    img = Image.new("L", size, 245)
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, size[0], 26], fill=70)
    font = ImageFont.load_default()
    d.text((8, 7), "Viewer - report.pdf", fill=255, font=font)
    x0 = 10
    if inset:
        img.paste(Image.fromarray((chest_like(0, 150) * 255).astype(np.uint8)), (10, 40))
        x0 = 175
    for i, y in enumerate(range(40, size[1] - 40, 16)):
        d.text((x0, y), f"Findings {i}: bilateral opacities, no effusion; follow up advised.", fill=20, font=font)
    d.rectangle([size[0] - 90, size[1] - 30, size[0] - 10, size[1] - 8], fill=90)
    return np.asarray(img)


def tinted(grey: np.ndarray, tint=(0.85, 0.7, 1.0)) -> np.ndarray:
    """A grey picture scanned with a colour cast (purple by default): each channel a gain of the grey."""
    return (np.clip(grey[..., None] * np.asarray(tint), 0, 1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- colour measures

def test_colourfulness_of_grey_in_rgb_is_zero_and_of_a_photograph_high():
    from skimage.data import astronaut, coffee

    grey = (chest_like(1) * 255).astype(np.uint8)
    d = decode_image(png(np.stack([grey] * 3, -1)))
    assert d.colourfulness == pytest.approx(0.0, abs=1e-6) and d.colour_beyond_tint == pytest.approx(0.0, abs=1e-6)
    for photo in (astronaut(), coffee()):
        d = decode_image(png(photo))
        assert d.colourfulness > 60 and d.colour_beyond_tint > 40
    assert decode_image(png(grey)).colourfulness == 0.0  # an L-mode file is not even looked at


def test_a_tinted_scan_of_a_grey_film_is_colourful_but_has_no_colour_beyond_its_tint():
    d = decode_image(png(tinted(chest_like(2))))
    assert d.colourfulness > 10  # Hasler & Süsstrunk see the tint ...
    assert d.colour_beyond_tint < 1.0  # ... which an affine function of brightness explains
    assert "colour" not in cheap_checks(d)[0]


def test_colour_measures_match_the_hasler_susstrunk_formula_and_other_modes_are_measured():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3)).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    expected = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    assert colour_measures(rgb)[0] == pytest.approx(expected, rel=1e-9)
    photo = Image.fromarray(rgb.astype(np.uint8), "RGB")
    for mode in ("RGBA", "P", "CMYK"):
        buf = io.BytesIO()
        (photo.convert(mode)).save(buf, format="TIFF" if mode == "CMYK" else "PNG")
        assert decode_image(buf.getvalue()).colourfulness > 20, mode
    with pytest.raises(ValueError, match="RGB array"):
        colour_measures(np.zeros((4, 4)))


# ----------------------------------------------------------------------------- cheap checks

@settings(max_examples=40, deadline=None)
@given(level=st.integers(0, 255), h=st.integers(64, 300), w=st.integers(64, 300))
def test_any_constant_image_is_flagged_uniform(level, h, w):
    verdict = check_decoded(upload(np.full((h, w), level, dtype=np.uint8)), checker=None)
    assert not verdict.ok and "uniform" in verdict.codes
    assert verdict.reasons and all(r.endswith(".") for r in verdict.reasons)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 63), w=st.integers(1, 160), seed=st.integers(0, 2**16))
def test_any_image_with_a_short_side_below_64_px_is_too_small(h, w, seed):
    a = np.random.default_rng(seed).uniform(0, 1, (h, w))
    verdict = check_decoded(upload(a), checker=None)
    assert not verdict.ok and "too_small" in verdict.codes
    assert any(f"{w}x{h} pixels" in r for r in verdict.reasons)


def test_gentle_gradients_and_faint_noise_are_near_uniform():
    yy = np.mgrid[0:200, 0:240][0] / 200
    for a in (0.4 + 0.08 * yy, 0.7 + 0.01 * np.random.default_rng(0).standard_normal((200, 240))):
        assert "uniform" in check_decoded(upload(a), checker=None).codes


def test_a_long_strip_is_flagged_for_its_aspect_ratio():
    verdict = check_decoded(upload(chest_like(3, 300)[:100]), checker=None)
    assert "aspect" in verdict.codes and "3.0 times as wide as it is tall" in " ".join(verdict.reasons)


def test_colour_photographs_are_flagged_colour_without_any_learned_check():
    from skimage.data import astronaut, chelsea, coffee, rocket
    from sklearn.datasets import load_sample_images

    photos = [astronaut(), chelsea(), coffee(), rocket(), *load_sample_images().images]
    for photo in photos:
        verdict = check_decoded(upload(photo), checker=None)
        assert not verdict.ok and "colour" in verdict.codes
        assert "no_learned_check" in verdict.codes and verdict.score is None and verdict.threshold is None


def test_a_plausible_image_passes_the_cheap_checks_with_only_the_informational_code():
    verdict = check_decoded(decode_image(png(tinted(chest_like(4)))), checker=None)
    assert verdict == InputVerdict(ok=True, reasons=(), codes=("no_learned_check",), score=None, threshold=None)
    assert set(CODES) >= {"too_small", "aspect", "colour", "uniform", "unlike_training", "orientation",
                          "inverted", "cropped", "no_learned_check"}


def test_cheap_checks_refuse_what_is_not_a_decoded_image():
    with pytest.raises(TypeError, match="DecodedImage"):
        cheap_checks(np.zeros((80, 80)))


# ----------------------------------------------------------------------------- Ledoit-Wolf

def test_ledoit_wolf_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    for n, d in ((30, 50), (200, 10)):
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3.0
        mean, cov, s = ledoit_wolf(torch.from_numpy(x))
        ref = sk.LedoitWolf().fit(x)
        np.testing.assert_allclose(mean.numpy(), ref.location_, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cov.numpy(), ref.covariance_, rtol=1e-8, atol=1e-10)
        assert s == pytest.approx(ref.shrinkage_, rel=1e-8)


# ----------------------------------------------------------------------------- a tiny fitted check

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A check fitted on synthetic chest-like pictures with a random ResNet-18 saved as a checkpoint."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-check")
    model = XrayNet().eval()
    card = save_checkpoint(folder / "tiny.safetensors", model, {"name": "tiny", "image_size": SIZE,
                                                               "split": {"hash": "synthetic"}})
    model, card = load_checkpoint(folder / "tiny.safetensors")
    train = torch.stack([to_square(chest_like(s), size=2 * SIZE) for s in range(40)])
    val = torch.stack([to_square(chest_like(1000 + s), size=SIZE) for s in range(16)])
    checker = fit_input_check(feature_model=model, card=card, train_images=train, val_images=val, seed=0)
    checker.save(folder / "input_check")
    return folder, checker, model, card


def test_fitting_records_what_it_was_fitted_on(tiny):
    folder, checker, _, card = tiny
    c = json.loads((folder / "input_check.json").read_text())
    assert c["feature_model"]["sha256"] == card["sha256"] and c["feature_model"]["file"] == "tiny.safetensors"
    assert c["fitted_on"]["split_hash"] == "synthetic"
    assert c["fitted_on"]["train_images"] == 40 and c["fitted_on"]["val_images"] == 16
    assert c["threshold"] == checker.threshold and math.isfinite(checker.threshold) and c["date"]
    assert (folder / "input_check.safetensors").stat().st_size < 5e6


def test_save_load_round_trip_gives_the_same_verdicts(tiny):
    folder, checker, model, card = tiny
    x = torch.stack([to_square(chest_like(s), size=SIZE) for s in range(2000, 2006)] +
                    [torch.rot90(to_square(chest_like(7), size=SIZE), 1, (1, 2))])
    for loaded in (InputCheck.load(folder / "input_check.json"), InputCheck.load(folder / "input_check"),
                   InputCheck.load(folder / "input_check.safetensors", feature_model=(model, card))):
        assert loaded.threshold == checker.threshold and loaded.image_size == SIZE
        assert loaded.check_images(x) == checker.check_images(x)
    assert checker.check_images(x[:0]) == []


def test_rotated_and_inverted_chest_like_pictures_get_their_codes(tiny):
    _, checker, _, _ = tiny
    upright = [chest_like(s) for s in range(3000, 3010)]
    assert sum(check_decoded(upload(a), checker=checker).ok for a in upright) >= 8
    for k in (1, 2, 3):
        verdicts = [check_decoded(upload(np.rot90(a, k)), checker=checker) for a in upright]
        assert all("orientation" in v.codes and not v.ok for v in verdicts), (k, [v.codes for v in verdicts])
        assert all(v.score > v.threshold and v.reasons for v in verdicts)
    verdicts = [check_decoded(upload(1 - a), checker=checker) for a in upright]
    assert all("inverted" in v.codes for v in verdicts), [v.codes for v in verdicts]


def test_a_retrained_or_tampered_feature_model_is_refused_in_one_line(tiny, tmp_path):
    import shutil

    folder, _, model, card = tiny
    for name in ("input_check.json", "input_check.safetensors", "tiny.safetensors", "tiny.json"):
        shutil.copy(folder / name, tmp_path / name)
    # retrained: other weights, with a consistent card of their own
    other = XrayNet().eval()
    torch.nn.init.normal_(other.net.fc.weight)
    save_checkpoint(tmp_path / "tiny.safetensors", other, {"name": "tiny", "image_size": SIZE})
    with pytest.raises(InputCheckError, match="not the one this input check was fitted with") as exc:
        InputCheck.load(tmp_path / "input_check.json")
    assert "\n" not in str(exc.value)
    # tampered: bytes changed behind the card's back
    data = bytearray((tmp_path / "tiny.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "tiny.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputCheckError, match="sha256") as exc:
        InputCheck.load(tmp_path / "input_check.json")
    assert "\n" not in str(exc.value)
    # another model handed in directly
    with pytest.raises(InputCheckError, match="not the one"):
        InputCheck.load(folder / "input_check.json", feature_model=(other, {"name": "x", "sha256": "0" * 64}))
    # the arrays file changed
    arrays = bytearray((folder / "input_check.safetensors").read_bytes())
    arrays[-1] ^= 0x01
    (tmp_path / "input_check.safetensors").write_bytes(bytes(arrays))
    shutil.copy(folder / "tiny.safetensors", tmp_path / "tiny.safetensors")
    shutil.copy(folder / "tiny.json", tmp_path / "tiny.json")
    with pytest.raises(InputCheckError, match="does not match its card"):
        InputCheck.load(tmp_path / "input_check.json")
    with pytest.raises(InputCheckError, match="missing"):
        InputCheck.load(tmp_path / "nothing.json")


def test_check_images_and_fit_refuse_bad_inputs_in_one_sentence(tiny):
    _, checker, model, card = tiny
    for bad, msg in ((torch.zeros(2, 3, SIZE, SIZE), r"shape \(N, 1, S, S\)"), (torch.zeros(1, 1, 32, 32), "64x64"),
                     (torch.full((1, 1, SIZE, SIZE), float("nan")), "NaN"), (torch.full((1, 1, SIZE, SIZE), 2.0), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=msg):
            checker.check_images(bad)
    x = torch.rand(30, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="pass_rate"):
        fit_input_check(feature_model=model, card=card, train_images=x, val_images=x, pass_rate=1.0)
    with pytest.raises(ValueError, match="at least 20 training"):
        fit_input_check(feature_model=model, card=card, train_images=x[:5], val_images=x)
    with pytest.raises(TypeError, match="XrayNet"):
        fit_input_check(feature_model=torch.nn.Linear(2, 2), card=card, train_images=x, val_images=x)


def test_default_path_is_beside_the_checkpoints(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(tmp_path))
    assert default_input_check_path() == tmp_path / "input_check.json"


# ----------------------------------------------------------------------------- the shipped check

@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED_CHECK.is_file() or not SHIPPED_MODEL.is_file():
        pytest.skip("the shipped input check (checkpoints/input_check.*) is not in this checkout")
    return InputCheck.load(SHIPPED_CHECK)


def test_the_shipped_check_flags_grey_photographs_noise_and_screenshots(shipped):
    from skimage.data import coins, moon, page, text

    rng = np.random.default_rng(0)
    images = {"coins": coins(), "moon": moon(), "page": page(), "text": text(),
              "uniform noise": rng.uniform(0, 1, (300, 300)),
              "gaussian noise": np.clip(0.5 + 0.2 * rng.standard_normal((256, 320)), 0, 1),
              "blurred noise": gaussian_filter(rng.standard_normal((300, 300)), 6) * 2 + 0.5,
              "screenshot": screenshot(inset=False), "screenshot with an X-ray-like inset": screenshot(inset=True)}
    for name, a in images.items():
        verdict = check_decoded(upload(a), checker=shipped)
        assert not verdict.ok and verdict.reasons, name
        # whichever measure fires first: the distance (unlike_training) or the orientation classifier's
        # nearest other class; a photograph of the moon, say, looks most like a zoomed-in part of an X-ray
        assert verdict.codes and set(verdict.codes) <= set(CODES) - {"no_learned_check"}, (name, verdict.codes)
        assert verdict.score is not None and verdict.threshold == shipped.threshold


def test_the_shipped_check_flags_colour_photographs(shipped):
    from skimage.data import astronaut, coffee

    for photo in (astronaut(), coffee()):
        verdict = check_decoded(upload(photo), checker=shipped)
        assert not verdict.ok and "colour" in verdict.codes


def test_the_shipped_check_passes_the_real_test_patients_and_flags_them_rotated_and_inverted(shipped):
    if not (SHARED / "covid-chestxray" / "metadata.csv").is_file() or not (SHARED / "actualmed" / "metadata.csv").is_file():
        pytest.skip(f"real data not found at {SHARED} (needs covid-chestxray/ and actualmed/ in the upstream layout)")
    from medrobust.checkpoints import read_card
    from medrobust.data import read_records, split_from_info

    records, _ = read_records([SHARED / "covid-chestxray", SHARED / "actualmed"])
    split = split_from_info(records, read_card(SHIPPED_MODEL)["split"])
    path = {r.key: r.path for r in records}
    files = [Path(path[k]).read_bytes() for k in split.images["test"]]
    decoded = [decode_image(b) for b in files]
    verdicts = [check_decoded(d, checker=shipped) for d in decoded]
    assert len(verdicts) > 100
    assert np.mean([v.ok for v in verdicts]) >= 0.95
    some = [d.pixels for d in decoded[:30]]
    rotated = [check_decoded(upload(np.rot90(a, 1)), checker=shipped) for a in some]
    assert np.mean([not v.ok for v in rotated]) >= 0.9
    inverted = [check_decoded(upload(1 - a), checker=shipped) for a in some]
    assert np.mean(["inverted" in v.codes for v in inverted]) >= 0.9
