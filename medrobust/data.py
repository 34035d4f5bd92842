"""Chest X-ray data: read the data roots, preprocess once, cache, split by patient.

A *root* given to :func:`read_records` / :func:`load_dataset` is one of (several roots at once, any mix):

* An upstream COVID folder (it holds ``metadata.csv``):

  - ieee8023/covid-chestxray-dataset: ``metadata.csv`` with ``patientid``, ``finding``, ``view``,
    ``modality``, ``filename``; images in ``images/``.
  - agchung/Actualmed-COVID-chestxray-dataset: ``metadata.csv`` with ``patientid``, ``finding``,
    ``view``, ``imagename``; images in ``images/``.

  Classes ``("non-COVID", "COVID-19")``: label 1 if the finding contains "COVID-19", 0 for any other
  non-empty finding. Rows with an empty finding, a non-frontal view, a non-X-ray modality or a
  missing image file are dropped and counted by reason. The patient key is ``(source, patientid)``.

* A CSV manifest (a ``*.csv`` file) with the columns ``path`` (relative to the CSV's folder, or
  absolute) and ``label`` (a class name), and optionally ``patient``, ``source`` (site or collection;
  default: the CSV's stem) and ``split`` (``train``/``val``/``test``: a fixed assignment). Record key:
  ``<source>/<path as written>``; patient key ``<source>:<patient>``.

* An ImageFolder tree (a folder without ``metadata.csv``): each sub-folder is a class (sorted by
  name, as torchvision does) holding image files (png, jpg, jpeg, bmp, tif, tiff, dcm; any case),
  nested folders included. Hidden files and folders (a leading ".") are skipped. Source: the folder
  name; record key ``<source>/<class>/<file relative to the class folder>``.

* A MedMNIST ``.npz`` file as the ``medmnist`` package saves it (``train_images``, ``train_labels``,
  ``val_images``, ... ; uint8 images (n, H, W) or (n, H, W, 3), RGB turned grey with ITU-R 601 luma;
  labels (n, 1)). MedMNIST's train/val/test is the fixed split; multi-label files are refused. Class
  names come from ``medmnist.INFO`` where the package is installed and the file stem (``pneumoniamnist``,
  ``pneumoniamnist_64``) is one of its data sets, else ``"0"``, ``"1"``, ... The images have no file of
  their own: a record's ``path`` is ``<absolute npz path>::<part>/<index>`` (see :func:`npz_ref`) and its
  key ``<stem>/<part>/<index>``.

Classes come from the data unless ``classes=[...]`` fixes their list and order (then images of any
other class are dropped as "unknown class", their labels counted in :attr:`DataReport.unknown_labels`); all
roots of one call must agree on them. A file listed twice is dropped as a "duplicate path" when both rows
give one label, and is an error naming both labels when they differ. :func:`check_training_classes` refuses
labels that are probably mistakes (a class of fewer than :data:`MIN_CLASS_IMAGES` images, a name
:func:`similar_names` to another's) unless the caller lists them; :func:`check_split_parts` refuses an empty
part of a split, saying how many patients there are and what to do.

Manifests without a ``patient`` column, ImageFolder trees and MedMNIST files carry no patient ids:
each image is then its own patient, so the split is per image, not per patient. This is said in
:attr:`DataReport.warnings` (the one place such warnings live; callers print them).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from medrobust import settings
from medrobust.choices import CLASS_NAMES
from medrobust.fileio import atomic_write_text
from medrobust.imaging import ImageDecodeError, load_image_file, to_square

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP ERECT"})
#: Bump when preprocessing changes so stale caches are never reused.
PREPROCESS_VERSION = 1
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
#: The parts of a split, in order; also the values a manifest's ``split`` column may hold.
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
#: File suffixes (lower case) an ImageFolder tree's images may have.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"})
#: The arrays of a MedMNIST ``.npz`` file.
MEDMNIST_KEYS: tuple[str, ...] = tuple(f"{part}_{kind}" for part in SPLIT_NAMES for kind in ("images", "labels"))
#: ITU-R BT.601 luma weights (R, G, B), as Pillow's ``convert("L")`` uses them.
LUMA_601 = (0.299, 0.587, 0.114)

_SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_NPZ_REF = re.compile(r"^(?P<file>.+\.npz)::(?P<part>train|val|test)/(?P<index>\d+)$", re.IGNORECASE | re.DOTALL)
_NO_PATIENT = ("so every image counts as its own patient: the split is per image, not per patient "
               "(images of one patient can land in both training and test)")


#: A class with fewer images than this is refused for training unless ``classes`` lists it
#: (:func:`check_training_classes`): it is usually a mistyped label.
MIN_CLASS_IMAGES = 5


class DataError(ValueError):
    """The data folders cannot be used; the message says what to fix."""


class DataRootMissing(DataError):
    """A data root (folder, manifest or ``.npz``) does not exist; ``root`` is the path as given.

    The command line adds where the path came from (``--data``, ``MEDROBUST_DATA`` or the default).
    """

    def __init__(self, message: str, *, root: Path) -> None:
        super().__init__(message)
        self.root = root


@dataclass(frozen=True)
class Record:
    """One labelled image.

    ``label`` indexes the data's class list (:attr:`DataReport.classes`). For a manifest, ImageFolder
    or MedMNIST record ``finding`` is the class name and ``view`` is empty. ``split`` is a fixed
    assignment to "train", "val" or "test" (a manifest's ``split`` column, MedMNIST's own split), or
    None where the split is drawn at random.
    """

    source: str
    patient: str  # "<source>:<patientid>"
    filename: str
    path: str
    finding: str
    view: str
    label: int
    split: str | None = None

    @property
    def key(self) -> str:
        return f"{self.source}/{self.filename}"


@dataclass
class DataReport:
    """How many rows were kept and why the others were dropped, the class names, and warnings."""

    roots: list[str]
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    per_class: Counter = field(default_factory=Counter)
    classes: tuple[str, ...] = CLASS_NAMES
    warnings: list[str] = field(default_factory=list)
    #: The label names dropped as "unknown class" (not among the classes given), with their image counts.
    unknown_labels: Counter = field(default_factory=Counter)

    def _name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)

    def drop_unknown(self, name: str, *, n: int = 1) -> None:
        """Count ``n`` images of the label ``name`` dropped because it is not one of the classes given."""
        self.dropped["unknown class"] += n
        self.unknown_labels[name] += n

    def counts_line(self) -> str:
        """One line: the images kept per class and the rows dropped by reason (unknown labels named).

        Examples
        --------
        >>> r = DataReport(roots=["m.csv"], kept=3, per_class=Counter({0: 2, 1: 1}), classes=("a", "b"))
        >>> r.dropped["duplicate path"] += 1
        >>> r.drop_unknown("c", n=2)
        >>> r.counts_line()
        'kept 3 images (a 2, b 1); dropped 3: 1 duplicate path, 2 unknown class (c 2)'
        """
        labels = sorted(set(range(len(self.classes))) | set(self.per_class))
        classes = ", ".join(f"{self._name(c)} {self.per_class.get(c, 0)}" for c in labels)
        text = f"kept {self.kept} images ({classes})"
        if not sum(self.dropped.values()):
            return text + "; dropped none"
        reasons = []
        for why, n in sorted(self.dropped.items()):
            names = (" (" + ", ".join(f"{k} {v}" for k, v in sorted(self.unknown_labels.items())) + ")"
                     if why == "unknown class" and self.unknown_labels else "")
            reasons.append(f"{n} {why}{names}")
        return f"{text}; dropped {sum(self.dropped.values())}: {', '.join(reasons)}"

    def summary(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        classes = ", ".join(f"{self._name(c)} {n}" for c, n in sorted(self.per_class.items()))
        text = f"kept {self.kept} images ({classes}); dropped: {drops}"
        return text + "".join(f"; warning: {w}" for w in self.warnings)

    def to_dict(self) -> dict:
        return {"roots": self.roots, "kept": self.kept, "dropped": dict(self.dropped),
                "per_class": {self._name(c): n for c, n in self.per_class.items()},
                "classes": list(self.classes), "warnings": list(self.warnings),
                "unknown_labels": dict(self.unknown_labels)}


def _label(finding: str) -> int | None:
    finding = finding.strip()
    if not finding:
        return None
    return 1 if "COVID-19" in finding else 0


def npz_ref(path: str) -> tuple[str, str, int] | None:
    """Split a MedMNIST record's path ``<file.npz>::<part>/<index>`` into its parts (None for a file).

    Examples
    --------
    >>> npz_ref("/data/pneumoniamnist.npz::val/12")
    ('/data/pneumoniamnist.npz', 'val', 12)
    >>> npz_ref("/data/images/a.png") is None
    True
    """
    m = _NPZ_REF.match(path)
    if m is None:
        return None
    return m["file"], m["part"].lower(), int(m["index"])


# ---- one reader per layout: each returns (its class names, [(record, class name)]) ---------------
# Records come back with label -1 (the COVID layout: its own 0/1); read_records numbers the classes.

_Items = list[tuple[Record, str]]


def _read_covid(root: Path, source: str, wanted: dict[str, int] | None, report: DataReport) -> _Items:
    meta = root / "metadata.csv"
    items: _Items = []
    with open(meta, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        name_col = "filename" if "filename" in cols else "imagename" if "imagename" in cols else None
        missing = {"patientid", "finding", "view"} - cols
        if name_col is None or missing:
            need = sorted(missing | ({"filename or imagename"} if name_col is None else set()))
            raise DataError(f"{meta} lacks the column(s) {', '.join(need)}.")
        img_dir = root / "images"
        for row in reader:
            modality = (row.get("modality") or "X-ray").strip()
            if modality.lower() not in ("x-ray", "xray", "cr", "dx"):
                report.dropped["not an X-ray"] += 1
                continue
            view = (row.get("view") or "").strip()
            if view.upper() not in FRONTAL_VIEWS:
                report.dropped["not a frontal view"] += 1
                continue
            label = _label(row.get("finding") or "")
            if label is None:
                report.dropped["unlabelled (empty finding)"] += 1
                continue
            if wanted is not None and CLASS_NAMES[label] not in wanted:
                report.drop_unknown(CLASS_NAMES[label])
                continue
            fname = (row.get(name_col) or "").strip()
            folder = (row.get("folder") or "images").strip() or "images"
            path = root / folder / fname if fname else None
            if path is None or not path.is_file():
                alt = img_dir / fname if fname else None
                if alt is not None and alt.is_file():
                    path = alt
                else:
                    report.dropped["image file missing"] += 1
                    continue
            pid = (row.get("patientid") or "").strip() or f"row-{fname}"
            items.append((Record(source=source, patient=f"{source}:{pid}", filename=fname, path=str(path),
                                 finding=(row.get("finding") or "").strip(), view=view, label=label),
                          CLASS_NAMES[label]))
    return items


def _read_manifest(csv_path: Path, default_source: str, wanted: dict[str, int] | None,
                   report: DataReport) -> tuple[tuple[str, ...], _Items]:
    folder = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        cols = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            raise DataError(f"The manifest {csv_path} lacks the column(s) {', '.join(missing)} (a manifest needs "
                            "path and label; patient, source and split are optional).")
        rows = list(reader)

    def cell(row: dict, name: str) -> str:
        return (row.get(cols[name]) or "").strip() if name in cols else ""

    names = tuple(sorted({cell(row, "label") for row in rows} - {""}))
    has_patient = "patient" in cols
    if not has_patient:
        report.warnings.append(f"{csv_path} has no patient column, {_NO_PATIENT}.")
    items: _Items = []
    no_pid = 0
    for row in rows:
        name = cell(row, "label")
        if not name:
            report.dropped["empty label"] += 1
            continue
        if wanted is not None and name not in wanted:
            report.drop_unknown(name)
            continue
        raw_split = cell(row, "split")
        split = _SPLIT_VALUES.get(raw_split.lower()) if raw_split else None
        if raw_split and split is None:
            report.dropped["invalid split value"] += 1
            continue
        written = cell(row, "path")
        path = Path(written) if written else None
        if path is not None and not path.is_absolute():
            path = folder / path
        if path is None or not path.is_file():
            report.dropped["image file missing"] += 1
            continue
        source = cell(row, "source") or default_source
        pid = cell(row, "patient")
        if has_patient and not pid:
            no_pid += 1
        items.append((Record(source=source, patient=f"{source}:{pid or written}", filename=written, path=str(path),
                             finding=name, view="", label=-1, split=split), name))
    if no_pid:
        report.warnings.append(f"{csv_path}: {no_pid} row(s) have no patient id; each of those images counts as "
                               "its own patient, so for them the split is per image, not per patient.")
    return names, items


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, links followed once, hidden entries skipped), sorted."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out)


def _read_image_folder(root: Path, source: str, wanted: dict[str, int] | None,
                       report: DataReport) -> tuple[tuple[str, ...], _Items]:
    found: dict[str, list[Path]] = {}
    empty: list[str] = []
    for sub in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name):
        files = _image_files(sub)
        if files:
            found[sub.name] = files
        else:
            empty.append(sub.name)
    if not found:
        raise DataError(f"Data folder {root} has no metadata.csv (the upstream COVID layout) and no class "
                        "sub-folders holding images (an ImageFolder tree: <folder>/<class>/<image>).")
    if empty:
        report.warnings.append(f"{root}: the sub-folder(s) {', '.join(empty)} hold no image file and are not classes.")
    report.warnings.append(f"{root} is an ImageFolder tree without patient ids, {_NO_PATIENT}.")
    items: _Items = []
    for name, files in found.items():
        if wanted is not None and name not in wanted:
            report.drop_unknown(name, n=len(files))
            continue
        for f in files:
            rel = f"{name}/{f.relative_to(root / name).as_posix()}"
            items.append((Record(source=source, patient=f"{source}:{rel}", filename=rel, path=str(f),
                                 finding=name, view="", label=-1), name))
    return tuple(found), items


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array inside an ``.npz`` without reading its data."""
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape), dtype


