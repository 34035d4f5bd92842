"""Writers of small synthetic data sets in the "bring your own data" layouts of ``medrobust.data``.

* :func:`write_manifest`: a CSV manifest (path, label, patient, source[, split]) plus its PNGs.
* :func:`write_image_folder`: an ImageFolder tree ``<root>/<class>/[...]/<image>``.
* :func:`write_medmnist_npz`: a MedMNIST-format ``.npz`` (grey or RGB, single- or multi-label).

Every writer is keyword-only after the target path and returns a :class:`Synthetic` saying what
``read_records`` must make of it (record keys -> class name, patients, fixed splits, drops). The
images are learnable: each class has its own brightness and a bright blob at its own place
(:func:`class_image`), so a smoke training on any layout can beat chance within a few steps.
By default each class has 24+ images (12 patients with 2 images each in a manifest).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: Three class names that sort differently from their order here (tests of explicit class orders).
CLASSES: tuple[str, str, str] = ("normal", "pneumonia", "covid")
SPLITS: tuple[str, str, str] = ("train", "val", "test")


@dataclass
class Synthetic:
    """A written data set and what ``medrobust.data.read_records`` must make of it."""

    root: Path  # what to pass as a data root: the CSV, the folder or the .npz
    classes: tuple[str, ...]  # the class names read_records derives from the data, in label order
    labels: dict[str, str] = field(default_factory=dict)  # record key -> class name, every kept image
    patients: dict[str, str] = field(default_factory=dict)  # record key -> patient key
    splits: dict[str, str | None] = field(default_factory=dict)  # record key -> fixed split (None: random)
    dropped: dict[str, int] = field(default_factory=dict)  # drop reason -> count

    @property
    def kept(self) -> int:
        return len(self.labels)

    @property
    def per_class(self) -> dict[str, int]:
        return dict(Counter(self.labels.values()))


def class_image(label: int, *, n_classes: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """A float (size, size) grey image in [0, 1] that shows its class.

    Class ``label`` of ``n_classes`` has background brightness ``0.15 + 0.35 * label / (n_classes - 1)``
    and a bright disc placed on a circle at angle ``2 pi label / n_classes``, plus a little noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    level = 0.15 + 0.35 * label / max(1, n_classes - 1)
    img = level + 0.04 * rng.standard_normal((size, size))
    angle = 2 * math.pi * label / n_classes
    cy = size / 2 + size * 0.22 * math.sin(angle) + rng.uniform(-1, 1)
    cx = size / 2 + size * 0.22 * math.cos(angle) + rng.uniform(-1, 1)
    r = size * 0.16
    img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, 0.92, img)
    return np.clip(img, 0.0, 1.0)


def _to_u8(arr: np.ndarray) -> np.ndarray:
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_png(path: str | Path, arr: np.ndarray) -> Path:
    """Save a [0, 1] grey array as an 8-bit grey PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_u8(arr), "L").save(path, format="PNG")
    return path


def _fixed_split(i: int) -> str:
    """Patient i's fixed split in a manifest with a split column: 6 of 10 train, 2 val, 2 test."""
    return SPLITS[0] if i % 10 < 6 else SPLITS[1] if i % 10 < 8 else SPLITS[2]


