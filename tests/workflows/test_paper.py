"""The paper's figures as data: the same numbers as PAPER.md, and a Markdown rendering with every caveat."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from medrobust import paper

PAPER_MD = Path(__file__).resolve().parents[3] / "shared" / "PAPER.md"

# PAPER.md's method labels and column headings (as prefixes, lower case) -> our keys
LABELS = {"standard": "standard", "robust": "robust", "augmix": "augmix", "robustaugmix": "robustaugmix"}
TABLE_I_HEADS = {"clean": "clean", "adversarial": "pgd", "gaussian": "gaussian", "s&p": "salt_and_pepper",
                 "speckle": "speckle"}
TABLE_II_HEADS = {"calibration error": "rmsce", "output entropy": "entropy"}


def _markdown_table_after(text: str, heading: str) -> list[list[str]]:
    """The rows (header first, separator dropped) of the first pipe table after a heading line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            break
    assert len(rows) >= 2, f"no table after {heading!r}"
    return rows


def _number(cell: str) -> float:
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*%?", cell)
    assert m, f"not a number: {cell!r}"
    return float(m.group(1))


def _parse(rows: list[list[str]], heads: dict[str, str]) -> dict[str, dict[str, float]]:
    header = [h.lower() for h in rows[0]]
    keys = []
    for h in header[1:]:
        match = [k for prefix, k in heads.items() if h.startswith(prefix)]
        assert len(match) == 1, f"unknown column {h!r}"
        keys.append(match[0])
    return {LABELS[r[0].lower()]: {k: _number(c) for k, c in zip(keys, r[1:])} for r in rows[1:]}


@pytest.fixture(scope="module")
def paper_md() -> str:
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} not found")
    return PAPER_MD.read_text(encoding="utf-8")


def test_table_one_equals_paper_md(paper_md):
    parsed = _parse(_markdown_table_after(paper_md, "Table I "), TABLE_I_HEADS)
    assert set(parsed) == set(paper.METHODS)
    for m in paper.METHODS:
        assert set(parsed[m]) == set(paper.TABLE_I_COLUMNS) == set(paper.TABLE_I[m])
        for k, v in parsed[m].items():
            assert paper.TABLE_I[m][k] == pytest.approx(v, abs=1e-9), (m, k)


def test_table_two_equals_paper_md(paper_md):
    parsed = _parse(_markdown_table_after(paper_md, "Table II "), TABLE_II_HEADS)
    assert set(parsed) == set(paper.METHODS)
    for m in paper.METHODS:
        assert set(parsed[m]) == set(paper.TABLE_II_COLUMNS) == set(paper.TABLE_II[m])
        for k, v in parsed[m].items():
            assert paper.TABLE_II[m][k] == pytest.approx(v, abs=1e-9), (m, k)


def test_tables_are_complete_and_plausible():
    assert paper.METHODS == ("standard", "robust", "augmix", "robustaugmix")
    for table, columns in ((paper.TABLE_I, paper.TABLE_I_COLUMNS), (paper.TABLE_II, paper.TABLE_II_COLUMNS)):
        assert tuple(table) == paper.METHODS
        for row in table.values():
            assert tuple(row) == tuple(columns)
            assert all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 100 for v in row.values())
    with pytest.raises(TypeError):
        paper.TABLE_I["standard"]["clean"] = 0.0  # read-only


def test_method_names_match_the_registry():
    from medrobust.choices import METHOD_NAMES

    assert paper.METHODS == METHOD_NAMES


def test_as_fractions():
    f = paper.as_fractions()
    assert f["robust"]["clean"] == pytest.approx(0.9596)
    assert f["augmix"]["pgd"] == pytest.approx(0.1241)
    f2 = paper.as_fractions(paper.TABLE_II)
    assert f2["robustaugmix"]["rmsce"] == pytest.approx(0.0232)
    assert f2["standard"]["entropy"] == 2.96  # no stated unit: left alone
    f["robust"]["clean"] = 0.0  # a copy
    assert paper.TABLE_I["robust"]["clean"] == 95.96


def test_markdown_holds_every_method_number_and_caveat():
    md = paper.paper_tables_markdown()
    for m in paper.METHODS:
        assert f"| {paper.METHOD_LABELS[m]} |" in md
        for v in (*paper.TABLE_I[m].values(), *paper.TABLE_II[m].values()):
            assert f"{v:.2f}" in md
    assert len(paper.CAVEATS) >= 4
    for c in paper.CAVEATS:
        assert f"- {c}" in md
    assert paper.CITATION in md
    # the Markdown tables parse back to the same numbers
    t1 = _parse(_markdown_table_after(md, "Table I:"), TABLE_I_HEADS)
    t2 = _parse(_markdown_table_after(md, "Table II:"), TABLE_II_HEADS)
    assert t1 == {m: dict(r) for m, r in paper.TABLE_I.items()}
    assert t2 == {m: dict(r) for m, r in paper.TABLE_II.items()}


def test_caveats_cover_the_required_points():
    text = " ".join(paper.CAVEATS).lower()
    for needle in ("split", "class definition", "image size", "pretrained", "ten severities", "ln 2",
                   "image-level", "another source", "0.6 to 0.75", "degrave", "maguolo", "roberts"):
        assert needle in text, needle


def test_module_is_light():
    import subprocess
    import sys

    code = "import sys, medrobust.paper; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
