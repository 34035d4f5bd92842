"""The package code behind the dashboard: Grad-CAM, the stress test, jobs, result discovery, plots."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dashboard_fixtures import tiny_checkpoints, xray_like  # noqa: F401 - fixture
from medrobust.dashboard import (camdepth, captions, clean_analysis, flip_search, jobs, modelset, perturbation, plots,
                                 resultsets, snapshot, stress_run, tiles)
from medrobust.gradcam import gradcam
from medrobust.models import build_model


# ----------------------------------------------------------------------------- Grad-CAM

def _hooked_gradcam(model, x, layer):
    """Reference Grad-CAM with module hooks, on a private copy of the model."""
    model = copy.deepcopy(model)
    store = {}
    target = getattr(model.net, layer)
    h1 = target.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    h2 = target.register_full_backward_hook(lambda m, gi, go: store.__setitem__("g", go[0]))
    xx = x.clone().requires_grad_(True)
    logits = model(xx)
    logits[0, int(logits.argmax())].backward()
    h1.remove(), h2.remove()
    w = store["g"].mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * store["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).detach().numpy() if cam.max() > 0 else np.zeros(x.shape[-2:], np.float32)


def _trained_looking_model(seed=0):
    torch.manual_seed(seed)
    m = build_model().eval()
    with torch.no_grad():  # larger BN scales so the random net is not flat
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.2, 0.2)
    return m.requires_grad_(False)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_matches_a_hook_based_reference_and_leaves_the_model_alone(layer):
    model = _trained_looking_model()
    x = torch.as_tensor(xray_like(64), dtype=torch.float32)[None, None]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam, logits = gradcam(model, x, layer=layer)
    ref = _hooked_gradcam(model, x, layer)
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    np.testing.assert_allclose(cam, ref, atol=1e-4)
    torch.testing.assert_close(logits, model(x))
    assert not model.training
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_gradcam_is_thread_safe_on_a_shared_model():
    model = _trained_looking_model(1)
    xs = [torch.as_tensor(xray_like(64, seed=s), dtype=torch.float32)[None, None] for s in range(4)]
    expected = [gradcam(model, x)[0] for x in xs]
    got = [None] * 4

    def work(i):
        for _ in range(3):
            got[i] = gradcam(model, xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(e, g, atol=1e-6)


def test_gradcam_refuses_train_mode_and_bad_layers():
    model = build_model()
    with pytest.raises(ValueError, match="eval mode"):
        gradcam(model, torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="layer"):
        gradcam(model.eval(), torch.rand(1, 1, 32, 32), layer="fc")


# ----------------------------------------------------------------------------- stress test

@pytest.fixture(scope="module")
def model_set(tiny_checkpoints):
    return modelset.load_model_set(tiny_checkpoints)


def test_model_set_loads_all_four_frozen(model_set):
    assert [m.name for m in model_set.models] == ["standard", "robust", "augmix", "robustaugmix"]
    assert model_set.message is None and len(model_set.ok_models) == 4
    for m in model_set.models:
        assert not m.model.training and not any(p.requires_grad for p in m.model.parameters())
        assert m.image_size == 32 and m.colour.startswith("#")
    assert len({m.colour for m in model_set.models}) == 4


def test_a_bad_checkpoint_becomes_an_error_entry(tiny_checkpoints, tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(tiny_checkpoints, dst)
    (dst / "augmix.json").unlink()
    w = dst / "robust.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    (dst / "junk.safetensors").write_bytes(b"not a checkpoint")
    (dst / "junk.json").write_text("{}")
    ms = modelset.load_model_set(dst)
    errors = {m.name: m.error for m in ms.models}
    assert "card" in errors["augmix"] and "sha256" in errors["robust"]
    assert errors["junk"] and errors["standard"] is None and errors["robustaugmix"] is None
    assert len(ms.ok_models) == 2


def test_an_empty_folder_gives_a_message(tmp_path):
    ms = modelset.load_model_set(tmp_path)
    assert not ms.models and "No model checkpoints found" in ms.message


def test_same_settings_give_the_same_picture(model_set):
    px = xray_like(100).astype(np.float32)
    clean = clean_analysis.analyse_clean(model_set, px)
    for pert in (perturbation.Perturbation(kind="speckle", severity=0.4, seed=3),
                 perturbation.Perturbation(kind="salt_and_pepper", severity=0.2, seed=3),
                 perturbation.Perturbation(kind="pgd", eps=2.0, steps=3, seed=3),
                 perturbation.Perturbation(kind="pgd", eps=2.0, steps=3, seed=3, mode="transfer", source="augmix")):
        a = stress_run.run_stress(model_set, clean, pert)
        b = stress_run.run_stress(model_set, clean_analysis.analyse_clean(model_set, px), pert)
        for oa, ob in zip(a, b):
            np.testing.assert_array_equal(oa.x_pert, ob.x_pert)
            assert oa.p_covid == ob.p_covid and oa.pred == ob.pred
            np.testing.assert_array_equal(oa.cam_pert, ob.cam_pert)
    other = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="speckle", severity=0.4, seed=4))
    assert not np.array_equal(other[0].x_pert, a[0].x_pert)


def test_attacks_step_on_a_bf16_twin_only_where_it_measured_faster(monkeypatch):
    from medrobust import attacks

    model = modelset._freeze(build_model())

    def untimed(*a, **k):
        pytest.fail("timed although the choice was pinned")

    monkeypatch.setattr(modelset, "_step_seconds", untimed)
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "0")  # pinned off (AVX2 machines): fp32 steps
    assert modelset.bf16_steps_pay(model, 32) is False
    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")  # pinned on: the twin, untimed
    assert modelset.bf16_steps_pay(model, 32) is True
    monkeypatch.delenv("MEDROBUST_CPU_BF16")
    monkeypatch.setattr(attacks, "_cpu_has_native_bf16", lambda: False)  # no native bf16: fp32, nothing timed
    assert modelset.bf16_steps_pay(model, 32) is False
    monkeypatch.setattr(attacks, "_cpu_has_native_bf16", lambda: True)
    for fp32_s, bf16_s, taken in ((0.040, 0.034, True), (0.040, 0.035, False), (0.035, 0.036, False)):
        seen = []

        def fake(net, x, *, bf16, a=fp32_s, b=bf16_s):
            seen.append((bf16, tuple(x.shape)))
            return b if bf16 else a

        monkeypatch.setattr(modelset, "_step_seconds", fake)
        assert modelset.bf16_steps_pay(model, 48, repeats=2) is taken
        assert seen == [(False, (1, 1, 48, 48)), (True, (1, 1, 48, 48))] * 3  # interleaved, one warm-up round

    def no_bf16_kernel(*a, bf16, **k):
        if bf16:
            raise NotImplementedError("no bf16 kernel")
        return 0.04

    monkeypatch.setattr(modelset, "_step_seconds", no_bf16_kernel)
    assert modelset.bf16_steps_pay(model, 32) is False  # a model whose bf16 steps fail keeps fp32 steps, and loads


def test_a_model_set_with_bf16_twins_shows_fp32_answers_to_its_attacks(tiny_checkpoints, monkeypatch):
    """With every model's attack on its bf16 twin, the page's answers are still fp32 forwards of the models, the
    examples stay in the ball, a seeded attack repeats, and the flip search's witness flips the fp32 model."""
    from medrobust.models import Bf16Twin

    monkeypatch.setenv("MEDROBUST_CPU_BF16", "1")  # the twins, whatever this CPU's timing says
    twins = modelset.load_model_set(tiny_checkpoints)
    assert all(m.bf16_steps and m.twin is None for m in twins.ok_models)  # no twin held until someone attacks
    assert all(isinstance(m.attack_net, Bf16Twin) and m.attack_net is m.twin and m.twin.model is m.model
               for m in twins.ok_models)
    px = xray_like(64).astype(np.float32)
    clean = clean_analysis.analyse_clean(twins, px)
    pert = perturbation.Perturbation(kind="pgd", eps=4.0, steps=5, seed=1)
    stepped = []
    real_pgd = stress_run.pgd

    def spy(model, *a, use_autocast, **k):  # every attack steps on a twin, under bf16 autocast
        stepped.append((type(model), use_autocast))
        return real_pgd(model, *a, use_autocast=use_autocast, **k)

    monkeypatch.setattr(stress_run, "pgd", spy)
    first = stress_run.run_stress(twins, clean, pert, with_cam=False)
    again = stress_run.run_stress(twins, clean, pert, with_cam=False)
    assert stepped == [(Bf16Twin, True)] * 8
    assert {o.attack_steps for o in first} == {modelset.STEPS_BF16} and all(o.summary()["attack_steps"] for o in first)
    eps_px = 4.0 * 32 / 224
    for o, o2, m in zip(first, again, twins.models):
        np.testing.assert_array_equal(o.x_pert, o2.x_pert)
        assert o.l2 <= eps_px + 1e-4
        exact = clean_analysis.predict_probs(m.model, torch.as_tensor(o.x_pert)[None, None])[0]
        np.testing.assert_allclose(o.probs, exact.numpy(), atol=1e-6)
    m = twins.ok_models[0]
    v = clean.views[m.name]
    verdicts = []

    def judged(net, x):  # the flip search's verdict on each witness: an fp32 forward, equal to the model's
        assert not torch.is_autocast_enabled("cpu")
        verdicts.append(torch.equal(clean_analysis.predict_probs(net, x), clean_analysis.predict_probs(m.model, x)))
        return clean_analysis.predict_probs(net, x)

    monkeypatch.setattr(flip_search, "predict_probs", judged)
    found = flip_search.smallest_flip_eps(m.attack_net, v.x, label=v.pred, steps=5, seed=0)
    assert found.eps is not None and found.error is None, found
    assert verdicts and all(verdicts)
    # The shared models stay as Grad-CAM needs them after every attack: eval mode, no hooks, no parameter gradients.
    clean_again = clean_analysis.analyse_clean(twins, px, cam_layer="layer4")
    assert all(v.cam is not None for v in clean_again.views.values())
    for m in twins.ok_models:
        assert not any(mod.training for mod in m.attack_net.modules())


