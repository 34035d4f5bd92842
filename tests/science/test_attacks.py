"""Tests for medrobust.attacks: PGD properties (Hypothesis), a golden check against torchattacks, eps scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attack_testkit import FAST, SIDE, ModeRecorder, batch, linear_model, norms  # tests/ is on the test path

from medrobust.attacks import eval_mode, pgd, pgd_multi_eps, scale_eps


def run(model, x, y, **kw):
    kw.setdefault("use_autocast", False)
    return pgd(model, x, y, **kw)


norm_st = st.sampled_from(["l2", "linf"])
seed_st = st.integers(0, 2**20)


# ---- properties -------------------------------------------------------------------------------

@FAST
@given(norm=norm_st, seed=seed_st, n=st.integers(1, 6), steps=st.integers(0, 6), eps=st.floats(0.0, 3.0),
       random_start=st.booleans(), kfs=st.booleans(), step_size=st.one_of(st.none(), st.floats(0.01, 2.0)))
def test_result_is_inside_the_ball_and_the_box(norm, seed, n, steps, eps, random_start, kfs, step_size):
    if norm == "linf":
        eps = eps / 3
    model = linear_model(seed)
    x, y = batch(seed, n)
    g = torch.Generator().manual_seed(seed)
    adv = run(model, x, y, eps=eps, steps=steps, norm=norm, random_start=random_start, generator=g,
              keep_first_success=kfs, step_size=step_size)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert (norms(adv - x, norm) <= eps + 1e-4).all()


@FAST
@given(norm=norm_st, seed=seed_st, steps=st.integers(0, 5), random_start=st.booleans(), kfs=st.booleans())
def test_eps_zero_returns_the_input(norm, seed, steps, random_start, kfs):
    model = linear_model(seed)
    x, y = batch(seed, 4)
    adv = run(model, x, y, eps=0.0, steps=steps, norm=norm, random_start=random_start, keep_first_success=kfs,
              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(adv, x)
    adv.add_(1.0)  # the result is a new tensor: editing it leaves the caller's images alone
    assert float(x.max()) <= 1.0


@FAST
@given(norm=norm_st, seed=seed_st, eps=st.floats(0.01, 2.0))
def test_zero_steps_without_random_start_returns_the_input(norm, seed, eps):
    model = linear_model(seed)
    x, y = batch(seed, 3)
    assert torch.equal(run(model, x, y, eps=eps, steps=0, norm=norm, random_start=False), x)
    # With a random start, zero steps return the random start: in the ball, not the input.
    adv = run(model, x, y, eps=eps, steps=0, norm=norm, generator=torch.Generator().manual_seed(seed))
    assert (norms(adv - x, norm) <= eps + 1e-4).all()


@pytest.mark.parametrize("start_training", [True, False])
@pytest.mark.parametrize("kfs", [True, False])
def test_model_mode_is_eval_during_and_restored_after(start_training, kfs):
    model = ModeRecorder()
    model.train(start_training)
    x, y = batch(0, 4)
    run(model, x, y, eps=0.5, steps=3, keep_first_success=kfs)
    assert model.modes and not any(model.modes)  # every forward of the attack ran in eval mode
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())


def test_mode_is_restored_when_the_model_raises():
    class Boom(ModeRecorder):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        run(model, *batch(0, 2), eps=0.5, steps=2)
    assert model.training
    with eval_mode(model):
        assert not model.training
    assert model.training


@FAST
@given(norm=norm_st, seed=seed_st, kfs=st.booleans())
def test_seeded_attacks_repeat_exactly(norm, seed, kfs):
    model = ModeRecorder()
    x, y = batch(seed, 5)
    eps = 1.0 if norm == "l2" else 0.1
    a = run(model, x, y, eps=eps, steps=4, norm=norm, keep_first_success=kfs,
            generator=torch.Generator().manual_seed(seed))
    b = run(model, x, y, eps=eps, steps=4, norm=norm, keep_first_success=kfs,
            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@FAST
@given(norm=norm_st, seed=seed_st, steps=st.integers(1, 8), eps=st.floats(0.01, 0.25))
def test_attack_does_not_lower_the_loss_of_a_linear_model(norm, seed, steps, eps):
    # The cross-entropy of a linear model is convex in x. Images lie in [0.3, 0.7] and every
    # coordinate moves by at most eps <= 0.25, so clamping never binds and each step is an exact
    # projected-gradient ascent step: the loss cannot go down.
    model = linear_model(seed)
    x, y = batch(seed, 6, lo=0.3, hi=0.7)
    adv = run(model, x, y, eps=eps, steps=steps, norm=norm, random_start=False)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(adv), y, reduction="none")
    assert (attacked >= clean - 1e-5).all()
    assert float(attacked.sum()) > float(clean.sum())  # and it does go up


def test_large_attack_breaks_a_linear_model():
    model = linear_model(0)
    x, y = batch(0, 64)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right
    adv = run(model, x, y, eps=4.0, steps=10, norm="l2", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(adv).argmax(1) == y).float().mean()) < 0.2


@FAST
@given(norm=norm_st, seed=seed_st, n=st.integers(2, 8))
def test_per_sample_eps(norm, seed, n):
    model = linear_model(seed)
    x, y = batch(seed, n)
    g = torch.Generator().manual_seed(seed)
    eps = torch.rand(n, generator=g) * (2.0 if norm == "l2" else 0.2)
    eps[0] = 0.0
    adv = run(model, x, y, eps=eps, steps=4, norm=norm, generator=g)
    assert (norms(adv - x, norm) <= eps + 1e-4).all()
    assert torch.equal(adv[0], x[0])  # a zero radius leaves its sample alone


def test_pgd_multi_eps_keys_and_balls():
    model = linear_model(1)
    x, y = batch(1, 5)
    eps_list = [0.0, 0.5, 1.0, 2.0]
    out = pgd_multi_eps(model, x, y, eps_list=eps_list, steps=3, norm="l2",
                        generator=torch.Generator().manual_seed(0), use_autocast=False)
    assert list(out) == [float(e) for e in eps_list]
    for e, adv in out.items():
        assert adv.shape == x.shape
        assert (norms(adv - x, "l2") <= e + 1e-4).all()
        assert 0.0 <= float(adv.min()) and float(adv.max()) <= 1.0
    assert torch.equal(out[0.0], x)
    assert pgd_multi_eps(model, x, y, eps_list=[], steps=3) == {}


@pytest.mark.parametrize("norm, eps", [("l2", 0.6), ("linf", 0.04), ("l2", 1.5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_first_success_is_never_weaker(norm, eps, seed):
    # Large fixed steps make plain PGD oscillate, so its last iterate can fall back to the right
    # class; keeping the first fooling iterate never counts fewer broken samples.
    model = linear_model(seed)
    x, y = batch(seed, 128)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(eps=eps, steps=6, norm=norm, step_size=eps, use_autocast=False)
    plain = pgd(model, x, y, generator=torch.Generator().manual_seed(seed), **kw)
    first = pgd(model, x, y, generator=torch.Generator().manual_seed(seed), keep_first_success=True, **kw)
    with torch.no_grad():
        acc_plain = (model(plain).argmax(1) == y).float().mean()
        acc_first = (model(first).argmax(1) == y).float().mean()
    assert acc_first <= acc_plain


def test_golden_against_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model = linear_model(3)
    x, y = batch(3, 16, lo=0.1, hi=0.9)
    for norm, cls, eps in (("l2", torchattacks.PGDL2, 0.8), ("linf", torchattacks.PGD, 0.05)):
        steps = 5
        ref = cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)(x, y)
        ours = run(model, x, y, eps=eps, steps=steps, norm=norm, random_start=False)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_accuracy_does_not_grow_with_eps_on_a_trained_model():
    # A small conv net trained for a few steps on "bright blob vs none" images.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 96
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 + 0.05 * torch.randn((n, 1, 16, 16), generator=g)
    x[y == 1, :, 5:11, 5:11] += 0.4
    x = x.clamp(0, 1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 2))
    # Plain gradient descent by hand: torch.optim would import torch._dynamo (slow) for nothing.
    for _ in range(150):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    model.eval()

    def acc(e):
        adv = pgd(model, x, y, eps=e, steps=10, norm="l2", keep_first_success=True, use_autocast=False,
                  generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return float((model(adv).argmax(1) == y).float().mean())

    accs = [acc(e) for e in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert accs[0] > 0.9  # it learnt the task
    # PGD is a heuristic, so allow one sample of slack between neighbours; the ends must be far apart.
    assert all(b <= a + 1 / n + 1e-9 for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0] - 0.3, accs


# ---- scale_eps and argument checks ------------------------------------------------------------

def test_scale_eps():
    assert scale_eps(4.0, norm="l2", side=224) == 4.0
    assert scale_eps(4.0, norm="l2", side=112) == 2.0
    assert scale_eps(1.0, norm="l2", side=64) == pytest.approx(64 / 224)
    assert scale_eps(0.03, norm="linf", side=64) == 0.03
    assert scale_eps(2.0, norm="l2", side=100, reference_side=50) == 4.0
    assert scale_eps(0.0, norm="l2", side=64) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        scale_eps(-1.0, norm="l2", side=64)
    with pytest.raises(ValueError, match=">= 0"):
        scale_eps(-0.1, norm="linf", side=64)
    with pytest.raises(ValueError, match="norm"):
        scale_eps(1.0, norm="l1", side=64)  # type: ignore[arg-type]


def test_bad_arguments_raise_value_error():
    model = linear_model(0)
    x, y = batch(0, 3)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, eps=1.0, steps=-1)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=1.0, steps=1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pgd(model, x[0], y, eps=1.0, steps=1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pgd(model, x.flatten(1), y, eps=1.0, steps=1)
    with pytest.raises(ValueError, match="one value per sample"):
        pgd(model, x, y, eps=torch.ones(2), steps=1)
    with pytest.raises(ValueError, match=">= 0"):
        pgd(model, x, y, eps=-0.5, steps=1)
    with pytest.raises(ValueError, match=">= 0"):
        pgd(model, x, y, eps=torch.tensor([0.1, -0.1, 0.1]), steps=1)
    empty = pgd(model, x[:0], y[:0], eps=1.0, steps=2)
    assert empty.shape == (0, 1, SIDE, SIDE)


def test_three_channel_and_float64_inputs_keep_their_shape_and_dtype():
    model = linear_model(0, channels=3)  # float32 model; the attack runs in float32
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 3, SIDE, SIDE), generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (4,), generator=g)
    adv = pgd(model, x, y, eps=0.5, steps=2, use_autocast=False, generator=g)
    assert adv.shape == x.shape and adv.dtype == torch.float64
    assert (norms(adv - x, "l2") <= 0.5 + 1e-4).all()
    assert not torch.equal(adv, x)


def test_the_cpu_bf16_setting_is_read_where_it_is_decided(monkeypatch):
    """Changing MEDROBUST_CPU_BF16 takes effect at once, whatever an earlier call answered (a cached
    answer once made an in-process reference train under bf16 while a subprocess trained in fp32)."""
    from medrobust.attacks import autocast_for, cpu_bf16_is_fast

    monkeypatch.delenv("MEDROBUST_CPU_BF16", raising=False)
    cpu_bf16_is_fast()  # whatever the hardware says, this answer must not stick
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")
    assert cpu_bf16_is_fast() is True
    assert isinstance(autocast_for("cpu"), torch.autocast)
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")
    assert cpu_bf16_is_fast() is False
    assert not isinstance(autocast_for("cpu"), torch.autocast)
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")
    assert cpu_bf16_is_fast() is True


class PassCounter(nn.Module):
    """A small conv net that counts the images of its fp32 and of its bf16 (autocast) forward passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * SIDE * SIDE, 2))
        self.images = {"fp32": 0, "bf16": 0}

    def forward(self, x):
        self.images["bf16" if torch.is_autocast_enabled("cpu") else "fp32"] += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("attack", ["pgd", "apgd", "worst_case"])
