"""Dashboard test fixtures: a tiny, self-made checkpoint set so dashboard tests never depend on shipped files.

Imported by tests/dashboard/test_app.py and tests/system/test_browser.py (`from dashboard_fixtures import ...`)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dicom_base import base_dataset

REPO = Path(__file__).resolve().parent.parent
METHOD_NAMES = ("standard", "robust", "augmix", "robustaugmix")
TINY_SIZE = 32


class _BrightnessModel(nn.Module):
    """A differentiable stand-in for evaluation: brighter images lean towards COVID-19."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        z = self.gain * (m - 0.5) + self.anchor
        return torch.stack([-z, z], dim=1)


def _synthetic_test_set(n: int = 40, size: int = TINY_SIZE):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([i % 3 != 0 for i in range(n)], dtype=torch.long)  # 2/3 COVID-19, like the data
    base = 0.35 + 0.3 * labels.float() + 0.08 * torch.randn(n, generator=g)
    images = (base.view(n, 1, 1, 1) + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return images, labels


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """CHECKPOINTS folder: four random-init fp16 ResNet-18s (32 px) with cards, and synthetic results.

    Results come from the real ``evaluate_model`` (n_boot 50, 2 PGD steps, 3 radii and 3 severities) run
    on stand-in models;
    ``robustaugmix`` is evaluated with a constant model so the degenerate warning can be tested.
    """
    from medrobust.checkpoints import save_checkpoint
    from medrobust.evaluation import EvalConfig, evaluate_model, write_results
    from medrobust.models import build_model

    root = tmp_path_factory.mktemp("ckpt")
    images, labels = _synthetic_test_set()
    config = EvalConfig(eps=(1.0, 3.0, 5.0), severities=(0.1, 0.5, 1.0), pgd_steps=2, n_boot=50, seed=0)
    for i, m in enumerate(METHOD_NAMES):
        torch.manual_seed(i)
        model = build_model().eval()
        save_checkpoint(root / f"{m}.safetensors", model,
                        {"name": m, "method": m, "image_size": TINY_SIZE, "config": {"image_size": TINY_SIZE},
                         "split": {"seed": 0, "fractions": [0.7, 0.1, 0.2], "train_patients": []}},
                        dtype=torch.float16)
        gain = 0.0 if m == "robustaugmix" else 8.0 + 4 * i
        stand_in = _BrightnessModel(gain).eval()
        result = evaluate_model(stand_in, images, labels, config=config, name=m, card={"method": m})
        write_results(result, root / "results")
    return root


@pytest.fixture()
def dashboard_env(tiny_checkpoints, tmp_path, monkeypatch) -> Path:
    """Point the dashboard at the tiny set, with empty results/ and runs/ folders of its own."""
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(tiny_checkpoints))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MEDROBUST_JOBS", raising=False)
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    monkeypatch.delenv("MEDROBUST_ADMIN_TOKEN", raising=False)
    return tiny_checkpoints