def test_outcomes_report_predictions_changes_and_perturbation(model_set):
    px = xray_like(64).astype(np.float32)
    clean = clean_analysis.analyse_clean(model_set, px)
    none = stress_run.run_stress(model_set, clean, perturbation.Perturbation())
    assert all(o.ok and not o.flipped and o.l2 == 0 and o.p_covid == o.clean_p for o in none)
    noisy = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="gaussian", severity=0.5))
    assert all(o.l2 > 0 and 0 <= o.p_covid <= 1 and o.pred in (0, 1) for o in noisy)
    # One noise draw is shared by all models of the same size: a fair comparison.
    assert all(np.array_equal(o.x_pert, noisy[0].x_pert) for o in noisy)
    pgd = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="pgd", eps=3.0, steps=4))
    eps_px = 3.0 * 32 / 224
    for o in pgd:
        assert o.l2 <= eps_px + 1e-4 and o.eps_pixels == pytest.approx(eps_px)
        assert o.p_covid - o.clean_p == pytest.approx(o.delta_p)
    transfer = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="pgd", eps=3.0, steps=4, mode="transfer",
                                                                       source="robust"))
    assert all(np.array_equal(o.x_pert, transfer[1].x_pert) for o in transfer)
    np.testing.assert_array_equal(transfer[1].x_pert, pgd[1].x_pert)  # the source sees its own attack
    for m in model_set.models:
        assert not m.model.training
        assert all(p.grad is None for p in m.model.parameters())
        for mod in m.model.modules():
            assert not mod._forward_hooks and not mod._backward_hooks


