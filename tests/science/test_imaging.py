"""Tests for medrobust.imaging and medrobust.dicom: every input format, hostile files, the resize rule."""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_base import base_dataset
from jpeg_codec import ZIGZAG, dct_matrix, encode_dct, encode_lossless

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


# ---- compressed DICOM: the transfer syntaxes hospitals send ----------------------------------------------------
# Test files are made here: pydicom's own encoders where it has one (RLE; JPEG-LS through pyjpegls; JPEG 2000
# through pylibjpeg-openjpeg), Pillow for JPEG baseline, and tests/jpeg_codec.py (hand-written, checked by the
# independent decoders) for JPEG extended 12-bit and JPEG lossless, which pydicom cannot encode.

CODEC_SHAPE = (45, 60)  # neither side a multiple of 8 (JPEG blocks) nor of 64 (JPEG 2000 code blocks)
PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1")
J2K_PSNR = 50.0  # target of the lossy JPEG 2000 files, in dB of the full range
JLS_NEAR = 2  # JPEG-LS near-lossless: every pixel within this many stored units


def codec_source(bits: int, shape=CODEC_SHAPE, seed: int = 0) -> np.ndarray:
    """X-ray-like stored values spanning 0 .. 2**bits - 1 (both ends present), with noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy / (h - 1), xx / (w - 1)
    body = 0.75 - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    lungs = np.exp(-(((xx - 0.32) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2)) + \
        np.exp(-(((xx - 0.68) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    img = np.clip(body - 0.45 * lungs + 0.03 * rng.standard_normal(shape), 0, 1)
    v = np.rint(img * (2**bits - 1))
    v[0, 0], v[-1, -1] = 0, 2**bits - 1
    return v.astype(np.uint8 if bits <= 8 else np.uint16)


def _pil_baseline(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@dataclass(frozen=True)
class Codec:
    name: str
    uid: str
    bits: tuple[int, ...]
    lossy: bool
    frame: object = None  # (stored values, bits) -> codestream, for syntaxes pydicom cannot encode
    kwargs: tuple = ()  # for Dataset.compress


def _codecs() -> dict[str, Codec]:
    from pydicom import uid

    return {c.name: c for c in (
        Codec("JPEG Baseline", uid.JPEGBaseline8Bit, (8,), True, lambda a, b: _pil_baseline(a)),
        Codec("JPEG Extended", uid.JPEGExtended12Bit, (8, 12), True, lambda a, b: encode_dct(a, precision=b, q=2)),
        Codec("JPEG Lossless SV1", uid.JPEGLosslessSV1, (8, 12, 16), False,
              lambda a, b: encode_lossless(a, precision=b, predictor=1)),
        Codec("JPEG Lossless P14 (predictor 6)", uid.JPEGLossless, (8, 12, 16), False,
              lambda a, b: encode_lossless(a, precision=b, predictor=6)),
        Codec("JPEG-LS Lossless", uid.JPEGLSLossless, (8, 12, 16), False),
        Codec("JPEG-LS Near-Lossless", uid.JPEGLSNearLossless, (8, 12, 16), True, kwargs=(("jls_error", JLS_NEAR),)),
        Codec("JPEG 2000 Lossless", uid.JPEG2000Lossless, (8, 12, 16), False),
        Codec("JPEG 2000", uid.JPEG2000, (8, 12, 16), True, kwargs=(("j2k_psnr", [J2K_PSNR]),)),
        Codec("RLE Lossless", uid.RLELossless, (8, 12, 16), False),
    )}


CODECS = _codecs()
CODEC_CASES = [(name, bits, pm) for name, c in CODECS.items() for bits in c.bits for pm in PHOTOMETRICS]


def codec_dicom(codec: Codec | None, stored: np.ndarray, bits: int, photometric: str = "MONOCHROME2") -> bytes:
    """A DICOM (with the marker tags) holding ``stored``: uncompressed if ``codec`` is None."""
    from pydicom.encaps import encapsulate

    ds = base_dataset(MARKERS[0])
    ds.PatientID, ds.InstitutionName, ds.PatientBirthDate, ds.AccessionNumber = MARKERS[1:]
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = stored.tobytes()
    if codec is not None and codec.frame is not None:
        ds.file_meta.TransferSyntaxUID = codec.uid
        ds.PixelData = encapsulate([codec.frame(stored, bits)])
        ds["PixelData"].VR = "OB"
        if codec.lossy:
            ds.LossyImageCompression = "01"
    elif codec is not None:
        ds.compress(codec.uid, stored, **dict(codec.kwargs))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _stored_values(data: bytes) -> np.ndarray:
    """What the codec gives back (pydicom with the pylibjpeg plugins), to measure its error in stored units."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    return ds.pixel_array.astype(np.int64)