def xray_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """A synthetic chest-X-ray-like picture in [0, 1]: two dark lung fields in a bright body."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.75 - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    lungs = np.exp(-(((xx - 0.32) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2)) + \
        np.exp(-(((xx - 0.68) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    img = body - 0.45 * lungs + 0.03 * rng.standard_normal((size, size))
    return np.clip(img, 0, 1)


def png_bytes(arr: np.ndarray, *, bits: int = 8, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if bits == 16:
        Image.fromarray((arr * 65535).round().astype(np.uint16)).save(buf, format="PNG")
    else:
        img = Image.fromarray((arr * 255).round().astype(np.uint8))
        if mode:
            img = img.convert(mode)
        img.save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray, *, monochrome1: bool = False, with_pixels: bool = True,
                patient_name: str = "Doe^Jane") -> bytes:
    """A synthetic uncompressed DICOM (explicit VR little endian) made with pydicom."""
    ds = base_dataset(patient_name)
    ds.PatientID = "SECRET-ID-12345"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if with_pixels:
        pix = (arr * 4095).round().astype(np.uint16)
        ds.PixelData = pix.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def compressed_dicom_bytes(arr: np.ndarray) -> bytes:
    """A DICOM in a compressed transfer syntax medrobust does not decode: a real progressive JPEG, under
    JPEG Full Progression (Process 10 and 12), a retired syntax for which pydicom has no decoder."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(arr)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.55"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    jpeg = io.BytesIO()
    Image.fromarray((arr * 255).round().astype(np.uint8)).save(jpeg, format="JPEG", progressive=True)
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encoded_dicom_bytes(arr: np.ndarray, transfer_syntax: str, *, monochrome1: bool = False,
                        patient_name: str = "Doe^Jane") -> bytes:
    """:func:`dicom_bytes` (12-bit; 8-bit for JPEG baseline) compressed in ``transfer_syntax``: pydicom's encoders
    (RLE, JPEG-LS, JPEG 2000, JPEG 2000 lossy at 50 dB), Pillow (JPEG baseline) or, for JPEG lossless (SV1) and
    extended, the test encoders in ``jpeg_codec``."""
    import pydicom
    from PIL import Image
    from pydicom import uid
    from pydicom.encaps import encapsulate

    from jpeg_codec import encode_dct, encode_lossless

    def baseline() -> bytes:
        out = io.BytesIO()
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(out, format="JPEG", quality=95)
        return out.getvalue()

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(arr, monochrome1=monochrome1, patient_name=patient_name)))
    pix = (arr * 4095).round().astype(np.uint16)
    hand_made = {uid.JPEGLosslessSV1: lambda: encode_lossless(pix, precision=12),
                 uid.JPEGExtended12Bit: lambda: encode_dct(pix, precision=12, q=2), uid.JPEGBaseline8Bit: baseline}
    if transfer_syntax == uid.JPEGBaseline8Bit:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if transfer_syntax in hand_made:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([hand_made[transfer_syntax]()])
        ds["PixelData"].VR = "OB"
    else:
        kwargs = {uid.JPEG2000: {"j2k_psnr": [50]}, uid.JPEGLSNearLossless: {"jls_error": 2}}.get(transfer_syntax, {})
        ds.compress(transfer_syntax, pix, **kwargs)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture()
def broken_checkpoints(tiny_checkpoints, tmp_path) -> Path:
    """A copy of the tiny set whose ``robust`` weights no longer match their card's sha256."""
    dst = tmp_path / "broken"
    shutil.copytree(tiny_checkpoints, dst)
    w = dst / "robust.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="session")
def cv_checkpoints(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny set plus ``cv/results``: pooled 2-fold results of two stand-in models (standard, robust),
    each fold evaluated by the real ``evaluate_model`` on its half of the synthetic images (two images a patient)."""
    from medrobust.evaluation import EvalConfig, PerSample, evaluate_model, summarise, write_results

    root = tmp_path_factory.mktemp("cvck") / "checkpoints"
    shutil.copytree(tiny_checkpoints, root)
    images, labels = _synthetic_test_set()
    n = len(labels)
    keys = [f"img{i}" for i in range(n)]
    groups = [f"p{i // 2}" for i in range(n)]
    config = EvalConfig(eps=(1.0, 2.0), severities=(0.1, 0.5), pgd_steps=2, n_boot=50, seed=0)
    for m, gain in (("standard", 6.0), ("robust", 14.0)):
        parts = []
        for fold, sel in enumerate((slice(0, n // 2), slice(n // 2, n))):
            r = evaluate_model(_BrightnessModel(gain).eval(), images[sel], labels[sel], config=config, name=m,
                               card={"method": m}, keys=keys[sel], groups=groups[sel], fold=fold)
            parts.append(r["_per_sample"])
        pooled = summarise(PerSample.concat(parts), config=config, name=f"cv-{m}", card={"method": m},
                           image_size=TINY_SIZE)
        pooled["cv"]["fold_results"] = [{"fold": f, "clean": {"balanced_accuracy": 0.5, "auroc": 0.5}} for f in (0, 1)]
        write_results(pooled, root / "cv" / "results")
    return root