def _medmnist_class_names(stem: str) -> tuple[str, ...] | None:
    """The class names ``medmnist.INFO`` gives a file stem such as ``pneumoniamnist_64`` (None if unknown)."""
    try:
        import medmnist  # optional: only for the class names
    except ImportError:
        return None
    info = getattr(medmnist, "INFO", None) or {}
    entry = info.get(re.sub(r"_\d+$", "", stem.lower()))
    labels = entry.get("label") if isinstance(entry, dict) else None
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        return tuple(str(labels[k]) for k in sorted(labels, key=int))
    except (TypeError, ValueError):
        return None


def _read_npz(path: Path, source: str, wanted: dict[str, int] | None,
              report: DataReport) -> tuple[tuple[str, ...], _Items]:
    fmt = ("expected the MedMNIST layout: train_images, train_labels, val_images, val_labels, "
           "test_images, test_labels")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {m[:-4]: m for m in zf.namelist() if m.endswith(".npy")}
            missing = [k for k in MEDMNIST_KEYS if k not in members]
            if missing:
                raise DataError(f"The .npz file {path} lacks the array(s) {', '.join(missing)} ({fmt}).")
            shapes = {part: _npy_header(zf, members[f"{part}_images"]) for part in SPLIT_NAMES}
        with np.load(path, allow_pickle=False) as npz:
            labels = {part: np.asarray(npz[f"{part}_labels"]) for part in SPLIT_NAMES}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(f"Cannot read the .npz file {path} ({exc}); {fmt}.") from None
    for part in SPLIT_NAMES:
        shape, dtype = shapes[part]
        ok_shape = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
        if not ok_shape or dtype != np.uint8 or min(shape[1:3], default=0) < 1:
            raise DataError(f"{path}: {part}_images is {dtype} {shape}; MedMNIST images are uint8 (n, H, W) "
                            "or (n, H, W, 3).")
        y = labels[part]
        if y.ndim == 2 and y.shape[1] > 1:
            raise DataError(f"{path} holds multi-label targets ({y.shape[1]} label columns, as ChestMNIST does); "
                            "medrobust trains single-label classifiers, so multi-label MedMNIST sets are not "
                            "supported.")
        if y.ndim > 2 or y.size != shape[0]:
            raise DataError(f"{path}: {part}_labels has shape {y.shape}, but {part}_images holds {shape[0]} "
                            "images; expected labels of shape (n, 1).")
        if not np.issubdtype(y.dtype, np.integer) and not (
                np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise DataError(f"{path}: {part}_labels are {y.dtype}; expected integer class numbers.")
        labels[part] = y.reshape(-1).astype(np.int64)
    names = _medmnist_class_names(path.stem)
    if names is None:
        top = max((int(y.max()) for y in labels.values() if y.size), default=-1)
        names = tuple(str(i) for i in range(top + 1))
    report.warnings.append(f"{path}: MedMNIST has no patient ids, {_NO_PATIENT}.")
    file = str(path.resolve())
    items: _Items = []
    for part in SPLIT_NAMES:
        for i, y in enumerate(labels[part].tolist()):
            if not 0 <= y < len(names):
                report.drop_unknown(str(y))
                continue
            name = names[y]
            if wanted is not None and name not in wanted:
                report.drop_unknown(name)
                continue
            items.append((Record(source=source, patient=f"{source}:{part}/{i}", filename=f"{part}/{i}",
                                 path=f"{file}::{part}/{i}", finding=name, view="", label=-1, split=part), name))
    return names, items


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"classes must be a list of class names, got {classes!r}.")
    out = tuple(c.strip() for c in classes)
    if any(not c for c in out):
        raise DataError("classes holds an empty class name.")
    dupes = sorted(c for c, n in Counter(out).items() if n > 1)
    if dupes:
        raise DataError(f"classes names {', '.join(dupes)} more than once.")
    return out


