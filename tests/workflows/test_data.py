"""Tests for medrobust.data: reading both upstream layouts, the cache, and the patient-level split."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrobust import data as D
from medrobust.data import (
    DataError,
    Record,
    Split,
    check_no_overlap,
    load_dataset,
    read_records,
    split_by_patient,
    split_from_info,
    split_kfold,
)

from medrobust.settings import data_roots

from conftest import make_actualmed_root, make_covid_root, write_image, xray_array


# ---- read_records -----------------------------------------------------------------------------

def test_read_records_counts_and_drop_reasons(both_roots):
    records, report = read_records([r.path for r in both_roots])
    expected_drops = Counter()
    for r in both_roots:
        expected_drops.update(r.dropped)
    assert report.kept == len(records) == sum(r.kept for r in both_roots)
    assert dict(report.dropped) == dict(expected_drops)
    assert set(report.dropped) == {"image file missing", "unlabelled (empty finding)", "not a frontal view",
                                   "not an X-ray"}
    assert report.per_class[1] == sum(r.per_class[1] for r in both_roots)
    assert report.per_class[0] == sum(r.per_class[0] for r in both_roots)
    summary = report.summary()
    assert f"kept {report.kept} images" in summary and "1 not an X-ray" in summary
    d = report.to_dict()
    assert d["kept"] == report.kept and d["per_class"]["COVID-19"] == report.per_class[1]


def test_read_records_labels_views_and_patients(both_roots):
    covid, actual = both_roots
    records, _ = read_records([covid.path, actual.path])
    by_name = {r.filename: r for r in records}
    # Exactly the rows the fixture meant to keep, with the fixture's labels.
    assert {r.filename: r.label for r in records} == {**covid.images, **actual.images}
    for r in records:
        assert r.view.upper() in D.FRONTAL_VIEWS
        assert Path(r.path).is_file()
        assert r.label == (1 if "COVID-19" in r.finding else 0)
    findings = {r.finding: r.label for r in records}
    assert findings["COVID-19, ARDS"] == 1
    assert findings["COVID-19"] == 1
    assert findings["No Finding"] == 0  # covid-chestxray spelling
    assert findings["No finding"] == 0  # Actualmed spelling
    assert findings["Pneumonia"] == 0
    # The patient key is (source, patientid), sources named after the folders.
    assert {r.source for r in records} == {"covid-chestxray", "actualmed"}
    assert all(r.patient == f"{r.source}:{r.patient.split(':', 1)[1]}" for r in records)
    multi = [r for r in records if r.patient == f"covid-chestxray:{covid.multi_patient}"]
    assert len(multi) == 4
    assert {r.patient for r in records if r.source == "actualmed"} == {f"actualmed:{p}" for p in actual.patients}
    # "AP Supine" is a frontal view (case-insensitive match).
    assert any(r.view == "AP Supine" for r in records)
    # Records are sorted by key, and keys are unique.
    keys = [r.key for r in records]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert by_name[next(iter(actual.images))].key.startswith("actualmed/")


def test_label_rule():
    assert D._label("COVID-19") == 1
    assert D._label("COVID-19, ARDS") == 1
    assert D._label("Pneumonia/Viral/COVID-19") == 1
    assert D._label("No Finding") == 0
    assert D._label("No finding") == 0
    assert D._label("SARS") == 0
    assert D._label("") is None
    assert D._label("   ") is None


def test_two_roots_with_the_same_folder_name_do_not_collide(tmp_path):
    a = make_covid_root(tmp_path / "a", n_covid=3, n_other=2)
    b = make_covid_root(tmp_path / "b", n_covid=3, n_other=2)
    records, report = read_records([a.path, b.path])
    assert report.kept == a.kept + b.kept
    assert len({r.key for r in records}) == len(records)
    assert {r.source for r in records} == {"covid-chestxray", "covid-chestxray-2"}
    # The same patient id in two sources is two patients.
    assert len({r.patient for r in records}) == len(a.patients) + len(b.patients)


def test_duplicate_rows_are_dropped(covid_root):
    meta = covid_root.path / "metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[1]]) + "\n")  # list the first image twice
    records, report = read_records([covid_root.path])
    assert report.dropped["duplicate row"] == 1
    assert len(records) == covid_root.kept


def test_medrobust_data_with_pathsep_reads_both_roots(both_roots, monkeypatch):
    monkeypatch.setenv("MEDROBUST_DATA", os.pathsep.join(str(r.path) for r in both_roots))
    records, report = read_records(data_roots(None))
    assert report.kept == sum(r.kept for r in both_roots)
    assert {r.source for r in records} == {"covid-chestxray", "actualmed"}


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        read_records([tmp_path / "nowhere"])
    assert "nowhere" in str(info.value)
    with pytest.raises(DataError, match="--data"):
        read_records([])


def test_missing_metadata_is_a_data_error(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="metadata.csv") as info:
        read_records([tmp_path / "empty"])
    assert "empty" in str(info.value)


@pytest.mark.parametrize("header, missing", [
    ("patientid,finding,view\n", "filename or imagename"),
    ("patientid,view,filename\n", "finding"),
    ("finding,view,imagename\n", "patientid"),
    ("foo,bar\n", "patientid"),
])
def test_missing_columns_are_a_data_error(tmp_path, header, missing):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text(header + "1,2,3\n")
    with pytest.raises(DataError, match="lacks the column") as info:
        read_records([root])
    assert missing in str(info.value)
    assert "metadata.csv" in str(info.value)


def test_no_usable_rows_is_a_data_error(tmp_path):
    root = tmp_path / "only-ct"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text("patientid,finding,view,modality,filename\n1,COVID-19,PA,CT,a.png\n")
    with pytest.raises(DataError, match="No labelled frontal X-ray") as info:
        load_dataset([root], image_size=32)
    assert "not an X-ray" in str(info.value)


# ---- load_dataset and its cache ---------------------------------------------------------------

def test_load_dataset_shapes_and_content(both_roots):
    roots = [r.path for r in both_roots]
    ds = load_dataset(roots, image_size=32)
    n = sum(r.kept for r in both_roots)
    assert len(ds) == n
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 1, 32, 32)
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [r.label for r in ds.records]
    # Every mode decodes to the same picture: COVID images have a bright centre, the others do not.
    centre = ds.images[:, 0, 12:20, 12:20].float().mean(dim=(1, 2)) / 255
    assert (centre[ds.labels == 1] > 0.7).all()
    assert (centre[ds.labels == 0] < 0.45).all()
    f = ds.float_images()
    assert f.dtype == torch.float32 and 0.0 <= f.min() and f.max() <= 1.0
    sub = ds.subset([ds.records[3].key, ds.records[0].key])
    assert [r.key for r in sub.records] == [ds.records[3].key, ds.records[0].key]
    assert torch.equal(sub.images[0], ds.images[3]) and sub.labels[1] == ds.labels[0]


def test_second_load_hits_the_cache(both_roots, monkeypatch, tmp_path):
    roots = [r.path for r in both_roots]
    first = load_dataset(roots, image_size=32)
    cache = Path(os.environ["MEDROBUST_CACHE"])
    assert cache.is_relative_to(tmp_path) and list(cache.glob("dataset-*.pt"))

    def boom(*a, **k):
        raise AssertionError("decoded an image although the cache is valid")

    monkeypatch.setattr(D, "load_image_file", boom)
    second = load_dataset(roots, image_size=32)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert [r.key for r in first.records] == [r.key for r in second.records]
    assert second.inputs_hash == first.inputs_hash
    # Another size is another cache entry.
    with pytest.raises(AssertionError, match="decoded an image"):
        load_dataset(roots, image_size=40)


def test_use_cache_false_neither_reads_nor_writes(covid_root):
    load_dataset([covid_root.path], image_size=32, use_cache=False)
    assert not list(Path(os.environ["MEDROBUST_CACHE"]).glob("*"))


def test_changed_file_invalidates_the_cache(covid_root, monkeypatch):
    roots = [covid_root.path]
    first = load_dataset(roots, image_size=32)
    i = next(i for i, r in enumerate(first.records) if r.label == 1)
    target = Path(first.records[i].path)
    # Replace a COVID image by a blank one with the same name (same mode, so same kind of file).
    st_before = target.stat()
    with open(target, "rb") as fh:
        is_jpeg = fh.read(2) == b"\xff\xd8"
    write_image(target, xray_array(0, h=60, w=60, seed=99), "JPEG" if is_jpeg else "L")
    os.utime(target, ns=(st_before.st_atime_ns, st_before.st_mtime_ns + 2_000_000_000))
    calls = []
    real = D.load_image_file
    monkeypatch.setattr(D, "load_image_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = load_dataset(roots, image_size=32)
    assert len(calls) == len(first.records)  # rebuilt, not read from the stale cache
    assert second.images[i].float().mean() < first.images[i].float().mean() - 20


def test_inputs_hash_sees_sub_second_mtime_changes(covid_root):
    records, _ = read_records([covid_root.path])
    p = Path(records[0].path)
    st = p.stat()
    whole = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
    # Rewritten within the same second with the same size: only the sub-second mtime differs.
    os.utime(p, ns=(st.st_atime_ns, whole + 100_000_000))
    h1 = D._inputs_hash(records, 32)
    os.utime(p, ns=(st.st_atime_ns, whole + 700_000_000))
    h2 = D._inputs_hash(records, 32)
    assert h1 != h2
    assert D._inputs_hash(records, 32) == h2  # stable when nothing changes
    assert D._inputs_hash(records, 64) != h2  # the size is part of the key


def test_unreadable_image_is_dropped_and_the_cache_still_hits(covid_root, monkeypatch):
    records, _ = read_records([covid_root.path])
    bad = Path(records[5].path)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    first = load_dataset([covid_root.path], image_size=32)
    assert first.report.dropped["image file unreadable"] == 1
    assert len(first) == covid_root.kept - 1 and first.report.kept == len(first)
    assert records[5].key not in {r.key for r in first.records}
    monkeypatch.setattr(D, "load_image_file", lambda *a, **k: pytest.fail("cache missed"))
    second = load_dataset([covid_root.path], image_size=32)
    assert [r.key for r in second.records] == [r.key for r in first.records]
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.report.dropped["image file unreadable"] == 1 and second.report.kept == len(second)


def test_corrupt_cache_is_rebuilt(covid_root):
    first = load_dataset([covid_root.path], image_size=32)
    for f in Path(os.environ["MEDROBUST_CACHE"]).glob("dataset-*.pt"):
        f.write_bytes(b"not a torch file")
    second = load_dataset([covid_root.path], image_size=32)
    assert torch.equal(first.images, second.images)


# ---- split_by_patient -------------------------------------------------------------------------

def _records(layout: list[list[int]], source: str = "src") -> list[Record]:
    """One Record per image; ``layout[p]`` is the list of labels of patient p's images."""
    out = []
    for p, labels in enumerate(layout):
        for j, label in enumerate(labels):
            fname = f"p{p}-{j}.png"
            out.append(Record(source=source, patient=f"{source}:{p}", filename=fname, path=fname,
                              finding="COVID-19" if label else "No Finding", view="PA", label=label))
    return out


