"""Make throwaway plugin distributions that importlib.metadata discovers through sys.path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None,
                      version: str = "0.0.1") -> Path:
    """Write ``<dist>-<version>.dist-info`` with an entry_points.txt (+ modules) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[dlbench]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, src in (modules or {}).items():
        path = root / (mod.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    return root


def add_to_path(monkeypatch, root: Path) -> None:
    monkeypatch.syspath_prepend(str(root))
    for name in list(sys.modules):
        if name.startswith("tp_"):
            del sys.modules[name]
