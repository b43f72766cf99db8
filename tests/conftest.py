"""Shared test setup: an isolated cache dir, offline by default, quiet plugins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

os.environ.setdefault("DLBENCH_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Each test gets plugin env vars cleared; a session-wide cache dir unless a test overrides it."""
    for var in ("DLBENCH_LOAD_PLUGINS", "DLBENCH_DISABLE_PLUGINS", "DLBENCH_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    if "DLBENCH_CACHE" not in os.environ or os.environ.get("DLBENCH_TEST_SHARED_CACHE") != "1":
        cache = tmp_path_factory.getbasetemp() / "dlbench-cache"
        monkeypatch.setenv("DLBENCH_CACHE", str(cache))
    yield
    from dlbench import plugins

    plugins.reset_manager()
