"""``attacks.ieee_fp32``: the verdict passes are IEEE fp32 on CUDA (TF32 off), settings restored after."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import ieee_fp32


def _flags() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_cuda_context_turns_tf32_off_and_restores_the_settings():
    before = _flags()
    with ieee_fp32("cuda"):
        assert _flags() == ("ieee", "ieee")
    assert _flags() == before


def test_settings_come_back_after_an_error():
    before = _flags()
    with pytest.raises(RuntimeError, match="inside"):
        with ieee_fp32(torch.device("cuda", 0)):
            raise RuntimeError("inside")
    assert _flags() == before


def test_other_devices_are_left_alone():
    before = _flags()
    with ieee_fp32("cpu"):
        assert _flags() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_convolution_inside_is_fp32_exact():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(4, 16, 64, 64, device="cuda", generator=g)
    w = torch.randn(32, 16, 3, 3, device="cuda", generator=g)
    ref = torch.nn.functional.conv2d(x.double(), w.double())
    with ieee_fp32("cuda"):
        exact = torch.nn.functional.conv2d(x, w)
    assert float((exact.double() - ref).abs().max()) < 1e-4  # TF32 (10-bit mantissa) errs by ~1e-2 here