def write_manifest(base: str | Path, *, name: str = "manifest.csv", classes: Sequence[str] = CLASSES,
                   patients_per_class: int = 12, images_per_patient: int = 2,
                   sources: Sequence[str] = ("site-a", "site-b"), with_patient: bool = True,
                   with_source: bool = True, with_split: bool = False, bad_rows: bool = False,
                   size: int = 32, seed: int = 0) -> Synthetic:
    """A CSV manifest ``base/name`` with PNGs under ``base/images/<class>/`` (paths relative to the CSV).

    Parameters
    ----------
    base
        The folder to write into (created).
    name
        The CSV's file name; its stem is the default source.
    classes
        Class names, written in this order (read_records sorts them unless told the order).
    patients_per_class, images_per_patient
        Each class has ``patients_per_class`` patients with ``images_per_patient`` images each.
    sources
        Patients alternate between these sites (``source`` column, if ``with_source``).
    with_patient, with_source, with_split
        Whether the ``patient``, ``source`` and ``split`` columns are written. With ``with_split`` each
        patient's images share one fixed split (6 of every 10 patients train, 2 val, 2 test).
    bad_rows
        Add one row per drop reason: "image file missing", "empty label", "duplicate path" (the first
        image listed again) and "invalid split value" (which also adds the split column).
    size, seed
        Image size in pixels; seed of the image noise.
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    csv_path = base / name
    stem = csv_path.stem
    out = Synthetic(root=csv_path, classes=tuple(sorted(classes)))
    rows: list[dict[str, str]] = []
    k = 0
    for c, cls in enumerate(classes):
        for p in range(patients_per_class):
            pid = f"{cls}-{p:03d}"
            source = sources[p % len(sources)] if with_source else stem
            split = _fixed_split(p) if with_split else ""
            for j in range(images_per_patient):
                rel = f"images/{cls}/{pid}-{j}.png"
                write_png(base / rel, class_image(c, n_classes=len(classes), size=size, seed=seed * 100_000 + k))
                k += 1
                rows.append({"path": rel, "label": cls, "patient": pid, "source": source, "split": split})
                key = f"{source}/{rel}"
                out.labels[key] = cls
                out.patients[key] = f"{source}:{pid}" if with_patient else f"{source}:{rel}"
                out.splits[key] = split or None
    if bad_rows:
        first = dict(rows[0])
        rows.append({**first, "path": "images/absent.png"})
        rows.append({**first, "path": rows[1]["path"], "label": ""})
        rows.append(dict(first))
        extra = write_png(base / "images" / "extra.png", class_image(0, n_classes=len(classes), size=size))
        rows.append({**first, "path": extra.relative_to(base).as_posix(), "split": "tset"})
        out.dropped = {"image file missing": 1, "empty label": 1, "duplicate path": 1, "invalid split value": 1}
    columns = ["path", "label"] + (["patient"] if with_patient else []) + (["source"] if with_source else [])
    columns += ["split"] if with_split or bad_rows else []
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def append_manifest_rows(csv_path: str | Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Append rows to a manifest, keeping its columns (cells of absent columns are ignored)."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as fh:
        columns = next(csv.reader(fh))
    with open(csv_path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore").writerows(rows)


def write_image_folder(base: str | Path, *, name: str = "xray-folder", classes: Sequence[str] = CLASSES,
                       per_class: int = 24, nested: bool = True, junk: bool = True, size: int = 32,
                       seed: int = 0) -> Synthetic:
    """An ImageFolder tree ``base/name/<class>/<image>.png``.

    With ``nested``, every third image of a class lies in ``<class>/batch-2/``; with ``junk``, each
    class folder also holds a ``notes.txt`` and a hidden ``.thumb.png`` that read_records must ignore.
    """
    root = Path(base) / name
    out = Synthetic(root=root, classes=tuple(sorted(classes)))
    k = 0
    for c, cls in enumerate(classes):
        for i in range(per_class):
            rel = f"batch-2/img-{i:03d}.png" if nested and i % 3 == 2 else f"img-{i:03d}.png"
            write_png(root / cls / rel, class_image(c, n_classes=len(classes), size=size, seed=seed * 100_000 + k))
            k += 1
            key = f"{name}/{cls}/{rel}"
            out.labels[key] = cls
            out.patients[key] = f"{name}:{cls}/{rel}"
            out.splits[key] = None
        if junk:
            (root / cls / "notes.txt").write_text("not an image\n")
            write_png(root / cls / ".thumb.png", class_image(c, n_classes=len(classes), size=8))
    return out


def write_medmnist_npz(path: str | Path, *, n_classes: int = 3, counts: Mapping[str, int] | None = None,
                       size: int = 28, rgb: bool = False, multi_label: bool = False, compressed: bool = False,
                       seed: int = 0) -> Synthetic:
    """A ``.npz`` in the layout the ``medmnist`` package saves (``train_images``, ``train_labels``, ...).

    Parameters
    ----------
    path
        The file to write (its stem is the source; avoid MedMNIST's own names such as ``pneumoniamnist``
        unless the test wants ``medmnist.INFO``'s class names).
    n_classes
        Labels 0 .. n_classes - 1, in turn; class names "0", "1", ... (no ``medmnist.INFO`` entry).
    counts
        Images per class in each part; default ``{"train": 24, "val": 4, "test": 8}``.
    size
        Images are uint8 (n, size, size), or (n, size, size, 3) with ``rgb``; an RGB image's channels
        differ but its ITU-R 601 luma is the grey picture (up to rounding).
    multi_label
        Write labels with ``n_classes`` 0/1 columns (as ChestMNIST does) instead of (n, 1).
    compressed
        Use ``np.savez_compressed`` (what medmnist does) instead of ``np.savez``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = dict(counts or {"train": 24, "val": 4, "test": 8})
    stem = path.stem
    out = Synthetic(root=path, classes=tuple(str(c) for c in range(n_classes)))
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    k = 0
    for part in SPLITS:
        n = counts.get(part, 0) * n_classes
        labels = np.arange(n) % n_classes
        grey = np.stack([class_image(int(y), n_classes=n_classes, size=size, seed=seed * 100_000 + k + i)
                         for i, y in enumerate(labels)]) if n else np.zeros((0, size, size))
        k += n
        if rgb:
            # Tint each image while keeping its luma: shift R and B against each other.
            tint = rng.uniform(-0.08, 0.08, size=(n, 1, 1))
            r_ch = grey + tint
            b_ch = grey - tint * 0.299 / 0.114
            g_ch = grey
            images = _to_u8(np.stack([r_ch, g_ch, b_ch], axis=-1))
        else:
            images = _to_u8(grey)
        arrays[f"{part}_images"] = images
        if multi_label:
            multi = np.zeros((n, n_classes), dtype=np.uint8)
            multi[np.arange(n), labels] = 1
            arrays[f"{part}_labels"] = multi
        else:
            arrays[f"{part}_labels"] = labels.astype(np.uint8).reshape(-1, 1)
        for i, y in enumerate(labels.tolist()):
            key = f"{stem}/{part}/{i}"
            out.labels[key] = str(y)
            out.patients[key] = f"{stem}:{part}/{i}"
            out.splits[key] = part
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return out
