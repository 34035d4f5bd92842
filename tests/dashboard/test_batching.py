"""Cross-session dynamic batching (medrobust.dashboard.batching): batched answers equal one-at-a-time forwards, and no
answer crosses from one caller (one browser session) to another.

Tolerance: batched and single fp32 forwards may differ in the last bits (oneDNN picks a convolution algorithm per
batch size); 1e-5 on probabilities is far below what a card shows (0.1 percentage point).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from dashboard_fixtures import dashboard_env, tiny_checkpoints, xray_like  # noqa: F401 - fixtures
from medrobust.dashboard import batching, clean_analysis, modelset, perturbation, stress_run
from medrobust.models import build_model, fold_batchnorm

TOL = 1e-5
SESSIONS = 12


def _models(n: int = 2, size_seed: int = 0) -> list[torch.nn.Module]:
    out = []
    for i in range(n):
        torch.manual_seed(size_seed + i)
        m = fold_batchnorm(build_model().eval())
        m.requires_grad_(False)
        out.append(m)
    return out


def _inputs(n: int, side: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(1, 1, side, side, generator=g) for _ in range(n)]


def _at_once(n: int, fn) -> list:
    """``fn(i)`` for i < n, each in its own thread, all released at the same moment (as concurrent sessions)."""
    out: list = [None] * n
    errors: list = []
    start = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            start.wait(10)
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def test_concurrent_callers_get_their_own_answers_equal_to_one_at_a_time_forwards():
    model = _models(1)[0]
    xs = _inputs(SESSIONS)
    with torch.no_grad():
        alone = [torch.softmax(model(x), 1) for x in xs]
    b = batching.DynamicBatcher(lambda x: torch.softmax(model(x), 1), max_batch=8, max_wait_s=0.02)
    got = _at_once(SESSIONS, lambda i: b(xs[i]))
    for i in range(SESSIONS):
        assert got[i].shape == (1, 2)
        torch.testing.assert_close(got[i], alone[i], atol=TOL, rtol=0)
    # They really were batched (several callers per forward), never more than max_batch rows at once.
    assert b.stats.rows == SESSIONS and b.stats.batches < SESSIONS and b.stats.largest <= 8


def test_no_answer_crosses_sessions_even_when_the_inputs_differ_only_slightly():
    """An identity 'model' that tags each row: every caller must get back exactly what it sent."""
    b = batching.DynamicBatcher(lambda x: x * 2 + 1, max_batch=5, max_wait_s=0.02)
    n = 23
    got = _at_once(n, lambda i: b(torch.full((1 + i % 3, 4), float(i))))
    for i, out in enumerate(got):
        assert out.shape == (1 + i % 3, 4) and torch.equal(out, torch.full_like(out, 2.0 * i + 1))
    assert b.stats.rows == sum(1 + i % 3 for i in range(n)) and b.stats.batches < n


def test_inputs_of_other_shapes_queue_apart_and_an_error_reaches_every_caller_of_its_batch():
    seen = []

    def fn(x):
        seen.append(tuple(x.shape))
        if x.shape[-1] == 3:
            raise RuntimeError("this batch fails")
        return x.sum(dim=-1, keepdim=True)

    b = batching.DynamicBatcher(fn, max_batch=16, max_wait_s=0.02)

    def call(i):
        try:
            return b(torch.ones(1, 2 if i % 2 else 3))
        except RuntimeError as exc:
            return str(exc)

    got = _at_once(8, call)
    assert all(g == "this batch fails" for g in got[0::2])
    assert all(torch.equal(g, torch.tensor([[2.0]])) for g in got[1::2])
    assert all(s[-1] in (2, 3) for s in seen)  # never a mixed batch


def test_a_lone_request_waits_no_longer_than_the_window():
    b = batching.DynamicBatcher(lambda x: x + 1, max_wait_s=0.005)
    t = time.perf_counter()
    assert torch.equal(b(torch.zeros(1, 2)), torch.ones(1, 2))
    assert time.perf_counter() - t < 0.5
    with pytest.raises(ValueError):
        batching.DynamicBatcher(lambda x: x, max_batch=0)


def test_predict_many_is_the_same_batched_or_not_and_the_setting_switches_it(monkeypatch):
    models = _models(3)
    xs = _inputs(3)
    pairs = [(m, x) for m in models for x in xs[:2]] + [(models[0], xs[2])]  # models sharing inputs
    plain = batching.predict_many(pairs, batched=False)
    got = batching.predict_many(pairs, batched=True)
    for a, b in zip(plain, got):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    monkeypatch.setenv("MEDROBUST_BATCHING", "0")
    assert not batching.batching_enabled()
    monkeypatch.setenv("MEDROBUST_BATCHING", "1")
    assert batching.batching_enabled()
    # Concurrent sessions, each asking every model about its own image, get their own answers.
    xs = _inputs(SESSIONS)
    alone = [batching.predict_many([(m, x) for m in models], batched=False) for x in xs]
    got = _at_once(SESSIONS, lambda i: batching.predict_many([(m, xs[i]) for m in models], batched=True))
    for i in range(SESSIONS):
        for a, b in zip(got[i], alone[i]):
            torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_the_stress_test_gives_the_same_answers_with_batching_on_and_off(dashboard_env, monkeypatch):
    ms = modelset.load_model_set()
    pert = perturbation.Perturbation(kind="gaussian", severity=0.4, seed=3)
    answers = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MEDROBUST_BATCHING", flag)
        clean = clean_analysis.analyse_clean(ms, xray_like(80), with_cam=False)
        answers[flag] = [(o.pred, o.probs, o.clean_probs) for o in stress_run.run_stress(ms, clean, pert, with_cam=False)]
    assert [a[0] for a in answers["0"]] == [a[0] for a in answers["1"]]
    for (_, p0, c0), (_, p1, c1) in zip(answers["0"], answers["1"]):
        torch.testing.assert_close(torch.tensor(p0 + c0), torch.tensor(p1 + c1), atol=TOL, rtol=0)


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_sessions_run_at_most_the_allowed_grad_cams_at_once(dashboard_env, monkeypatch, slots):
    """Many sessions analysing their images together hold at most MEDROBUST_CAM_SLOTS Grad-CAMs at a time (each
    one's activations and gradients), and every session still gets its own, correct maps."""
    monkeypatch.setenv("MEDROBUST_CAM_SLOTS", str(slots))
    ms = modelset.load_model_set()
    images = [xray_like(80 + 4 * i) for i in range(6)]
    alone = [clean_analysis.analyse_clean(ms, im) for im in images]
    real, lock, state = clean_analysis.gradcam, threading.Lock(), {"now": 0, "most": 0}

    def watched(*args, **kw):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.01)  # hold the slot long enough for the others to pile up
            return real(*args, **kw)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(clean_analysis, "gradcam", watched)
    got = _at_once(len(images), lambda i: clean_analysis.analyse_clean(ms, images[i]))
    assert state["most"] == slots  # the limit held, and was reached
    for a, b in zip(got, alone):
        for name in a.views:
            np.testing.assert_allclose(a.views[name].cam, b.views[name].cam, atol=1e-5)
