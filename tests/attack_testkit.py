"""Small models, batches and norms shared by the PGD and APGD tests (tests/science/test_attacks.py, test_apgd.py)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, settings
from torch import nn

SIDE = 8
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def linear_model(seed: int, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * SIDE * SIDE, 2))


class ModeRecorder(nn.Module):
    """A small conv net with BatchNorm (and Dropout with ``dropout``) that records its training flag at every call."""

    def __init__(self, *, dropout: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()] + ([nn.Dropout(0.5)] if dropout else [])
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.body(x)


def batch(seed: int, n: int, *, lo: float = 0.0, hi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand((n, 1, SIDE, SIDE), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


def norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
