"""Tests for medrobust.square: the Square attack (Andriushchenko et al. 2020) and the gradient-masking check.

The ball and the box (Hypothesis), seeds and the global RNG, model mode and fp32 queries, the query
budget, agreement with torchattacks.Square on a small trained model, and a model with masked gradients
(a rounding quantiser in front of a linear classifier) that white-box PGD cannot attack but Square can.
"""

from __future__ import annotations

import doctest
import json

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from medrobust import square as square_module
from medrobust.attacks import apgd, pgd
from medrobust.square import gradient_masking_check, p_selection, square

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
norm_st = st.sampled_from(["l2", "linf"])
seed_st = st.integers(0, 2**20)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_model(seed: int, h: int, w: int, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w, classes))


def small_conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def batch(seed: int, n: int, h: int, w: int, *, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, 1, h, w), generator=gen(seed))


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    u = torch.arange(len(y))
    others = z.clone()
    others[u, y] = -float("inf")
    return z[u, y] - others.amax(1)


def dist(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


class ModeRecorder(nn.Module):
    """A small conv net with BatchNorm and Dropout that records, at every call, its training flag, whether
    grad mode and autocast are on, the input dtype and the batch size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))
        self.calls: list[dict] = []

    def forward(self, x):
        self.calls.append(dict(training=self.training, grad=torch.is_grad_enabled(),
                               autocast=torch.is_autocast_enabled("cpu"), dtype=x.dtype, rows=x.shape[0]))
        return self.body(x)


# ---- properties -------------------------------------------------------------------------------

@FAST
@given(norm=norm_st, seed=seed_st, n=st.integers(1, 5), h=st.integers(3, 16), w=st.integers(3, 16),
       eps=st.floats(0.0, 4.0), per_sample=st.booleans(), n_queries=st.integers(0, 15),
       batch_size=st.one_of(st.none(), st.integers(1, 3)), conv=st.booleans(), p_init=st.floats(0.05, 1.0))
def test_result_is_inside_the_ball_and_the_box(norm, seed, n, h, w, eps, per_sample, n_queries, batch_size, conv,
                                               p_init):
    if norm == "linf":
        eps = eps / 8
    model = small_conv(seed) if conv else linear_model(seed, h, w)
    x = batch(seed, n, h, w)
    y = predictions(model, x)
    y[0] = (y[0] + 1) % 2  # one sample misclassified on the clean image
    e = torch.rand(n, generator=gen(seed)) * eps if per_sample else eps
    adv, fooled = square(model, x, y, eps=e, n_queries=n_queries, norm=norm, p_init=p_init, generator=gen(seed),
                         batch_size=batch_size)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert fooled.shape == (n,) and fooled.dtype == torch.bool
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    bound = e if per_sample else torch.full((n,), eps)
    assert (dist(adv - x, norm) <= bound + 1e-5).all()
    # The misclassified sample counts as fooled and comes back unchanged.
    assert bool(fooled[0]) and torch.equal(adv[0], x[0])
    # `fooled` is what a recount says (up to a margin at float32 rounding level).
    m = margins(model, adv, y)
    recount = predictions(model, adv) != y
    assert torch.equal(fooled[m.abs() > 1e-5], recount[m.abs() > 1e-5])


def test_unattacked_samples_come_back_bit_for_bit():
    model = linear_model(0, 8, 8)
    x = batch(0, 6, 8, 8).double()
    y = predictions(model, x.float())
    y[:2] = 1 - y[:2]
    eps = torch.tensor([1.0, 1.0, 0.0, 0.0, 2.0, 2.0])
    adv, fooled = square(model, x, y, eps=eps, n_queries=20, generator=gen(0))
    assert adv.dtype == torch.float64
    assert torch.equal(adv[:4], x[:4])  # misclassified on the clean image, or radius 0
    assert fooled[:2].all() and not fooled[2:4].any()
    assert not torch.equal(adv[4:], x[4:])  # attacked


@FAST
@given(norm=norm_st, seed=seed_st, batch_size=st.one_of(st.none(), st.integers(1, 4)))
def test_seeded_attacks_repeat_exactly_and_other_seeds_differ(norm, seed, batch_size):
    model = ModeRecorder()  # BatchNorm and Dropout: eval mode must make the forward deterministic
    x = batch(seed, 5, 12, 12, lo=0.2, hi=0.8)
    y = predictions(model.eval(), x)
    eps = 0.5 if norm == "l2" else 0.03
    kw = dict(eps=eps, n_queries=30, norm=norm, batch_size=batch_size)
    a, fa = square(model.train(), x, y, generator=gen(seed), **kw)
    b, fb = square(model.train(), x, y, generator=gen(seed), **kw)
    c, _ = square(model.train(), x, y, generator=gen(seed + 1), **kw)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert not torch.equal(a, c)


def test_the_global_rng_is_neither_used_nor_changed():
    model = linear_model(0, 12, 12)
    x = batch(0, 4, 12, 12)
    y = predictions(model, x)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    a, _ = square(model, x, y, eps=1.0, n_queries=20, generator=gen(3))
    torch.manual_seed(2)
    b, _ = square(model, x, y, eps=1.0, n_queries=20, generator=gen(3))
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    square(model, x, y, eps=1.0, n_queries=20, generator=gen(3))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("start_training", [True, False])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_model_mode_fp32_no_grad_and_model_untouched(start_training, norm):
    model = ModeRecorder()
    model.train(start_training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch(0, 4, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast must not reach the queries
        square(model, x, torch.tensor([0, 1, 0, 1]), eps=0.5 if norm == "l2" else 0.05, n_queries=10, norm=norm,
               generator=gen(0))
    assert model.calls
    assert not any(c["training"] or c["grad"] or c["autocast"] for c in model.calls)
    assert all(c["dtype"] == torch.float32 for c in model.calls)
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())


def test_mode_is_restored_when_the_model_raises():
    class Boom(ModeRecorder):
        def forward(self, x):
            if len(self.calls) >= 3:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        square(model, batch(0, 2, 8, 8), torch.tensor([0, 1]), eps=1e-6, n_queries=10, generator=gen(0))
    assert model.training


class ChangeDetector(nn.Module):
    """Class 0 on the given images, class 1 once an image is moved by more than 0.1 in L2; records batch sizes."""

    def __init__(self, ref: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ref", ref.flatten(1).clone())
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        d = ((x.flatten(1)[:, None] - self.ref[None]) ** 2).sum(-1).sqrt().amin(1)
        return torch.stack([torch.ones_like(d), 10 * d], 1)


def test_query_budget_and_fooled_samples_stop():
    """A sample costs at most n_queries + 1 queries besides the clean pass, and none once it is fooled."""
    x = batch(0, 6, 10, 10, lo=0.3, hi=0.7)
    y = torch.zeros(6, dtype=torch.long)
    model = ChangeDetector(x)
    _, fooled = square(model, x, y, eps=1e-6, n_queries=25, generator=gen(0))  # too small to fool anything
    assert not fooled.any()
    assert model.rows == [6] + [6] * 26
    model.rows.clear()
    _, fooled = square(model, x, y, eps=1.0, n_queries=25, generator=gen(0))  # fooled by the initialisation
    assert fooled.all()
    assert model.rows == [6, 6]
    model.rows.clear()
    square(model, x, y, eps=1.0, n_queries=25, generator=gen(0), batch_size=4)
    assert model.rows == [6, 4, 2]
    model.rows.clear()
    eps = torch.tensor([1.0, 1e-6, 1.0, 1e-6, 1.0, 1e-6])
    _, fooled = square(model, x, y, eps=eps, n_queries=25, generator=gen(0))
    assert torch.equal(fooled, eps > 0.5)
    assert model.rows == [6, 6] + [3] * 25  # the fooled half is not queried again


def test_p_schedule_is_the_references():
    for n_queries in (1, 7, 100, 1000, 5000):
        ref = torchattacks.Square(nn.Linear(1, 1), n_queries=n_queries, p_init=0.8)
        assert [p_selection(0.8, i, n_queries) for i in range(n_queries)] == [
            ref.p_selection(i) for i in range(n_queries)]
    assert p_selection(0.8, 0, 10000) == 0.8 and p_selection(0.8, 9999, 10000) == 0.8 / 512


@pytest.mark.parametrize("kw", [dict(norm="l1"), dict(n_queries=-1), dict(p_init=0.0), dict(p_init=1.5),
                                dict(batch_size=0), dict(eps=-1.0), dict(eps=torch.ones(3))])
def test_bad_arguments_are_refused(kw):
    model = linear_model(0, 8, 8)
    args = dict(eps=1.0) | kw
    with pytest.raises(ValueError):
        square(model, batch(0, 2, 8, 8), torch.tensor([0, 1]), **args)


def test_docstring_examples_run():
    assert doctest.testmod(square_module, optionflags=doctest.ELLIPSIS).failed == 0


# ---- a small trained model, and torchattacks.Square as the reference ---------------------------

def blob_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 "faint to bright blob vs none" images: margins vary, so robust accuracy falls gradually."""
    g = gen(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.35 + 0.1 * torch.randn((n, 1, 16, 16), generator=g)
    amp = 0.05 + 0.35 * torch.rand((n, 1, 1, 1), generator=g)
    blob = torch.zeros(1, 1, 16, 16)
    blob[..., 5:11, 5:11] = 1.0
    return (x + y.view(-1, 1, 1, 1) * amp * blob).clamp(0, 1), y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    """Plain gradient descent (torch.optim would import torch._dynamo, slowly)."""
    for _ in range(steps):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return blob_data(0, 256), blob_data(1, 64)


@pytest.fixture(scope="module")
def trained(data):
    (x, y), (xt, yt) = data
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 2)), x, y, 300, 0.3)
    assert int((predictions(model, xt) == yt).sum()) >= 60  # it learnt the task
    return model


