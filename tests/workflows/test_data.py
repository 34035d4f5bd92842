"""Tests for medrobust.data: reading the upstream COVID layouts, CSV manifests, ImageFolder trees and MedMNIST
.npz files, the cache, and the patient-level split (binary and K-class, random and fixed)."""

from __future__ import annotations

import csv
import json
import os
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
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
from synthetic_data import (
    CLASSES,
    append_manifest_rows,
    write_image_folder,
    write_manifest,
    write_medmnist_npz,
    write_png,
)


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


# ---- bring your own data: CSV manifests -------------------------------------------------------

def _by_key(records: list[Record], report) -> dict[str, str]:
    return {r.key: report.classes[r.label] for r in records}


def test_manifest_classes_patients_sources_and_drop_reasons(tmp_path):
    m = write_manifest(tmp_path / "m", bad_rows=True)
    records, report = read_records([m.root])
    assert report.classes == ("covid", "normal", "pneumonia") == m.classes  # sorted label names
    assert dict(report.dropped) == m.dropped == {"image file missing": 1, "empty label": 1, "duplicate path": 1,
                                                 "invalid split value": 1}
    assert _by_key(records, report) == m.labels and report.kept == len(records) == 72
    assert {r.key: r.patient for r in records} == m.patients
    assert {r.source for r in records} == {"site-a", "site-b"}
    assert len({r.patient for r in records}) == 36  # 12 patients per class, two images each
    for r in records:
        assert r.finding == report.classes[r.label] and r.view == "" and r.split is None
        assert Path(r.path).is_file() and r.key == f"{r.source}/{r.filename}"
        assert r.filename.startswith("images/")  # the path as written in the CSV
    assert report.warnings == []  # patients are known
    assert [r.key for r in records] == sorted(r.key for r in records)
    summary = report.summary()
    assert "kept 72 images (covid 24, normal 24, pneumonia 24)" in summary and "1 invalid split value" in summary
    d = report.to_dict()
    assert d["classes"] == ["covid", "normal", "pneumonia"] and d["per_class"] == {c: 24 for c in CLASSES}
    assert d["dropped"]["duplicate path"] == 1 and d["warnings"] == []


def test_the_same_file_under_two_spellings_is_a_duplicate_path(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=2)
    key, label = next(iter(m.labels.items()))
    first = key.split("/", 1)[1]
    append_manifest_rows(m.root, [{"path": f"./{first}", "label": label, "patient": "x", "source": "site-a"},
                                  {"path": str(tmp_path / "m" / first), "label": label, "patient": "y"}])
    records, report = read_records([m.root])
    assert report.dropped == Counter({"duplicate path": 2}) and len(records) == m.kept


def test_manifest_explicit_classes_order_and_unknown_class(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=3)
    extra = write_png(tmp_path / "m" / "images" / "rare.png", np.full((32, 32), 0.5))
    append_manifest_rows(m.root, [{"path": "images/rare.png", "label": "rare", "patient": "r1", "source": "site-a"}])
    # From the data: every label name, sorted.
    _, report = read_records([m.root])
    assert report.classes == ("covid", "normal", "pneumonia", "rare") and report.kept == m.kept + 1
    # Given: its order wins, other labels are dropped as unknown.
    records, report = read_records([m.root], classes=list(CLASSES))
    assert report.classes == CLASSES == ("normal", "pneumonia", "covid")
    assert report.dropped == Counter({"unknown class": 1})
    assert _by_key(records, report) == m.labels
    assert {r.label for r in records if r.finding == "covid"} == {2}
    assert str(extra) not in {r.path for r in records}
    records, report = read_records([m.root], classes=("covid", "normal"))
    assert report.classes == ("covid", "normal") and report.dropped["unknown class"] == 6 + 1
    assert {r.finding for r in records} == {"covid", "normal"}
    ds = load_dataset([m.root], image_size=32, classes=["pneumonia", "normal", "covid"])
    assert ds.classes == ("pneumonia", "normal", "covid")
    assert ds.labels.tolist() == [ds.classes.index(r.finding) for r in ds.records]
    assert ds.subset([ds.records[0].key]).classes == ds.classes


