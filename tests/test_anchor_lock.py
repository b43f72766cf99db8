"""Anchor records are computed once per cache, also by processes that reach them together."""

from pathlib import Path


def test_exclusive_serialises_a_once_per_cache_computation(tmp_path):
    """A second process waits for the lock holder and then sees its result (anchors are computed once per
    cache even when two runs reach them together)."""
    import subprocess
    import sys
    import time

    from dlbench.fsutil import exclusive

    lock, log, ready = tmp_path / ".k.lock", tmp_path / "log", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; sys.path.insert(0, sys.argv[1]); from dlbench.fsutil import exclusive\n"
        "with exclusive(sys.argv[2]):\n"
        "    pathlib.Path(sys.argv[4]).write_text('x')\n"
        "    time.sleep(1.0)\n"
        "    open(sys.argv[3], 'a').write('holder-done\\n')\n"
    ), str(Path(__file__).resolve().parents[1]), str(lock), str(log), str(ready)])
    while not ready.exists():
        assert holder.poll() is None, "lock holder exited early"
        time.sleep(0.02)
    with exclusive(lock):
        with open(log, "a") as fh:
            fh.write("waiter\n")
    assert holder.wait(timeout=60) == 0
    assert log.read_text().splitlines() == ["holder-done", "waiter"]


def test_compute_anchor_record_returns_a_record_another_process_wrote(tmp_path, monkeypatch):
    from dlbench.eval.anchors import save_anchors
    from dlbench.runner.calibration import compute_anchor_record

    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path))
    record = {"version": "anchors-v1", "key": "k" * 24, "rows": {}}
    save_anchors(tmp_path / "anchors" / f"{'k' * 24}.json", record)
    got = compute_anchor_record(None, None, None, "tok", None, akey="k" * 24, fingerprints={})  # nothing to compute with
    assert got["key"] == "k" * 24