def test_perturbation_validation():
    with pytest.raises(ValueError):
        perturbation.Perturbation(kind="blur").validate()
    with pytest.raises(ValueError):
        perturbation.Perturbation(kind="gaussian", severity=1.5).validate()
    with pytest.raises(ValueError):
        perturbation.Perturbation(kind="pgd", eps=6).validate()
    with pytest.raises(ValueError):
        perturbation.Perturbation(kind="pgd", steps=0).validate()


class _Linear(nn.Module):
    """logit(COVID) - logit(other) = w·x + b: the smallest flipping L2 radius is |w·x + b| / ||w||."""

    def __init__(self, side: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(side * side, generator=g) / side, requires_grad=False)
        self.b = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z / 2, z / 2], 1)


def test_smallest_flip_eps_finds_the_analytic_boundary_of_a_linear_model():
    side = 32
    model = _Linear(side).eval()
    x = 0.5 + 0.01 * torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = float(model(x)[0, 1] * 2)
        model.b -= z - 0.02  # put the decision margin close to the image
        margin = abs(float(model(x)[0, 1] * 2))
    dist_px = margin / float(model.w.norm())
    expected = dist_px * 224 / side
    res = flip_search.smallest_flip_eps(model, x, steps=20, tol=0.01, max_eps=5.0)
    assert res.eps is not None and res.eps == pytest.approx(expected, rel=0.05, abs=0.02)
    assert res.eps_pixels == pytest.approx(res.eps * side / 224)
    assert flip_search._flip_witness(model, x, int(model(x).argmax()), res.eps * 0.8, steps=20, seed=0) is None
    # A model that cannot be flipped inside the budget says so.
    with torch.no_grad():
        model.b += 1000.0
    far = flip_search.smallest_flip_eps(model, x, steps=5, max_eps=5.0)
    assert far.eps is None and "not flipped" in far.describe()