def peer_square(model: nn.Module, x, y, *, eps: float, n_queries: int, norm: str, seed: int):
    model.eval()
    torch.manual_seed(seed)
    adv = torchattacks.Square(model, norm="L2" if norm == "l2" else "Linf", eps=eps, n_queries=n_queries,
                              seed=seed)(x, y)
    assert not model.training  # the peer left it in eval mode
    return adv, predictions(model, adv) != y


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("l2", 0.5), ("linf", 0.05)])
def test_breaks_the_trained_model_as_torchattacks_does(trained, data, norm, eps):
    _, (xt, yt) = data
    n_queries, seed = 300, 0
    adv, fooled = square(trained, xt, yt, eps=eps, n_queries=n_queries, norm=norm, generator=gen(seed))
    clean = predictions(trained, xt) == yt
    # A substantial fraction of the images the model gets right is broken (about 60% at L2 eps 1).
    assert int((fooled & clean).sum()) >= (0.35 if eps == 0.5 else 0.5) * int(clean.sum())
    ref, ref_fooled = peer_square(trained, xt, yt, eps=eps, n_queries=n_queries, norm=norm, seed=seed)
    assert abs(int(fooled.sum()) - int(ref_fooled.sum())) <= 2
    # The same draws, in the same order, from a generator seeded as the peer seeds the global RNG: the
    # port takes the reference's steps exactly (the peer returns the clean image where it fails).
    assert torch.equal(fooled, ref_fooled)
    assert torch.allclose(adv[ref_fooled], ref[ref_fooled], atol=1e-6)


