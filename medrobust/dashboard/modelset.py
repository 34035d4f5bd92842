"""The models a Stress test runs: every checkpoint of a folder, loaded once and shared read-only.

A model that fails to load (bad sha256, missing card, wrong tensors) becomes an entry with an error and the others
keep working. Models are only ever in eval mode and are never hooked or given parameter gradients: they are shared by
every browser session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from medrobust import settings
from medrobust.checkpoints import CheckpointError, classes_of, load_checkpoint
from medrobust.models import XrayNet, inference_copy
from medrobust.trust import Decision, decision_for
from medrobust.dashboard.palette import assign_colours
from medrobust.dashboard.resultsets import ModelFile, discover_models




@dataclass
class LoadedModel:
    """One model of the set, or the reason it could not be loaded."""

    name: str
    method: str
    path: str
    image_size: int
    colour: str
    shipped: bool
    card: dict[str, Any] = field(repr=False, default_factory=dict)
    model: XrayNet | None = field(repr=False, default=None)
    error: str | None = None
    decision: Decision | None = field(repr=False, default=None)  # fitted on its validation patients, if any

    @property
    def ok(self) -> bool:
        return self.model is not None and self.error is None

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index = output (from the card; the COVID task's two for older cards)."""
        return tuple(classes_of(self.card))

    @property
    def collapsed_warning(self) -> str | None:
        """The card's training-collapse warning, if the model answers one class for most images."""
        if self.card.get("collapsed"):
            return str(self.card.get("warning") or "This model collapsed to one class during training.")
        return None


@dataclass
class ModelSet:
    folder: str
    models: list[LoadedModel]
    message: str | None = None  # set when the folder holds no usable model

    @property
    def ok_models(self) -> list[LoadedModel]:
        return [m for m in self.models if m.ok]

    def only(self, names: Sequence[str]) -> "ModelSet":
        """The same set restricted to ``names`` (in the set's order)."""
        keep = set(names)
        return ModelSet(folder=self.folder, models=[m for m in self.models if m.name in keep], message=self.message)

    def get(self, name: str) -> LoadedModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"No model called {name!r} in the set.")


def _freeze(model: XrayNet) -> XrayNet:
    """:func:`medrobust.models.inference_copy` with no parameter gradients; once, before sharing."""
    model = inference_copy(model)
    model.requires_grad_(False)
    return model


def decision_dirs(folder: str | Path | None = None) -> list[Path]:
    """Where the models' fitted decision rules are looked up: ``<folder>/results`` and ``$MEDROBUST_RESULTS``."""
    base = Path(folder) if folder is not None else settings.checkpoints_dir()
    return [base / "results", settings.results_dir()]


def load_model_set(folder: str | Path | None = None, *, extra: Sequence[ModelFile] = (),
                   device: str | torch.device = "cpu") -> ModelSet:
    """Load every checkpoint in ``folder`` (default ``$MEDROBUST_CHECKPOINTS``) plus ``extra`` ones.

    Never raises for a bad checkpoint: it becomes a :class:`LoadedModel` with ``error`` set.
    """
    files = list(discover_models(folder)) + list(extra)
    folder_s = str(folder) if folder is not None else "checkpoints"
    models: list[LoadedModel] = []
    colours = assign_colours([(f.name, f.method, f.shipped) for f in files])
    for f in files:
        colour = colours[f.name]
        entry = LoadedModel(name=f.name, method=f.method, path=str(f.path), image_size=int(f.image_size or 64),
                            colour=colour, shipped=f.shipped, card=f.card, error=f.error)
        if entry.error is None:
            try:
                model, card = load_checkpoint(f.path, device=device)
                entry.model, entry.card = _freeze(model), card
                entry.decision = decision_for(card, decision_dirs(folder))
                entry.image_size = int(card.get("image_size") or (card.get("config") or {}).get("image_size") or 64)
            except CheckpointError as exc:
                entry.error = str(exc)
            except Exception as exc:  # a file that is not even a checkpoint: say so, keep going
                entry.error = f"{Path(f.path).name} could not be loaded ({type(exc).__name__})."
        models.append(entry)
    message = None
    if not files:
        message = (f"No model checkpoints found in {folder_s}. Put the four shipped models there "
                   "(standard/robust/augmix/robustaugmix .safetensors with their .json cards), set "
                   "MEDROBUST_CHECKPOINTS, or train one on the Training page.")
    elif not any(m.ok for m in models):
        message = f"None of the {len(files)} checkpoint(s) in {folder_s} could be loaded; see each card."
    return ModelSet(folder=folder_s, models=models, message=message)


def model_set_key(model_set: ModelSet) -> tuple:
    """Identifies a loaded model set (names and checkpoint hashes) for cache keys."""
    return tuple((m.name, m.card.get("sha256"), m.ok) for m in model_set.models)
