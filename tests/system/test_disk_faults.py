"""Faults: a full disk or a read-only output folder ends a training run with one clear line (exit status 1),
never a traceback, and leaves no corrupt or partial file; the run resumes once the disk is fixed.

Tests run as root here, where ``chmod`` does not stop writes, so the faults are injected: file opens and
renames under the run folder fail with ENOSPC (after a byte budget, so half a file really is written) or
EROFS. Where the machine allows it (``unshare`` and ``mount``), the same run also meets a real full tmpfs
and a real read-only remount; as a non-root user a real ``chmod 0555`` folder is tested too.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import make_actualmed_root, make_covid_root
from medrobust.checkpoints import load_checkpoint
from medrobust.cli import main

REPO = Path(__file__).resolve().parents[2]


def _argv(roots, out: Path, epochs: int) -> list[str]:
    argv = ["train", "--method", "standard", "--preset", "smoke", "--image-size", "32", "--epochs", str(epochs),
            "--seed", "0", "--out", str(out), "--no-progress"]
    for r in roots:
        argv += ["--data", str(r)]
    return argv


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished one-epoch run (state + model) to copy; and the data folders."""
    base = tmp_path_factory.mktemp("disk")
    roots = [make_covid_root(base / "data").path, make_actualmed_root(base / "data").path]
    run = base / "run"
    assert main(_argv(roots, run, 1)) == 0
    return roots, run


