"""Shared fixtures for the package tests: tiny synthetic data folders in both upstream layouts, and an
isolated cache. (Dashboard fixtures live in tests/dashboard_fixtures.py; keep this file for data.)

Two roots are built per test in ``tmp_path``:

* ``covid-chestxray`` (ieee8023 layout): ``metadata.csv`` with patientid, finding, view, modality,
  folder, filename; images in ``images/``.
* ``actualmed`` (Actualmed layout): ``metadata.csv`` with patientid, finding, view, imagename
  (no modality column), finding spelt "No finding", some findings empty.

Images come in every mode the package has to read (L, RGB, RGBA, P, 16-bit grey, JPEG), in
several non-square sizes. A COVID-19 image has a bright blob in the middle, a non-COVID image
has none, so a few training steps can learn something. Each root also carries the rows that
must be dropped: a missing file, an empty finding, a lateral view, a CT (covid root only).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

MODES = ("L", "RGB", "RGBA", "P", "I;16", "JPEG")

# The tests use tiny tensors: one intra-op thread is as fast, and far faster on a machine whose
# cores are busy with a training job (idle worker threads spin waiting for a core).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never read or write ~/.cache/medrobust, and never pick up the caller's MEDROBUST_DATA."""
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "mr-cache"))
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    # Tests pin the fp32 CPU path; an auto-detected bf16 autocast would change the numerics.
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")