@pytest.mark.parametrize("classes, match", [
    (["a", "a"], "more than once"), (["a", " "], "empty class name"), ("ab", "list of class names"),
    (["only"], "at least two classes"),
])
def test_bad_explicit_classes_are_a_data_error(tmp_path, classes, match):
    m = write_manifest(tmp_path / "m", patients_per_class=1)
    with pytest.raises(DataError, match=match):
        read_records([m.root], classes=classes)


def test_a_single_class_manifest_is_a_data_error(tmp_path):
    m = write_manifest(tmp_path / "m", classes=("normal",), patients_per_class=2)
    with pytest.raises(DataError, match="at least two classes") as info:
        read_records([m.root])
    assert "normal" in str(info.value)


@pytest.mark.parametrize("header, missing", [
    ("file,label\n", "path"), ("path,class\n", "label"), ("patient\n", "path, label"),
])
def test_manifest_missing_columns_are_a_data_error(tmp_path, header, missing):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(header + "a,b\n")
    with pytest.raises(DataError, match="lacks the column") as info:
        read_records([csv_path])
    assert f"column(s) {missing} " in str(info.value) and "bad.csv" in str(info.value)


def test_manifest_fixed_splits_are_honoured_without_randomness(tmp_path):
    m = write_manifest(tmp_path / "m", with_split=True)
    records, report = read_records([m.root])
    assert {r.key: r.split for r in records} == m.splits
    expected = {part: sorted(k for k, s in m.splits.items() if s == part) for part in D.SPLIT_NAMES}
    for seed in (0, 1, 2):
        split = split_by_patient(records, seed=seed)
        assert split.images == expected
        _check_partition(records, split)
    with pytest.raises(DataError, match="cross-validation needs data without a split column"):
        split_kfold(records, seed=0, folds=3, fold=0)
    with pytest.raises(DataError, match="cross-validation"):
        split_from_info(records, {"seed": 0, "folds": 3, "fold": 1})
    assert split_from_info(records, {"seed": 5}).images == expected