@pytest.fixture()
def run_copy(base_run, tmp_path):
    roots, run = base_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return roots, dst


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_intact(run: Path, *, epoch: int) -> None:
    """No temp files; the state, model, card, config and split all read back."""
    assert not list(run.glob(".*.tmp*")) and not list(run.glob("*.tmp")), sorted(p.name for p in run.iterdir())
    with safe_open(str(run / "state.safetensors"), framework="pt", device="cpu") as fh:
        for k in fh.keys():
            fh.get_tensor(k)
        assert json.loads(fh.metadata()["progress"])["epoch"] == epoch
    if (run / "model.safetensors").exists():
        load_checkpoint(run / "model.safetensors")
    for name in ("config.json", "split.json", "model.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())


def _one_clear_line(err: str, *needles: str) -> str:
    # "medrobust: data: ..." / "medrobust: note: ..." report what was read; the error is the one "medrobust train: error:" line
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("medrobust: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("medrobust train: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class _FullFile(io.RawIOBase):
    """A writable file on a disk with ``budget`` bytes left: writes what fits, then fails with ENOSPC."""

    def __init__(self, real, budget: list[int], path: str) -> None:
        self.real, self.budget, self.path = real, budget, path

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        room = self.budget[0]
        if len(b) > room:
            self.real.write(b[:room])
            self.real.flush()
            self.budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget[0] -= len(b)
        return self.real.write(b)

    def flush(self) -> None:
        if not self.real.closed:
            self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def readable(self) -> bool:
        return self.real.readable()

    def seekable(self) -> bool:
        return True

    def seek(self, *a) -> int:
        return self.real.seek(*a)

    def tell(self) -> int:
        return self.real.tell()

    def read(self, *a) -> bytes:
        return self.real.read(*a)

    def close(self) -> None:
        self.real.close()
        super().close()


@contextmanager
def faulty_disk(under: Path, *, code: int, budget: int = 0, only: str | None = None):
    """Writes under ``under`` (whose name contains ``only``, if given) fail: EROFS at once, or ENOSPC once
    ``budget`` bytes are written. Renames and new folders there fail alike."""
    under = Path(under).resolve()
    left = [budget]
    real_open = builtins.open

    def hit(path) -> bool:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return (p == under or under in p.parents) and (only is None or only in p.name)

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and hit(file):
            if code == errno.EROFS:
                raise OSError(code, os.strerror(code), os.fsdecode(file))
            if "b" in mode:
                return _FullFile(real_open(file, mode, *a, **k), left, os.fsdecode(file))
            raw = _FullFile(real_open(file, mode.replace("t", "") + "b"), left, os.fsdecode(file))
            return io.TextIOWrapper(io.BufferedWriter(raw), encoding=k.get("encoding") or "utf-8")
        return real_open(file, mode, *a, **k)

    def guard(real):
        def wrapper(src, *a, **k):
            if hit(src) or (a and hit(a[0])):
                raise OSError(code, os.strerror(code), os.fsdecode(src))
            return real(src, *a, **k)
        return wrapper

    mp = pytest.MonkeyPatch()
    mp.setattr(builtins, "open", fake_open)
    mp.setattr(io, "open", fake_open)
    if code == errno.EROFS or only is None:
        for name in ("replace", "rename", "mkdir"):
            mp.setattr(os, name, guard(getattr(os, name)))
    try:
        yield left
    finally:
        mp.undo()


def test_disk_full_while_writing_the_state_keeps_the_last_epoch(run_copy, monkeypatch, capsys):
    roots, run = run_copy
    before = _digests(run)
    with faulty_disk(run, code=errno.ENOSPC, budget=5_000_000, only=".state.safetensors.tmp"):
        rc = main(_argv(roots, run, 2))
    assert rc == 1
    _one_clear_line(capsys.readouterr().err, "state.safetensors", "No space left on device", "disk is full",
                    "resumes from its last complete epoch")
    _assert_intact(run, epoch=1)
    after = _digests(run)
    for name in ("state.safetensors", "model.safetensors", "model.json", "split.json"):
        assert after[name] == before[name], name  # the epoch-1 files are untouched
    # Space again: the same command resumes and finishes.
    assert main(_argv(roots, run, 2)) == 0
    _assert_intact(run, epoch=2)
    assert json.loads((run / "model.json").read_text())["epochs_done"] == 2


def test_disk_full_from_the_start_leaves_no_partial_file(base_run, tmp_path, monkeypatch, capsys):
    roots, _ = base_run
    run = tmp_path / "fresh"
    run.mkdir()
    with faulty_disk(run, code=errno.ENOSPC, budget=100):
        assert main(_argv(roots, run, 1)) == 1
    _one_clear_line(capsys.readouterr().err, "No space left on device")
    assert [p.name for p in run.iterdir()] == [], "a failed write leaves nothing behind"


def test_disk_full_while_writing_the_final_checkpoint(run_copy, monkeypatch, capsys):
    roots, run = run_copy
    (run / "model.safetensors").unlink()
    (run / "model.json").unlink()
    with faulty_disk(run, code=errno.ENOSPC, budget=1_000_000, only=".model."):
        assert main(_argv(roots, run, 1)) == 1
    _one_clear_line(capsys.readouterr().err, "model.", "No space left on device")
    _assert_intact(run, epoch=1)
    assert not (run / "model.safetensors").exists()
    assert main(_argv(roots, run, 1)) == 0
    _assert_intact(run, epoch=1)


def test_read_only_run_folder(run_copy, tmp_path, monkeypatch, capsys):
    roots, run = run_copy
    before = _digests(run)
    with faulty_disk(run, code=errno.EROFS):
        assert main(_argv(roots, run, 2)) == 1
    _one_clear_line(capsys.readouterr().err, "Read-only file system")
    assert _digests(run) == before
    _assert_intact(run, epoch=1)
    # A new run under a read-only parent: refused before anything exists.
    parent = tmp_path / "ro-parent"
    parent.mkdir()
    with faulty_disk(parent, code=errno.EROFS):
        assert main(_argv(roots, parent / "new-run", 1)) == 1
    _one_clear_line(capsys.readouterr().err, "Read-only file system", "new-run")
    assert list(parent.iterdir()) == []


def test_an_unwritable_data_cache_only_costs_speed(base_run, tmp_path, monkeypatch, capsys):
    roots, _ = base_run
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDROBUST_CACHE", str(cache))
    with faulty_disk(cache, code=errno.EROFS):
        assert main(_argv(roots, tmp_path / "run", 1)) == 0
    assert "could not write the data cache" in capsys.readouterr().err


def test_real_chmod_read_only_folder_as_a_normal_user(run_copy, capsys):
    roots, run = run_copy
    run.chmod(0o555)
    try:
        probe = run / ".probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("running as root: chmod 0555 does not stop writes (covered by the injected faults above)")
        except PermissionError:
            pass
        before = _digests(run)
        assert main(_argv(roots, run, 2)) == 1
        _one_clear_line(capsys.readouterr().err, "Permission denied")
        assert _digests(run) == before
    finally:
        run.chmod(0o755)


# ----------------------------------------------------------------------------- the real thing, when allowed

def _can_mount() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs \"$d\" && umount \"$d\" && rmdir \"$d\""],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


REAL_SCRIPT = r'''
set -u
mount -t tmpfs -o size=130m tmpfs "$MNT" || exit 90
run() { "$PY" -m medrobust train --method standard --preset smoke --image-size 32 --seed 0 --no-progress \
        --data "$D1" --data "$D2" --out "$MNT/run" --epochs "$1" > "$OUT/$2.log" 2>&1; echo $? > "$OUT/$2.rc"; }
snap() { mkdir -p "$OUT/$1"; for f in "$MNT"/run/* "$MNT"/run/.[!.]*; do [ -e "$f" ] && cp -a "$f" "$OUT/$1/"; done; ls -la "$MNT/run" > "$OUT/$1.ls"; }
run 2 full; snap full
mount -o remount,size=400m "$MNT"; run 2 resume; snap resume
mount -o remount,ro "$MNT"; run 3 readonly; snap readonly
'''


@pytest.mark.skipif(not _can_mount(), reason="needs unshare and mount (a private mount namespace)")
def test_a_real_full_disk_and_a_real_read_only_mount(base_run, tmp_path):
    roots, _ = base_run
    out, mnt = tmp_path / "out", tmp_path / "mnt"
    out.mkdir()
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDROBUST_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MEDROBUST_CACHE": str(tmp_path / "cache"),
                "MEDROBUST_CPU_BF16": "0", "PY": sys.executable, "D1": str(roots[0]), "D2": str(roots[1]),
                "MNT": str(mnt), "OUT": str(out)})
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", REAL_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    rc = {k: int((out / f"{k}.rc").read_text()) for k in ("full", "resume", "readonly")}
    # 130 MB holds one epoch's state (~90 MB) but not a second copy beside it: ENOSPC mid-write of epoch 2.
    assert rc["full"] == 1, (out / "full.log").read_text()[-2000:]
    _one_clear_line((out / "full.log").read_text(), "state.safetensors", "No space left on device")
    _assert_intact(out / "full", epoch=1)
    assert rc["resume"] == 0, (out / "resume.log").read_text()[-2000:]
    _assert_intact(out / "resume", epoch=2)
    assert json.loads((out / "resume" / "model.json").read_text())["epochs_done"] == 2
    assert rc["readonly"] == 1
    _one_clear_line((out / "readonly.log").read_text(), "Read-only file system")
    _assert_intact(out / "readonly", epoch=2)
    assert _digests(out / "readonly") == _digests(out / "resume")