def _dct_error_bound(data: bytes) -> float:
    """The most a sequential-DCT JPEG can move one pixel: half of each quantiser step, carried back through the
    inverse DCT (sum over coefficients of q/2 |basis|), plus one for rounding; tables from the codestream."""
    import pydicom
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
    i = frame.index(b"\xff\xdb")
    q = np.frombuffer(frame[i + 5:i + 69], dtype=np.uint8).astype(np.float64)
    assert frame[i + 4] & 0xF0 == 0  # 8-bit table entries: the files made here
    steps = np.empty(64)
    steps[ZIGZAG] = q  # tables are stored in zig-zag order
    m = np.abs(dct_matrix())
    basis = np.einsum("ux,vy->uvxy", m, m).reshape(64, 8, 8)
    return float((0.5 * steps[:, None, None] * basis).sum(0).max()) + 1.0


def measure_codec(name: str, bits: int, photometric: str) -> dict:
    """Decode one compressed file and its uncompressed twin; errors in stored units and in [0, 1]."""
    codec = CODECS[name]
    stored = codec_source(bits)
    comp = codec_dicom(codec, stored, bits, photometric)
    plain = decode_image(codec_dicom(None, stored, bits, photometric))
    out = decode_image(comp)
    err = np.abs(_stored_values(comp) - stored.astype(np.int64))
    mse = float((err.astype(np.float64) ** 2).mean())
    return {"codec": codec, "out": out, "plain": plain, "stored_max_err": int(err.max()),
            "psnr": float("inf") if mse == 0 else 10 * np.log10((2**bits - 1) ** 2 / mse),
            "unit_max_err": float(np.abs(out.pixels - plain.pixels).max()), "data": comp}


@pytest.mark.parametrize("name, bits, photometric", CODEC_CASES, ids=[f"{n}-{b}bit-{p}" for n, b, p in CODEC_CASES])
def test_compressed_dicom_decodes_to_its_source(name, bits, photometric):
    m = measure_codec(name, bits, photometric)
    out, plain, codec = m["out"], m["plain"], m["codec"]
    assert out.format == "DICOM" and out.bit_depth == bits and out.pixels.shape == CODEC_SHAPE
    assert out.pixels.dtype == np.float32 and out.pixels.flags.writeable
    _no_markers(repr(out), out.note)
    if not codec.lossy:
        assert m["stored_max_err"] == 0
        np.testing.assert_array_equal(out.pixels, plain.pixels)  # the very pixels of the uncompressed file
        return
    if name == "JPEG-LS Near-Lossless":
        assert 0 < m["stored_max_err"] <= JLS_NEAR  # the codec's guarantee
    elif name == "JPEG 2000":
        assert m["psnr"] >= J2K_PSNR - 1.5  # openjpeg's rate control lands near the PSNR asked for (48.8-49.7 dB here)
    else:
        assert 0 < m["stored_max_err"] <= _dct_error_bound(m["data"])
    # min-max scaling then turns a few stored units into a few thousandths of the range
    assert m["unit_max_err"] <= 3 * max(m["stored_max_err"], 1) / (2**bits - 1)
    if photometric == "MONOCHROME1":  # shown inverted, like the uncompressed file
        mono2 = decode_image(codec_dicom(codec, codec_source(bits), bits, "MONOCHROME2"))
        np.testing.assert_allclose(out.pixels, 1.0 - mono2.pixels, atol=1e-6)


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("damage", ["cut at 50%", "cut at 90%", "zeroed"])
def test_a_truncated_or_corrupt_compressed_stream_is_one_clear_message(name, damage):
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    codec = CODECS[name]
    bits = codec.bits[-1]
    ds = pydicom.dcmread(io.BytesIO(codec_dicom(codec, codec_source(bits), bits)))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    bad = {"cut at 50%": frame[: len(frame) // 2], "cut at 90%": frame[: int(len(frame) * 0.9)],
           "zeroed": frame[:60] + bytes(len(frame) - 60)}[damage]
    ds.PixelData = encapsulate([bad])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as info:
        decode_image(buf.getvalue())
    msg = str(info.value)
    assert "\n" not in msg and pydicom.uid.UID(codec.uid).name in msg
    assert info.value.__cause__ is None and info.value.__context__ is None
    _no_markers(msg, repr(info.value))


def _with_frame(data: bytes, frame: bytes) -> bytes:
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([frame])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["JPEG Lossless SV1", "JPEG-LS Lossless", "JPEG 2000 Lossless"])
def test_a_codestream_bigger_than_the_pixel_cap_is_refused_before_decoding(name, monkeypatch):
    """The header says 60 x 45; the codestream inside says 30000 x 30000. Refused from the headers alone."""
    import pydicom
    from pydicom.encaps import generate_frames

    from medrobust import dicom

    codec = CODECS[name]
    data = codec_dicom(codec, codec_source(12), 12)
    frame = bytearray(next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1)))
    if name.startswith("JPEG 2000"):
        i = frame.index(b"\xff\x51")
        frame[i + 6:i + 14] = struct.pack(">II", 30000, 30000)  # Xsiz, Ysiz
    else:
        i = frame.index(b"\xff\xc3" if name.startswith("JPEG Lossless") else b"\xff\xf7")
        frame[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)  # Y, X
    calls = []
    monkeypatch.setattr(dicom, "_decode_in_child", lambda *a, **k: calls.append(1))
    t = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="declare 900,000,000 pixels, outside the limit") as info:
        decode_image(_with_frame(data, bytes(frame)))
    assert time.perf_counter() - t < 2.0 and not calls  # no decoder was started
    _no_markers(str(info.value))
    # The honest file is within a cap of exactly its size, and over a cap one pixel smaller.
    monkeypatch.undo()
    assert decode_image(data, max_pixels=45 * 60).pixels.shape == CODEC_SHAPE
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(data, max_pixels=45 * 60 - 1)


