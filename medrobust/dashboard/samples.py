"""Images of a model's test split to stress-test: none of its training patients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrobust.choices import CLASS_NAMES


@dataclass(frozen=True)
class Sample:
    key: str
    label: int
    path: str
    class_name: str = ""


def test_samples(roots: Sequence[str | Path], card: dict[str, Any], *, limit: int = 200) -> list[Sample]:
    """Images of the test split of a model's card (same seed and fractions), none of its training patients.

    Only images stored as files are offered (MedMNIST arrays have none to show). Raises
    :class:`medrobust.data.DataError` when the folders cannot be read.
    """
    from medrobust.data import read_records, split_from_info

    records, report = read_records([Path(r) for r in roots])
    split_info = card.get("split", {}) or {}
    split = split_from_info(records, split_info)
    train_patients = set(split_info.get("train_patients", []))
    test = set(split.images["test"])
    names = tuple(getattr(report, "classes", CLASS_NAMES))
    out = [Sample(r.key, r.label, r.path, names[r.label]) for r in records
           if r.key in test and r.patient not in train_patients and Path(r.path).is_file()]
    return out[:limit]


test_samples.__test__ = False  # not a pytest test despite its name
