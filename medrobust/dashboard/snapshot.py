"""What the visitor downloads: everything needed to reproduce a stress-test picture (JSON), and its images (ZIP).

No patient data: never the file name or any DICOM tag.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np

from medrobust import __version__
from medrobust.dashboard.flip_search import FlipSearch
from medrobust.dashboard.modelset import ModelSet
from medrobust.dashboard.perturbation import Perturbation
from medrobust.dashboard.stress_run import Outcome
from medrobust.dashboard.tiles import card_images, shared_delta_scale


def snapshot(*, model_set: ModelSet, pert: Perturbation, outcomes: Sequence[Outcome],
             flips: Sequence[FlipSearch] | None = None, image: dict[str, Any] | None = None,
             cam_layer: str = "layer4") -> dict[str, Any]:
    """Everything needed to reproduce a stress-test picture, as JSON-able data (no patient data)."""
    return {
        "medrobust_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": image or {},
        "perturbation": {**asdict(pert), "description": pert.describe(), "norm": "l2",
                         "eps_note": "L2 radius stated at 224 px, scaled by side/224"},
        "grad_cam_layer": cam_layer,
        "grad_cam_explains": ("each input's most probable class: models[].clean.class for the clean map, "
                              "models[].perturbed.class for the perturbed one"),
        "models": [{**o.summary(), "checkpoint_sha256": _sha_of(model_set, o.name)} for o in outcomes],
        "smallest_flip_eps": [asdict(f) for f in flips] if flips else None,
    }


def _sha_of(model_set: ModelSet, name: str) -> str | None:
    try:
        return model_set.get(name).card.get("sha256")
    except KeyError:
        return None


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def snapshot_zip(snap: dict[str, Any], outcomes: Sequence[Outcome]) -> bytes:
    """A ZIP with ``snapshot.json`` and, per model, the perturbed image, perturbation and Grad-CAMs (PNG)."""
    buf = io.BytesIO()
    vmax = shared_delta_scale(outcomes)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("snapshot.json", json.dumps(snap, indent=1, default=float))
        for o in outcomes:
            if not o.ok:
                continue
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in o.name)
            for key, rgb in card_images(o, vmax=vmax, target=o.image_size).items():
                zf.writestr(f"{safe}/{key}.png", _png(rgb))
    return buf.getvalue()
