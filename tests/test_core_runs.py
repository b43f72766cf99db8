"""Run directories: atomic JSON writes survive a crash mid-write; the lock refuses a second writer."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from dlbench import runs
from dlbench.runs import RunDir, RunLockedError, atomic_write_json


def test_atomic_write_keeps_previous_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"fid": 1.0})

    real_fdopen = os.fdopen

    class Exploding:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])  # half the bytes reach the disk...
            raise OSError("simulated crash mid-write")  # ...then the process "dies"

    monkeypatch.setattr(runs.os, "fdopen", lambda fd, mode: Exploding(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(path, {"fid": 2.0, "much": "x" * 10_000})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"fid": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp litter


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, [1])
    atomic_write_json(path, [2])
    assert json.loads(path.read_text()) == [2]


def _try_lock(path, q):
    try:
        RunDir(path).acquire()
        q.put("acquired")
    except RunLockedError as exc:
        q.put(str(exc))


def test_lock_refuses_second_writer(tmp_path):
    rd = RunDir.create(tmp_path, "m", "d", "abcdef0123")
    with rd.locked():
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_try_lock, args=(str(rd.path), q))
        p.start()
        p.join(60)
        msg = q.get(timeout=5)
        assert "is in use by pid" in msg and str(os.getpid()) in msg
        with pytest.raises(RunLockedError):
            RunDir(rd.path).acquire()
    RunDir(rd.path).acquire()  # released -> free again


def test_stale_lock_from_dead_process_is_taken_over(tmp_path):
    rd = RunDir.create(tmp_path, "m", "d", "abc")
    import socket

    (rd.path / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    rd.acquire()
    assert json.loads((rd.path / ".lock").read_text())["pid"] == os.getpid()


def test_events_survive_torn_last_line(tmp_path):
    rd = RunDir.create(tmp_path, "m", "d", "abc")
    rd.event("train", step=1, loss=0.5)
    with open(rd.path / "events.jsonl", "a") as fh:
        fh.write('{"event": "train", "st')  # crash mid-line
    assert [e["step"] for e in rd.events("train")] == [1]


def test_open_non_run_dir_is_clear(tmp_path):
    with pytest.raises(runs.RunDirError, match="not a dlbench run directory"):
        RunDir.open(tmp_path)


def test_atomic_write_handle_cleans_up_and_keeps_the_old_file(tmp_path):
    """The one atomic-write helper behind every cache writer (npy/npz/torch.save/JSON)."""
    import numpy as np

    from dlbench.data.token_cache import _atomic_save
    from dlbench.fsutil import atomic_write

    path = tmp_path / "labels.npy"
    _atomic_save(path, np.arange(3))
    with pytest.raises(ValueError):  # an object array is refused by np.save(allow_pickle=False) mid-write
        _atomic_save(path, np.array([{"a": 1}], dtype=object))
    assert np.load(path, allow_pickle=False).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.pt") as fh:
            fh.write(b"partial")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy"]  # no temp litter, no torn file
