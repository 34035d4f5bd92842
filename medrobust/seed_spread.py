"""How much a reseed moves a result: fold 0 retrained with other seeds, beside the paired differences.

``scripts/seed_spread.py`` retrains fold 0 of the cross-validation with other seeds on exactly the same
patients and evaluates each model on fold 0's test patients; it writes ``seed_spread.json`` beside the pooled
results. This module reads that file and says, per method, how far the seeds spread, and per seed, the
method difference on fold 0, so a reader can set a pooled difference against what a reseed alone does.

The file::

    {"fold": 0, "eps": 2.0, "n_test": 124, "n_patients": 70, "protocol": "...", "command": "...",
     "rows": [{"method": "standard", "seed": 0, "clean_auroc": 0.62, "clean_balanced_accuracy": 0.59,
               "pgd_accuracy": 0.04}, ...]}

Examples
--------
>>> spread = {"fold": 0, "eps": 2.0, "n_test": 10, "n_patients": 8, "rows": [
...     {"method": "standard", "seed": s, "clean_auroc": a, "clean_balanced_accuracy": 0.6, "pgd_accuracy": p}
...     for s, a, p in ((0, 0.60, 0.04), (1, 0.66, 0.02))] + [
...     {"method": "robust", "seed": s, "clean_auroc": a, "clean_balanced_accuracy": 0.6, "pgd_accuracy": p}
...     for s, a, p in ((0, 0.62, 0.55), (1, 0.61, 0.50))]}
>>> [(r["method"], r["clean AUROC range"]) for r in spread_rows(check_spread(spread))]
[('standard', '0.060'), ('robust', '0.010')]
>>> [r["robust − standard: PGD acc."] for r in difference_rows(spread, a="standard", b="robust")]
['+51.0 pts', '+48.0 pts']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from medrobust.intervals import format_difference, format_number, format_value

__all__ = ["FILE_NAME", "METRICS", "check_spread", "load_spread", "spread_rows", "difference_rows",
           "spread_markdown"]

#: The file beside a result set's JSONs.
FILE_NAME = "seed_spread.json"
#: The numbers measured per seed, and how they are written.
METRICS = {"clean_auroc": "auroc", "clean_balanced_accuracy": "balanced_accuracy", "pgd_accuracy": "accuracy"}


def check_spread(spread: Any) -> dict[str, Any]:
    """``spread`` when it is a well-formed seed-spread record, else :class:`ValueError` with what is wrong."""
    if not isinstance(spread, dict) or not isinstance(spread.get("rows"), list) or not spread["rows"]:
        raise ValueError("a seed spread needs a non-empty 'rows' list.")
    for key in ("fold", "eps"):
        if not isinstance(spread.get(key), (int, float)):
            raise ValueError(f"a seed spread needs a number '{key}'.")
    for row in spread["rows"]:
        if not isinstance(row, dict) or not isinstance(row.get("method"), str) or not isinstance(row.get("seed"), int):
            raise ValueError("every seed-spread row needs a 'method' (text) and a 'seed' (integer).")
        for m in METRICS:
            v = row.get(m)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"seed-spread row {row.get('method')} seed {row.get('seed')}: '{m}' must be in [0, 1].")
    seen = [(r["method"], r["seed"]) for r in spread["rows"]]
    if len(set(seen)) != len(seen):
        raise ValueError("a seed-spread file lists one method and seed twice.")
    return spread


def load_spread(folder: str | Path) -> dict[str, Any] | None:
    """The seed spread kept in ``folder`` (``seed_spread.json``), or None when there is none.

    A file that is there but unreadable raises :class:`ValueError` naming it: a broken record is not silently
    dropped from a report.
    """
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        return check_spread(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _methods(spread: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in spread["rows"]))


def _by_seed(spread: dict[str, Any], method: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in spread["rows"] if r["method"] == method}


def _pgd_label(spread: dict[str, Any]) -> str:
    return f"PGD eps {spread['eps']:g} acc."


def spread_rows(spread: dict[str, Any]) -> list[dict[str, str]]:
    """Per method: each seed's value and the range (max − min) of clean AUROC, clean balanced accuracy and
    worst-case accuracy under PGD at the spread's eps."""
    rows = []
    for method in _methods(spread):
        seeds = _by_seed(spread, method)
        row = {"method": method, "seeds": ", ".join(str(s) for s in sorted(seeds))}
        for key, label in (("clean_auroc", "clean AUROC"), ("clean_balanced_accuracy", "clean bal. acc."),
                           ("pgd_accuracy", _pgd_label(spread))):
            values = [seeds[s][key] for s in sorted(seeds)]
            row[label] = " / ".join(format_value(METRICS[key], v) for v in values)
            spread_ = max(values) - min(values)
            row[f"{label} range"] = (format_number(spread_, decimals=3) if METRICS[key] == "auroc"
                                     else format_difference(METRICS[key], spread_).lstrip("+"))
        rows.append(row)
    return rows


def difference_rows(spread: dict[str, Any], *, a: str = "standard", b: str = "robust") -> list[dict[str, str]]:
    """Per seed both methods share: ``b − a`` on fold 0 (clean AUROC and PGD accuracy), signed as everywhere."""
    sa, sb = _by_seed(spread, a), _by_seed(spread, b)
    rows = []
    for seed in sorted(set(sa) & set(sb)):
        rows.append({"seed": str(seed),
                     f"{b} − {a}: clean AUROC": format_difference("auroc", sb[seed]["clean_auroc"] - sa[seed]["clean_auroc"]),
                     f"{b} − {a}: PGD acc.": format_difference("accuracy", sb[seed]["pgd_accuracy"] - sa[seed]["pgd_accuracy"])})
    return rows


def _markdown(rows: Sequence[dict[str, str]]) -> list[str]:
    cols = list(rows[0])
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
           ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]


def spread_markdown(spread: dict[str, Any]) -> str:
    """The seed spread as Markdown: the per-method table, the per-seed differences and how to read them."""
    methods = _methods(spread)
    lines = _markdown(spread_rows(spread))
    if len(methods) >= 2:
        lines += [""] + _markdown(difference_rows(spread, a=methods[0], b=methods[1]))
    n = f"{spread.get('n_test')} test images of {spread.get('n_patients')} patients" if spread.get("n_test") else "its test patients"
    lines += ["", f"Fold {spread['fold']} only ({n}), retrained with each seed on the same patients "
                  f"(seed 0 is the cross-validation's own fold). Values per seed in seed order; the range is max − min. "
                  f"A pooled difference smaller than the range a reseed gives is not evidence that one method is better. "
                  f"PGD accuracy is the worst case over the attack ensemble at eps {spread['eps']:g} (stated at 224 px)."]
    if spread.get("command"):
        lines.append(f"Reproduce: `{spread['command']}`.")
    return "\n".join(lines)
