"""Shared test setup: an isolated cache dir, offline by default, quiet plugins."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

os.environ.setdefault("DLBENCH_OFFLINE", "1")
# One cache for the whole session (trained tokenizers, domain classifiers, reference statistics), set
# before any fixture runs so module-scoped fixtures and tests see the same one. DLBENCH_TEST_CACHE
# keeps it across sessions (e.g. to reuse the converted Inception weights locally).
_OWN_CACHE = None if os.environ.get("DLBENCH_TEST_CACHE") else tempfile.mkdtemp(prefix="dlbench-test-cache-")
os.environ["DLBENCH_CACHE"] = os.environ.get("DLBENCH_TEST_CACHE") or _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's own cache (~200 MB after a full run); a DLBENCH_TEST_CACHE is kept."""
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """Each test starts with the plugin environment variables cleared and a fresh plugin manager."""
    for var in ("DLBENCH_LOAD_PLUGINS", "DLBENCH_DISABLE_PLUGINS", "DLBENCH_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield
    from dlbench import plugins

    plugins.reset_manager()