def _missing_root_text(root: Path) -> str:
    """What a missing data root is (by its suffix) and where it was looked for."""
    kind = {".csv": "Manifest", ".npz": "MedMNIST file"}.get(root.suffix.lower(), "Data folder")
    where = "" if root.is_absolute() else f" (looked for in {Path.cwd()})"
    return f"{kind} {root} does not exist{where}; check the path."


def read_records(roots: Sequence[Path | str] | Path | str, *,
                 classes: Sequence[str] | None = None) -> tuple[list[Record], DataReport]:
    """Read every root (COVID folder, CSV manifest, ImageFolder tree or MedMNIST ``.npz``) into records.

    Parameters
    ----------
    roots
        The data roots; see the module docstring for the layouts.
    classes
        The class names, in label order. Default: from the data (``CLASS_NAMES`` for the COVID
        layouts, the sorted label names of a manifest, the sorted sub-folders of an ImageFolder tree,
        MedMNIST's names). Given, it wins over the data: images of any other class are dropped as
        "unknown class", and roots that disagree on their classes may be mixed.

    Returns
    -------
    records, report
        The kept records sorted by key (keys are unique), and what was kept and dropped, the
        class names (``report.classes``) and warnings (``report.warnings``).

    Raises
    ------
    DataError
        If a root is missing or not of a known layout, lacks needed columns or arrays, holds
        multi-label targets, if the roots disagree on their classes (and ``classes`` is not given),
        if fewer than two classes result, or if two different images would get the same key.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if not roots:
        raise DataError("No data folder given: pass --data PATH or set MEDROBUST_DATA.")
    wanted_list = _check_classes(classes) if classes is not None else None
    wanted = {c: i for i, c in enumerate(wanted_list)} if wanted_list is not None else None
    report = DataReport(roots=[str(r) for r in roots])
    seen_sources: Counter = Counter()

    def source_for(name: str) -> str:
        seen_sources[name] += 1
        return name if seen_sources[name] == 1 else f"{name}-{seen_sources[name]}"

    per_root: list[tuple[Path, tuple[str, ...], _Items, bool]] = []  # root, its classes, items, COVID layout?
    for root in roots:
        if not root.exists():
            raise DataRootMissing(_missing_root_text(root), root=root)
        if root.is_file():
            suffix = root.suffix.lower()
            if suffix == ".csv":
                names, items = _read_manifest(root, source_for(root.stem), wanted, report)
            elif suffix == ".npz":
                names, items = _read_npz(root, source_for(root.stem), wanted, report)
            else:
                raise DataError(f"Data file {root} is neither a CSV manifest (.csv) nor a MedMNIST file (.npz).")
            per_root.append((root, names, items, False))
        elif (root / "metadata.csv").is_file():
            per_root.append((root, CLASS_NAMES, _read_covid(root, source_for(root.resolve().name), wanted, report),
                             True))
        elif root.is_dir():
            names, items = _read_image_folder(root, source_for(root.resolve().name), wanted, report)
            per_root.append((root, names, items, False))
        else:
            raise DataError(f"Data folder {root} is neither a folder nor a file.")

    if wanted_list is not None:
        final = wanted_list
    else:
        kinds = {names for _, names, _, _ in per_root}
        if len(kinds) > 1:
            listing = "; ".join(f"{root} has ({', '.join(names)})" for root, names, _, _ in per_root)
            raise DataError(f"The data roots disagree on their classes: {listing}. Make them agree, or give the "
                            "class list and order explicitly (classes=[...]).")
        final = per_root[0][1]
    if len(final) < 2:
        raise DataError(f"{len(final)} class ({', '.join(final) or 'none'}) in {', '.join(map(str, roots))}: a "
                        "classifier needs at least two classes.")
    index = {c: i for i, c in enumerate(final)}

    # The same file listed twice (upstream has a few duplicates) would leak between splits.
    # A file listed twice with two labels is an error, never a silent choice of the first label.
    unique: dict[str, Record] = {}
    covid_keys: set[str] = set()
    files: dict[str, str] = {}  # real path (or npz reference) -> key
    for root, _, items, covid in per_root:
        for r, name in items:
            if r.label != index[name]:
                r = replace(r, label=index[name])
            ref = npz_ref(r.path)
            real = r.path if ref is not None else os.path.realpath(r.path)
            if r.key in unique:
                if covid and r.key in covid_keys:
                    report.dropped["duplicate row"] += 1
                    continue
                if files.get(real) == r.key:
                    _check_same_label(unique[r.key], r, final)
                    report.dropped["duplicate path"] += 1
                    continue
                raise DataError(f"Two different images get the record key {r.key!r} ({unique[r.key].path} and "
                                f"{r.path}); give their manifests different source names.")
            if not covid and real in files:
                _check_same_label(unique[files[real]], r, final)
                report.dropped["duplicate path"] += 1
                continue
            unique[r.key] = r
            files.setdefault(real, r.key)
            if covid:
                covid_keys.add(r.key)
    records = sorted(unique.values(), key=lambda r: r.key)
    report.classes = final
    report.kept = len(records)
    report.per_class = Counter(r.label for r in records)
    if records:
        absent = [c for i, c in enumerate(final) if not report.per_class.get(i)]
        if absent:
            report.warnings.append(f"no image of the class(es) {', '.join(absent)} was kept.")
    return records, report


def _osa_distance(a: str, b: str) -> int:
    """Edit distance counting an insertion, a deletion, a substitution or a swap of neighbours as one edit.

    Examples
    --------
    >>> _osa_distance("covid", "covdi"), _osa_distance("covid", "covi"), _osa_distance("covid", "normal")
    (1, 1, 5)
    """
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _squash(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).casefold()


def similar_names(name: str, others: Sequence[str]) -> list[str]:
    """The names among ``others`` that ``name`` may be a mistyping of (or they of it), in their order.

    Two names are similar when they are equal but for case, spaces, ``-`` and ``_`` (``Covid`` and
    ``covid``, ``non COVID`` and ``non-COVID``), or when both have at least four characters and one
    letter tells them apart (an insertion, deletion, substitution or swap of neighbours: ``covdi`` and
    ``covid``). Names that differ only in digits (``grade1``, ``grade2``; MedMNIST's ``0``, ``1``) are
    not similar.

    Examples
    --------
    >>> similar_names("covdi", ["covid", "normal", "Covid"])
    ['covid', 'Covid']
    >>> similar_names("grade1", ["grade2", "grade 1"])
    ['grade 1']
    """
    a = _squash(name)
    out = []
    for other in others:
        b = _squash(other)
        if other == name:
            continue
        if a == b or (min(len(a), len(b)) >= 4 and _osa_distance(a, b) == 1
                      and re.sub(r"\d", "", a) != re.sub(r"\d", "", b)):
            out.append(other)
    return out


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def check_training_classes(report: DataReport, *, listed: Sequence[str] | None,
                           min_images: int = MIN_CLASS_IMAGES) -> None:
    """Refuse class labels that are probably mistakes before a model is trained on them.

    Parameters
    ----------
    report
        What :func:`read_records` (or :func:`load_dataset`) kept: the classes, their image counts, and the
        labels dropped as not among the classes given (:attr:`DataReport.unknown_labels`).
    listed
        The classes the user listed (``--classes``; None: the classes come from the data). A listed class
        is taken as it is, however small or however like another name.
    min_images
        The fewest images an unlisted class may have.

    Raises
    ------
    DataError
        In one line, naming the labels and saying what to do, if a listed class has no image; if an
        unlisted class has fewer than ``min_images`` images or a name :func:`similar_names` to another
        class's (the one with fewer images is named; "did you mean ..." names the other); or if a label
        dropped because ``listed`` leaves it out is similar to a listed class (its images would vanish).
    """
    listed_set = set(listed or ())
    counts = {c: report.per_class.get(i, 0) for i, c in enumerate(report.classes)}
    found = {**{c: n for c, n in counts.items() if n}, **report.unknown_labels}
    absent = [c for c in (listed or ()) if not counts.get(c)]
    if absent:
        names = "; ".join(f"{c!r}" + (f" (did you mean {' or '.join(map(repr, sim))}?)"
                                      if (sim := similar_names(c, list(found))) else "") for c in absent)
        labels = ", ".join(f"{c} {n}" for c, n in sorted(found.items())) or "none"
        raise DataError(f"--classes lists {names}, but no image is labelled so (labels in the data, with their "
                        f"images: {labels}); fix --classes (names must match the labels exactly, case included) "
                        "or the labels.")
    problems = []
    for name in sorted(found):
        n = found[name]
        if name in listed_set:
            continue
        unknown = name not in counts
        sims = [o for o in similar_names(name, list(found)) if o in listed_set or (
            not unknown and o in counts and (found[o], name) > (n, o))]
        if unknown and not any(o in listed_set for o in sims):
            continue  # a label left out of --classes on purpose: dropped and counted
        if not sims and n >= min_images:
            continue
        what = f"{name!r} ({_images(n)}{', not in --classes' if unknown else ''})"
        problems.append(f"{what}: did you mean {' or '.join(map(repr, sims))}?" if sims
                        else f"{what}: fewer than {min_images} images.")
    if problems:
        raise DataError(f"Suspicious class labels: {' '.join(problems)} A class needs at least {min_images} "
                        "images and a name unlike the others' (apart from case, spaces or one letter); fix these "
                        "labels in the data, or, if they are classes of their own, list every class to train, in "
                        "label order, with --classes (a listed class is taken as it is).")


def _check_same_label(first: Record, again: Record, classes: Sequence[str]) -> None:
    """Refuse an image listed twice (``first`` kept, ``again`` a duplicate) with two different labels."""
    if first.label == again.label:
        return
    keys = first.key if first.key == again.key else f"{first.key} and {again.key}"
    raise DataError(f"The image {first.path} is listed twice with different labels: {classes[first.label]!r} and "
                    f"{classes[again.label]!r} (as {keys}); keep one row, with the right label.")


def _inputs_hash(records: list[Record], size: int) -> str:
    h = hashlib.sha256(f"v{PREPROCESS_VERSION}|{size}".encode())
    npz_stats: dict[str, os.stat_result] = {}
    for r in records:
        ref = npz_ref(r.path)
        if ref is None:
            st = os.stat(r.path)
        else:  # MedMNIST images live in one file: its size and mtime stand for all of them
            st = npz_stats.get(ref[0]) or npz_stats.setdefault(ref[0], os.stat(ref[0]))
        # Nanosecond mtime: a file rewritten within the same second (same size) must invalidate the cache.
        h.update(f"|{r.key}|{r.label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass
class Dataset:
    """The whole preprocessed data set as one uint8 tensor (N, 1, S, S) plus labels and records."""

    images: torch.Tensor  # uint8
    labels: torch.Tensor  # int64
    records: list[Record]
    report: DataReport
    image_size: int
    inputs_hash: str

    def __len__(self) -> int:
        return len(self.records)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, index = label (from the data, or the ``classes`` given to :func:`load_dataset`)."""
        return self.report.classes

    def subset(self, keys: list[str]) -> "Dataset":
        index = {r.key: i for i, r in enumerate(self.records)}
        idx = [index[k] for k in keys]
        t = torch.tensor(idx, dtype=torch.long)
        return Dataset(images=self.images[t], labels=self.labels[t], records=[self.records[i] for i in idx],
                       report=self.report, image_size=self.image_size, inputs_hash=self.inputs_hash)

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255.0)


