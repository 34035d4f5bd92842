"""The worst case over the attack ensemble: never above any member, in the ball, fp32-decided, seeded; over
several radii, nested (a larger ball never looks more robust)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from medrobust.attacks import ENSEMBLE, _random_start, logit_margin, worst_case, worst_case_radii


def _net(seed: int, side: int = 6, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 8), nn.Tanh(), nn.Linear(8, classes)).eval()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 2.0), norm=st.sampled_from(["l2", "linf"]),
       restarts=st.integers(1, 3), classes=st.integers(2, 4))
def test_the_worst_case_is_never_above_any_member_and_stays_in_the_ball(seed, eps, norm, restarts, classes):
    net = _net(seed, classes=classes)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, classes, (12,), generator=torch.Generator().manual_seed(seed + 1))
    e = eps if norm == "l2" else eps / 20
    wc = worst_case(net, x, y, eps=e, steps=5, norm=norm, pgd_restarts=restarts,
                    generator=torch.Generator().manual_seed(seed))
    for name in ("pgd", "apgd", "pgd_first"):
        assert bool((wc.ok <= wc.ok_by_attack[name]).all()), name  # robust overall => robust to each member
    assert bool((wc.ok_by_attack["pgd"] <= wc.ok_by_attack["pgd_first"]).all())  # restarts only add successes
    d = (wc.x_adv - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    assert bool((size <= e + 1e-5).all()) and 0 <= float(wc.x_adv.min()) and float(wc.x_adv.max()) <= 1
    with torch.no_grad():  # the kept examples are exactly as damaging as the verdicts say
        assert torch.equal(net(wc.x_adv).argmax(1) == y, wc.ok)


def test_seeded_and_each_member_can_run_alone():
    net = _net(3)
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 2, (16,))
    runs = [worst_case(net, x, y, eps=0.8, steps=4, pgd_restarts=2, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].ok, runs[1].ok)
    only = worst_case(net, x, y, eps=0.8, steps=4, attacks=["apgd"], generator=torch.Generator().manual_seed(7))
    assert set(only.ok_by_attack) == {"apgd"} and torch.equal(only.ok, only.ok_by_attack["apgd"])
    with pytest.raises(ValueError, match="subset of"):
        worst_case(net, x, y, eps=0.8, steps=4, attacks=["fgsm"])
    assert ENSEMBLE == ("pgd", "apgd")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_starts_cover_the_interior_and_the_surface(norm):
    x = torch.zeros(200, 1, 5, 5)
    eps = torch.full((200, 1, 1, 1), 0.5)
    g = torch.Generator().manual_seed(0)
    size = (lambda d: d.flatten(1).norm(dim=1)) if norm == "l2" else (lambda d: d.flatten(1).abs().amax(1))
    inside = size(_random_start(x, eps, norm, g))
    surface = size(_random_start(x, eps, norm, g, surface=True))
    assert torch.allclose(surface, torch.full_like(surface, 0.5), atol=1e-5)
    if norm == "l2":
        assert float(inside.min()) < 0.1 and float(inside.max()) <= 0.5 + 1e-6  # radius uniform in [0, eps]


def test_model_mode_is_restored():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net.train()
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 2, (8,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    worst_case(net, x, y, eps=0.5, steps=3, generator=torch.Generator().manual_seed(0))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # no BatchNorm statistics moved


# ---- several radii at once: nested balls ----------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "linf"]), restarts=st.integers(1, 3),
       classes=st.integers(2, 4))
def test_nested_radii_never_let_a_larger_ball_look_more_robust(seed, norm, restarts, classes):
    net = _net(seed, classes=classes)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, classes, (12,), generator=torch.Generator().manual_seed(seed + 1))
    radii = [0.6, 0.1, 1.5, 0.0] if norm == "l2" else [0.03, 0.005, 0.08, 0.0]  # in any order, 0 included
    cases = worst_case_radii(net, x, y, radii=radii, steps=4, norm=norm, pgd_restarts=restarts,
                             generator=torch.Generator().manual_seed(seed))
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    with torch.no_grad():
        clean_ok = net(x).argmax(1) == y
    assert torch.equal(cases[order[0]].ok, clean_ok)  # radius 0: the clean verdict
    for small, large in zip(order, order[1:]):
        for name in ("pgd_first", "pgd", "apgd"):
            assert bool((cases[large].ok_by_attack[name] <= cases[small].ok_by_attack[name]).all()), name
        assert bool((cases[large].ok <= cases[small].ok).all())
        # the kept example never gets less damaging as the ball grows
        margin = lambda c: logit_margin(c.logits, y)
        assert bool((margin(cases[large]) <= margin(cases[small])).all())
    for r, wc in zip(radii, cases):
        d = (wc.x_adv - x).flatten(1)
        size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
        assert bool((size <= r + 1e-5).all())
        with torch.no_grad():  # the logits are the kept example's, and the verdicts follow from them
            assert torch.allclose(net(wc.x_adv), wc.logits, atol=1e-5)
        assert torch.equal(wc.logits.argmax(1) == y, wc.ok)


def test_one_radius_of_worst_case_radii_is_worst_case():
    net = _net(5)
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 2, (16,))
    a = worst_case(net, x, y, eps=0.7, steps=4, pgd_restarts=2, generator=torch.Generator().manual_seed(1))
    (b,) = worst_case_radii(net, x, y, radii=[0.7], steps=4, pgd_restarts=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.ok, b.ok) and torch.equal(a.logits, b.logits)
    assert all(torch.equal(a.ok_by_attack[k], b.ok_by_attack[k]) for k in a.ok_by_attack)
    with pytest.raises(ValueError, match="radii"):
        worst_case_radii(net, x, y, radii=[-1.0], steps=2)


def test_the_kept_logits_spare_no_verdict():
    """Each example is judged by the fp32 forward that found it: no pass repeats one (counted)."""
    net = _net(2)
    x, y = torch.rand(10, 1, 6, 6), torch.randint(0, 2, (10,))
    calls = []
    net.register_forward_hook(lambda m, a, o: calls.append((torch.is_grad_enabled(), a[0].shape[0])))
    wc = worst_case(net, x, y, eps=0.5, steps=3, generator=torch.Generator().manual_seed(0), use_autocast=False)
    no_graph = sum(n for grad, n in calls if not grad)
    with torch.no_grad():
        assert torch.allclose(net(wc.x_adv), wc.logits, atol=1e-6)
    # fp32 here, so the attack's own forward passes decide; without a graph only the clean forward
    # (one per image) and APGD's last iterate (no gradient needed) remain.
    assert no_graph <= 2 * x.shape[0], calls


# ---- the sequential schedule (AutoAttack's rule) ---------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "linf"]), classes=st.integers(2, 4))
def test_sequential_schedule_attacks_only_pgds_survivors_and_keeps_the_rule(seed, norm, classes):
    net = _net(seed, classes=classes)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, classes, (12,), generator=torch.Generator().manual_seed(seed + 1))
    radii = [0.1, 0.6, 1.5] if norm == "l2" else [0.005, 0.03, 0.08]
    seen: list[tuple[float, torch.Tensor]] = []  # (radius, images) of each APGD run
    import medrobust.attacks as A

    real = A._apgd

    def spy(model, xs, ys, **kw):
        seen.append((float(kw["eps"][0]), xs.clone()))
        return real(model, xs, ys, **kw)

    A._apgd = spy
    try:
        cases = worst_case_radii(net, x, y, radii=radii, steps=4, norm=norm, schedule="sequential",
                                 generator=torch.Generator().manual_seed(seed))
    finally:
        A._apgd = real
    for wc in cases:
        assert set(wc.ok_by_attack) == {"pgd_first", "pgd", "apgd_after_pgd"}
        assert torch.equal(wc.ok_by_attack["apgd_after_pgd"], wc.ok)
        assert bool((wc.ok <= wc.ok_by_attack["pgd"]).all())
        with torch.no_grad():
            assert torch.equal(net(wc.x_adv).argmax(1) == y, wc.ok)
    # APGD, at each radius, saw only images PGD left standing (at that radius and every smaller one).
    assert seen
    for radius, xs in seen:
        r = min(range(len(radii)), key=lambda j: abs(radii[j] - radius))
        fooled = (~cases[r].ok_by_attack["pgd"]).nonzero().squeeze(1).tolist()
        assert not any(torch.equal(x[i], row) for i in fooled for row in xs)
        assert xs.shape[0] == int((cases[r].ok_by_attack["pgd"] & (cases[r - 1].ok if r else True)).sum())
    with pytest.raises(ValueError, match="attack schedule"):
        worst_case(net, x, y, eps=0.5, steps=2, schedule="parallel")


def test_both_schedules_find_the_exact_worst_case_of_a_linear_model():
    """Two classes, a linear model, images well inside [0, 1]: an image can be fooled within the L2 ball of
    radius eps exactly when its margin is below eps * ||w1 - w0||; both schedules find exactly those."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(200, 1, 6, 6, generator=g)
    with torch.no_grad():
        z = net(x)
    y = z.argmax(1)
    w = net[1].weight
    scale = (w[1] - w[0]).norm().detach()
    margin = (z.max(1).values - z.min(1).values).detach()
    radii = [float(q) for q in torch.quantile(margin / scale, torch.tensor([0.3, 0.6]))]
    for schedule in ("sequential", "independent"):
        cases = worst_case_radii(net, x, y, radii=radii, steps=20, schedule=schedule,
                                 generator=torch.Generator().manual_seed(0), use_autocast=False)
        for r, wc in zip(radii, cases):
            exact = margin / scale > r
            near = (margin / scale - r).abs() < 1e-3  # float ties at the boundary
            assert torch.equal(wc.ok[~near], exact[~near]), schedule
