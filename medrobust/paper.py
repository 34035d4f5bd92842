"""The reference paper's reported figures, as data, with the caveats needed to read them.

Martínez-Martínez & Nabavi (IEEE CAI 2023) train a ResNet-18 on Cohen et al.'s COVID-19 chest X-ray
collection with four methods and report two tables:

* Table I, accuracy in % on clean images, under PGD (mean over eps 1 to 5) and under Gaussian,
  salt & pepper and speckle noise: :data:`TABLE_I`;
* Table II, calibration error (RMSCE, %) and "output entropy": :data:`TABLE_II`.

The numbers are quoted exactly as printed (percent, two decimals). They are the paper's claims, not
results of this package, and :data:`CAVEATS` says why they cannot be compared one to one with ours.
:func:`paper_tables_markdown` renders both tables and the caveats for the README or the dashboard.

This module imports nothing beyond the standard library.

Examples
--------
>>> TABLE_I["robust"]["clean"]
95.96
>>> TABLE_II["robustaugmix"]["rmsce"]
2.32
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = [
    "CAVEATS",
    "CITATION",
    "METHODS",
    "METHOD_LABELS",
    "TABLE_I",
    "TABLE_I_COLUMNS",
    "TABLE_II",
    "TABLE_II_COLUMNS",
    "as_fractions",
    "paper_tables_markdown",
]

#: The four training methods, in the paper's order, spelt as medrobust names them.
METHODS: tuple[str, ...] = ("standard", "robust", "augmix", "robustaugmix")

#: The paper's spelling of each method.
METHOD_LABELS: Mapping[str, str] = MappingProxyType({
    "standard": "Standard",
    "robust": "Robust",
    "augmix": "AugMix",
    "robustaugmix": "RobustAugMix",
})

#: Table I's columns: key -> heading. The keys match medrobust's perturbation names.
TABLE_I_COLUMNS: Mapping[str, str] = MappingProxyType({
    "clean": "clean",
    "pgd": "adversarial (PGD, mean over eps 1–5)",
    "gaussian": "Gaussian",
    "salt_and_pepper": "S&P",
    "speckle": "speckle",
})

#: Table II's columns: key -> heading.
TABLE_II_COLUMNS: Mapping[str, str] = MappingProxyType({
    "rmsce": "calibration error (RMSCE, %)",
    "entropy": "output entropy (unit not stated)",
})


def _frozen(table: dict[str, dict[str, float]]) -> Mapping[str, Mapping[str, float]]:
    return MappingProxyType({m: MappingProxyType(dict(row)) for m, row in table.items()})


#: Table I of the paper: accuracy in % per method and condition (``TABLE_I[method][column]``).
#: "pgd" is the mean over PGD eps 1, 2, 3, 4, 5 (20 steps); the noise columns are most likely means over
#: the ten severities 0.1 to 1.0 (the paper does not say).
TABLE_I: Mapping[str, Mapping[str, float]] = _frozen({
    "standard": {"clean": 95.80, "pgd": 22.24, "gaussian": 72.78, "salt_and_pepper": 72.00, "speckle": 86.51},
    "robust": {"clean": 95.96, "pgd": 89.83, "gaussian": 82.91, "salt_and_pepper": 61.98, "speckle": 95.91},
    "augmix": {"clean": 94.25, "pgd": 12.41, "gaussian": 21.27, "salt_and_pepper": 26.07, "speckle": 44.35},
    "robustaugmix": {"clean": 96.27, "pgd": 82.10, "gaussian": 83.56, "salt_and_pepper": 69.75, "speckle": 94.86},
})

#: Table II of the paper: RMSCE in % and "output entropy" (as printed; unit and definition not stated).
TABLE_II: Mapping[str, Mapping[str, float]] = _frozen({
    "standard": {"rmsce": 7.14, "entropy": 2.96},
    "robust": {"rmsce": 5.61, "entropy": 2.81},
    "augmix": {"rmsce": 6.11, "entropy": 4.47},
    "robustaugmix": {"rmsce": 2.32, "entropy": 4.09},
})

#: How to cite the paper.
CITATION = ("Martínez-Martínez and Nabavi, \"Addressing Vulnerability in Medical Deep Learning through Robust "
            "Training\", IEEE Conference on Artificial Intelligence (CAI), 2023 (University of Connecticut).")

#: What a reader must know before comparing these figures with anything else, one sentence each.
CAVEATS: tuple[str, ...] = (
    "The paper does not state its data split, its class definition, its input image size or whether the "
    "network was pretrained, so its setting cannot be rebuilt exactly.",
    "The paper does not state the norm or pixel units of its PGD budgets; the authors' public code uses L2 "
    "in [0, 1] pixel units.",
    "The noise columns are probably averages over ten severities (0.1 to 1.0); the paper does not say so.",
    "The printed output entropies (2.8 to 4.5) cannot be a mean per-image entropy in nats of a two-class "
    "model, which never exceeds ln 2 ≈ 0.69; what they measure is not stated.",
    "Published accuracies near 96 % on this collection come from image-level splits (images of one patient "
    "in both training and test) or from control images taken from another source, which a model can tell "
    "apart by origin rather than by disease.",
    "With patient-level splits and controls from the same sources, published COVID-19 versus other-finding "
    "classifiers on this collection reach an AUROC of only about 0.6 to 0.75 (DeGrave et al. 2021; "
    "Maguolo & Nanni 2021; Roberts et al. 2021, who found none of 62 reviewed COVID-19 models of potential clinical use).",
)


def as_fractions(table: Mapping[str, Mapping[str, float]] = TABLE_I) -> dict[str, dict[str, float]]:
    """A table's percentages as fractions in [0, 1], the unit medrobust's evaluations use.

    Parameters
    ----------
    table : mapping, optional
        :data:`TABLE_I` (default) or :data:`TABLE_II`. Only percentage columns are converted; Table II's
        ``"entropy"`` has no stated unit and is returned unchanged.

    Returns
    -------
    dict
        ``{method: {column: value}}``, a new mutable copy.

    Examples
    --------
    >>> as_fractions()["standard"]["clean"]
    0.958
    """
    return {m: {k: (v if k == "entropy" else round(v / 100.0, 6)) for k, v in row.items()}
            for m, row in table.items()}


def _table(columns: Mapping[str, str], table: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = ["| method | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for m in METHODS:
        cells = [f"{table[m][k]:.2f}" for k in columns]
        lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
    return lines


def paper_tables_markdown() -> str:
    """Both of the paper's tables as Markdown, followed by the caveats as a bullet list.

    Returns
    -------
    str
        A Markdown fragment: a heading per table (Table I, accuracy in %; Table II, RMSCE in % and output
        entropy), one row per method in the paper's order, the citation, and :data:`CAVEATS` as bullets.
        The figures are the paper's, quoted as printed.
    """
    parts = [
        "#### Table I: accuracy in % (as reported by the paper)",
        *_table(TABLE_I_COLUMNS, TABLE_I),
        "",
        "#### Table II: calibration and output entropy (as reported by the paper)",
        *_table(TABLE_II_COLUMNS, TABLE_II),
        "",
        f"Source: {CITATION}",
        "",
        "**Read these figures with care:**",
        "",
        *[f"- {c}" for c in CAVEATS],
    ]
    return "\n".join(parts) + "\n"
