"""One home for every environment variable and default folder, read at call time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medrobust import settings


def test_data_roots_precedence(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("MEDROBUST_DATA", f"{a}{os.pathsep}{b}{os.pathsep}")
    assert settings.data_roots(None) == [a, b]
    assert settings.data_roots([]) == [a, b]
    assert settings.data_roots([str(tmp_path / "c")]) == [tmp_path / "c"]  # --data wins over the variable
    monkeypatch.delenv("MEDROBUST_DATA")
    assert settings.data_roots(None) == [Path("data")]
    assert settings.env_data_roots() == []


@pytest.mark.parametrize("var, getter, default", [
    ("MEDROBUST_CHECKPOINTS", settings.checkpoints_dir, Path("checkpoints")),
    ("MEDROBUST_RESULTS", settings.results_dir, Path("results")),
    ("MEDROBUST_RUNS", settings.runs_dir, Path("runs")),
    ("MEDROBUST_CACHE", settings.cache_dir, Path.home() / ".cache" / "medrobust"),
])
def test_folders_follow_their_variable_at_call_time(var, getter, default, tmp_path, monkeypatch):
    monkeypatch.delenv(var, raising=False)
    assert getter() == default
    monkeypatch.setenv(var, str(tmp_path / "x"))
    assert getter() == tmp_path / "x"
    monkeypatch.setenv(var, str(tmp_path / "y"))  # a second change is seen too: nothing is cached
    assert getter() == tmp_path / "y"


def test_derived_folders_follow_their_parents(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDROBUST_JOBS", raising=False)
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(tmp_path / "ck"))
    assert settings.jobs_dir() == tmp_path / "runs" / ".jobs"
    assert settings.shipped_results_dir() == tmp_path / "ck" / "results"


def test_switches(monkeypatch):
    monkeypatch.delenv("MEDROBUST_ADMIN_TOKEN", raising=False)
    assert settings.admin_token() is None
    monkeypatch.setenv("MEDROBUST_ADMIN_TOKEN", "s3cret")
    assert settings.admin_token() == "s3cret"
    for value, expected in (("1", True), ("0", False), ("", None), ("yes", None)):
        monkeypatch.setenv("MEDROBUST_CPU_BF16", value)
        assert settings.cpu_bf16_override() is expected
    monkeypatch.setenv("MEDROBUST_TORCH_THREADS", "3")
    assert settings.torch_threads() == 3
    monkeypatch.setenv("MEDROBUST_TORCH_THREADS", "many")
    with pytest.raises(ValueError, match="MEDROBUST_TORCH_THREADS"):
        settings.torch_threads()


def test_the_cli_and_the_dashboard_read_the_same_runs_folder(tmp_path, monkeypatch):
    """Once decided twice (the CLI hard-coded runs/); now both ask settings."""
    from medrobust import cli
    from medrobust.dashboard import jobs, resultsets

    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        cli._newest_run()
    assert resultsets.discover_run_models() == []
    assert jobs.new_run_dir("robust", "smoke", 0).parent == tmp_path / "elsewhere"
