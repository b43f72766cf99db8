"""The module layering of the orchestration: ``api -> runner -> report``, never back.

``dlbench.report`` only reads run directories and renders them, so nothing in it may import the
runner or the API (that was the old ``api -> report.compare -> api`` circle); the runner takes the
registry as an argument and never imports the API or looks up the global registry itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dlbench

PACKAGE = Path(dlbench.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # ``from dlbench import api``
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in sorted((PACKAGE / package).glob("*.py")):
        bad = sorted(m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if bad:
            out[path.name] = bad
    return out


def test_report_imports_neither_runner_nor_api_nor_training():
    assert _offending("report", ("dlbench.api", "dlbench.runner", "dlbench.train", "dlbench.cli")) == {}


def test_runner_never_imports_the_api_or_the_cli():
    assert _offending("runner", ("dlbench.api", "dlbench.cli")) == {}


def test_runner_takes_the_registry_instead_of_looking_it_up():
    uses = {p.name for p in (PACKAGE / "runner").glob("*.py") if "get_registry" in p.read_text(encoding="utf-8")}
    assert uses == set()


def test_the_detector_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from dlbench import api\n    import dlbench.runner.stages\n")
    assert {"dlbench.api", "dlbench.runner.stages"} <= _imports(probe)


def test_report_modules_import_and_render_with_api_and_runner_blocked(tmp_path):
    """Import every report module, then summarise and render a comparison, in a process where importing
    ``dlbench.api`` or ``dlbench.runner`` raises."""
    run = tmp_path / "runs" / "m" / "d" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"method": {"name": "m"}, "seed": 0}')
    (run / "metrics.json").write_text('{"status": "ok", "protocol_hash": "h", "metrics": {"fid": 1.5}}')
    code = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in ("dlbench.api", "dlbench.runner") or name.startswith("dlbench.runner."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import dlbench.report
for m in pkgutil.iter_modules(dlbench.report.__path__):
    importlib.import_module("dlbench.report." + m.name)
from dlbench.report.compare import load_records, summarise
from dlbench.report.html import write_report
from dlbench.report.render import render
cmp = summarise(load_records([{str(run)!r}]))
for fmt in ("table", "md", "csv", "json", "latex"):
    assert "fid" in render(cmp, fmt), fmt
write_report(cmp, __import__("pathlib").Path({str(tmp_path / "html")!r}))
assert not any(k == "dlbench.api" or k.startswith("dlbench.runner") for k in sys.modules)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
