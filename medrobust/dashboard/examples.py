"""Example chest X-rays shipped with the dashboard, so the Stress test can be tried without an upload.

The images live in ``medrobust/dashboard/examples/`` beside ``examples.json`` (one record per image:
class, split of the shipped models, source, licence, attribution, changes) and ``ATTRIBUTION.md`` (the same,
for people). Every image is a frontal chest X-ray from the COVID-19 image data collection of Cohen et al.
(arXiv 2006.11988) whose licence there is CC BY 3.0 or CC BY 4.0; keep that rule when adding one.

This module imports neither Streamlit nor Plotly; the page in ``views/`` does the display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: The folder that holds the example images, ``examples.json`` and ``ATTRIBUTION.md``.
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: The index of the examples.
INDEX_FILE = EXAMPLES_DIR / "examples.json"
#: The licence notice for people.
ATTRIBUTION_FILE = EXAMPLES_DIR / "ATTRIBUTION.md"
#: The only licences an example may carry (spelt as in the collection's ``license`` column).
ALLOWED_LICENSES = ("CC BY 3.0", "CC BY 4.0")
#: Class names by label, as the rest of medrobust spells them.
CLASS_NAMES = {0: "non-COVID", 1: "COVID-19"}
#: Where the images come from.
DATASET_URL = "https://github.com/ieee8023/covid-chestxray-dataset"


class ExampleError(ValueError):
    """The shipped examples are missing or inconsistent (a packaging error, not a user error)."""


@dataclass(frozen=True)
class Example:
    """One shipped example X-ray and everything needed to credit it.

    Attributes
    ----------
    file : str
        File name inside :data:`EXAMPLES_DIR`, e.g. ``"example-1-covid19.png"``.
    label : int
        1 for COVID-19 (the finding contains "COVID-19"), 0 for any other finding.
    class_name : str
        ``"COVID-19"`` or ``"non-COVID"``.
    finding : str
        The ``finding`` column of the collection's ``metadata.csv``.
    view : str
        The projection (``"PA"``, ``"AP"``, ``"AP Supine"`` or ``"AP erect"``).
    split : str
        ``"test"``, ``"val"`` or ``"train"``: the image's part in the shipped models' patient-level split.
        Only ``"test"`` images are unseen by those models.
    patient_id : str
        The collection's ``patientid``.
    source_file : str
        The file name in the collection's ``images/`` folder.
    license : str
        ``"CC BY 3.0"`` or ``"CC BY 4.0"``.
    license_url : str
        The licence deed.
    source_url : str
        Where the image was first published (the ``url`` column, else the DOI).
    doi : str
        The ``doi`` column (may be empty).
    dataset_url : str
        The collection's repository.
    attribution : str
        Attribution text built from the metadata (location, publication address, DOI).
    changes : str
        What was changed relative to the source (greyscale, size, format).
    path : pathlib.Path
        Absolute path of the image file.
    """

    file: str
    label: int
    class_name: str
    finding: str
    view: str
    split: str
    patient_id: str
    source_file: str
    license: str
    license_url: str
    source_url: str
    doi: str
    dataset_url: str
    attribution: str
    changes: str
    path: Path

    @property
    def patient_key(self) -> str:
        """The patient as a model card's split lists it (``<collection>:<patient id>``)."""
        return f"{SOURCE_COLLECTION}:{self.patient_id}"

    def seen_by(self, cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, bool | None]:
        """Per model name: True if its card lists this patient among its training or validation patients, False if
        the card lists patients and this one is not among them, None if the card lists none (unknown)."""
        out: dict[str, bool | None] = {}
        for name, card in cards.items():
            split = (card or {}).get("split") or {}
            seen = set(split.get("train_patients") or ()) | set(split.get("val_patients") or ())
            out[name] = (self.patient_key in seen) if seen else None
        return out

    def exposure(self, cards: Mapping[str, Mapping[str, Any] | None]) -> str:
        """What can be said about these models having seen this image, checked against their cards."""
        seen = self.seen_by(cards)
        trained = [n for n, v in seen.items() if v]
        unknown = [n for n, v in seen.items() if v is None]
        if trained:
            return f"seen in training by {', '.join(trained)}"
        if unknown:
            return f"unknown whether {', '.join(unknown)} saw it (no training patients on the card)"
        return "never seen by these models (checked against their cards)"

    @property
    def caption(self) -> str:
        """A one-line credit for display under the image."""
        return (f"{self.class_name} ({self.finding}, {self.view}; {self.split} split of the shipped models). "
                f"Source: {self.source_url}, via {self.dataset_url}. Licence: {self.license} "
                f"({self.license_url}). Changes: {self.changes}.")


