"""Where the dashboard finds models and evaluation results, and how it matches them up.

Layout (all folders configurable through environment variables, read at call time):

* ``$MEDROBUST_CHECKPOINTS`` (default ``checkpoints``): the shipped models,
  ``{standard,robust,augmix,robustaugmix}.safetensors`` each with its JSON card beside it, and
  their results in ``results/{name}.json|.csv|.predictions.csv``; ``attempts/NAME/`` keeps the
  results (not the weights) of other training attempts.
* ``$MEDROBUST_RESULTS`` (default ``results``): what ``python -m medrobust evaluate`` writes by
  default.
* ``$MEDROBUST_RUNS`` (default ``runs``): training runs, ``runs/NAME/model.safetensors``; a run
  evaluated from the dashboard has its results in ``runs/NAME/eval/``.

"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from medrobust import settings
from medrobust.choices import METHOD_NAMES as METHODS  # names only: this module must not import torch

METHOD_ORDER = {m: i for i, m in enumerate(METHODS)}


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelFile:
    """A checkpoint on disk, before loading: where it is and what its card says."""

    name: str
    method: str
    path: Path
    image_size: int | None
    shipped: bool
    card: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    error: str | None = None


def _read_card(weights: Path) -> tuple[dict[str, Any], str | None]:
    card_file = weights.with_suffix(".json")
    if not card_file.is_file():
        return {}, f"{weights.name}: its JSON card ({card_file.name}) is missing."
    try:
        card = json.loads(card_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, f"{weights.name}: its JSON card ({card_file.name}) is not valid JSON."
    if not isinstance(card, dict):
        return {}, f"{weights.name}: its JSON card is not a JSON object."
    return card, None


def _model_file(path: Path, *, shipped: bool, name: str | None = None) -> ModelFile:
    card, error = _read_card(path)
    size = card.get("image_size") or (card.get("config") or {}).get("image_size")
    try:
        size = int(size) if size is not None else None
    except (TypeError, ValueError):
        size = None
    name = name or (path.stem if shipped else path.parent.name)
    method = str(card.get("method") or (name if name in METHODS else "unknown"))
    return ModelFile(name=name, method=method, path=path, image_size=size, shipped=shipped, card=card, error=error)


def _sort_key(m: ModelFile) -> tuple:
    return (METHOD_ORDER.get(m.method, 99), m.name)


def discover_models(folder: str | Path | None = None) -> list[ModelFile]:
    """The shipped models: every ``*.safetensors`` in ``folder`` (default :func:`checkpoints_dir`)."""
    folder = Path(folder) if folder is not None else settings.checkpoints_dir()
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.safetensors") if not p.name.startswith(".") and p.stem != settings.INPUT_CHECK_STEM]
    return sorted((_model_file(p, shipped=True) for p in files), key=_sort_key)


def discover_run_models(folder: str | Path | None = None) -> list[ModelFile]:
    """Finished training runs: ``RUNS/*/model.safetensors`` (default :func:`runs_dir`)."""
    folder = Path(folder) if folder is not None else settings.runs_dir()
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*/model.safetensors") if not p.parent.name.startswith(".")]
    return sorted((_model_file(p, shipped=False) for p in files), key=lambda m: m.name)


