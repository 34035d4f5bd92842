"""Demo mode (``MEDROBUST_DEMO=1``, the Docker image's documented run command): a research-use notice on every
page, no training for visitors without the admin token, and capped PGD steps and flip search, enforced by the
package and not only by the sliders."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import dashboard_env, png_bytes, tiny_checkpoints, xray_like  # noqa: F401 - fixtures
from medrobust import settings
from medrobust.dashboard import clean_analysis, flip_search, jobs, modelset, perturbation, ui

from test_app import APP, _no_exception, _page, _texts

PAGES = ["views/overview.py", "views/stress_lab.py", "views/calibration.py", "views/training.py",
         "views/downloads.py"]


@pytest.fixture()
def demo(dashboard_env, monkeypatch):
    monkeypatch.setenv("MEDROBUST_DEMO", "1")
    return dashboard_env


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False),
                                             ("", False), ("no", False)])
def test_demo_mode_is_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MEDROBUST_DEMO", value)
    assert settings.demo_mode() is expected


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_these_are_research_models(demo, page):
    at = _page(page)
    _no_exception(at)
    assert ui.DEMO_NOTICE in [w.value for w in at.warning]


def test_no_notice_outside_demo_mode(dashboard_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert ui.DEMO_NOTICE not in [w.value for w in at.warning]


def test_training_is_hidden_without_a_token_and_shown_to_token_holders(demo, monkeypatch):
    at = _page("views/training.py")
    _no_exception(at)
    assert "switched off on this public demo" in _texts(at)
    assert not at.get("form") and not at.text_area
    monkeypatch.setenv("MEDROBUST_ADMIN_TOKEN", "s3cret")
    at = _page("views/training.py")
    _no_exception(at)
    assert at.text_area(key="t_data") is not None and at.text_input(key="admin_token") is not None


def test_jobs_refuse_to_launch_in_demo_mode_without_a_token(demo, tmp_path):
    manager = jobs.JobManager(tmp_path / "jobs")
    with pytest.raises(jobs.JobError, match="demo"):
        manager.launch([sys.executable, "-c", "pass"], kind="train", run_dir=tmp_path / "run")
    assert not list(tmp_path.glob("jobs/*.json")) and not (tmp_path / "run").exists()  # nothing recorded or started


def test_pgd_steps_are_capped_by_the_package(demo):
    with pytest.raises(ValueError, match=r"\[1, 20\]"):
        perturbation.Perturbation(kind="pgd", eps=1.0, steps=21).validate()
    perturbation.Perturbation(kind="pgd", eps=1.0, steps=20).validate()


def test_pgd_steps_are_not_capped_outside_demo_mode(dashboard_env):
    perturbation.Perturbation(kind="pgd", eps=1.0, steps=perturbation.MAX_STEPS).validate()


def test_flip_search_is_capped(demo, monkeypatch):
    seen = []

    def fake(model, x, *, label, max_eps, steps, tol, seed, name):
        seen.append((steps, tol))
        return flip_search.FlipSearch(name, None, None, max_eps, 1, 0.0)

    monkeypatch.setattr(flip_search, "smallest_flip_eps", fake)
    ms = modelset.load_model_set()
    clean = clean_analysis.analyse_clean(ms, xray_like(64), with_cam=False)
    flip_search.flip_search_all(ms, clean, steps=50, tol=0.01)
    assert seen and all(s == (perturbation.DEMO_LIMITS.max_flip_steps, perturbation.DEMO_LIMITS.flip_tol) for s in seen)


def test_stress_page_sliders_respect_the_demo_caps(demo):
    at = _page("views/stress_lab.py")
    at.radio(key="kind").set_value("pgd").run()
    _no_exception(at)
    assert at.slider(key="steps").max == perturbation.DEMO_LIMITS.max_steps
    assert at.slider(key="flip_steps").max == perturbation.DEMO_LIMITS.max_flip_steps