def _npz_images(file: str, part: str) -> np.ndarray:
    """All images of one part of a MedMNIST file (read once per :func:`load_dataset` call)."""
    with np.load(file, allow_pickle=False) as npz:
        return np.asarray(npz[f"{part}_images"])


def _npz_pixels(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W), (H, W, 1) or (H, W, 3) MedMNIST image as float32 grey in [0, 1] (RGB: ITU-R 601 luma)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[2] == 3:
        x = x @ np.asarray(LUMA_601, dtype=np.float32)
    elif x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim != 2:
        raise ImageDecodeError(f"A MedMNIST image of shape {image.shape} is not a 2-D picture.")
    return np.clip(x / 255.0, 0.0, 1.0)


def load_dataset(roots: Sequence[Path | str] | Path | str, *, image_size: int, use_cache: bool = True,
                 progress: bool = False, classes: Sequence[str] | None = None) -> Dataset:
    """Read, decode and resize every image once; later calls load the cached tensor in seconds.

    ``roots`` and ``classes`` are as for :func:`read_records`; the class names are ``Dataset.classes``.
    Unreadable images are dropped (counted as "image file unreadable"). The cache lives in
    ``settings.cache_dir()`` and is keyed by every input file's size and mtime (a MedMNIST file's
    for all its images), the labels and ``image_size``, so a changed input rebuilds it.
    """
    records, report = read_records(roots, classes=classes)
    if not records:
        what = "labelled frontal X-ray" if report.classes == CLASS_NAMES else "usable labelled image"
        raise DataError(f"No {what} found in {', '.join(report.roots)} ({report.summary()}).")
    key = _inputs_hash(records, image_size)
    cache = settings.cache_dir() / f"dataset-{key}.pt"
    all_keys = [r.key for r in records]
    if use_cache and cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            # ``keys`` are the images that decoded; ``all_keys`` every record the cache was built from
            # (older caches lack it: they only ever matched when every image decoded).
            if blob.get("all_keys", blob["keys"]) == all_keys:
                kept = set(blob["keys"])
                cached = [r for r in records if r.key in kept]
                if [r.key for r in cached] == blob["keys"] and blob["images"].shape[0] == len(cached):
                    unreadable = len(records) - len(cached)
                    if unreadable:
                        report.dropped["image file unreadable"] += unreadable
                    report.kept = len(cached)
                    report.per_class = Counter(r.label for r in cached)
                    return Dataset(images=blob["images"],
                                   labels=torch.tensor([r.label for r in cached], dtype=torch.long),
                                   records=cached, report=report, image_size=image_size, inputs_hash=key)
        except Exception:  # a corrupt cache is rebuilt, never trusted
            pass
    images = torch.empty((len(records), 1, image_size, image_size), dtype=torch.uint8)
    keep: list[int] = []
    arrays: dict[tuple[str, str], np.ndarray] = {}  # MedMNIST parts, each read once
    iterator = enumerate(records)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(records), desc=f"decoding at {image_size}px", unit="img")
    for i, r in iterator:
        ref = npz_ref(r.path)
        if ref is None:
            try:
                x = load_image_file(r.path, size=image_size)
            except (ImageDecodeError, OSError):
                report.dropped["image file unreadable"] += 1
                continue
        else:
            file, part, j = ref
            try:
                if (file, part) not in arrays:
                    arrays[file, part] = _npz_images(file, part)
                pixels = _npz_pixels(arrays[file, part][j])
            except (ImageDecodeError, OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile):
                report.dropped["image file unreadable"] += 1
                continue
            x = to_square(pixels, size=image_size)
        images[len(keep)] = (x * 255.0).round_().to(torch.uint8)
        keep.append(i)
    arrays.clear()
    records = [records[i] for i in keep]
    images = images[: len(keep)].clone()
    report.kept = len(records)
    report.per_class = Counter(r.label for r in records)
    if use_cache:  # best effort: a full or read-only cache folder costs speed next time, never the run
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"images": images, "keys": [r.key for r in records], "all_keys": all_keys}, tmp)
            os.replace(tmp, cache)
        except (OSError, RuntimeError) as exc:
            print(f"medrobust: note: could not write the data cache {cache} ({getattr(exc, 'strerror', None) or exc}); "
                  "continuing without it.", file=sys.stderr)
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return Dataset(images=images, labels=torch.tensor([r.label for r in records], dtype=torch.long),
                   records=records, report=report, image_size=image_size, inputs_hash=key)