def test_partly_fixed_splits_split_the_rest_at_random(tmp_path):
    m = write_manifest(tmp_path / "m", with_split=True)
    rows = list(csv.DictReader(open(m.root, newline="")))
    free = {r["patient"] for r in rows if r["patient"].endswith(("0", "1", "2"))}  # 5 patients of each class
    for r in rows:
        if r["patient"] in free:
            r["split"] = ""
    with open(m.root, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    records, _ = read_records([m.root])
    fixed = {r.key: r.split for r in records if r.split}
    assert 0 < len(fixed) < len(records)
    splits = [split_by_patient(records, seed=s) for s in range(8)]
    for s in splits:
        _check_partition(records, s)
        for part in D.SPLIT_NAMES:
            assert {k for k in s.images[part] if k in fixed} == {k for k, v in fixed.items() if v == part}
    assert len({s.hash for s in splits}) > 1  # the free patients move with the seed


def test_a_patient_in_two_fixed_splits_is_refused(tmp_path):
    m = write_manifest(tmp_path / "m", with_split=True, patients_per_class=4)
    rows = list(csv.DictReader(open(m.root, newline="")))
    assert rows[0]["patient"] == rows[1]["patient"] == "normal-000" and rows[0]["split"] == "train"
    rows[1]["split"] = "TEST"  # case-insensitive, but not the patient's other split
    with open(m.root, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    records, _ = read_records([m.root])
    with pytest.raises(DataError, match="fixed splits test and train") as info:
        split_by_patient(records, seed=0)
    assert "site-a:normal-000" in str(info.value)


def test_manifest_without_patient_column_warns_and_splits_per_image(tmp_path):
    m = write_manifest(tmp_path / "m", with_patient=False, with_source=False, patients_per_class=4)
    records, report = read_records([m.root])
    assert {r.source for r in records} == {"manifest"}  # the CSV's stem
    assert len({r.patient for r in records}) == len(records)  # one patient per image
    assert {r.key: r.patient for r in records} == m.patients
    assert len(report.warnings) == 1 and "per image, not per patient" in report.warnings[0]
    assert str(m.root) in report.warnings[0]
    assert "warning:" in report.summary() and report.to_dict()["warnings"] == report.warnings
    _check_partition(records, split_by_patient(records, seed=0))


def test_manifest_absolute_paths_and_empty_patient_cells(tmp_path):
    img = write_png(tmp_path / "elsewhere" / "x.png", np.full((32, 32), 0.3))
    img2 = write_png(tmp_path / "elsewhere" / "y.png", np.full((32, 32), 0.6))
    csv_path = tmp_path / "lists" / "study.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(f"path,label,patient\n{img},a,p1\n{img2},b,\n")
    records, report = read_records([csv_path])
    assert [r.key for r in records] == [f"study/{img}", f"study/{img2}"]
    assert [r.patient for r in records] == ["study:p1", f"study:{img2}"]
    assert any("1 row(s) have no patient id" in w for w in report.warnings)


def test_two_manifests_with_the_same_stem_get_distinct_sources(tmp_path):
    a = write_manifest(tmp_path / "a", with_source=False, patients_per_class=2)
    b = write_manifest(tmp_path / "b", with_source=False, patients_per_class=2)
    records, report = read_records([a.root, b.root])
    assert {r.source for r in records} == {"manifest", "manifest-2"} and report.kept == a.kept + b.kept
    # With a source column, two manifests naming the same image path for the same site clash.
    c = write_manifest(tmp_path / "c", patients_per_class=2)
    d = write_manifest(tmp_path / "d", patients_per_class=2)
    with pytest.raises(DataError, match="record key"):
        read_records([c.root, d.root])


def test_unknown_root_kind_is_a_data_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="neither a CSV manifest"):
        read_records([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match="does not exist"):
        read_records([tmp_path / "absent.csv"])


# ---- ImageFolder trees -------------------------------------------------------------------------

def test_image_folder_tree(tmp_path):
    f = write_image_folder(tmp_path / "data")
    (f.root / "empty-class").mkdir()
    (f.root / "README.txt").write_text("top-level files are not images of a class\n")
    upper = f.root / "covid" / "img-000.png"
    upper.rename(upper.with_suffix(".PNG"))  # extensions match in any case
    f.labels["xray-folder/covid/img-000.PNG"] = f.labels.pop("xray-folder/covid/img-000.png")
    records, report = read_records([f.root])
    assert report.classes == ("covid", "normal", "pneumonia")
    assert _by_key(records, report) == f.labels and report.kept == 72
    assert report.per_class == Counter({0: 24, 1: 24, 2: 24})
    assert any("/batch-2/" in r.key for r in records)  # nested folders are walked
    assert not any(r.key.endswith((".txt", ".thumb.png")) for r in records)  # junk and hidden files ignored
    assert all(r.source == "xray-folder" and r.view == "" and r.split is None for r in records)
    assert len({r.patient for r in records}) == len(records)
    assert any("per image, not per patient" in w for w in report.warnings)
    assert any("empty-class" in w for w in report.warnings)
    _check_partition(records, split_by_patient(records, seed=1))
    _check_partition(records, split_kfold(records, seed=1, folds=4, fold=2))


def test_roots_must_agree_on_classes_unless_given(tmp_path):
    f = write_image_folder(tmp_path / "data", per_class=3)
    m = write_manifest(tmp_path / "m", patients_per_class=2)
    records, report = read_records([f.root, m.root])  # both: covid, normal, pneumonia
    assert report.kept == f.kept + m.kept and report.classes == f.classes
    two = write_manifest(tmp_path / "two", name="two.csv", classes=("normal", "covid"), patients_per_class=2)
    with pytest.raises(DataError, match="disagree on their classes") as info:
        read_records([f.root, two.root])
    assert str(f.root) in str(info.value) and str(two.root) in str(info.value) and "classes=" in str(info.value)
    records, report = read_records([f.root, two.root], classes=["normal", "covid"])
    assert report.classes == ("normal", "covid") and report.dropped == Counter({"unknown class": 3})


def test_covid_layout_mixes_with_a_manifest_when_classes_are_given(covid_root, tmp_path):
    m = write_manifest(tmp_path / "m", classes=("non-COVID", "COVID-19"), patients_per_class=2)
    with pytest.raises(DataError, match="disagree"):  # sorted names put COVID-19 first
        read_records([covid_root.path, m.root])
    records, report = read_records([covid_root.path, m.root], classes=list(D.CLASS_NAMES))
    alone, _ = read_records([covid_root.path])
    assert [r for r in records if r.source == "covid-chestxray"] == alone  # labels unchanged
    assert report.kept == covid_root.kept + m.kept
    # An explicit order may also flip the COVID labels.
    flipped, rep = read_records([covid_root.path], classes=["COVID-19", "non-COVID"])
    assert [1 - r.label for r in flipped] == [r.label for r in alone] and rep.classes == ("COVID-19", "non-COVID")


# ---- MedMNIST .npz ----------------------------------------------------------------------------

def test_medmnist_npz_records_and_fixed_split(tmp_path):
    n = write_medmnist_npz(tmp_path / "toymnist.npz")
    records, report = read_records([n.root])
    assert report.classes == ("0", "1", "2") == n.classes
    assert _by_key(records, report) == n.labels and report.kept == 3 * (24 + 4 + 8)
    assert {r.key: r.split for r in records} == n.splits
    assert {r.key: r.patient for r in records} == n.patients
    r = next(r for r in records if r.key == "toymnist/val/3")
    assert r.path == f"{(tmp_path / 'toymnist.npz').resolve()}::val/3" and r.filename == "val/3"
    assert D.npz_ref(r.path) == (str((tmp_path / "toymnist.npz").resolve()), "val", 3)
    assert any("MedMNIST has no patient ids" in w and "per image, not per patient" in w for w in report.warnings)
    split = split_by_patient(records, seed=123)
    assert split.images == {p: sorted(k for k, s in n.splits.items() if s == p) for p in D.SPLIT_NAMES}
    with pytest.raises(DataError, match="cross-validation"):
        split_kfold(records, seed=0, folds=5, fold=0)


def test_medmnist_grey_and_rgb_decode_to_the_same_picture(tmp_path):
    grey = write_medmnist_npz(tmp_path / "grey.npz", size=28, seed=3)
    rgb = write_medmnist_npz(tmp_path / "rgb.npz", size=28, rgb=True, compressed=True, seed=3)
    dg = load_dataset([grey.root], image_size=32)
    dr = load_dataset([rgb.root], image_size=32)
    assert dg.images.shape == dr.images.shape == (108, 1, 32, 32) and dg.classes == ("0", "1", "2")
    assert [r.key.split("/", 1)[1] for r in dg.records] == [r.key.split("/", 1)[1] for r in dr.records]
    assert torch.equal(dg.labels, dr.labels)
    diff = (dg.images.float() - dr.images.float()).abs()
    assert diff.mean() < 1.0 and diff.max() <= 16  # luma of the tinted RGB is the grey picture (rounding/clipping)
    # The RGB image is exactly its ITU-R 601 luma, resized like every other image.
    with np.load(rgb.root) as z:
        arr = z["train_images"][5].astype(np.float64)
    luma = (arr @ np.array([0.299, 0.587, 0.114])) / 255
    expected = (D.to_square(luma.astype(np.float32), size=32) * 255).round().to(torch.uint8)
    i = next(i for i, r in enumerate(dr.records) if r.key == "rgb/train/5")
    assert (dr.images[i].int() - expected.int()).abs().max() <= 1
    # Learnable: the classes differ in mean brightness.
    means = [dg.images[dg.labels == c].float().mean().item() for c in range(3)]
    assert means[0] < means[1] < means[2]


def test_medmnist_multi_label_is_refused(tmp_path):
    n = write_medmnist_npz(tmp_path / "chesty.npz", multi_label=True, counts={"train": 2, "val": 1, "test": 1})
    with pytest.raises(DataError, match="multi-label") as info:
        read_records([n.root])
    assert "3 label columns" in str(info.value)


def test_medmnist_bad_files_are_data_errors(tmp_path):
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match="lacks the array") as info:
        read_records([tmp_path / "partial.npz"])
    assert "val_images" in str(info.value) and "test_labels" in str(info.value)
    parts = {f"{p}_{k}": (np.zeros((2, 8, 8), np.float32) if k == "images" else np.zeros((2, 1), np.int64))
             for p in D.SPLIT_NAMES for k in ("images", "labels")}
    np.savez(tmp_path / "floaty.npz", **parts)
    with pytest.raises(DataError, match="uint8"):
        read_records([tmp_path / "floaty.npz"])
    parts = {k: (np.zeros((2, 8, 8), np.uint8) if k.endswith("images") else np.zeros((3, 1), np.int64))
             for k in parts}
    np.savez(tmp_path / "short.npz", **parts)
    with pytest.raises(DataError, match="holds 2 images"):
        read_records([tmp_path / "short.npz"])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="Cannot read the .npz"):
        read_records([tmp_path / "junk.npz"])