def _check_partition(records: list[Record], split: Split) -> None:
    parts = ("train", "val", "test")
    all_keys = [k for p in parts for k in split.images[p]]
    assert sorted(all_keys) == sorted(r.key for r in records)  # every image exactly once
    patient_of = {r.key: r.patient for r in records}
    for a in parts:
        assert set(split.patients[a]) == {patient_of[k] for k in split.images[a]}
        for b in parts:
            if a < b:
                assert not set(split.patients[a]) & set(split.patients[b])


layouts = st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=4), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts, seed=st.integers(0, 2**31 - 1))
def test_split_is_a_patient_partition(layout, seed):
    records = _records(layout)
    split = split_by_patient(records, seed=seed)
    _check_partition(records, split)
    again = split_by_patient(list(reversed(records)), seed=seed)
    assert again.images == split.images and again.hash == split.hash  # deterministic, order-free
    # Stratification: each class's patients (a patient is COVID if any image is) split ~70/10/20.
    label_of = {f"src:{p}": max(labels) for p, labels in enumerate(layout)}
    for label in (0, 1):
        n = sum(1 for v in label_of.values() if v == label)
        n_train = sum(1 for p in split.patients["train"] if label_of[p] == label)
        n_test = sum(1 for p in split.patients["test"] if label_of[p] == label)
        assert abs(n_train - 0.7 * n) <= 1.0
        if n >= 3:
            assert n_test >= 1  # every class is represented among the test patients


