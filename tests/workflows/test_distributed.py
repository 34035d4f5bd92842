"""torchrun with 2 gloo processes on the CPU: smoke training, and an evaluation equal to one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_actualmed_root, make_covid_root

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], *, cwd: Path, env: dict[str, str], torchrun: bool) -> subprocess.CompletedProcess:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "medrobust", *args]
    else:
        cmd = [sys.executable, "-m", "medrobust", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_torchrun_train_and_evaluate_match_single_process(tmp_path):
    data = tmp_path / "data"
    roots = [make_covid_root(data, n_covid=14, n_other=10), make_actualmed_root(data)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDROBUST_CACHE": str(tmp_path / "cache"),
           "MEDROBUST_CPU_BF16": "0"}
    data_args = [a for r in roots for a in ("--data", str(r.path))]
    run = tmp_path / "run"
    _run(["train", "--method", "robust", "--preset", "smoke", "--image-size", "32", "--batch-size", "8",
          "--epochs", "2", "--max-batches", "2", "--device", "cpu", "--no-progress", *data_args, "--out", str(run)],
         cwd=tmp_path, env=env, torchrun=True)
    card = json.loads((run / "model.json").read_text())
    assert card["epochs_done"] == 2 and card["world_size"] == 2
    events = [json.loads(line)["event"] for line in (run / "progress.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("done") == 1  # only rank 0 writes

    eval_args = ["evaluate", str(run), *data_args, "--steps", "2", "--n-boot", "50", "--restarts", "2", "--device", "cpu"]
    _run([*eval_args, "--out", str(tmp_path / "single")], cwd=tmp_path, env=env, torchrun=False)
    _run([*eval_args, "--out", str(tmp_path / "multi")], cwd=tmp_path, env=env, torchrun=True)
    single = json.loads((tmp_path / "single" / "run.json").read_text())
    multi = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert multi["predictions"] == single["predictions"]
    for a, b in zip(single["rows"], multi["rows"]):
        assert (a["perturbation"], a["severity"]) == (b["perturbation"], b["severity"])
        assert a["accuracy"] == b["accuracy"] and a["balanced_accuracy"] == b["balanced_accuracy"]
        assert a.get("accuracy_by_attack") == b.get("accuracy_by_attack")