def test_medmnist_class_names_from_the_medmnist_package(tmp_path, monkeypatch):
    n = write_medmnist_npz(tmp_path / "pneumoniamnist_64.npz", n_classes=2, counts={"train": 2, "val": 1, "test": 1})
    fake = types.SimpleNamespace(INFO={"pneumoniamnist": {"label": {"0": "normal", "1": "pneumonia"}}})
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    records, report = read_records([n.root])
    assert report.classes == ("normal", "pneumonia") and {r.finding for r in records} == {"normal", "pneumonia"}
    # Explicit classes select by these names.
    _, rep = read_records([n.root], classes=["pneumonia", "normal"])
    assert rep.classes == ("pneumonia", "normal") and rep.kept == len(records)
    monkeypatch.setitem(sys.modules, "medmnist", None)  # not installed: import raises ImportError
    _, report = read_records([n.root])
    assert report.classes == ("0", "1")


# ---- the cache for every layout ----------------------------------------------------------------

def _write_layout(kind: str, base: Path):
    if kind == "manifest":
        return write_manifest(base / "m", with_split=True, patients_per_class=3)
    if kind == "folder":
        return write_image_folder(base / "data", per_class=6)
    return write_medmnist_npz(base / "toymnist.npz", counts={"train": 4, "val": 1, "test": 2}, rgb=True)


