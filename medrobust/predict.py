"""Run a set of models on a hospital's files: input check, calibrated probability, verdict or referral.

:func:`predict_file` answers one file for every model: the input check first (an image outside what the
models were trained on gets no verdict unless asked), then per model the temperature-scaled probability,
the verdict at the model's operating point or "refer" below its referral level, and its conformal
prediction sets — all fitted on validation patients (:mod:`medrobust.trust`). A model without a fitted
rule says so: its raw probability and most probable class are shown, marked uncalibrated.

The CLI (``python -m medrobust predict``) prints a table and writes a CSV; nothing here prints a DICOM tag
(images are decoded by :func:`medrobust.imaging.decode_image`, which reads only pixel data and its LUTs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medrobust import settings
from medrobust.checkpoints import CheckpointError, classes_of, image_size_of, load_checkpoint
from medrobust.image_types import ImageDecodeError
from medrobust.imaging import MAX_FILE_BYTES, decode_image, to_square
from medrobust.trust import REFER, Decision, decision_for

#: Shown instead of a verdict when the input check flags the image.
OUT_OF_SCOPE = "not assessed: outside what these models were trained on"
REFER_TEXT = "uncertain: refer"


@dataclass
class PredictModel:
    """A loaded model with its fitted decision rule (None: raw outputs only)."""

    name: str
    model: torch.nn.Module
    card: dict[str, Any]
    decision: Decision | None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(classes_of(self.card))

    @property
    def image_size(self) -> int:
        return image_size_of(self.card, name=self.name)


def load_models(models_dir: str | Path | None = None, *, results_dirs: Sequence[str | Path] = ()) -> list[PredictModel]:
    """Every ``*.safetensors`` model (with its card) in ``models_dir`` (default the shipped checkpoints),
    each with the decision rule fitted for exactly its weights in ``results_dirs`` (default
    ``<models_dir>/results`` and ``$MEDROBUST_RESULTS``)."""
    folder = Path(models_dir) if models_dir is not None else settings.checkpoints_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {folder} does not exist; pass --models DIR (a folder of "
                                ".safetensors checkpoints with their .json cards).")
    files = sorted(p for p in folder.glob("*.safetensors")
                   if not p.name.startswith(".") and p.stem != settings.INPUT_CHECK_STEM)
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors model; pass --models DIR.")
    dirs = list(results_dirs) or [folder / "results", settings.results_dir()]
    out = []
    for f in files:
        model, card = load_checkpoint(f)
        model.eval()
        card.setdefault("name", f.stem)
        out.append(PredictModel(name=str(card.get("name") or f.stem), model=model, card=card,
                                decision=decision_for(card, dirs)))
    return out


def iter_files(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Files named, and the files under folders named (recursively, sorted, hidden ones skipped)."""
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
                    yield f
        else:
            yield p  # a missing file is reported by predict_file, in one line


@dataclass
class ModelAnswer:
    """One model's answer on one image (what a row of the table and the CSV holds)."""

    model: str
    p_raw: float  # P(class 1) for two classes, else the top class's raw probability
    p_calibrated: float  # the same after the temperature; nan without a fitted rule
    answer: str  # the class at the operating point (before referral)
    verdict: str  # the class, REFER_TEXT, or OUT_OF_SCOPE
    confidence: float
    lac_set: str
    aps_set: str
    rule: str  # "operating point" | "raw argmax (no fitted rule)"


@dataclass
class FileAnswer:
    path: str
    ok: bool
    error: str = ""
    input_ok: bool = True
    input_reasons: tuple[str, ...] = ()
    input_codes: tuple[str, ...] = ()
    answers: tuple[ModelAnswer, ...] = ()


def _set_text(mask: np.ndarray, classes: Sequence[str]) -> str:
    names = [c for c, m in zip(classes, mask) if m]
    return "{" + ", ".join(names) + "}"


