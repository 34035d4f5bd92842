"""The peers' L2 attacks, run exactly as the parity test and benchmarks/bench_parity.py compare them.

Each takes an eval-mode model, images in [0, 1] (N, C, H, W), labels (N,) and the radius in pixel units,
and returns adversarial examples on the images' device:

* ``rai_pgd``: rai-toolbox's L2 PGD (``gradient_ascent`` + ``L2ProjectedOptim``, start uniform in the
  ball, step 2.5 eps / steps, cross-entropy maximised; the paper's tool). rai-toolbox does not clamp to
  [0, 1], so the model it attacks clamps its input, and the returned example is clamped the same way;
* ``ta_pgdl2``: ``torchattacks.PGDL2`` (alpha 2.5 eps / steps, random start);
* ``ta_apgd``: ``torchattacks.APGD`` (L2, CE, 1 restart, seed 0).

A peer's accuracy is counted by :func:`n_correct`: an fp32 (IEEE, no TF32) eval-mode forward pass.
:func:`fresh_model`, :func:`snapshot` and :func:`assert_untouched` let each attack run on its own model
and check that it left no state behind (a wrapper module starts in train mode, and an attack that
"restores the previous mode" of a train-mode wrapper would leave BatchNorm on batch statistics).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medrobust.attacks import ieee_fp32

PEERS = ("rai_pgd", "ta_pgdl2", "ta_apgd")


def fresh_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    from medrobust.checkpoints import load_checkpoint

    model, _ = load_checkpoint(checkpoint, device=device)
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], who: str) -> None:
    training = [n for n, m in model.named_modules() if m.training]
    assert not training, f"{who} left the model in train mode ({training[:3]}...)"
    after = model.state_dict()
    assert after.keys() == before.keys(), f"{who} changed the model's state_dict keys"
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"{who} changed the model's state ({changed[:3]}...)"
    assert all(p.grad is None for p in model.parameters()), f"{who} left weight gradients on the model"


def n_correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> int:
    assert not model.training
    with torch.no_grad(), ieee_fp32(x_adv.device):
        return int((model(x_adv.float()).argmax(1) == y).sum())


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, who: str) -> None:
    over = (x_adv - x).flatten(1).norm(dim=1) - (eps.to(x.device) * (1 + 1e-4) + 1e-5)
    assert float(over.max()) <= 0.0, f"{who}: a perturbation leaves the eps-ball by {float(over.max()):.2e}"
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0, f"{who}: example outside [0, 1]"


class Clamp01(nn.Module):
    """The model rai-toolbox attacks: it sees ``x + delta`` and must see it clamped to the image range."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z.clamp(0.0, 1.0))


def rai_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20) -> torch.Tensor:
    from rai_toolbox.optim import L2ProjectedOptim
    from rai_toolbox.perturbations import AdditivePerturbation, gradient_ascent, uniform_like_l2_n_ball_

    # gradient_ascent freezes the module it is given and wraps it in rai's ``evaluating``, which on exit
    # calls ``.train(mode it had on entry)`` on it -- recursively. A fresh wrapper starts in train mode,
    # so without this .eval() the wrapped model would leave in train mode (BatchNorm on batch statistics).
    wrapped = Clamp01(model).eval()
    pert = AdditivePerturbation(x, init_fn=uniform_like_l2_n_ball_, epsilon=eps,
                                generator=torch.Generator().manual_seed(0))  # rai draws on the generator's device, copies to x's
    x_adv, _ = gradient_ascent(model=wrapped, data=x, target=y, optimizer=L2ProjectedOptim, steps=steps,
                               perturbation_model=pert, use_best=False,
                               epsilon=eps, lr=2.5 * eps / steps)  # -> L2ProjectedOptim(params, epsilon, lr)
    assert not wrapped.training
    return x_adv.clamp(0.0, 1.0)


def ta_pgdl2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20) -> torch.Tensor:
    import torchattacks

    return torchattacks.PGDL2(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)(x, y)


def ta_apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20) -> torch.Tensor:
    import torchattacks

    return torchattacks.APGD(model, norm="L2", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)(x, y)