@pytest.mark.parametrize("kind", ["manifest", "folder", "npz"])
def test_new_layouts_cache_and_reload_identically(kind, tmp_path, monkeypatch):
    syn = _write_layout(kind, tmp_path)
    first = load_dataset([syn.root], image_size=32)
    assert len(first) == syn.kept and first.images.shape == (syn.kept, 1, 32, 32)
    assert {r.key: first.classes[int(y)] for r, y in zip(first.records, first.labels)} == syn.labels

    def boom(*a, **k):
        raise AssertionError("decoded an image although the cache is valid")

    monkeypatch.setattr(D, "load_image_file", boom)
    monkeypatch.setattr(D, "_npz_images", boom)
    second = load_dataset([syn.root], image_size=32)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.records == second.records and second.classes == first.classes
    assert second.report.to_dict() == first.report.to_dict() and second.inputs_hash == first.inputs_hash


def test_edited_npz_invalidates_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "toymnist.npz"
    write_medmnist_npz(path, counts={"train": 3, "val": 1, "test": 1}, seed=0)
    first = load_dataset([path], image_size=32)
    reads = []
    real = D._npz_images
    monkeypatch.setattr(D, "_npz_images", lambda *a: reads.append(a) or real(*a))
    assert torch.equal(load_dataset([path], image_size=32).images, first.images) and reads == []
    before = path.stat()
    write_medmnist_npz(path, counts={"train": 3, "val": 1, "test": 1}, seed=0, rgb=True)  # same labels, new pixels
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000))
    second = load_dataset([path], image_size=32)
    assert sorted(part for _, part in reads) == ["test", "train", "val"]  # each part read once
    assert second.inputs_hash != first.inputs_hash
    assert not torch.equal(second.images, first.images)