@dataclass
class Split:
    """A patient-level split: image keys and patient keys per part."""

    seed: int
    fractions: tuple[float, float, float]
    images: dict[str, list[str]]
    patients: dict[str, list[str]]
    folds: int = 0  # 0: one random split by ``fractions``; K: fold ``fold`` of a K-fold partition
    fold: int = 0

    @property
    def hash(self) -> str:
        payload = json.dumps({"images": self.images}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hash"] = self.hash
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        split = cls(seed=int(d["seed"]), fractions=tuple(d["fractions"]), images=d["images"], patients=d["patients"],
                    folds=int(d.get("folds", 0)), fold=int(d.get("fold", 0)))
        if "hash" in d and d["hash"] != split.hash:
            raise DataError("The split file's hash does not match its contents; it was edited or corrupted.")
        return split

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"Cannot read the split file {path}: {exc}") from None


def _fixed_parts(by_patient: dict[str, list[Record]]) -> dict[str, str]:
    """The fixed part of every patient whose images carry one (``Record.split``); refuse a patient in two."""
    fixed: dict[str, str] = {}
    for pid, recs in sorted(by_patient.items()):
        parts = sorted({r.split for r in recs if r.split is not None})
        bad = [p for p in parts if p not in SPLIT_NAMES]
        if bad:
            raise DataError(f"Patient {pid} has an image with the split {bad[0]!r}; a fixed split is one of "
                            f"{', '.join(SPLIT_NAMES)}.")
        if len(parts) > 1:
            raise DataError(f"Patient {pid} has images in the fixed splits {' and '.join(parts)}; a patient must sit "
                            "in one split (fix the split column, or give those images different patient ids).")
        if parts:
            fixed[pid] = parts[0]
    return fixed