def test_an_unsupported_compressed_syntax_is_named_in_one_line():
    """A progressive JPEG (Full Progression, Process 10 and 12: retired, no decoder in pydicom) is refused by name."""
    from pydicom.encaps import encapsulate

    ds = base_dataset(MARKERS[0])
    stored = codec_source(8)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.55"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", progressive=True)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match=r"compressed transfer syntax \(JPEG Full Progression") as info:
        decode_image(out.getvalue())
    assert "\n" not in str(info.value)


def test_a_multiframe_compressed_dicom_shows_its_first_frame():
    from pydicom.encaps import encapsulate

    frames = [codec_source(12, seed=s) for s in (1, 2, 3)]
    ds = base_dataset(MARKERS[0])
    ds.file_meta.TransferSyntaxUID = CODECS["JPEG Lossless SV1"].uid
    ds.Rows, ds.Columns = CODEC_SHAPE
    ds.NumberOfFrames = 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([encode_lossless(f, precision=12) for f in frames])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = decode_image(buf.getvalue())
    np.testing.assert_array_equal(out.pixels, decode_image(codec_dicom(None, frames[0], 12)).pixels)
    with pytest.raises(ImageDecodeError, match="limit"):  # three frames count against the cap
        decode_image(buf.getvalue(), max_pixels=2 * 45 * 60)


