"""Regenerate the result tables in README.md and checkpoints/README.md from the shipped result files.

Replaces what stands between ``<!-- report:start -->`` and ``<!-- report:end -->`` in each file with
``python -m medrobust report`` of the shipped pooled cross-validation (checkpoints/cv/results) and the
single-split set (checkpoints/results); the prose around the markers is written by hand.

    python scripts/update_results_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from medrobust import settings
from medrobust.evaluation import load_results
from medrobust.report import render_report

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- report:start -->", "<!-- report:end -->"


def main() -> None:
    ck = REPO / "checkpoints"
    folders = [d for d in (settings.cv_results_dir(ck), settings.shipped_results_dir(ck)) if d.is_dir()]
    text = render_report(load_results(folders))
    cmd = "python -m medrobust report " + " ".join(str(d.relative_to(REPO)) for d in folders)
    block = f"{START}\nPrinted by `{cmd}`:\n\n{text}\n{END}"
    for doc in (REPO / "README.md", ck / "README.md"):
        content = doc.read_text()
        if START not in content or END not in content:
            raise SystemExit(f"{doc} lacks the {START} ... {END} markers.")
        doc.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: block, content, flags=re.S))
        print(f"updated {doc.relative_to(REPO)}")


if __name__ == "__main__":
    main()
