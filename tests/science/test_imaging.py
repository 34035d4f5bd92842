"""Tests for medrobust.imaging and medrobust.dicom: every input format, hostile files, the resize rule."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_base import base_dataset

from medrobust.imaging import (
    MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    load_image_file,
    to_square,
)

GREY = np.array([[0, 64, 128], [192, 255, 10]], dtype=np.uint8)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=100, subsampling=0)
    return buf.getvalue()


# ---- decode_image: formats and modes ----------------------------------------------------------

def test_decode_grey_png():
    out = decode_image(_png(Image.fromarray(GREY, "L")))
    assert isinstance(out, DecodedImage)
    assert out.format == "PNG" and out.bit_depth == 8
    assert out.pixels.dtype == np.float32 and out.pixels.shape == GREY.shape
    np.testing.assert_allclose(out.pixels, GREY / 255.0, atol=1e-6)


def test_decode_rgb_is_luminance():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (200, 200, 200)
    out = decode_image(_png(Image.fromarray(rgb, "RGB")))
    assert out.pixels.shape == (2, 3)
    # ITU-R 601-2 luma, as PIL's convert("L"): green is brightest, blue darkest; grey stays grey.
    np.testing.assert_allclose(out.pixels[0], np.array([76, 150, 29]) / 255.0, atol=1.5 / 255)
    np.testing.assert_allclose(out.pixels[1], 200 / 255.0, atol=1e-6)


def test_decode_rgba_drops_alpha():
    g = np.stack([GREY] * 3, -1)
    transparent = np.concatenate([g, np.zeros_like(GREY)[..., None]], -1)
    opaque = np.concatenate([g, np.full_like(GREY, 255)[..., None]], -1)
    a = decode_image(_png(Image.fromarray(transparent, "RGBA"))).pixels
    b = decode_image(_png(Image.fromarray(opaque, "RGBA"))).pixels
    # Alpha carries no radiographic information: a fully transparent film reads as the same film.
    np.testing.assert_allclose(a, GREY / 255.0, atol=1e-6)
    np.testing.assert_array_equal(a, b)


def test_decode_palette_and_la_and_1bit():
    p = Image.fromarray(GREY, "L").convert("P")
    assert p.mode == "P"
    np.testing.assert_allclose(decode_image(_png(p)).pixels, GREY / 255.0, atol=1e-6)
    la = Image.fromarray(np.stack([GREY, np.zeros_like(GREY)], -1), "LA")
    np.testing.assert_allclose(decode_image(_png(la)).pixels, GREY / 255.0, atol=1e-6)
    one = Image.fromarray(GREY > 100).convert("1")
    out = decode_image(_png(one))
    assert out.bit_depth == 1
    np.testing.assert_array_equal(out.pixels, (GREY > 100).astype(np.float32))


def test_decode_16bit_png_scales_by_65535():
    a = np.array([[0, 32768, 65535], [100, 200, 300]], dtype=np.uint16)
    data = _png(Image.fromarray(a))
    out = decode_image(data)
    assert out.bit_depth == 16
    assert out.pixels[0, 2] == 1.0
    assert out.pixels[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert out.pixels[0, 0] == 0.0
    # A dark 16-bit image stays dark: its values are not rescaled to its own maximum.
    np.testing.assert_allclose(out.pixels[1], np.array([100, 200, 300]) / 65535.0, rtol=1e-5)
    dark = decode_image(_png(Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint16))))
    assert dark.pixels.max() == pytest.approx(200 / 65535.0, rel=1e-5)


def test_decode_32bit_int_image_uses_16bit_range():
    # Mode "I" (32-bit ints, e.g. from TIFF): values above 255 are read as a 16-bit range.
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I").save(buf, format="TIFF")
    out = decode_image(buf.getvalue())
    np.testing.assert_allclose(out.pixels, np.array([[0, 1000, 65535]]) / 65535.0, rtol=1e-5)


def test_decode_jpeg():
    img = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    out = decode_image(_jpeg(Image.fromarray(img, "L")))
    assert out.format == "JPEG" and out.pixels.shape == (32, 32)
    np.testing.assert_allclose(out.pixels, img / 255.0, atol=4 / 255)
    rgb = decode_image(_jpeg(Image.fromarray(np.stack([img] * 3, -1), "RGB")))
    np.testing.assert_allclose(rgb.pixels, img / 255.0, atol=4 / 255)


def test_decode_accepts_bytearray_and_memoryview():
    data = _png(Image.fromarray(GREY, "L"))
    for d in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_image(d).pixels, decode_image(data).pixels)
    with pytest.raises(ImageDecodeError, match="bytes"):
        decode_image("not bytes")  # type: ignore[arg-type]


# ---- decode_image: hostile input --------------------------------------------------------------

@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a readable"),
    (b"hello, I am a text file\n" * 10, "not a readable"),
])
def test_garbage_is_a_decode_error(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_png_is_a_decode_error(keep):
    rng = np.random.default_rng(1)
    data = _png(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L"))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: int(len(data) * keep)])


def test_too_large_file_is_refused():
    data = _png(Image.fromarray(GREY, "L"))
    with pytest.raises(ImageDecodeError, match="MiB"):
        decode_image(data, max_bytes=len(data) - 1)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose IHDR claims width x height (with a correct CRC)."""
    data = bytearray(_png(Image.new("1", (8, 8))))
    assert data[12:16] == b"IHDR"
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("side", [30000, 9000])  # 9e8 pixels (Pillow's own bomb error) and 8.1e7 (our cap)
def test_decompression_bomb_is_refused_quickly(side):
    data = _bomb_png(side, side)
    assert len(data) < 200
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ImageDecodeError, match="pixels"):
            decode_image(data)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t < 2.0
    assert peak < 50 * 2**20  # nothing near the 900 MB a decoded 30000x30000 image would take
    assert side * side > MAX_PIXELS