def test_a_deflated_dicom_decodes_and_a_deflate_bomb_is_refused():
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    import pydicom

    stored = codec_source(12)
    ds = pydicom.dcmread(io.BytesIO(codec_dicom(None, stored, 12)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    np.testing.assert_array_equal(decode_image(buf.getvalue()).pixels,
                                  decode_image(codec_dicom(None, stored, 12)).pixels)
    # 40 MB of zeros deflate to ~40 kB: pydicom would inflate them whole before any header is read.
    ds.Rows, ds.Columns = 4000, 5000
    ds.PixelData = bytes(4000 * 5000 * 2)
    bomb = io.BytesIO()
    ds.save_as(bomb, enforce_file_format=True)
    assert len(bomb.getvalue()) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="deflated DICOM data set inflates to more than") as info:
            decode_image(bomb.getvalue(), max_pixels=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20
    _no_markers(str(info.value))


# ---- compressed DICOM: the child decoder and its time limit ---------------------------------------------------

@pytest.fixture()
def fresh_decoders():
    """No idle child decoder before or after the test (a test may have swapped how children start)."""
    from medrobust import dicom

    dicom._close_idle_workers()
    yield dicom
    dicom._close_idle_workers()


def _j2k_file() -> bytes:
    return codec_dicom(CODECS["JPEG 2000 Lossless"], codec_source(12), 12)


def _slow_boot(body: str) -> str:
    """A child that runs ``body`` (with ``ds`` in scope) instead of decoding pixels."""
    return ("import sys; sys.path.insert(0, sys.argv[1]); import medrobust.dicom as d, os, time\n"
            f"def _pixels(ds):\n    {body}\n"
            "d._pixels = _pixels; d._worker_main()")


def test_compressed_pixels_are_decoded_in_a_reused_child_process(fresh_decoders):
    dicom = fresh_decoders
    data = _j2k_file()
    decode_image(data)
    pool = dicom._the_pool()
    assert len(pool.idle) == 1 and pool.busy == 0
    child = pool.idle[0].proc
    assert child.pid != os.getpid() and child.poll() is None
    t = time.perf_counter()
    for _ in range(5):
        decode_image(data)
    assert pool.idle[0].proc is child  # started once, then reused
    assert time.perf_counter() - t < 5.0
    dicom._close_idle_workers()
    assert child.poll() is not None  # an idle child leaves when asked (and at exit)


def test_a_compressed_decode_past_the_limit_is_killed_and_the_caller_goes_on(fresh_decoders, monkeypatch):
    """The codecs hold the GIL: a thread could not give control back before they finish; a child is killed."""
    dicom = fresh_decoders
    monkeypatch.setattr(dicom, "_WORKER_BOOT", _slow_boot("time.sleep(120)"))
    t = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"took longer than 1 s") as info:
        dicom.decode_dicom(_j2k_file(), max_pixels=10**6, timeout_s=1.0)
    assert time.perf_counter() - t < 1.0 + dicom.WORKER_START_TIMEOUT_S  # start-up is not charged; the decode is
    assert "\n" not in str(info.value)
    pool = dicom._the_pool()
    assert pool.busy == 0 and not pool.idle  # the killed child is not kept
    monkeypatch.undo()
    assert decode_image(_j2k_file()).format == "DICOM"  # a new child takes over


def test_the_limit_holds_with_a_warm_child(fresh_decoders, monkeypatch):
    dicom = fresh_decoders
    monkeypatch.setattr(dicom, "_WORKER_BOOT", _slow_boot("time.sleep(120) if ds.Rows == 44 else None; "
                                                          "return ds.pixel_array"))
    data = _j2k_file()
    decode_image(data)  # warm: the child is running and idle
    slow = codec_dicom(CODECS["JPEG 2000 Lossless"], codec_source(12, shape=(44, 60)), 12)
    t = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"took longer than 0\.5 s"):
        dicom.decode_dicom(slow, max_pixels=10**6, timeout_s=0.5)
    assert time.perf_counter() - t < 3.0


def test_a_crashing_decoder_costs_only_the_file(fresh_decoders, monkeypatch):
    dicom = fresh_decoders
    monkeypatch.setattr(dicom, "_WORKER_BOOT", _slow_boot("os._exit(3)"))
    with pytest.raises(ImageDecodeError, match="decoder stopped on them") as info:
        decode_image(_j2k_file())
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert decode_image(_j2k_file()).format == "DICOM"


def test_concurrent_compressed_decodes_are_capped(fresh_decoders, monkeypatch):
    import threading

    dicom = fresh_decoders
    monkeypatch.setattr(dicom, "_WORKER_BOOT", _slow_boot("time.sleep(120)"))
    errors: list[str] = []

    def slow() -> None:
        try:
            dicom.decode_dicom(_j2k_file(), max_pixels=10**6, timeout_s=4.0)
        except ImageDecodeError as exc:
            errors.append(str(exc))

    busy = [threading.Thread(target=slow) for _ in range(dicom.MAX_DECODERS)]
    for th in busy:
        th.start()
    deadline = time.time() + 30
    while dicom._the_pool().busy < dicom.MAX_DECODERS and time.time() < deadline:
        time.sleep(0.02)
    t = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="still busy"):
        dicom.decode_dicom(_j2k_file(), max_pixels=10**6, timeout_s=0.5)
    assert time.perf_counter() - t < 2.0
    for th in busy:
        th.join(60)
    assert len(errors) == dicom.MAX_DECODERS and all("took longer than 4 s" in e for e in errors)
    assert dicom._the_pool().busy == 0