def test_attacks_on_a_bf16_twin_step_on_its_copy_and_judge_with_the_fp32_model(attack, monkeypatch):
    """A Bf16Twin under the attacks' bf16 autocast: every gradient step runs on the bf16 copy, the fp32 model only
    ever runs in fp32 (the verdicts), every example stays in the ball, and every reported hit is an fp32 hit."""
    from medrobust import attacks
    from medrobust.models import Bf16Twin

    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")
    x, _ = batch(4, 128)
    model = PassCounter().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    twin = Bf16Twin(model)
    model.images.update(fp32=0, bf16=0)
    twin.low.images.update(fp32=0, bf16=0)
    g = torch.Generator().manual_seed(0)
    eps = 0.6
    if attack == "worst_case":
        result = attacks.worst_case(twin, x, y, eps=eps, steps=10, norm="l2", generator=g, use_autocast=True,
                                    schedule="sequential")
        adv, reported = result.x_adv, ~result.ok
    else:
        fn = attacks.pgd if attack == "pgd" else attacks.apgd
        adv = fn(twin, x, y, eps=eps, steps=10, norm="l2", generator=g, use_autocast=True,
                 **(dict(keep_first_success=True) if attack == "pgd" else {}))
        reported = None
    assert model.images["bf16"] == 0 and twin.low.images["fp32"] > 0  # steps on the copy (autocast off inside it)
    assert model.images["fp32"] > 0  # the verdicts
    assert bool((adv >= 0).all() and (adv <= 1).all())
    assert bool(((adv - x).flatten(1).norm(dim=1) <= eps + 1e-4).all())
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert 0 < int(fooled.sum())
    if reported is not None:
        assert torch.equal(reported, fooled)


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_bf16_screen_spares_fp32_verdicts_and_misses_no_hit(attack, monkeypatch):
    """Under bf16 iterations, only iterates near the boundary get an fp32 verdict forward: far fewer fp32
    passes than checking every iterate, and (for PGD, whose path does not depend on the verdicts) exactly
    the same examples, so no hit was missed; every reported hit is an fp32 hit."""
    from medrobust import attacks

    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")
    x, _ = batch(3, 128)
    model = PassCounter()
    with torch.no_grad():
        y = model(x).argmax(1)

    def attack_once():
        model.images.update(fp32=0, bf16=0)
        fn = attacks.pgd if attack == "pgd" else attacks.apgd
        kw = dict(keep_first_success=True) if attack == "pgd" else {}
        adv = fn(model, x, y, eps=0.6, steps=15, norm="l2", generator=torch.Generator().manual_seed(0),
                 use_autocast=True, **kw)
        return adv, dict(model.images)

    screened, counts = attack_once()
    # An infinite slack sends every iterate to fp32: the unscreened attack.
    monkeypatch.setattr(attacks._Screen.__init__, "__kwdefaults__", {"factor": float("inf"), "floor": 0.02})
    checked, counts_all = attack_once()
    assert counts["bf16"] > 0 and counts_all["fp32"] >= counts_all["bf16"] - x.shape[0]
    assert counts["fp32"] < 0.5 * counts_all["fp32"], (counts, counts_all)
    with torch.no_grad():
        fooled = model(screened).argmax(1) != y
        fooled_all = model(checked).argmax(1) != y
    assert 0 < int(fooled.sum()) < x.shape[0]
    if attack == "pgd":
        assert torch.equal(screened, checked)
    else:  # APGD's step size reads bf16 losses far from the boundary: other paths, about as many hits
        assert abs(int(fooled.sum()) - int(fooled_all.sum())) <= 6