def split_by_patient(records: list[Record], *, seed: int, fractions: tuple[float, float, float] = DEFAULT_SPLIT) -> Split:
    """Assign whole patients to train/val/test, stratified by the patient's label.

    A patient's stratum is the highest label among their images (for the COVID data: "COVID-19" if
    any image is); each stratum's patients are shuffled with ``seed`` and cut at the cumulative
    fractions (rounded), so no patient is in two parts.

    Records with a fixed ``split`` (a manifest's split column, MedMNIST's own split) go to that part
    with their whole patient; only the other patients are split at random (so data that fix every
    image's split use no randomness at all).

    Raises
    ------
    ValueError
        If ``fractions`` are not three non-negative numbers summing to 1.
    DataError
        If a patient's images carry different fixed splits.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    fixed = _fixed_parts(by_patient)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    strata: dict[int, list[str]] = {}
    for pid, recs in sorted(by_patient.items()):
        if pid in fixed:
            parts[fixed[pid]].append(pid)
        else:
            strata.setdefault(max(r.label for r in recs), []).append(pid)
    rng = random.Random(seed)
    # Strata in label order; an absent stratum would shuffle an empty list, which draws nothing.
    for label in sorted(strata):
        pids = strata[label]
        rng.shuffle(pids)
        n_train, n_val, _ = _part_sizes(len(pids), fractions)
        parts["train"] += pids[:n_train]
        parts["val"] += pids[n_train : n_train + n_val]
        parts["test"] += pids[n_train + n_val :]
    images = {name: sorted(r.key for p in pids for r in by_patient[p]) for name, pids in parts.items()}
    return Split(seed=seed, fractions=tuple(fractions), images=images,
                 patients={k: sorted(v) for k, v in parts.items()})


def _patients_by_stratum(records: list[Record]) -> tuple[dict[str, list[Record]], dict[int, list[str]]]:
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    strata: dict[int, list[str]] = {}
    for pid, recs in sorted(by_patient.items()):
        strata.setdefault(max(r.label for r in recs), []).append(pid)
    return by_patient, strata


def split_kfold(records: list[Record], *, seed: int, folds: int, fold: int, val_fraction: float = 0.1) -> Split:
    """Fold ``fold`` of a patient-level, label-stratified ``folds``-fold partition.

    Each stratum's patients are shuffled with ``seed`` and dealt round-robin into the folds, so
    every patient is in exactly one test fold and the folds' class mixes differ by at most one
    patient per class (a patient's stratum is their highest label; any number of classes). Of the
    remaining patients, ``val_fraction`` of each stratum's total (at least one where the stratum has
    spare patients) is drawn for validation with a per-fold RNG; the rest train.

    Raises
    ------
    ValueError
        On a bad ``folds``, ``fold`` or ``val_fraction``.
    DataError
        If any record has a fixed ``split``.

    Examples
    --------
    >>> recs = [Record("s", f"s:{i}", f"{i}.png", "", "x", "PA", i % 2) for i in range(20)]
    >>> tests = [set(split_kfold(recs, seed=0, folds=5, fold=f).patients["test"]) for f in range(5)]
    >>> sorted(set().union(*tests)) == sorted({r.patient for r in recs}) and sum(map(len, tests)) == 20
    True
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}.")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}.")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if any(r.split is not None for r in records):
        raise DataError("The data fix their own split (a split column, or MedMNIST's train/val/test); "
                        "cross-validation needs data without a split column.")
    by_patient, strata = _patients_by_stratum(records)
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in sorted(strata):
        pids = strata[label]
        rng.shuffle(pids)
        test = pids[fold::folds]
        rest = [p for i, p in enumerate(pids) if i % folds != fold]
        n_val = min(len(rest) - 1, max(1, round(len(pids) * val_fraction))) if val_fraction > 0 else 0
        n_val = max(0, n_val)
        val = sorted(random.Random(f"{seed}/{folds}/{fold}/{label}").sample(rest, n_val))
        parts["test"] += test
        parts["val"] += val
        parts["train"] += [p for p in rest if p not in set(val)]
    images = {name: sorted(r.key for p in pids for r in by_patient[p]) for name, pids in parts.items()}
    train_frac = 1 - 1 / folds - val_fraction
    return Split(seed=seed, fractions=(train_frac, val_fraction, 1 / folds), images=images,
                 patients={k: sorted(v) for k, v in parts.items()}, folds=folds, fold=fold)