def test_unreadable_manifest_image_is_dropped_at_decode_time(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=2)
    key = next(iter(m.labels))
    (tmp_path / "m" / key.split("/", 1)[1]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    ds = load_dataset([m.root], image_size=32)
    assert ds.report.dropped["image file unreadable"] == 1 and key not in {r.key for r in ds.records}


def test_record_positional_construction_still_works():
    r = Record("s", "s:1", "a.png", "a.png", "COVID-19", "PA", 1)
    assert r.split is None and r.key == "s/a.png"


# ---- splits for K classes ----------------------------------------------------------------------

def _old_split_by_patient(records: list[Record], *, seed: int, fractions=D.DEFAULT_SPLIT) -> dict:
    """The binary split exactly as medrobust shipped it (the shipped models' split hashes depend on it)."""
    import random

    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    strata: dict[int, list[str]] = {0: [], 1: []}
    for pid, recs in sorted(by_patient.items()):
        strata[max(r.label for r in recs)].append(pid)
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        pids = strata[label]
        rng.shuffle(pids)
        n = len(pids)
        n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
        if n >= 3 and fractions[2] > 0 and n_train + n_val >= n:
            n_train = max(1, n - n_val - 1)
        parts["train"] += pids[:n_train]
        parts["val"] += pids[n_train : n_train + n_val]
        parts["test"] += pids[n_train + n_val :]
    return {name: sorted(r.key for p in pids for r in by_patient[p]) for name, pids in parts.items()}


@settings(max_examples=100, deadline=None)
@given(layout=layouts, seed=st.integers(0, 2**31 - 1))
def test_binary_split_is_unchanged(layout, seed):
    records = _records(layout)
    assert split_by_patient(records, seed=seed).images == _old_split_by_patient(records, seed=seed)


def _k_records(k: int, layout: list[tuple[list[int], str | None]]) -> list[Record]:
    """``layout[p]`` = (labels of patient p's images, the patient's fixed split or None)."""
    out = []
    for p, (labels, part) in enumerate(layout):
        for j, label in enumerate(labels):
            fname = f"p{p}-{j}.png"
            out.append(Record(source="s", patient=f"s:{p}", filename=fname, path=fname, finding=str(label % k),
                              view="", label=label % k, split=part))
    return out


k_layouts = st.integers(2, 5).flatmap(lambda k: st.tuples(st.just(k), st.lists(
    st.tuples(st.lists(st.integers(0, k - 1), min_size=1, max_size=4),
              st.sampled_from([None, None, None, "train", "val", "test"])), min_size=1, max_size=40)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=k_layouts, seed=st.integers(0, 2**31 - 1), fixed=st.booleans())
def test_k_class_split_is_a_patient_partition(data, seed, fixed):
    k, layout = data
    if not fixed:
        layout = [(labels, None) for labels, _ in layout]
    records = _k_records(k, layout)
    split = split_by_patient(records, seed=seed)
    _check_partition(records, split)
    for p, (_, part) in enumerate(layout):
        if part is not None:
            assert f"s:{p}" in split.patients[part]
    assert split_by_patient(list(reversed(records)), seed=seed).images == split.images
    if not fixed:  # stratified over every class present
        label_of = {f"s:{p}": max(labels) for p, (labels, _) in enumerate(layout)}
        for label in set(label_of.values()):
            n = sum(1 for v in label_of.values() if v == label)
            n_train = sum(1 for p in split.patients["train"] if label_of[p] == label)
            assert abs(n_train - 0.7 * n) <= 1.0
            if n >= 3:
                assert any(label_of[p] == label for p in split.patients["test"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=k_layouts, seed=st.integers(0, 2**31 - 1), folds=st.integers(2, 5))
def test_k_class_kfold_is_a_patient_partition(data, seed, folds):
    k, layout = data
    records = _k_records(k, [(labels, None) for labels, _ in layout])
    splits = [split_kfold(records, seed=seed, folds=folds, fold=f) for f in range(folds)]
    assert sorted(key for s in splits for key in s.images["test"]) == sorted(r.key for r in records)
    label_of = {f"s:{p}": max(labels) for p, (labels, _) in enumerate(layout)}
    for s in splits:
        _check_partition(records, s)
    for label in set(label_of.values()):
        n = sum(1 for v in label_of.values() if v == label)
        per_fold = [sum(1 for p in s.patients["test"] if label_of[p] == label) for s in splits]
        assert set(per_fold) <= {n // folds, -(-n // folds)}


# ---- issue 23: labels that are probably mistakes, files listed twice, empty parts, named drops ----------------

@pytest.mark.parametrize("name, others, similar", [
    ("covdi", ["covid", "normal"], ["covid"]),  # two letters swapped
    ("Covid", ["covid"], ["covid"]),  # case
    ("non COVID", ["non-COVID", "COVID-19"], ["non-COVID"]),  # space for a hyphen
    ("pneumona", ["pneumonia"], ["pneumonia"]),  # a letter missing
    ("grade1", ["grade2", "grade3"], []),  # digits tell classes apart
    ("0", ["1", "2"], []),  # MedMNIST's names
    ("flu", ["flux"], []),  # too short for the one-letter rule
    ("covid", ["normal", "pneumonia"], []),
])
def test_similar_names(name, others, similar):
    assert D.similar_names(name, others) == similar


def test_a_file_listed_twice_with_two_labels_is_refused_in_one_manifest_or_two(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=2)
    key = next(k for k, c in m.labels.items() if c == "pneumonia")
    source, path = key.split("/", 1)
    other = tmp_path / "other.csv"
    other.write_text(f"path,label\n{tmp_path / 'm' / path},normal\n")
    with pytest.raises(DataError, match="listed twice with different labels: 'pneumonia'") as info:
        read_records([m.root, other], classes=list(CLASSES))
    assert "'normal'" in str(info.value) and path in str(info.value)
    append_manifest_rows(m.root, [{"path": path, "label": "covid", "patient": "p", "source": source}])
    with pytest.raises(DataError, match="listed twice with different labels: 'pneumonia'"):
        read_records([m.root])
    # The same label twice stays a plain duplicate, dropped and counted.
    m2 = write_manifest(tmp_path / "m2", patients_per_class=2)
    append_manifest_rows(m2.root, [{"path": path, "label": "pneumonia", "patient": "p", "source": source}])
    assert read_records([m2.root])[1].dropped == Counter({"duplicate path": 1})


def test_unknown_labels_are_named_in_the_counts_line(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=2)
    _, report = read_records([m.root], classes=["normal", "covid"])
    assert report.unknown_labels == Counter({"pneumonia": 4}) and report.to_dict()["unknown_labels"] == {"pneumonia": 4}
    assert report.counts_line() == "kept 8 images (normal 4, covid 4); dropped 4: 4 unknown class (pneumonia 4)"
    _, report = read_records([m.root])
    assert report.counts_line() == "kept 12 images (covid 4, normal 4, pneumonia 4); dropped none"


def _relabel(m, old: str, new: str, n: int) -> None:
    rows = list(csv.DictReader(open(m.root, newline="")))
    for r in [r for r in rows if r["label"] == old][:n]:
        r["label"] = new
    with open(m.root, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_check_training_classes(tmp_path):
    m = write_manifest(tmp_path / "m", patients_per_class=6)
    _, report = read_records([m.root])
    D.check_training_classes(report, listed=None)  # three classes of 12 images, unlike each other
    _relabel(m, "covid", "covdi", 1)
    _relabel(m, "normal", "Normal", 5)  # five images: not small, but one letter's case from "normal"
    _, report = read_records([m.root])
    with pytest.raises(DataError) as info:
        D.check_training_classes(report, listed=None)
    msg = str(info.value)
    assert "'Normal' (5 images): did you mean 'normal'?" in msg and "'covdi' (1 image): did you mean 'covid'?" in msg
    assert "\n" not in msg and "--classes" in msg
    D.check_training_classes(read_records([m.root], classes=["Normal", "normal", "covdi", "covid", "pneumonia"])[1],
                             listed=["Normal", "normal", "covdi", "covid", "pneumonia"])  # listed: taken as is
    with pytest.raises(DataError, match="'covdi' \\(1 image, not in --classes\\): did you mean 'covid'"):
        D.check_training_classes(read_records([m.root], classes=["normal", "Normal", "covid", "pneumonia"])[1],
                                 listed=["normal", "Normal", "covid", "pneumonia"])
    with pytest.raises(DataError, match="--classes lists 'flu', but no image is labelled so"):
        D.check_training_classes(read_records([m.root], classes=["normal", "flu"])[1], listed=["normal", "flu"])


def test_check_split_parts_says_how_many_patients_and_what_to_do(tmp_path):
    m = write_manifest(tmp_path / "m", classes=("normal", "covid"), patients_per_class=5, images_per_patient=1)
    records, report = read_records([m.root])
    split = split_by_patient(records, seed=0)
    assert split.images["val"] == []
    D.check_split_parts(split, records=records, parts=("train", "test"), classes=report.classes)
    with pytest.raises(DataError) as info:
        D.check_split_parts(split, records=records, parts=("train", "val", "test"), classes=report.classes)
    assert str(info.value) == (
        "The validation split is empty: the data hold 10 images of 10 patients (covid 5, normal 5 patients), split "
        "into 8 training, 0 validation and 2 test patients; val gets 10% of each class's patients, rounded, so a "
        "class needs at least 6 patients: give more data, or assign patients to train, val and test in a "
        "manifest's split column.")


def test_a_missing_root_says_what_it_is_and_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, kind in (("x.csv", "Manifest"), ("x.npz", "MedMNIST file"), ("x", "Data folder")):
        with pytest.raises(D.DataRootMissing, match=f"^{kind} {name} does not exist") as info:
            read_records([name])
        assert str(tmp_path) in str(info.value) and info.value.root == Path(name)