@settings(max_examples=40, deadline=None)
@given(layout=layouts, seed=st.integers(0, 2**31 - 1),
       fractions=st.sampled_from([(0.8, 0.0, 0.2), (0.5, 0.25, 0.25), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0),
                                  (0.6, 0.4, 0.0)]))
def test_split_partition_holds_for_other_fractions(layout, seed, fractions):
    records = _records(layout)
    _check_partition(records, split_by_patient(records, seed=seed, fractions=fractions))


def test_split_depends_on_seed_and_keeps_multi_image_patients_together(both_roots):
    records, _ = read_records([r.path for r in both_roots])
    splits = [split_by_patient(records, seed=s) for s in range(6)]
    assert len({s.hash for s in splits}) > 1  # different seeds, different splits
    assert split_by_patient(records, seed=3).hash == splits[3].hash
    multi = f"covid-chestxray:{both_roots[0].multi_patient}"
    multi_keys = {r.key for r in records if r.patient == multi}
    for s in splits:
        _check_partition(records, s)
        holding = [p for p in ("train", "val", "test") if multi_keys & set(s.images[p])]
        assert len(holding) == 1 and multi_keys <= set(s.images[holding[0]])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts, seed=st.integers(0, 2**31 - 1), folds=st.integers(2, 6), val=st.sampled_from([0.0, 0.1, 0.2]))