def test_pixel_cap_is_configurable():
    data = _png(Image.fromarray(GREY, "L"))
    with pytest.raises(ImageDecodeError, match="more than the limit of 5 pixels"):
        decode_image(data, max_pixels=5)


# ---- to_square --------------------------------------------------------------------------------

def test_to_square_shape_range_and_dtype():
    rng = np.random.default_rng(2)
    for h, w in ((100, 200), (200, 100), (37, 37), (10, 300), (500, 64)):
        out = to_square(rng.uniform(0, 1, (h, w)), size=32)
        assert out.shape == (1, 32, 32) and out.dtype == torch.float32
        assert out.is_contiguous() and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    t = to_square(torch.rand(50, 60, dtype=torch.float64), size=16)
    assert t.shape == (1, 16, 16) and t.dtype == torch.float32


def test_to_square_centre_crops_the_long_side():
    # 100 x 200 (h x w), left half black, right half white: the short side (100) becomes 50 and the
    # width 100; the centre crop keeps columns 25..75 of the resized image, i.e. both halves.
    img = np.zeros((100, 200), dtype=np.float32)
    img[:, 100:] = 1.0
    out = to_square(img, size=50)[0]
    assert out.shape == (50, 50)
    assert float(out[:, :20].max()) < 0.01 and float(out[:, 30:].min()) > 0.99
    assert 0.2 < float(out[:, 24:26].mean()) < 0.8  # the edge is in the middle
    # 200 x 100 with the top quarter white: the crop removes 25 px (of 100) above and below, so
    # the white band (rows 0..50 of 200 -> 0..25 after resizing) is cut away, bar the antialiasing
    # blur of its edge in the first kept row.
    img = np.zeros((200, 100), dtype=np.float32)
    img[:50] = 1.0
    out = to_square(img, size=50)[0]
    assert float(out[0].max()) < 0.3 and float(out[1:].max()) < 0.01
    # A band that reaches into the kept centre survives at the top of the crop.
    img = np.zeros((200, 100), dtype=np.float32)
    img[:80] = 1.0
    out = to_square(img, size=50)[0]
    assert float(out[:5].min()) > 0.95 and float(out[-10:].max()) < 0.01


def test_to_square_upsamples_small_images_and_keeps_constants():
    out = to_square(np.full((10, 20), 0.3, dtype=np.float32), size=40)
    assert out.shape == (1, 40, 40)
    torch.testing.assert_close(out, torch.full((1, 40, 40), 0.3), atol=1e-6, rtol=0)


def test_to_square_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 8"):
        to_square(np.zeros((10, 10)), size=4)
    with pytest.raises(ValueError, match="2-D"):
        to_square(np.zeros((3, 10, 10)), size=8)


def test_load_image_file(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.full((30, 40), 128, dtype=np.uint8), "L").save(p)
    out = load_image_file(p, size=16)
    assert out.shape == (1, 16, 16)
    torch.testing.assert_close(out, torch.full((1, 16, 16), 128 / 255), atol=1e-5, rtol=0)


# ---- DICOM ------------------------------------------------------------------------------------