#: The collection every example comes from, as model cards name its patients.
SOURCE_COLLECTION = "covid-chestxray"

_FIELDS = ("file", "label", "class_name", "finding", "view", "split", "patient_id", "source_file", "license",
           "license_url", "source_url", "doi", "dataset_url", "attribution", "changes")


def _example_from_dict(entry: dict, folder: Path) -> Example:
    if not isinstance(entry, dict):
        raise ExampleError("examples.json must hold a list of objects.")
    missing = [k for k in _FIELDS if k not in entry]
    if missing:
        raise ExampleError(f"An entry of examples.json lacks {', '.join(missing)}.")
    name = str(entry["file"])
    if Path(name).name != name or name.startswith("."):
        raise ExampleError(f"Example file name {name!r} must be a plain name inside the examples folder.")
    path = folder / name
    if not path.is_file():
        raise ExampleError(f"Example image {name} is listed in examples.json but missing from {folder}.")
    label = int(entry["label"])
    if label not in CLASS_NAMES or entry["class_name"] != CLASS_NAMES[label]:
        raise ExampleError(f"Example {name} has an inconsistent label/class_name.")
    if entry["license"] not in ALLOWED_LICENSES:
        raise ExampleError(f"Example {name} carries licence {entry['license']!r}; only "
                           f"{', '.join(ALLOWED_LICENSES)} may ship.")
    if entry["split"] not in ("test", "val", "train"):
        raise ExampleError(f"Example {name} has an unknown split {entry['split']!r}.")
    values = {k: str(entry[k]) for k in _FIELDS}
    values["label"] = label
    return Example(**values, path=path)


def list_examples(folder: str | Path | None = None) -> list[Example]:
    """Read the shipped examples, in their listed order.

    Parameters
    ----------
    folder : str or pathlib.Path, optional
        A folder holding ``examples.json`` and the images; default :data:`EXAMPLES_DIR`.

    Returns
    -------
    list of Example
        One per entry of ``examples.json``.

    Raises
    ------
    ExampleError
        If the index is missing or malformed, a listed image is missing, or an entry's licence is not
        CC BY 3.0/4.0.
    """
    folder = EXAMPLES_DIR if folder is None else Path(folder)
    index = folder / "examples.json"
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExampleError(f"No examples.json in {folder}.") from None
    except (OSError, ValueError) as exc:
        raise ExampleError(f"{index} cannot be read: {exc}") from exc
    if not isinstance(entries, list):
        raise ExampleError("examples.json must hold a list of objects.")
    return [_example_from_dict(e, folder) for e in entries]


def example_bytes(example: Example) -> bytes:
    """The image file's bytes, e.g. to feed :func:`medrobust.imaging.decode_image` like an upload.

    Parameters
    ----------
    example : Example
        An entry of :func:`list_examples`.

    Returns
    -------
    bytes
        The PNG file as shipped.
    """
    return Path(example.path).read_bytes()


def load_example_pixels(example: Example) -> np.ndarray:
    """Decode an example into the grey pixels every medrobust image goes through.

    Parameters
    ----------
    example : Example
        An entry of :func:`list_examples`.

    Returns
    -------
    numpy.ndarray
        float32, shape (H, W), values in [0, 1] (decoded by :func:`medrobust.imaging.decode_image`, the
        same path as an uploaded file).
    """
    from medrobust.imaging import decode_image

    pixels = decode_image(example_bytes(example)).pixels
    return np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
