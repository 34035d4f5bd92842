"""Model helpers: BatchNorm folding for inference."""

from __future__ import annotations

import pytest
import torch

from medrobust.models import build_model, fold_batchnorm


def test_folded_model_computes_the_same_function_and_input_gradients():
    torch.manual_seed(0)
    model = build_model()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(8, 1, 64, 64))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not folded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 1, 64, 64, requires_grad=True)
    xf = x.detach().clone().requires_grad_(True)
    out, out_f = model(x), folded(xf)
    torch.testing.assert_close(out_f, out, atol=1e-4, rtol=1e-4)
    out[:, 1].sum().backward()
    out_f[:, 1].sum().backward()
    torch.testing.assert_close(xf.grad, x.grad, atol=1e-4, rtol=1e-3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fold_batchnorm changed the original model"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    refolded = fold_batchnorm(folded)
    torch.testing.assert_close(refolded(xf.detach()), out_f.detach())


def test_fold_batchnorm_rejects_other_modules():
    with pytest.raises(TypeError, match="XrayResNet"):
        fold_batchnorm(torch.nn.Linear(2, 2))
