"""The four training methods, as one name -> loss registry read by the CLI, training and the UI.

=============  =====================================================================
standard       CE(clean)
robust         CE(PGD view)                                      (Madry et al.)
augmix         CE(clean) + 12 * JSD(clean, augmix1, augmix2)     (Hendrycks et al.)
robustaugmix   CE(clean) + 12 * JSD(clean, augmix, PGD view)     (the paper's method)
=============  =====================================================================

Class weights (inverse frequency, the default here, a deviation from the paper) enter every term:
CE through ``weight=`` and JSD as per-sample weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.augmix import JSD_WEIGHT, jsd_loss
from medrobust.choices import METHOD_NAMES, Method as MethodChoice, parse_choice


@dataclass
class LossTools:
    """What a loss may need beyond the batch: autocast, and makers of the extra views."""

    autocast: Callable[[], object]
    adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    augmix: Callable[[torch.Tensor], torch.Tensor]
    jsd_weight: float = JSD_WEIGHT


@dataclass
class LossOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # logits of the view the accuracy is tracked on, detached
    parts: dict[str, float]


LossFn = Callable[..., LossOutput]


def _ce(logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, weight=class_weight)


def _sample_weight(y: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor | None:
    return None if class_weight is None else class_weight[y]


def standard_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, class_weight, tools: LossTools) -> LossOutput:
    with tools.autocast():
        logits = model(x)
    ce = _ce(logits, y, class_weight)
    return LossOutput(ce, logits.detach(), {"ce": float(ce.detach())})


def robust_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, class_weight, tools: LossTools) -> LossOutput:
    x_adv = tools.adversarial(x, y)
    with tools.autocast():
        logits = model(x_adv)
    ce = _ce(logits, y, class_weight)
    return LossOutput(ce, logits.detach(), {"ce_adv": float(ce.detach())})


def _ce_plus_jsd(model, x, y, views, *, class_weight, tools: LossTools) -> LossOutput:
    n = x.shape[0]
    # One forward over the concatenation, as the AugMix reference does (shared BN statistics).
    with tools.autocast():
        logits = model(torch.cat([x, *views]))
    chunks = list(logits.split(n))
    ce = _ce(chunks[0], y, class_weight)
    jsd = jsd_loss(chunks, sample_weight=_sample_weight(y, class_weight))
    loss = ce + tools.jsd_weight * jsd
    return LossOutput(loss, chunks[0].detach(), {"ce": float(ce.detach()), "jsd": float(jsd.detach())})


def augmix_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, class_weight, tools: LossTools) -> LossOutput:
    return _ce_plus_jsd(model, x, y, [tools.augmix(x), tools.augmix(x)], class_weight=class_weight, tools=tools)


def robustaugmix_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, class_weight, tools: LossTools) -> LossOutput:
    x_adv = tools.adversarial(x, y)
    return _ce_plus_jsd(model, x, y, [tools.augmix(x), x_adv], class_weight=class_weight, tools=tools)


@dataclass(frozen=True)
class Method:
    name: str
    loss: LossFn
    uses_pgd: bool
    uses_augmix: bool
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("standard", standard_loss, False, False, "cross-entropy on clean images"),
        Method("robust", robust_loss, True, False, "cross-entropy on L2 PGD adversarial images"),
        Method("augmix", augmix_loss, False, True, "CE(clean) + 12·JSD(clean, AugMix, AugMix)"),
        Method("robustaugmix", robustaugmix_loss, True, True, "CE(clean) + 12·JSD(clean, AugMix, PGD)"),
    )
}


assert tuple(METHODS) == METHOD_NAMES, "medrobust.choices.Method and the loss registry must list the same methods"


def get_method(name: str) -> Method:
    """Look a method up by name; unknown names raise ``ValueError`` listing the valid ones."""
    return METHODS[parse_choice(MethodChoice, name).value]