def split_from_info(records: list[Record], info: dict) -> Split:
    """Rebuild the split a checkpoint card (or ``split.json``) describes from the given records."""
    seed = int(info.get("seed", 0))
    fractions = tuple(info.get("fractions", DEFAULT_SPLIT))
    if int(info.get("folds", 0)):
        return split_kfold(records, seed=seed, folds=int(info["folds"]), fold=int(info.get("fold", 0)),
                           val_fraction=float(fractions[1]))
    return split_by_patient(records, seed=seed, fractions=fractions)


def _part_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """How many of a stratum's ``n`` patients :func:`split_by_patient` puts in train, val and test."""
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    if n >= 3 and fractions[2] > 0 and n_train + n_val >= n:
        n_train = max(1, n - n_val - 1)  # keep at least one patient of each class for testing
    train = min(n_train, n)
    val = min(n_val, n - train)
    return train, val, n - train - val


_PART_WORDS = {"train": "training", "val": "validation", "test": "test"}


def check_split_parts(split: Split, *, records: Sequence[Record], parts: Sequence[str],
                      classes: Sequence[str]) -> None:
    """Refuse a split in which any of ``parts`` holds no image, in one line that says what to do.

    Parameters
    ----------
    split
        The split of ``records``.
    records
        The records the split was drawn from.
    parts
        The parts that must hold images (of "train", "val", "test").
    classes
        The class names (index = label), to count each class's patients by name.

    Raises
    ------
    DataError
        Naming the empty part, how many images and patients (per class) the data hold and how they were
        split, and the remedy: more patients (as many as a class needs for one in that part), a split
        column that assigns that part, or fewer folds.
    """
    empty = [p for p in parts if not split.images[p]]
    if not empty:
        return
    part = empty[0]
    by_patient, strata = _patients_by_stratum(list(records))
    per_class = ", ".join(f"{classes[label] if 0 <= label < len(classes) else label} {len(p)}"
                          for label, p in sorted(strata.items()))
    tr, va, te = (f"{len(split.patients[p])} {_PART_WORDS[p]}" for p in SPLIT_NAMES)
    sizes = f"{tr}, {va} and {te}"
    head = (f"The {_PART_WORDS[part]} split is empty: the data hold {_images(len(records))} of "
            f"{len(by_patient)} patients ({per_class} patients), split into {sizes} patients")
    if records and all(r.split is not None for r in records):
        advice = (f"the data fix every image's split (a split column, or MedMNIST's own) and none is {part}: "
                  f"mark some patients {part}")
    elif split.folds:
        advice = (f"{split.folds}-fold cross-validation needs more patients of each class: give more data or "
                  "fewer folds")
    else:
        idx = SPLIT_NAMES.index(part)
        need = next((n for n in range(1, 10_001) if _part_sizes(n, split.fractions)[idx] >= 1), None)
        if need is None:
            advice = f"the split fractions {tuple(split.fractions)} give {part} no patient: give it a fraction"
        else:
            advice = (f"{part} gets {split.fractions[idx]:.0%} of each class's patients, rounded, so a class needs "
                      f"at least {need} patients: give more data, or assign patients to train, val and test "
                      "in a manifest's split column")
    raise DataError(f"{head}; {advice}.")


def check_no_overlap(*, train_patients: list[str] | set[str], eval_patients: list[str] | set[str]) -> None:
    """Refuse an evaluation whose patients were seen in training."""
    overlap = set(train_patients) & set(eval_patients)
    if overlap:
        raise DataError(
            f"{len(overlap)} patient(s) of the evaluation split were in the model's training split; "
            "evaluate on the split the model was trained with (its run's split.json)."
        )
