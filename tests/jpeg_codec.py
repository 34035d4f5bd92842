"""Minimal JPEG encoders (ITU-T T.81) for test DICOMs: pydicom cannot encode JPEG Extended or JPEG Lossless.

One grey component, Huffman coding with fixed, valid (not optimised) tables, no restart intervals:

* :func:`encode_lossless`: process 14 (SOF3), any predictor 1-7 (1 is the DICOM "SV1" syntax), 2-16 bits;
* :func:`encode_dct`: sequential DCT, SOF0 (baseline, 8-bit) or SOF1 (extended, 8- or 12-bit), with a flat
  quantisation table of step ``q``.

The decoders under test (libjpeg through pylibjpeg, Pillow) are independent implementations, so a file
written here that decodes to its source pixels checks the encoder and the decoder at once.
"""

from __future__ import annotations

import struct

import numpy as np

ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
    54, 47, 55, 62, 63,
])


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


class _Huffman:
    """A canonical Huffman table giving every symbol the same code length (never the all-ones code)."""

    def __init__(self, symbols: list[int], length: int) -> None:
        assert len(symbols) < 2**length
        self.symbols, self.length = symbols, length
        self.code = {s: (i, length) for i, s in enumerate(symbols)}

    def dht(self, table_class: int, table_id: int) -> bytes:
        counts = [0] * 16
        counts[self.length - 1] = len(self.symbols)
        return _segment(0xC4, bytes([table_class << 4 | table_id, *counts, *self.symbols]))


class _Bits:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def put(self, value: int, n: int) -> None:
        if n:
            self.parts.append(format(value & ((1 << n) - 1), f"0{n}b"))

    def put_coded(self, table: _Huffman, symbol: int) -> None:
        self.put(*table.code[symbol])

    def put_magnitude(self, v: int, size: int) -> None:  # T.81 F.1.2.1: negatives as v - 1 in ``size`` bits
        self.put(v if v >= 0 else v + (1 << size) - 1, size)

    def data(self) -> bytes:
        s = "".join(self.parts)
        s += "1" * (-len(s) % 8)  # pad the last byte with 1-bits
        raw = int(s, 2).to_bytes(len(s) // 8, "big") if s else b""
        return raw.replace(b"\xff", b"\xff\x00")  # byte stuffing


def _size(v: int) -> int:
    return int(abs(int(v))).bit_length()


def _frame_header(sof: int, precision: int, rows: int, cols: int) -> bytes:
    return _segment(sof, struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0]))


def encode_lossless(pixels: np.ndarray, *, precision: int, predictor: int = 1) -> bytes:
    """A process-14 lossless JPEG codestream of ``pixels`` (unsigned ints below ``2**precision``)."""
    a = np.asarray(pixels, dtype=np.int64)
    assert a.ndim == 2 and 2 <= precision <= 16 and 1 <= predictor <= 7
    assert a.min() >= 0 and a.max() < 2**precision
    rows, cols = a.shape
    table = _Huffman(list(range(17)), 5)
    bits = _Bits()
    for y in range(rows):
        for x in range(cols):
            if y == 0:
                pred = (1 << (precision - 1)) if x == 0 else a[y, x - 1]
            elif x == 0:
                pred = a[y - 1, x]
            else:
                ra, rb, rc = a[y, x - 1], a[y - 1, x], a[y - 1, x - 1]
                pred = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
                        7: (ra + rb) >> 1}[predictor]
            diff = int(a[y, x] - pred) % 65536
            if diff > 32768:
                diff -= 65536
            size = 16 if diff == 32768 else _size(diff)
            bits.put_coded(table, size)
            if size < 16:
                bits.put_magnitude(diff, size)
    return (b"\xff\xd8" + _frame_header(0xC3, precision, rows, cols) + table.dht(0, 0)
            + _segment(0xDA, bytes([1, 1, 0x00, predictor, 0, 0])) + bits.data() + b"\xff\xd9")


def dct_matrix() -> np.ndarray:
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    m = 0.5 * np.cos((2 * x + 1) * u * np.pi / 16)
    m[0] /= np.sqrt(2)
    return m  # orthonormal: F = M f M^T is T.81's forward DCT


def encode_dct(pixels: np.ndarray, *, precision: int, q: int = 1, baseline: bool = False) -> bytes:
    """A sequential DCT JPEG codestream (SOF0 if ``baseline`` else SOF1) with every quantiser step ``q``."""
    a = np.asarray(pixels, dtype=np.float64)
    assert a.ndim == 2 and precision in (8, 12) and not (baseline and precision != 8) and 1 <= q <= 255
    rows, cols = a.shape
    padded = np.pad(a, ((0, -rows % 8), (0, -cols % 8)), mode="edge") - 2 ** (precision - 1)
    m = dct_matrix()
    max_size = 11 if precision == 8 else 15  # DC difference categories; AC sizes go one lower
    dc_table = _Huffman(list(range(max_size + 1)), 5)
    ac_table = _Huffman([0x00, 0xF0] + [r << 4 | s for r in range(16) for s in range(1, max_size)], 8)
    bits = _Bits()
    prev_dc = 0
    for by in range(0, padded.shape[0], 8):
        for bx in range(0, padded.shape[1], 8):
            coef = np.rint((m @ padded[by:by + 8, bx:bx + 8] @ m.T) / q).astype(np.int64).ravel()[ZIGZAG]
            diff = int(coef[0] - prev_dc)
            prev_dc = int(coef[0])
            bits.put_coded(dc_table, _size(diff))
            bits.put_magnitude(diff, _size(diff))
            run = 0
            for v in coef[1:]:
                if v == 0:
                    run += 1
                    continue
                while run > 15:
                    bits.put_coded(ac_table, 0xF0)
                    run -= 16
                size = _size(v)
                bits.put_coded(ac_table, run << 4 | size)
                bits.put_magnitude(int(v), size)
                run = 0
            if run:
                bits.put_coded(ac_table, 0x00)
    dqt = _segment(0xDB, bytes([0]) + bytes([q] * 64))
    sof = 0xC0 if baseline else 0xC1
    return (b"\xff\xd8" + dqt + _frame_header(sof, precision, rows, cols) + dc_table.dht(0, 0)
            + ac_table.dht(1, 0) + _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])) + bits.data() + b"\xff\xd9")
