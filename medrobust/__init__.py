"""medrobust: how far can a chest X-ray classifier be trusted under noise, miscalibration and attack.

Reproduces and extends Martínez-Martínez & Nabavi, "Addressing Vulnerability in Medical Deep
Learning through Robust Training". Images are 1-channel floats in [0, 1]; models normalise inside
``forward`` so every epsilon is in pixel units.

The public API is listed in ``__all__`` and loaded lazily (PEP 562): ``import medrobust`` costs
nothing, and ``medrobust.pgd`` imports torch only when first used.

Examples
--------
>>> import medrobust
>>> medrobust.scale_eps(4.0, norm="l2", side=128)  # an L2 budget stated at 224 px, at 128 px
2.2857142857142856
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

#: public name -> the module that defines it
_API: dict[str, str] = {
    # science
    "XrayNet": "models", "XrayResNet": "models", "build_model": "models",
    "pgd": "attacks", "pgd_multi_eps": "attacks", "scale_eps": "attacks",
    "apply_corruption": "corruptions", "clinical_corrupt": "clinical", "CLINICAL": "clinical",
    "augmix": "augmix", "jsd_loss": "augmix",
    "classification_metrics": "metrics", "bootstrap_ci": "metrics", "reliability_bins": "metrics",
    "cluster_bootstrap_ci": "stats", "paired_cluster_bootstrap": "stats",
    "confusion_matrix": "metrics", "per_class_recall": "metrics",
    "Method": "choices", "Norm": "choices", "Noise": "choices", "Arch": "choices", "CLASS_NAMES": "choices",
    "run_audit": "audit", "masking_test": "audit", "source_label_table": "audit",
    "fit_temperature": "calibrate", "apply_temperature": "calibrate",
    "choose_threshold": "decision", "rates_at_threshold": "decision", "referral_level": "decision",
    "risk_coverage": "decision", "conformal_quantile": "decision", "prediction_sets": "decision",
    # workflows
    "load_dataset": "data", "read_records": "data", "split_by_patient": "data",
    "load_checkpoint": "checkpoints", "save_checkpoint": "checkpoints", "import_model": "checkpoints",
    "classes_of": "checkpoints",
    "TrainConfig": "training", "PRESETS": "training", "preset_config": "training", "train": "training",
    "EvalConfig": "evaluation", "evaluate_model": "evaluation", "evaluate_cv": "evaluation",
    "write_results": "evaluation", "load_results": "evaluation", "split_kfold": "data",
    "render_report": "report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'medrobust' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medrobust.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