def test_snapshot_and_zip_hold_no_file_name(model_set):
    import zipfile
    import io

    px = xray_like(64).astype(np.float32)
    clean = clean_analysis.analyse_clean(model_set, px)
    pert = perturbation.Perturbation(kind="gaussian", severity=0.3, seed=7)
    out = stress_run.run_stress(model_set, clean, pert)
    snap = snapshot.snapshot(model_set=model_set, pert=pert, outcomes=out, image={"format": "PNG"})
    text = json.dumps(snap, default=float)
    assert "gaussian" in text and len(snap["models"]) == 4 and snap["perturbation"]["seed"] == 7
    assert all(m["checkpoint_sha256"] for m in snap["models"])
    z = zipfile.ZipFile(io.BytesIO(snapshot.snapshot_zip(snap, out)))
    names = z.namelist()
    assert "snapshot.json" in names and "standard/perturbation.png" in names and len(names) == 1 + 4 * 4


def test_grad_cam_depths_grids_captions_and_no_repeated_map_without_a_perturbation(model_set):
    m = model_set.ok_models[0]
    assert camdepth.CAM_DEPTHS[0] == "layer3+layer4"
    assert camdepth.cam_layer_for(m.model, "layer3+layer4") == ("layer3", "layer4")
    assert camdepth.cam_grid_of(m.model, "layer3+layer4", 128) == ((8, 8), (4, 4))
    assert captions.cam_resolution("layer3+layer4", ((8, 8), (4, 4)), 128, ("layer3", "layer4")) == \
        "layer3 + layer4: 8×8 and 4×4 maps averaged, upsampled bilinearly to 128 px"
    px = xray_like(64).astype(np.float32)
    clean = clean_analysis.analyse_clean(model_set, px, cam_layer="layer3+layer4")
    v = clean.views[m.name]
    assert v.cam_layers == ("layer3", "layer4") and v.cam_grid == ((2, 2), (1, 1))  # 32 px models
    assert clean_analysis.analyse_clean(model_set, px, with_cam=False).views[m.name].cam_grid == ()
    none = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="none"))
    assert all(set(tiles.card_images(o, vmax=0.0, target=64)) == {"perturbed", "cam_clean"} for o in none)
    o = none[0]
    assert tiles.cam_caption(o, "") == f"Grad-CAM for {o.classes[o.clean_pred]}"
    noisy = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind="gaussian", severity=0.5))
    o = noisy[0]
    assert set(tiles.card_images(o, vmax=1.0, target=64)) == {"perturbed", "perturbation", "cam_clean", "cam_perturbed"}
    assert tiles.cam_caption(o, "perturbed", True) == \
        f"Grad-CAM for {o.classes[o.pred]}, perturbed input (flat: the map marks no region)"


