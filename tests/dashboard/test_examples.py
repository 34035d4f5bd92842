"""The example X-rays shipped for the Stress test: present, loadable, small and licensed for redistribution."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.dashboard import examples as ex

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def shipped():
    return ex.list_examples()


def test_every_listed_example_exists(shipped):
    assert 4 <= len(shipped) <= 6
    for e in shipped:
        assert e.path.is_file(), e.file
        assert e.path.parent == ex.EXAMPLES_DIR
    assert len({e.file for e in shipped}) == len(shipped)
    # and nothing unlisted ships beside them
    pngs = {p.name for p in ex.EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    assert pngs == {e.file for e in shipped}


def test_licences_are_cc_by_only(shipped):
    for e in shipped:
        assert e.license in ("CC BY 3.0", "CC BY 4.0"), e.license
        assert "NC" not in e.license and "ND" not in e.license and "SA" not in e.license
        assert e.license_url == f"https://creativecommons.org/licenses/by/{e.license[-3:]}/"


def test_both_classes_and_labels_consistent(shipped):
    assert {e.label for e in shipped} == {0, 1}
    assert sum(e.label == 0 for e in shipped) >= 2
    for e in shipped:
        assert e.label == int("COVID-19" in e.finding)
        assert e.class_name == ex.CLASS_NAMES[e.label]
        assert e.view in ("PA", "AP", "AP Supine", "AP erect")
        assert e.split in ("test", "val", "train")
        assert e.source_url and e.dataset_url == ex.DATASET_URL and e.changes
        # neutral names: no original file name or patient id in the shipped name
        assert e.source_file not in e.file


def test_images_are_grey_and_small(shipped):
    total = 0
    for e in shipped:
        with Image.open(e.path) as im:
            assert im.format == "PNG" and im.mode == "L"
            assert max(im.size) <= 512
        total += e.path.stat().st_size
    total += ex.INDEX_FILE.stat().st_size + ex.ATTRIBUTION_FILE.stat().st_size
    assert total < 1.5 * 2**20


def test_attribution_mentions_every_file(shipped):
    text = ex.ATTRIBUTION_FILE.read_text(encoding="utf-8")
    assert "2006.11988" in text
    for e in shipped:
        assert e.file in text and e.source_file in text and e.license in text and e.license_url in text


def test_loading_gives_unit_range_pixels(shipped):
    for e in shipped:
        px = ex.load_example_pixels(e)
        assert px.dtype == np.float32 and px.ndim == 2
        with Image.open(e.path) as im:
            assert px.shape == (im.height, im.width)
        assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
        assert px.max() > px.min()  # a real picture, not a flat field


def test_caption_credits_the_source(shipped):
    for e in shipped:
        assert e.license in e.caption and e.source_url in e.caption


def test_missing_file_or_bad_licence_is_refused(tmp_path, shipped):
    entries = json.loads(ex.INDEX_FILE.read_text(encoding="utf-8"))
    shutil.copy(shipped[0].path, tmp_path / shipped[0].file)
    (tmp_path / "examples.json").write_text(json.dumps(entries[:1]))
    assert [e.file for e in ex.list_examples(tmp_path)] == [shipped[0].file]

    (tmp_path / "examples.json").write_text(json.dumps(entries[:2]))  # second image not copied
    with pytest.raises(ex.ExampleError, match="missing"):
        ex.list_examples(tmp_path)

    bad = dict(entries[0], license="CC BY-NC-SA 4.0")
    (tmp_path / "examples.json").write_text(json.dumps([bad]))
    with pytest.raises(ex.ExampleError, match="licence"):
        ex.list_examples(tmp_path)

    escape = dict(entries[0], file="../examples.json")
    (tmp_path / "examples.json").write_text(json.dumps([escape]))
    with pytest.raises(ex.ExampleError):
        ex.list_examples(tmp_path)


def test_module_imports_no_streamlit():
    code = ("import sys, medrobust.dashboard.examples as m; m.list_examples(); "
            "assert 'streamlit' not in sys.modules and 'plotly' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_records_match_the_real_metadata_and_the_shipped_split(shipped):
    """Licence, finding, view and split as recorded agree with the collection and the shipped models' cards."""
    covid, actualmed = SHARED / "covid-chestxray", SHARED / "actualmed"
    if not (covid / "metadata.csv").is_file() or not (actualmed / "metadata.csv").is_file():
        pytest.skip(f"real data not found at {SHARED}")
    from medrobust.data import read_records, split_from_info

    with open(covid / "metadata.csv", newline="", encoding="utf-8", errors="replace") as fh:
        rows = {r["filename"]: r for r in csv.DictReader(fh)}
    card = json.loads((REPO / "checkpoints" / "standard.json").read_text())
    records, _ = read_records([covid, actualmed])
    split = split_from_info(records, card["split"])
    assert split.hash == card["split"]["hash"]
    part = {key: name for name, keys in split.images.items() for key in keys}
    for e in shipped:
        row = rows[e.source_file]
        assert row["license"] == e.license
        assert row["finding"] == e.finding and row["view"] == e.view and row["patientid"] == e.patient_id
        assert part[f"covid-chestxray/{e.source_file}"] == e.split