def test_kfold_test_folds_partition_the_patients_and_never_leak(layout, seed, folds, val):
    records = _records(layout)
    label_of = {f"src:{p}": max(labels) for p, labels in enumerate(layout)}
    splits = [split_kfold(records, seed=seed, folds=folds, fold=f, val_fraction=val) for f in range(folds)]
    tested = [k for s in splits for k in s.images["test"]]
    assert sorted(tested) == sorted(r.key for r in records)  # every image is tested exactly once
    for f, s in enumerate(splits):
        _check_partition(records, s)  # train / val / test of each fold are disjoint in patients
        assert (s.folds, s.fold) == (folds, f)
        assert split_from_info(records, s.to_dict()).images == s.images  # a card rebuilds its fold
    for label in (0, 1):  # stratified: each fold holds floor or ceil of the class's patients / folds
        n = sum(1 for v in label_of.values() if v == label)
        per_fold = [sum(1 for p in s.patients["test"] if label_of[p] == label) for s in splits]
        assert set(per_fold) <= {n // folds, -(-n // folds)}


def test_kfold_on_the_shared_layout_keeps_patients_whole_and_rejects_bad_arguments(both_roots):
    records, _ = read_records([r.path for r in both_roots])
    multi_keys = {r.key for r in records if r.patient == f"covid-chestxray:{both_roots[0].multi_patient}"}
    for f in range(3):
        s = split_kfold(records, seed=0, folds=3, fold=f)
        assert any(multi_keys <= set(v) for v in s.images.values())
    assert split_kfold(records, seed=0, folds=3, fold=1).hash != split_kfold(records, seed=1, folds=3, fold=1).hash
    for kwargs, msg in (({"folds": 1, "fold": 0}, "folds"), ({"folds": 3, "fold": 3}, "fold"),
                        ({"folds": 3, "fold": 0, "val_fraction": 1.0}, "val_fraction")):
        with pytest.raises(ValueError, match=msg):
            split_kfold(records, seed=0, **kwargs)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(_records([[0], [1]]), seed=0, fractions=fractions)


def test_split_roundtrip_and_tampering(tmp_path):
    records = _records([[0], [1, 1], [0, 0], [1], [1], [0], [1, 0], [1]])
    split = split_by_patient(records, seed=7)
    path = tmp_path / "split.json"
    split.save(path)
    loaded = Split.load(path)
    assert loaded == split and loaded.hash == split.hash
    assert json.loads(path.read_text())["hash"] == split.hash
    # Editing the contents without fixing the hash is caught.
    d = json.loads(path.read_text())
    moved = d["images"]["train"].pop()
    d["images"]["test"].append(moved)
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="hash"):
        Split.load(path)
    # So is a wrong hash on untouched contents.
    d = split.to_dict()
    d["hash"] = "0" * 16
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="hash"):
        Split.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="split file"):
        Split.load(path)
    with pytest.raises(DataError, match="split file"):
        Split.load(tmp_path / "absent.json")


def test_check_no_overlap():
    check_no_overlap(train_patients=["a:1", "a:2"], eval_patients={"a:3"})
    check_no_overlap(train_patients=[], eval_patients=["a:3"])
    with pytest.raises(DataError, match="2 patient") as info:
        check_no_overlap(train_patients=["a:1", "a:2", "a:3"], eval_patients=["a:2", "a:3", "a:4"])
    assert "split.json" in str(info.value)