def test_pictures_are_uint8_rgb_at_a_multiple_of_the_model_size(model_set):
    px = xray_like(64).astype(np.float32)
    out = stress_run.run_stress(model_set, clean_analysis.analyse_clean(model_set, px), perturbation.Perturbation(kind="speckle", severity=0.5))
    pics = tiles.card_images(out[0], vmax=tiles.shared_delta_scale(out), target=192)
    for p in pics.values():
        assert p.dtype == np.uint8 and p.shape == (192, 192, 3)
    d = tiles.diverging_rgb(np.array([[-1.0, 0.0, 1.0]]), 1.0)[0]
    assert d[0][2] > d[0][0] and tuple(d[1]) == (247, 247, 247) and d[2][0] > d[2][2]  # blue, white, red


# ----------------------------------------------------------------------------- jobs

def _sleeper(seconds: float, pidfile: Path, rc: int = 0) -> list[str]:
    code = (f"import os, time, pathlib; pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid())); "
            f"print('working', flush=True); time.sleep({seconds}); raise SystemExit({rc})")
    return [sys.executable, "-c", code]


def _wait(cond, timeout=20.0):
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_one_job_at_a_time_survives_a_reload_and_cancel_kills_the_group(tmp_path, monkeypatch):
    monkeypatch.delenv(jobs.ENV_TOKEN, raising=False)
    jm = jobs.JobManager(tmp_path / "jobs")
    pidfile = tmp_path / "pid"
    job = jm.launch(_sleeper(60, pidfile), kind="train", run_dir=tmp_path / "run", label="sleeper")
    assert _wait(pidfile.exists)
    assert jm.status(job).state == "running"
    with pytest.raises(jobs.JobError, match="already running"):
        jm.launch(_sleeper(1, tmp_path / "other"), kind="train", run_dir=tmp_path / "run2")
    # A reload (new manager, and a process that never held the Popen) still sees the job.
    child = jobs._CHILDREN.pop(job.pid)
    try:
        jm2 = jobs.JobManager(tmp_path / "jobs")
        again = jm2.current()
        assert again.id == job.id and again.command == job.command and jm2.is_alive(again)
    finally:
        jobs._CHILDREN[job.pid] = child
    grandchild = int(pidfile.read_text())
    assert jm.cancel(job)
    assert _wait(lambda: _gone(grandchild), 10), "the training process survived the cancel"
    st = jm.status(jm.current())
    assert st.state == "cancelled" and not st.running and "working" in st.log_tail
    # The slot is free again.
    nxt = jm.launch(_sleeper(0, tmp_path / "p2"), kind="train", run_dir=tmp_path / "run3")
    assert _wait(lambda: jm.status(nxt).state == "done")


def test_exit_status_is_known_after_the_launcher_is_gone(tmp_path, monkeypatch):
    monkeypatch.delenv(jobs.ENV_TOKEN, raising=False)
    jm = jobs.JobManager(tmp_path / "jobs")
    job = jm.launch(_sleeper(0, tmp_path / "pid", rc=3), kind="train", run_dir=tmp_path / "run")
    assert _wait(lambda: not jm.is_alive(job))
    jobs._CHILDREN.pop(job.pid, None)
    st = jobs.JobManager(tmp_path / "jobs").status(job)
    assert st.state == "failed" and st.returncode == 3
    assert [j.id for j in jm.history()] == [job.id]


def test_admin_token(monkeypatch, tmp_path):
    monkeypatch.delenv(jobs.ENV_TOKEN, raising=False)
    assert not jobs.token_required() and jobs.check_token(None)
    monkeypatch.setenv(jobs.ENV_TOKEN, "correct horse")
    assert jobs.token_required()
    assert jobs.check_token("correct horse") and not jobs.check_token("correct hors") and not jobs.check_token(None)
    jm = jobs.JobManager(tmp_path / "jobs")
    with pytest.raises(jobs.JobError, match="token"):
        jm.launch(_sleeper(0, tmp_path / "p"), kind="train", run_dir=tmp_path / "r", token="nope")
    assert jm.current() is None
    job = jm.launch(_sleeper(0, tmp_path / "p"), kind="train", run_dir=tmp_path / "r", token="correct horse")
    assert _wait(lambda: jm.status(job).state == "done")
    env_seen = (tmp_path / "jobs" / f"{job.id}.log").read_text()
    assert "correct horse" not in env_seen