def xray_array(label: int, *, h: int = 48, w: int = 44, seed: int = 0) -> np.ndarray:
    """A float (h, w) image in [0, 1]: a dim noisy background, plus a bright blob if label == 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.25 + 0.08 * rng.standard_normal((h, w))
    if label == 1:
        cy, cx = h / 2 + rng.uniform(-2, 2), w / 2 + rng.uniform(-2, 2)
        r = min(h, w) * 0.28
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, 0.9, img)
    return np.clip(img, 0.0, 1.0)


def write_image(path: str | Path, arr: np.ndarray, mode: str = "L") -> Path:
    """Save a [0, 1] grey array as ``mode`` (one of :data:`MODES`; "JPEG" is an L-mode JPEG)."""
    path = Path(path)
    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if mode == "L":
        Image.fromarray(u8, "L").save(path, format="PNG")
    elif mode == "RGB":
        Image.fromarray(np.stack([u8] * 3, -1), "RGB").save(path, format="PNG")
    elif mode == "RGBA":
        alpha = np.full_like(u8, 200)
        Image.fromarray(np.stack([u8, u8, u8, alpha], -1), "RGBA").save(path, format="PNG")
    elif mode == "P":
        Image.fromarray(u8, "L").convert("P").save(path, format="PNG")  # 8-bit palette PNG, grey palette
    elif mode == "I;16":
        Image.fromarray((np.clip(arr, 0, 1) * 65535).round().astype(np.uint16)).save(path, format="PNG")
    elif mode == "JPEG":
        Image.fromarray(u8, "L").save(path, format="JPEG", quality=95)
    else:  # pragma: no cover - a typo in a test
        raise ValueError(mode)
    return path


@dataclass
class Root:
    """A synthetic data folder and what read_records must make of it."""

    path: Path
    kept: int = 0
    per_class: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    dropped: dict[str, int] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)  # patient ids of kept rows
    images: dict[str, int] = field(default_factory=dict)  # filename -> label of kept rows
    multi_patient: str = ""  # a patient with several kept images


def _drop(root: Root, why: str) -> None:
    root.dropped[why] = root.dropped.get(why, 0) + 1


def make_covid_root(base: str | Path, *, name: str = "covid-chestxray", n_covid: int = 12, n_other: int = 8,
                    seed: int = 0) -> Root:
    """An ieee8023/covid-chestxray-dataset style folder: ``n_covid`` COVID-19 patients (the first,
    patient "100", with four images), ``n_other`` non-COVID patients, and one row per drop reason."""
    path = Path(base) / name
    (path / "images").mkdir(parents=True)
    root = Root(path=path, multi_patient="100")
    rows: list[dict[str, str]] = []
    k = 0

    def add(pid: str, finding: str, label: int, *, view: str = "PA", modality: str = "X-ray", write: bool = True,
            keep: bool = True) -> None:
        nonlocal k
        mode = MODES[k % len(MODES)]
        ext = "jpg" if mode == "JPEG" else "png"
        fname = f"img{k:03d}-{pid}.{ext}"
        h, w = 40 + 4 * (k % 4), 44 + 6 * (k % 3)
        if write:
            write_image(path / "images" / fname, xray_array(label, h=h, w=w, seed=seed * 1000 + k), mode)
        rows.append({"patientid": pid, "offset": "", "sex": "M", "age": "50", "finding": finding, "view": view,
                     "modality": modality, "date": "2020", "location": "Somewhere, Earth", "folder": "images",
                     "filename": fname, "url": "", "license": "CC BY", "clinical_notes": "synthetic, with a comma"})
        if keep:
            root.kept += 1
            root.per_class[label] += 1
            root.patients.add(pid)
            root.images[fname] = label
        k += 1

    # Patient 100 has four images, all COVID-19 (one with the joined "COVID-19, ARDS" finding).
    for view in ("PA", "AP", "AP Supine", "AP"):
        add("100", "COVID-19, ARDS" if view == "AP Supine" else "COVID-19", 1, view=view)
    for i in range(n_covid - 1):
        add(str(200 + i), "COVID-19", 1, view="PA" if i % 2 else "AP")
    others = ("No Finding", "Pneumonia", "SARS", "Streptococcus", "Pneumocystis")
    for i in range(n_other):
        add(str(300 + i), others[i % len(others)], 0, view="PA" if i % 2 else "AP")
    # Rows that must be dropped, one per reason.
    add("400", "COVID-19", 1, write=False, keep=False)
    _drop(root, "image file missing")
    add("401", "", 1, keep=False)
    _drop(root, "unlabelled (empty finding)")
    add("402", "COVID-19", 1, view="L", keep=False)
    _drop(root, "not a frontal view")
    add("403", "COVID-19", 1, modality="CT", keep=False)
    _drop(root, "not an X-ray")
    with open(path / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_actualmed_root(base: str | Path, *, name: str = "actualmed", n_covid: int = 6, n_other: int = 6,
                        n_empty: int = 2, seed: int = 1) -> Root:
    """An agchung/Actualmed-COVID-chestxray-dataset style folder (no modality column)."""
    path = Path(base) / name
    (path / "images").mkdir(parents=True)
    root = Root(path=path, multi_patient="Actualmed-COVID-000")
    rows: list[dict[str, str]] = []
    k = 0

    def add(pid: str, finding: str, label: int, *, view: str = "AP", write: bool = True, keep: bool = True) -> None:
        nonlocal k
        mode = MODES[(k + 3) % len(MODES)]
        ext = "jpg" if mode == "JPEG" else "png"
        fname = f"CR.1.2.840.{k:04d}.{ext}"
        if write:
            h, w = 48 - 2 * (k % 3), 40 + 5 * (k % 2)
            write_image(path / "images" / fname, xray_array(label, h=h, w=w, seed=seed * 1000 + k), mode)
        rows.append({"patientid": pid, "offset": "", "finding": finding, "view": view, "imagename": fname,
                     "notes": "date taken (YYYYMMDD): 20200319"})
        if keep:
            root.kept += 1
            root.per_class[label] += 1
            root.patients.add(pid)
            root.images[fname] = label
        k += 1

    add("Actualmed-COVID-000", "COVID-19", 1)
    add("Actualmed-COVID-000", "COVID-19", 1, view="PA")
    for i in range(1, n_covid):
        add(f"Actualmed-COVID-{i:03d}", "COVID-19", 1)
    for i in range(n_other):
        add(f"ANON{i}", "No finding", 0)
    for i in range(n_empty):
        add(f"ANON-E{i}", "", 0, keep=False)
        _drop(root, "unlabelled (empty finding)")
    add("ANON-L", "No finding", 0, view="L", keep=False)
    _drop(root, "not a frontal view")
    add("ANON-M", "No finding", 0, write=False, keep=False)
    _drop(root, "image file missing")
    with open(path / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def covid_root(tmp_path) -> Root:
    return make_covid_root(tmp_path / "data")


@pytest.fixture
def actualmed_root(tmp_path) -> Root:
    return make_actualmed_root(tmp_path / "data")


@pytest.fixture
def both_roots(covid_root, actualmed_root) -> list[Root]:
    return [covid_root, actualmed_root]