def test_square_is_not_stronger_than_apgd_on_a_smooth_model(trained, data):
    _, (xt, yt) = data
    _, fooled = square(trained, xt, yt, eps=1.0, n_queries=300, generator=gen(0))
    _, broken = apgd(trained, xt, yt, eps=1.0, steps=50, use_autocast=False, generator=gen(0), return_success=True)
    assert int(broken.sum()) >= int(fooled.sum())


# ---- the gradient-masking check -------------------------------------------------------------

class Quantised(nn.Module):
    """``net(round(4 x) / 4)``: rounding has zero gradient, so white-box attacks see no signal."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


def white_box_correct(model, x, y, eps) -> torch.Tensor:
    adv = pgd(model, x, y, eps=eps, steps=20, keep_first_success=True, use_autocast=False, generator=gen(0))
    return predictions(model, adv) == y


def test_masked_gradients_are_caught(data):
    (x, y), (xt, yt) = data
    torch.manual_seed(0)
    model = train(Quantised(nn.Sequential(nn.Flatten(), nn.Linear(256, 2))), x, y, 300, 0.3)
    clean = predictions(model, xt) == yt
    assert int(clean.sum()) >= 58
    wb = white_box_correct(model, xt, yt, 1.0)
    assert int(wb.sum()) >= int(clean.sum()) - 3  # PGD finds (almost) nothing: its gradient is zero
    report = gradient_masking_check(model=model, x=xt, y=yt, eps=1.0, white_box_correct=wb, n_queries=300,
                                    generator=gen(0))
    json.dumps(report)
    assert report["masking_suspected"] is True
    assert report["square_accuracy"] <= 0.6 and report["found_by_square_only"] >= 20
    assert report["white_box_accuracy"] == int(wb.sum()) / 64 and report["n"] == 64
    assert "masking" in report["note"]


def test_no_masking_on_a_plain_linear_model(data):
    (x, y), (xt, yt) = data
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Flatten(), nn.Linear(256, 2)), x, y, 300, 0.3)
    for eps in (0.5, 1.0):
        wb = white_box_correct(model, xt, yt, eps)
        report = gradient_masking_check(model=model, x=xt, y=yt, eps=eps, white_box_correct=wb, n_queries=300,
                                        generator=gen(0))
        json.dumps(report)
        assert report["masking_suspected"] is False
        assert report["found_by_square_only"] == 0
        assert report["square_accuracy"] >= report["white_box_accuracy"]
        assert report["square_accuracy"] < report["clean_accuracy"]  # Square did break images


def test_check_definition_and_inputs():
    model = linear_model(0, 8, 8)
    x = batch(0, 8, 8, 8, lo=0.3, hi=0.7)
    y = predictions(model, x)
    y[:2] = 1 - y[:2]  # misclassified on the clean image
    nothing = torch.zeros(8, dtype=torch.bool)
    kw = dict(model=model, x=x, y=y, eps=1e-6, n_queries=5, generator=gen(0))  # Square breaks nothing new
    r = gradient_masking_check(white_box_correct=~nothing, **kw)
    # A white-box verdict "correct" on an image wrong on the clean input counts as broken.
    assert r["white_box_accuracy"] == r["square_accuracy"] == r["clean_accuracy"] == 6 / 8
    assert r["masking_suspected"] is False and r["found_by_square_only"] == 0
    r = gradient_masking_check(white_box_correct=nothing, **kw)
    assert r["white_box_accuracy"] == 0.0 and r["masking_suspected"] is False
    wb = ~nothing
    wb[5] = False  # the white-box attacks broke one image Square did not: Square is weaker, no masking
    r = gradient_masking_check(white_box_correct=wb, **kw)
    assert r["masking_suspected"] is False and r["square_accuracy"] > r["white_box_accuracy"]
    assert set(r) == {"n", "norm", "eps_pixels", "n_queries", "clean_accuracy", "square_accuracy",
                      "white_box_accuracy", "found_by_square_only", "masking_suspected", "note"}
    assert isinstance(r["eps_pixels"], float) and isinstance(r["n_queries"], int)
    with pytest.raises(TypeError):
        gradient_masking_check(white_box_correct=torch.ones(8), **kw)
    with pytest.raises(ValueError):
        gradient_masking_check(white_box_correct=torch.ones(7, dtype=torch.bool), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("device_of_generator", ["cpu", "cuda"])
def test_runs_on_cuda_with_a_cpu_or_a_cuda_generator(device_of_generator):
    model = small_conv(0).cuda()
    x = batch(0, 6, 16, 16).cuda()
    y = predictions(model, x)
    g = torch.Generator(device=device_of_generator).manual_seed(3)
    adv, fooled = square(model, x, y, eps=0.5, n_queries=20, generator=g)
    assert adv.device == x.device and fooled.shape == (6,)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.5 * (1 + 1e-5)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