def test_commands_are_validated():
    cmd = jobs.train_command(method="robust", preset="smoke", out="runs/x", data=["d1", "d2"], eps=2.0, seed=3)
    assert cmd[1:4] == ["-m", "medrobust", "train"] and "--no-progress" in cmd
    assert cmd[cmd.index("--eps") + 1] == "2.0" and cmd.count("--data") == 2
    with pytest.raises(ValueError, match="method"):
        jobs.train_command(method="magic", preset="smoke", out="x", data=["d"])
    with pytest.raises(ValueError, match="preset"):
        jobs.train_command(method="robust", preset="huge", out="x", data=["d"])
    with pytest.raises(ValueError, match="data folder"):
        jobs.train_command(method="robust", preset="smoke", out="x", data=[])
    ev = jobs.evaluate_command(run_dir="runs/x", data=["d"], steps=5, n_boot=100)
    assert ev[3] == "evaluate" and ev[ev.index("--out") + 1] == str(Path("runs/x") / "eval")
    with pytest.raises(ValueError, match="does not exist"):
        jobs.check_data_folders(["/nonexistent/folder"])


def test_read_progress_follows_a_half_written_file(tmp_path):
    lines = [{"event": "start", "method": "robust", "epochs": 2, "steps_per_epoch": 10},
             {"event": "step", "epoch": 1, "step": 1, "steps_per_epoch": 10, "loss": 0.9, "images_per_s": 5.0, "eta_s": 40},
             {"event": "step", "epoch": 1, "step": 6, "steps_per_epoch": 10, "loss": 0.7, "images_per_s": 6.0, "eta_s": 30}]
    text = "\n".join(json.dumps(l) for l in lines) + '\n{"event": "st'
    (tmp_path / "progress.jsonl").write_text(text)
    p = jobs.read_progress(tmp_path)
    assert p.started and not p.done and p.fraction == pytest.approx(6 / 20)
    assert p.images_per_s == 6.0 and p.eta_s == 30 and [s["loss"] for s in p.steps] == [0.9, 0.7]
    more = [{"event": "epoch", "epoch": 1, "train_loss": 0.8, "val": {"accuracy": 0.7, "balanced_accuracy": 0.6}},
            {"event": "warning", "message": "COLLAPSED"}, {"event": "done", "checkpoint": "m", "collapsed": True}]
    (tmp_path / "progress.jsonl").write_text("\n".join(json.dumps(l) for l in lines + more) + "\n")
    p = jobs.read_progress(tmp_path)
    assert p.done and p.fraction == 1.0 and p.warnings == ["COLLAPSED"] and p.collapsed
    assert jobs.read_progress(tmp_path / "absent").fraction == 0.0


# ----------------------------------------------------------------------------- result sets and plots

def test_result_sets_are_discovered_and_matched(tiny_checkpoints, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "robust-smoke-s0-1" / "eval").mkdir(parents=True)
    src = json.loads((tiny_checkpoints / "results" / "robust.json").read_text())
    src["name"] = "robust-smoke-s0-1"
    (runs / "robust-smoke-s0-1" / "eval" / "robust-smoke-s0-1.json").write_text(json.dumps(src))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "broken.json").write_text("{oops")
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(tiny_checkpoints))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(runs))
    sets = resultsets.discover_result_sets()
    assert [s.kind for s in sets] == ["shipped", "results", "run"]
    assert sets[0].names == ["standard", "robust", "augmix", "robustaugmix"]
    assert sets[1].errors and not sets[1].results
    both = resultsets.combine([sets[0], sets[2]])
    assert len(both) == 5 and both[-1]["_run"] == "robust-smoke-s0-1"
    csv_text = resultsets.results_csv(both)
    header = csv_text.splitlines()[0].split(",")
    assert {"model", "metric", "value", "ci_low", "n_boot", "pgd_steps", "norm", "seed"} <= set(header)
    assert "_source" not in resultsets.results_json(both)



