"""Chest X-ray data: read upstream-layout folders, preprocess once, cache, split by patient.

Supported layouts (several roots at once):

* ieee8023/covid-chestxray-dataset: ``metadata.csv`` with ``patientid``, ``finding``, ``view``,
  ``modality``, ``filename``; images in ``images/``.
* agchung/Actualmed-COVID-chestxray-dataset: ``metadata.csv`` with ``patientid``, ``finding``,
  ``view``, ``imagename``; images in ``images/``.

Labels: 1 if the finding contains "COVID-19", 0 for any other non-empty finding. Rows with an
empty finding, a non-frontal view, a non-X-ray modality or a missing image file are dropped and
counted by reason. The patient key is ``(source, patientid)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from medrobust import settings
from medrobust.choices import CLASS_NAMES
from medrobust.fileio import atomic_write_text
from medrobust.imaging import ImageDecodeError, load_image_file

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP ERECT"})
#: Bump when preprocessing changes so stale caches are never reused.
PREPROCESS_VERSION = 1
DEFAULT_SPLIT = (0.7, 0.1, 0.2)


class DataError(ValueError):
    """The data folders cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Record:
    source: str
    patient: str  # "<source>:<patientid>"
    filename: str
    path: str
    finding: str
    view: str
    label: int

    @property
    def key(self) -> str:
        return f"{self.source}/{self.filename}"


@dataclass
class DataReport:
    """How many rows were kept and why the others were dropped."""

    roots: list[str]
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    per_class: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        classes = ", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in sorted(self.per_class.items()))
        return f"kept {self.kept} images ({classes}); dropped: {drops}"

    def to_dict(self) -> dict:
        return {"roots": self.roots, "kept": self.kept, "dropped": dict(self.dropped),
                "per_class": {CLASS_NAMES[c]: n for c, n in self.per_class.items()}}


def _label(finding: str) -> int | None:
    finding = finding.strip()
    if not finding:
        return None
    return 1 if "COVID-19" in finding else 0


def read_records(roots: list[Path] | list[str]) -> tuple[list[Record], DataReport]:
    """Read every root's ``metadata.csv`` into labelled frontal X-ray records.

    Raises
    ------
    DataError
        If a root or its ``metadata.csv`` is missing, or the CSV lacks the needed columns.
    """
    roots = [Path(r) for r in roots]
    if not roots:
        raise DataError("No data folder given: pass --data PATH or set MEDROBUST_DATA.")
    report = DataReport(roots=[str(r) for r in roots])
    records: list[Record] = []
    seen_sources: Counter = Counter()
    for root in roots:
        meta = root / "metadata.csv"
        if not root.is_dir():
            raise DataError(f"Data folder {root} does not exist.")
        if not meta.is_file():
            raise DataError(f"Data folder {root} has no metadata.csv (expected the upstream layout).")
        source = root.resolve().name
        seen_sources[source] += 1
        if seen_sources[source] > 1:
            source = f"{source}-{seen_sources[source]}"
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
                records.append(Record(source=source, patient=f"{source}:{pid}", filename=fname,
                                      path=str(path), finding=(row.get("finding") or "").strip(),
                                      view=view, label=label))
    # The same file listed twice (upstream has a few duplicates) would leak between splits.
    unique: dict[str, Record] = {}
    for r in records:
        if r.key in unique:
            report.dropped["duplicate row"] += 1
        else:
            unique[r.key] = r
    records = sorted(unique.values(), key=lambda r: r.key)
    report.kept = len(records)
    report.per_class = Counter(r.label for r in records)
    return records, report


def _inputs_hash(records: list[Record], size: int) -> str:
    h = hashlib.sha256(f"v{PREPROCESS_VERSION}|{size}".encode())
    for r in records:
        st = os.stat(r.path)
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

    def subset(self, keys: list[str]) -> "Dataset":
        index = {r.key: i for i, r in enumerate(self.records)}
        idx = [index[k] for k in keys]
        t = torch.tensor(idx, dtype=torch.long)
        return Dataset(images=self.images[t], labels=self.labels[t], records=[self.records[i] for i in idx],
                       report=self.report, image_size=self.image_size, inputs_hash=self.inputs_hash)

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255.0)


def load_dataset(roots: list[Path] | list[str], *, image_size: int, use_cache: bool = True,
                 progress: bool = False) -> Dataset:
    """Read, decode and resize every image once; later calls load the cached tensor in seconds."""
    records, report = read_records(roots)
    if not records:
        raise DataError(f"No labelled frontal X-ray found in {', '.join(map(str, roots))} ({report.summary()}).")
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
    iterator = enumerate(records)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(records), desc=f"decoding at {image_size}px", unit="img")
    for i, r in iterator:
        try:
            x = load_image_file(r.path, size=image_size)
        except (ImageDecodeError, OSError):
            report.dropped["image file unreadable"] += 1
            continue
        images[len(keep)] = (x * 255.0).round_().to(torch.uint8)
        keep.append(i)
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


def split_by_patient(records: list[Record], *, seed: int, fractions: tuple[float, float, float] = DEFAULT_SPLIT) -> Split:
    """Assign whole patients to train/val/test, stratified by the patient's label.

    A patient is "COVID-19" if any of their images is; each stratum's patients are shuffled with
    ``seed`` and cut at the cumulative fractions (rounded), so no patient is in two parts.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    strata: dict[int, list[str]] = {0: [], 1: []}
    for pid, recs in sorted(by_patient.items()):
        strata[max(r.label for r in recs)].append(pid)
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        pids = strata[label]
        rng.shuffle(pids)
        n = len(pids)
        n_train = round(n * fractions[0])
        n_val = round(n * fractions[1])
        if n >= 3 and fractions[2] > 0 and n_train + n_val >= n:
            n_train = max(1, n - n_val - 1)  # keep at least one patient of each class for testing
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
    patient per class. Of the remaining patients, ``val_fraction`` of each stratum's total (at
    least one where the stratum has spare patients) is drawn for validation with a per-fold RNG;
    the rest train.

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


def check_no_overlap(*, train_patients: list[str] | set[str], eval_patients: list[str] | set[str]) -> None:
    """Refuse an evaluation whose patients were seen in training."""
    overlap = set(train_patients) & set(eval_patients)
    if overlap:
        raise DataError(
            f"{len(overlap)} patient(s) of the evaluation split were in the model's training split; "
            "evaluate on the split the model was trained with (its run's split.json)."
        )
