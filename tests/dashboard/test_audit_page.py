"""The Overview's shortcut audit and its clinician's reading (issue 23, item 7), through Streamlit's AppTest.

Four audited results on one test set, as the shipped set has: the test set's sentence (Cramér's V) is said once
in the clinician's reading and once in the audit tab, not once per model; every model's lungs verdict sets the
blanked AUROC beside the clean one; and no model is said to read the lungs and something else. The words come
from the numbers in the result files, so a file written with older wording is read with today's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from dashboard_fixtures import tiny_checkpoints  # noqa: F401 - fixture
from medrobust import audit_text

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
SIZE = 32


class _Patch(nn.Module):
    """Two logits from the mean of one patch (``sign`` -1: a bright patch lowers the class-1 logit)."""

    def __init__(self, rows: slice, cols: slice, sign: float = 1.0, noise: tuple[slice, slice] | None = None):
        super().__init__()
        self.rows, self.cols, self.sign, self.noise = rows, cols, sign, noise
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, self.rows, self.cols].mean(dim=(1, 2))
        if self.noise is not None:  # weak inverted centre plus ring texture: clean AUROC below chance
            ring = x[:, 0, self.noise[0], self.noise[1]].mean(dim=(1, 2))
            z = ring - 0.05 * s
        else:
            z = self.sign * self.scale * (s - 0.75)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _images(n: int = 100) -> tuple[torch.Tensor, np.ndarray]:
    """Texture; class 1 adds a white corner marker and a white centre (as tests/science/test_audit.py)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.6 + 0.2
    y = np.arange(n) % 2
    pos = torch.as_tensor(y == 1)
    x[pos, :, :4, :4] = 1.0
    x[pos, :, 12:20, 12:20] = 1.0
    return x, y


CAM_ABOVE_UNIFORM = {"n_images": 4, "n_empty": 0, "area_fraction": 0.3525, "border_area_fraction": 0.41,
                     "mass_fraction_inside": 0.3748, "mass_fraction_outside": 0.6252, "mass_fraction_border": 0.2,
                     "ratio_to_uniform": 1.063, "per_image": {"mean": 0.3748, "p10": 0.3, "p50": 0.37, "p90": 0.45},
                     "below_uniform": False, "above_uniform": True}


@pytest.fixture(scope="module")
def audited(tiny_checkpoints, tmp_path_factory) -> Path:  # noqa: F811 - pytest fixture
    """The tiny set, each of its four results given a shortcut audit on one shared test set."""
    from medrobust.audit import run_audit

    root = tmp_path_factory.mktemp("audited")
    shutil.copytree(tiny_checkpoints, root, dirs_exist_ok=True)
    x, y = _images()
    sources = np.where(np.arange(len(y)) % 4 == 0, "site-a", "site-b").tolist()
    models = {"standard": _Patch(slice(0, 4), slice(0, 4)),  # the corner marker: reads outside the lungs
              "robust": _Patch(slice(12, 20), slice(12, 20)),  # the centre: reads the lungs
              "augmix": _Patch(slice(12, 20), slice(12, 20), noise=(slice(4, 6), slice(4, 6))),  # AUROC rises
              "robustaugmix": _Patch(slice(5, 7), slice(5, 7))}  # texture only
    for name, model in models.items():
        path = root / "results" / f"{name}.json"
        result = json.loads(path.read_text())
        result["audit"] = run_audit(model=model, images=x, labels=y, classes=["non-COVID", "COVID-19"],
                                    sources=sources, cam_images=0, n_boot=100)
        if name == "standard":  # Grad-CAM a little above uniform, as the shipped standard model's
            result["audit"]["cam"] = CAM_ABOVE_UNIFORM
        path.write_text(json.dumps(result))
    return root


@pytest.fixture()
def env(audited, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDROBUST_CHECKPOINTS", str(audited))
    monkeypatch.setenv("MEDROBUST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDROBUST_RUNS", str(tmp_path / "runs"))
    for name in ("MEDROBUST_JOBS", "MEDROBUST_DATA", "MEDROBUST_ADMIN_TOKEN", "MEDROBUST_DEMO"):
        monkeypatch.delenv(name, raising=False)
    return audited


def _claims(text: str) -> set[str]:
    phrases = {"lungs": ("consistent with a model that reads the lungs", "looking at the lungs",
                         "consistent with the blanking test"),
               "elsewhere": ("something other than the lungs", "attention is not on the lungs"),
               "undecided": ("cannot tell whether",)}
    return {k for k, ps in phrases.items() if any(p in text for p in ps)}


def test_the_overview_says_the_test_sets_facts_once_and_each_model_one_thing_about_the_lungs(env):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    blocks = [str(m.value) for m in at.markdown]
    # The clinician's reading (one Markdown list) and the audit tab each state the test set's sentence once.
    reading = next(b for b in blocks if "research models on a small public data set" in b)
    assert reading.count("Cramér's V") == 1, reading
    audit_blocks = [b for b in blocks if b is not reading]
    assert sum(b.count("Cramér's V") for b in audit_blocks) == 1, [b for b in audit_blocks if "Cramér" in b]
    for name in ("standard", "robust", "augmix", "robustaugmix"):
        mine = next(b for b in audit_blocks if b.startswith(f"**{name}**"))
        assert len(_claims(mine)) == 1, (name, mine)
        sentences = mine.split("\n- ")[1:]
        assert len(sentences) == len(set(sentences))
        if name != "robustaugmix":  # the tiny set's constant model: the reading leaves it out as degenerate
            line = next(x for x in reading.splitlines() if f"**{name}**" in x)
            assert _claims(mine) == _claims(line), (name, mine, line)
    standard = next(b for b in audit_blocks if b.startswith("**standard**"))
    assert "something other than the lungs" in standard and "looking at the lungs" not in standard
    # augmix: clean AUROC below chance, higher with the lungs blanked: said to rise, never to fall.
    augmix = next(b for b in audit_blocks if b.startswith("**augmix**"))
    lung = next(s for s in augmix.split("\n- ") if s.startswith("Blanking the central lung field"))
    assert "clean →" in lung and "(+0." in lung and "falls" not in augmix, augmix
    table = next(d.value for d in at.dataframe if "lungs blanked" in d.value.columns)
    readings = dict(zip(table["model"], table["reads the lungs?"]))
    assert readings["standard"] == audit_text.LungReading("elsewhere", "").headline
    assert readings["robust"] == audit_text.LungReading("lungs", "").headline