def test_earlier_attempts_are_a_result_set_of_their_own(tiny_checkpoints, tmp_path, monkeypatch):
    import shutil

    ck = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints, ck)
    attempt = ck / "attempts" / "64px-from-scratch"
    attempt.mkdir(parents=True)
    shutil.copy(ck / "results" / "robust.json", attempt / "robust.json")
    (attempt / "robust.card.json").write_text(json.dumps({"name": "robust", "method": "robust"}))  # a card, not a result
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(ck))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "none"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "none"))
    sets = resultsets.discover_result_sets()
    assert [s.kind for s in sets] == ["shipped", "attempt"]
    assert sets[1].names == ["robust"] and not sets[1].errors
    assert "64px-from-scratch" in sets[1].label and "weights not shipped" in sets[1].label
    both = resultsets.combine(sets)
    assert [r["name"] for r in both][-1] == "robust [64px-from-scratch]"
    assert not both[-1]["_shipped"]

def test_plots_use_one_colour_per_model_everywhere(tiny_checkpoints):
    results, _ = resultsets.read_result_folder(tiny_checkpoints / "results")
    curves = plots.robustness_curves(results)
    colours = {}
    for tr in curves.data:
        colours.setdefault(tr.legendgroup, set()).add(tr.line.color)
    assert all(len(c) == 1 for c in colours.values()) and len(colours) == 4
    for r in results:
        rel = plots.reliability_diagram(r)
        assert rel.data[0].marker.color == next(iter(colours[r["name"]]))
        assert "RMSCE" in rel.layout.title.text and "ECE" in rel.layout.title.text
    assert any("degenerate" in (tr.name or "") for tr in curves.data)
    plots.confidence_histograms(results)
    plots.entropy_figure(results)


def test_the_landing_page_modules_do_not_import_torch():
    import subprocess

    code = ("import sys; import medrobust.report, medrobust.dashboard.resultsets, medrobust.dashboard.plots, medrobust.dashboard.palette; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_palette_names_the_registry_methods_in_order():
    from medrobust.methods import METHODS
    from medrobust.dashboard.palette import METHOD_COLOURS, METHOD_ORDER

    assert METHOD_ORDER == tuple(METHODS) == tuple(METHOD_COLOURS)


def test_table_rows_for_the_dashboard(tiny_checkpoints, monkeypatch):
    from medrobust import report

    results, _ = resultsets.read_result_folder(tiny_checkpoints / "results")
    t1 = report.table_one_rows(results)
    assert [r["method"] for r in t1] == ["standard", "robust", "augmix", "robustaugmix"]
    assert t1[-1]["model"].endswith("DEGENERATE")
    # The paper's figures stand beside ours (PAPER.md: robust 95.96 % clean, 89.83 % PGD; RMSCE 5.61 %).
    assert t1[1]["paper clean acc"] == "96.0" and t1[1]["paper PGD acc"] == "89.8"
    assert t1[0]["paper speckle acc"] == "86.5"
    t2 = report.table_two_rows(results)
    assert t2[1]["paper RMSCE"] == 0.0561 and t2[1]["paper entropy"] == 2.81
    # A column with no figure for any row is dropped.
    monkeypatch.setattr(report, "PAPER_TABLE_I", {"robust": {"clean": 0.9596}})
    monkeypatch.setattr(report, "PAPER_TABLE_II", {})
    t1 = report.drop_empty_paper_columns(report.table_one_rows(results))
    assert "paper clean acc" in t1[0] and "paper PGD acc" not in t1[0]
    assert t1[1]["paper clean acc"] == "96.0" and t1[0]["paper clean acc"] == "–"
    t2 = report.drop_empty_paper_columns(report.table_two_rows(results))
    assert not any(k.startswith("paper") for k in t2[0])
    text = " ".join(report.clinical_reading(results))
    assert "robustaugmix" in text and "Balanced accuracy" in text and "not medical devices" in text
