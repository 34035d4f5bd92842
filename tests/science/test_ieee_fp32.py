"""``attacks.ieee_fp32``: verdict passes are IEEE fp32 on CUDA (TF32 off), settings restored after the last caller."""

from __future__ import annotations

import contextlib

import pytest
import torch

from medrobust.attacks import ieee_fp32

B = torch.backends
HAS_OP_API = hasattr(B.cudnn, "conv") and hasattr(B.cudnn.conv, "fp32_precision")  # torch >= 2.9


def _state() -> tuple:
    """Every TF32 setting, read without the legacy getters (which refuse mixed settings)."""
    if HAS_OP_API:
        return (B.cudnn.conv.fp32_precision, B.cudnn.rnn.fp32_precision, B.cuda.matmul.fp32_precision)
    return (B.cudnn.allow_tf32, torch.get_float32_matmul_precision())


def _tf32_off() -> bool:
    if HAS_OP_API:
        conv_ok = B.cudnn.conv.fp32_precision == "ieee" or (B.cudnn.conv.fp32_precision == "none"
                                                              and not B.cudnn.allow_tf32)
        return conv_ok and B.cuda.matmul.fp32_precision == "ieee"
    return not B.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"


SETUPS = {
    "torch defaults": lambda: None,
    "legacy TF32 on": lambda: (setattr(B.cudnn, "allow_tf32", True), torch.set_float32_matmul_precision("high")),
    "per-operator API, conv and rnn apart": lambda: (setattr(B.cudnn.conv, "fp32_precision", "tf32"),
                                                     setattr(B.cudnn.rnn, "fp32_precision", "ieee")),
    "per-operator API, matmul TF32": lambda: setattr(B.cuda.matmul, "fp32_precision", "tf32"),
}


@pytest.fixture()
def pristine():
    """Put torch's defaults back after each test, whatever it set."""
    yield
    if HAS_OP_API:
        B.cudnn.conv.fp32_precision = B.cudnn.rnn.fp32_precision = "tf32"
        B.cuda.matmul.fp32_precision = "none"
    B.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("setup", list(SETUPS))
def test_cuda_context_turns_tf32_off_and_restores_every_setting(setup, pristine):
    if setup.startswith("per-operator") and not HAS_OP_API:
        pytest.skip("the per-operator TF32 API needs torch >= 2.9")
    SETUPS[setup]()
    before = _state()
    with ieee_fp32("cuda"):
        assert _tf32_off()
    assert _state() == before


def test_settings_come_back_after_an_error(pristine):
    before = _state()
    with pytest.raises(RuntimeError, match="inside"):
        with ieee_fp32(torch.device("cuda", 0)):
            raise RuntimeError("inside")
    assert _state() == before


def test_overlapping_callers_keep_tf32_off_until_the_last_one_leaves(pristine):
    before = _state()
    a, b = contextlib.ExitStack(), contextlib.ExitStack()
    a.enter_context(ieee_fp32("cuda"))
    b.enter_context(ieee_fp32("cuda"))
    a.close()  # the first caller leaves while the second is still computing (another thread, say)
    assert _tf32_off()
    b.close()
    assert _state() == before


def test_other_devices_are_left_alone(pristine):
    before = _state()
    with ieee_fp32("cpu"):
        assert _state() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_convolution_and_matmul_inside_are_fp32_exact(pristine):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(4, 16, 64, 64, device="cuda", generator=g)
    w = torch.randn(32, 16, 3, 3, device="cuda", generator=g)
    m = torch.randn(512, 512, device="cuda", generator=g)
    torch.set_float32_matmul_precision("high")  # a training script's usual setting: TF32 matmuls
    with ieee_fp32("cuda"):
        conv, mm = torch.nn.functional.conv2d(x, w), m @ m
    assert float((conv.double() - torch.nn.functional.conv2d(x.double(), w.double())).abs().max()) < 1e-4
    assert float((mm.double() - m.double() @ m.double()).abs().max()) < 1e-3  # TF32 errs by ~1e-1 here