PEER_FNS = {"rai_pgd": rai_pgd, "ta_pgdl2": ta_pgdl2, "ta_apgd": ta_apgd}


def run_peer(peer: str, checkpoint: str | Path, x: torch.Tensor, y: torch.Tensor, eps: float, *,
             steps: int = 20) -> int:
    """Images still correctly classified after ``peer``, on a fresh model that must come back untouched."""
    model = fresh_model(checkpoint, x.device)
    before = snapshot(model)
    torch.manual_seed(0)
    adv = PEER_FNS[peer](model, x.clone(), y.clone(), eps, steps=steps).detach()
    assert_untouched(model, before, peer)
    assert_in_ball(adv, x, torch.full((x.shape[0],), eps), peer)
    return n_correct(model, adv, y)


def compare(checkpoint: str | Path, x: torch.Tensor, y: torch.Tensor, *, eps_224: tuple[float, ...],
            steps: int = 20, pgd_restarts: int = 5, apgd_restarts: int = 1) -> dict:
    """Our worst case and each peer at every radius (stated at 224 px) on the same images.

    Ours runs all radii in one batched call, as ``evaluate_model`` runs it (the images repeated once per
    eps, one radius per image), in fp32 (``use_autocast=False``) on a fresh model; each peer runs per
    radius on its own fresh model. Returns ``{"rows": [...], "seconds": {...}}``, each row the number of
    images still correct under ``pgd_first``, ``pgd``, ``apgd``, ``worst`` (ours) and each of :data:`PEERS`.
    """
    import time

    from medrobust.attacks import scale_eps, worst_case

    n, k, side = x.shape[0], len(eps_224), int(x.shape[-1])
    eps_px = [scale_eps(e, norm="l2", side=side) for e in eps_224]
    t0 = time.perf_counter()
    model = fresh_model(checkpoint, x.device)
    before = snapshot(model)
    es = torch.tensor(eps_px, dtype=torch.float32, device=x.device).repeat_interleave(n)
    xk, yk = x.repeat(k, 1, 1, 1), y.repeat(k)
    wc = worst_case(model, xk, yk, eps=es, steps=steps, norm="l2", pgd_restarts=pgd_restarts,
                    apgd_restarts=apgd_restarts, use_autocast=False,
                    generator=torch.Generator(device=x.device).manual_seed(0))
    assert_untouched(model, before, "worst_case")
    assert_in_ball(wc.x_adv, xk, es, "worst_case")
    ours = {a: wc.ok_by_attack[a].view(k, n).sum(1).tolist() for a in ("pgd_first", "pgd", "apgd")}
    ours["worst"] = wc.ok.view(k, n).sum(1).tolist()
    seconds = {"ours": time.perf_counter() - t0}
    rows = [{"eps224": e224, "eps": e, **{a: v[i] for a, v in ours.items()}}
            for i, (e224, e) in enumerate(zip(eps_224, eps_px))]
    for peer in PEERS:
        t0 = time.perf_counter()
        for row in rows:
            row[peer] = run_peer(peer, checkpoint, x, y, row["eps"], steps=steps)
        seconds[peer] = time.perf_counter() - t0
    return {"n": n, "rows": rows, "seconds": seconds}


COLUMNS = ("pgd_first", "pgd", "apgd", "worst") + PEERS


def failures(result: dict, *, tolerance: int = 1) -> list[str]:
    """Radii where our worst case leaves more than ``tolerance`` images more correct than a peer."""
    n = result["n"]
    return [f"eps {r['eps224']:g} (224 px) = {r['eps']:.4f} px: ours {r['worst']}/{n} correct, {p} {r[p]}/{n}"
            for r in result["rows"] for p in PEERS if r["worst"] > r[p] + tolerance]


def table(result: dict) -> str:
    """The comparison as a Markdown table: accuracy (correct images) per attack and radius."""
    n = result["n"]
    lines = ["| eps@224 | eps | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    lines += [f"| {r['eps224']:g} | {r['eps']:.4f} | " + " | ".join(f"{r[c] / n:.3f} ({r[c]})" for c in COLUMNS) + " |"
              for r in result["rows"]]
    return "\n".join(lines)