def answer_models(pixels: np.ndarray, models: Sequence[PredictModel], *, out_of_scope: bool) -> list[ModelAnswer]:
    """Every model's answer on one decoded image (H, W) in [0, 1]."""
    from medrobust.evaluation import _logits

    inputs: dict[int, torch.Tensor] = {}
    out = []
    for m in models:
        x = inputs.setdefault(m.image_size, to_square(pixels, size=m.image_size).unsqueeze(0))
        z = _logits(m.model, x).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        raw = (e / e.sum(axis=1, keepdims=True))[0]
        two = raw.shape[0] == 2
        classes = m.classes
        if m.decision is None:
            top = int(raw.argmax())
            out.append(ModelAnswer(model=m.name, p_raw=float(raw[1] if two else raw[top]), p_calibrated=math.nan,
                                   answer=classes[top], verdict=OUT_OF_SCOPE if out_of_scope else classes[top],
                                   confidence=float(raw[top]), lac_set="", aps_set="",
                                   rule="raw argmax (no fitted rule)"))
            continue
        d = m.decision.apply(z)
        p = d["probs"][0]
        answer = classes[int(d["answer"][0])]
        verdict = REFER_TEXT if int(d["verdict"][0]) == REFER else answer
        out.append(ModelAnswer(model=m.name, p_raw=float(raw[1] if two else raw[int(p.argmax())]),
                               p_calibrated=float(p[1] if two else p.max()), answer=answer,
                               verdict=OUT_OF_SCOPE if out_of_scope else verdict,
                               confidence=float(d["confidence"][0]),
                               lac_set=_set_text(d["sets"]["lac"][0], classes),
                               aps_set=_set_text(d["sets"]["aps"][0], classes), rule="operating point"))
    return out


def predict_file(path: str | Path, models: Sequence[PredictModel], *, checker=None, assess_flagged: bool = False) -> FileAnswer:
    """Decode one file and answer it with every model; a file that cannot be read gives ``ok=False`` and a
    one-line ``error`` (never an exception)."""
    from medrobust.input_check import check_decoded

    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return FileAnswer(path=str(path), ok=False, error=f"larger than {MAX_FILE_BYTES // 2**20} MiB")
        decoded = decode_image(path.read_bytes())
    except FileNotFoundError:
        return FileAnswer(path=str(path), ok=False, error="no such file")
    except ImageDecodeError as exc:
        return FileAnswer(path=str(path), ok=False, error=str(exc))
    except OSError as exc:
        return FileAnswer(path=str(path), ok=False, error=exc.strerror or type(exc).__name__)
    verdict = check_decoded(decoded, checker=checker)
    flagged = not verdict.ok
    answers = () if flagged and not assess_flagged else tuple(answer_models(decoded.pixels, models, out_of_scope=flagged))
    return FileAnswer(path=str(path), ok=True, input_ok=not flagged, input_reasons=tuple(verdict.reasons),
                      input_codes=tuple(verdict.codes), answers=answers)


def parameters(models: Sequence[PredictModel], *, checker_source: str) -> list[str]:
    """The settings every answer depends on, one line each (the CSV's header comments)."""
    from medrobust import __version__

    lines = [f"medrobust {__version__} predict", f"input check: {checker_source}"]
    for m in models:
        sha = (m.card.get("sha256") or "")[:16]
        rule = m.decision.describe() if m.decision is not None else "no fitted decision rule: raw softmax, most probable class"
        lines.append(f"model {m.name} (sha256 {sha}, {m.image_size} px, classes {', '.join(m.classes)}): {rule}")
    lines.append("research and education only; not a diagnostic device")
    return lines


CSV_COLUMNS = ("file", "input_check", "input_reason", "model", "verdict", "answer_at_operating_point",
               "p_calibrated", "p_raw", "confidence", "conformal_set_lac", "conformal_set_aps", "rule", "error")


def csv_rows(ans: FileAnswer) -> list[dict[str, Any]]:
    """The CSV rows of one file: one per model, or one row carrying the error or the input-check refusal."""
    base = {"file": ans.path, "input_check": ("pass" if ans.input_ok else "flagged") if ans.ok else "",
            "input_reason": " ".join(ans.input_reasons), "error": ans.error}
    if not ans.answers:
        return [{**{c: "" for c in CSV_COLUMNS}, **base,
                 "verdict": OUT_OF_SCOPE if ans.ok and not ans.input_ok else ""}]
    return [{**base, "model": a.model, "verdict": a.verdict, "answer_at_operating_point": a.answer,
             "p_calibrated": a.p_calibrated, "p_raw": a.p_raw, "confidence": a.confidence,
             "conformal_set_lac": a.lac_set, "conformal_set_aps": a.aps_set, "rule": a.rule}
            for a in ans.answers]