MARKERS = ("MARKER_NAME_123", "MARKER_ID_456", "MARKER_INST_789", "19991231", "MARKER_ACC_321")


def make_dicom(arr: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               pixel_bytes: bytes | None = None, **attrs) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian) carrying identifying marker tags."""
    ds = base_dataset(MARKERS[0])
    ds.PatientID = MARKERS[1]
    ds.InstitutionName = MARKERS[2]
    ds.PatientBirthDate = MARKERS[3]
    ds.AccessionNumber = MARKERS[4]
    ds.Modality = "DX"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixel_bytes if pixel_bytes is not None else arr.astype(np.uint16).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


RAW = np.array([[0, 512], [1024, 2048]], dtype=np.uint16)


def _no_markers(*texts: str) -> None:
    for text in texts:
        for m in MARKERS:
            assert m not in text


def test_dicom_monochrome2():
    data = make_dicom(RAW)
    assert data[128:132] == b"DICM"
    out = decode_image(data)
    assert out.format == "DICOM" and out.bit_depth == 12
    np.testing.assert_allclose(out.pixels, RAW / 2048.0, atol=1e-6)
    _no_markers(repr(out), str(out))


def test_dicom_monochrome1_is_inverted():
    out = decode_image(make_dicom(RAW, photometric="MONOCHROME1"))
    np.testing.assert_allclose(out.pixels, 1.0 - RAW / 2048.0, atol=1e-6)


def test_dicom_rescale_then_window():
    # Stored [0, 512, 1024, 2048] -> rescaled (slope 1, intercept -1024) [-1024, -512, 0, 1024];
    # window centre 0, width 1024 in rescaled units -> [0, 0, 0.5, 1]. Windowing the stored values
    # instead (forgetting the rescale) would give [0.5, 1, 1, 1].
    out = decode_image(make_dicom(RAW, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1024))
    np.testing.assert_allclose(out.pixels.ravel(), [0.0, 0.0, 0.5, 1.0], atol=2e-3)


def test_dicom_window_clips():
    out = decode_image(make_dicom(RAW, WindowCenter=512, WindowWidth=1024))
    # Window [0, 1024]: 0 -> 0, 512 -> ~0.5, 1024 and 2048 saturate at 1.
    np.testing.assert_allclose(out.pixels.ravel(), [0.0, 0.5, 1.0, 1.0], atol=2e-3)


def test_dicom_is_detected_by_its_marker_not_its_name(tmp_path):
    p = tmp_path / "looks-like.png"
    p.write_bytes(make_dicom(RAW))
    out = load_image_file(p, size=8)
    assert out.shape == (1, 8, 8)
    # Without the 128-byte preamble + DICM it is not taken for DICOM (and is not a PNG either).
    with pytest.raises(ImageDecodeError, match="not a readable"):
        decode_image(make_dicom(RAW)[132:])


def test_dicom_without_pixel_data_is_a_clear_error():
    with pytest.raises(ImageDecodeError, match="no pixel data") as info:
        decode_image(make_dicom(None))
    _no_markers(str(info.value), repr(info.value))


def test_dicom_with_truncated_pixel_data_is_a_clear_error():
    data = make_dicom(RAW, pixel_bytes=RAW.tobytes()[:4])
    with pytest.raises(ImageDecodeError, match="truncated or malformed") as info:
        decode_image(data)
    _no_markers(str(info.value), repr(info.value))


def test_dicom_too_many_pixels_is_refused():
    with pytest.raises(ImageDecodeError, match="limit") as info:
        decode_image(make_dicom(RAW), max_pixels=3)
    _no_markers(str(info.value))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_with_broken_header_is_a_clear_error():
    data = make_dicom(RAW)
    broken = data[:140] + b"\xff" * 64  # preamble, DICM, then garbage where the meta group should be
    with pytest.raises(ImageDecodeError) as info:
        decode_image(broken)
    _no_markers(str(info.value), repr(info.value))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_patient_tags_never_escape():
    """Neither a result nor any error message carries a tag value."""
    texts = []
    good = decode_image(make_dicom(RAW, WindowCenter=512, WindowWidth=1024))
    texts += [repr(good), str(good), str(good.note), good.format]
    for data in (make_dicom(None), make_dicom(RAW, pixel_bytes=b"\x00"), make_dicom(RAW)[:300]):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
        exc = info.value
        texts += [str(exc), repr(exc)]
        cause = exc.__cause__
        while cause is not None:  # nothing identifying hides in an explicit cause either
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__
    assert texts
    _no_markers(*texts)
