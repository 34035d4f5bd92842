"""Faults: a training job killed with SIGKILL at random moments (during an epoch, during a checkpoint write)
resumes from its last complete epoch every time, the weights on disk always load, and the finished run
equals an uninterrupted one (same epoch count, bit-identical weights).

The job is the real command line, ``python -m medrobust train --preset smoke --image-size 32 --epochs 3``,
on tiny synthetic data; kill moments come from a seeded RNG and from watching the run's own files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_actualmed_root, make_covid_root
from medrobust.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
SEED = 20261124
#: What each interrupted attempt does, and from which saved epoch on; after these the run is left to finish.
PLAN = (("checkpoint write", 0), ("during epoch", 1), ("random", 1), ("checkpoint write", 2),
        ("final checkpoint write", 3))


def _command(roots, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "medrobust", "train", "--method", "standard", "--preset", "smoke",
           "--image-size", "32", "--epochs", str(EPOCHS), "--seed", "0", "--out", str(out), "--no-progress"]
    for r in roots:
        cmd += ["--data", str(r.path)]
    return cmd


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    roots = [make_covid_root(base / "data"), make_actualmed_root(base / "data")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDROBUST_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MEDROBUST_CACHE": str(base / "cache"),
                "MEDROBUST_CPU_BF16": "0", "PYTHONUNBUFFERED": "1"})
    return base, roots, env


def _events(run: Path) -> list[dict]:
    out = []
    try:
        lines = (run / "progress.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    return out


def _state_epoch(run: Path) -> int | None:
    """The epoch recorded in state.safetensors, after reading every tensor (None if there is none yet)."""
    state = run / "state.safetensors"
    if not state.exists():
        return None
    with safe_open(str(state), framework="pt", device="cpu") as fh:
        for k in fh.keys():
            fh.get_tensor(k)
        return int(json.loads(fh.metadata()["progress"])["epoch"])


def _check_on_disk(run: Path, last_epoch: int) -> int:
    """Everything on disk loads; the saved epoch never goes backwards. Returns the saved epoch."""
    epoch = _state_epoch(run) or 0
    assert 0 <= epoch <= EPOCHS and epoch >= last_epoch, (epoch, last_epoch)
    if (run / "model.safetensors").exists():  # a final checkpoint is only ever visible with its card
        model, card = load_checkpoint(run / "model.safetensors")
        assert card["epochs_done"] == EPOCHS
    if (run / "split.json").exists():
        json.loads((run / "split.json").read_text())
    if (run / "config.json").exists():
        assert json.loads((run / "config.json").read_text())["epochs"] == EPOCHS
    return epoch


def _saved_epoch(run: Path) -> int:
    """The epoch state.safetensors records (header only; 0 if there is none yet)."""
    try:
        with safe_open(str(run / "state.safetensors"), framework="pt", device="cpu") as fh:
            return int(json.loads(fh.metadata()["progress"])["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return 0


def _kill_when(proc: subprocess.Popen, run: Path, plan: str, from_epoch: int, rng: np.random.Generator,
               budget_s: float) -> str:
    """SIGKILL ``proc`` at the moment ``plan`` asks for, once ``from_epoch`` epochs are saved; returns what happened."""
    t0 = time.monotonic()
    delay = float(rng.uniform(0.0, 0.6))
    n_steps, armed_at = None, None
    while proc.poll() is None and time.monotonic() - t0 < budget_s:
        if n_steps is None:
            if _saved_epoch(run) < from_epoch:
                time.sleep(0.01)
                continue
            n_steps, t0 = sum(e.get("event") == "step" for e in _events(run)), time.monotonic()
        tmps = [p.name for p in run.glob(".*.tmp*")] if run.exists() else []
        if plan == "checkpoint write" and any(n.startswith(".state.safetensors.tmp") for n in tmps):
            proc.send_signal(signal.SIGKILL)
            return f"killed while writing state.safetensors ({tmps})"
        if plan == "final checkpoint write" and any(n.startswith(".model.") for n in tmps):
            proc.send_signal(signal.SIGKILL)
            return f"killed while writing the final checkpoint ({tmps})"
        if plan == "during epoch":
            if armed_at is None and sum(e.get("event") == "step" for e in _events(run)) > n_steps:
                armed_at = time.monotonic()
            if armed_at is not None and time.monotonic() - armed_at >= delay:
                proc.send_signal(signal.SIGKILL)
                return f"killed {delay:.2f} s after a training step"
        if plan == "random" and time.monotonic() - t0 >= delay * 2:
            proc.send_signal(signal.SIGKILL)
            return f"killed at a random moment, {delay * 2:.2f} s after epoch {from_epoch} was saved"
        time.sleep(0.002)
    proc.wait(120)
    return "finished" if proc.returncode == 0 else f"exited {proc.returncode}"


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(setting, capsys):
    base, roots, env = setting
    rng = np.random.default_rng(SEED)
    t_start = time.time()

    # The uninterrupted reference: the same configuration the command line builds, trained in-process.
    from medrobust.training import preset_config, train

    ref = base / "reference"
    config = preset_config("smoke", method="standard", epochs=EPOCHS, image_size=32, seed=0, device="auto")
    train(config, roots=[r.path for r in roots], run_dir=ref, show_progress=False)
    ref_card = json.loads((ref / "model.json").read_text())
    assert ref_card["epochs_done"] == EPOCHS

    run = base / "interrupted"
    log, last_epoch, kills = [], 0, 0
    for attempt in range(len(PLAN) + 2):  # every planned kill, then runs until one finishes cleanly
        plan, from_epoch = PLAN[attempt] if attempt < len(PLAN) else ("finish", 0)
        proc = subprocess.Popen(_command(roots, run), env=env, cwd=base, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        what = _kill_when(proc, run, plan, from_epoch, rng, budget_s=300) if plan != "finish" else None
        out, _ = proc.communicate(timeout=600)
        if what is None:
            what = "finished" if proc.returncode == 0 else f"exited {proc.returncode}: {out[-1500:]}"
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, f"attempt {attempt} ({plan}): {what}\n{out[-2000:]}"
        last_epoch = _check_on_disk(run, last_epoch)
        log.append(f"{plan} (from epoch {from_epoch}): {what}; state holds epoch {last_epoch}")
        if proc.returncode == 0 and attempt >= len(PLAN) - 1:
            break
    else:  # pragma: no cover
        pytest.fail("the run never finished:\n" + "\n".join(log))

    card = json.loads((run / "model.json").read_text())
    events = _events(run)
    with capsys.disabled():
        print(f"\nkill test: {kills} SIGKILLs in {len(log)} attempts, {time.time() - t_start:.0f} s\n  " + "\n  ".join(log))
    assert kills >= 4, log
    assert sum("while writing state.safetensors" in entry for entry in log) >= 1, log
    assert sum("after a training step" in entry for entry in log) >= 1, log
    assert log[-1].split(": ", 1)[1].startswith("finished"), log
    assert any("writing state.safetensors" in entry for entry in log), log
    assert card["epochs_done"] == ref_card["epochs_done"] == EPOCHS
    assert [h["epoch"] for h in card["history"]] == list(range(1, EPOCHS + 1))
    assert sum(e["event"] == "resume" for e in events) >= 1 and sum(e["event"] == "done" for e in events) == 1
    assert not list(run.glob(".*.tmp*")), "a resumed run removes the temp files of killed writers"
    # Bit-identical to the uninterrupted run: the state holds everything the next epoch reads.
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert card["sha256"] == ref_card["sha256"]