def files_signature(models: Iterable[ModelFile]) -> tuple:
    """A hashable fingerprint (path, size, mtime of weights and card) that changes when a file does."""
    sig = []
    for m in models:
        for p in (m.path, m.path.with_suffix(".json")):
            try:
                st = p.stat()
                sig.append((str(p), st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append((str(p), -1, -1))
    return tuple(sig)


# --------------------------------------------------------------------------- results


@dataclass
class ResultSet:
    """Evaluation results from one place."""

    label: str
    kind: str  # "cv" | "shipped" | "results" | "attempt" | "run"
    path: Path
    results: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.results]


def _looks_like_result(d: Any) -> bool:
    return isinstance(d, dict) and "rows" in d and "summary" in d and "name" in d and "clean" in d


def read_result_folder(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every result JSON in ``folder``; unreadable files are reported, never fatal."""
    results, errors = [], []
    for f in sorted(folder.glob("*.json")):
        if f.name.startswith("."):
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            errors.append(f"{f.name} is not valid JSON; skipped.")
            continue
        if _looks_like_result(d):
            d.setdefault("method", "unknown")
            d.setdefault("degenerate", False)
            d["_source"] = str(f)
            d["_path"] = str(f)  # medrobust.evaluation.per_sample_of finds the .logits.npz beside it
            results.append(d)
    results.sort(key=lambda r: (METHOD_ORDER.get(r.get("method"), 99), r["name"]))
    return results, errors


def discover_result_sets(*, checkpoints: str | Path | None = None, results: str | Path | None = None,
                         runs: str | Path | None = None) -> list[ResultSet]:
    """All result sets, the headline first: ``CHECKPOINTS/cv/results`` (pooled cross-validation),
    ``CHECKPOINTS/results`` (the shipped single-split models), each ``CHECKPOINTS/attempts/*``, ``RESULTS``,
    then each ``RUNS/*/eval``."""
    out: list[ResultSet] = []
    ck = Path(checkpoints) if checkpoints is not None else settings.checkpoints_dir()
    rs = Path(results) if results is not None else settings.results_dir()
    rn = Path(runs) if runs is not None else settings.runs_dir()
    cv, shipped = settings.cv_results_dir(ck), settings.shipped_results_dir(ck)
    for label, kind, folder in ((f"cross-validated, pooled out-of-fold ({cv})", "cv", cv),
                                (f"shipped models, single split ({shipped})", "shipped", shipped),
                                (f"evaluated results ({rs})", "results", rs)):
        if folder.is_dir():
            res, errs = read_result_folder(folder)
            if res or errs:
                out.append(ResultSet(label=label, kind=kind, path=folder, results=res, errors=errs))
        if kind == "shipped" and (ck / "attempts").is_dir():
            # Other training attempts keep their results (not their weights) so the shipped set can be
            # compared with what it replaced.
            for folder in sorted(p for p in (ck / "attempts").iterdir() if p.is_dir() and not p.name.startswith(".")):
                res, errs = read_result_folder(folder)
                if res or errs:
                    out.append(ResultSet(label=f"training attempt {folder.name} (results only, weights not shipped)",
                                         kind="attempt", path=folder, results=res, errors=errs))
    if rn.is_dir():
        for folder in sorted(rn.glob("*/eval")):
            if folder.parent.name.startswith(".") or not folder.is_dir():
                continue
            res, errs = read_result_folder(folder)
            if res or errs:
                for r in res:
                    r["_run"] = folder.parent.name
                out.append(ResultSet(label=f"trained run {folder.parent.name}", kind="run", path=folder,
                                     results=res, errors=errs))
    return out


def combine(sets: Sequence[ResultSet]) -> list[dict[str, Any]]:
    """The results of several sets in one list; a name seen twice gets its set's label appended."""
    seen: dict[str, int] = {}
    out = []
    for s in sets:
        for r in s.results:
            r = dict(r)
            if r["name"] in seen:
                tag = s.path.parent.name if s.kind == "run" else s.path.name if s.kind == "attempt" else s.kind
                r["name"] = f"{r['name']} [{tag}]"
            seen[r["name"]] = 1
            r["_shipped"] = s.kind in ("shipped", "cv")
            out.append(r)
    from medrobust.dashboard.palette import assign_colours

    colours = assign_colours([(r.get("_run") or r["name"], r.get("method"), not r.get("_run")) for r in out])
    for r in out:
        r["_colour"] = colours[r.get("_run") or r["name"]]
    return out


def results_json(results: Sequence[dict[str, Any]]) -> str:
    """All results as one JSON document (every field, parameters included)."""
    from medrobust import __version__
    from medrobust.evaluation import public  # imported here: the landing page must not load torch

    return json.dumps({"medrobust_version": __version__, "results": [public(r) for r in results]},
                      indent=1, default=float)


def results_csv(results: Sequence[dict[str, Any]]) -> str:
    """Long-format CSV (model, method, perturbation, severity, metric, value, CI) plus the parameters.

    The evaluation parameters (norm, steps, restarts, bootstrap resamples, seed, image size, split
    hash) are repeated on every line so the file stands alone.
    """
    from medrobust.evaluation import long_rows

    buf = io.StringIO()
    fields = ["model", "method", "suite", "perturbation", "severity", "metric", "value", "ci_low", "ci_high",
              "degenerate", "image_size", "n_test", "norm", "pgd_steps", "restarts", "n_boot", "seed",
              "eps_note", "split_hash", "model_sha256"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in results:
        p = r.get("params", {})
        extra = {"degenerate": bool(r.get("degenerate")), "image_size": r.get("image_size"), "n_test": r.get("n_test"),
                 "norm": p.get("norm"), "pgd_steps": p.get("pgd_steps"), "restarts": p.get("restarts"),
                 "n_boot": p.get("n_boot"), "seed": p.get("seed"), "eps_note": p.get("eps_note"),
                 "split_hash": r.get("split_hash"), "model_sha256": r.get("model_sha256")}
        for row in long_rows(r):
            row = {**row, "model": r["name"], **extra}
            row = {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            w.writerow(row)
    return buf.getvalue()
