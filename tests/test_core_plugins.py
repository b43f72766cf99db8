"""Plugin discovery through real entry points, isolation of broken plugins, allow/block lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlbench import plugins
from dlbench.plugins import PluginLoadError, PluginManager
from dlbench.registry import DuplicateComponentError, UnknownComponentError

from plugin_helpers import add_to_path, make_distribution

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dlbench-example"

GOOD = """
from dlbench import hookimpl
from dlbench.interfaces import ContinuousSchedule
import torch

class Flat(ContinuousSchedule):
    '''A test schedule.'''
    def __init__(self, config):
        self.config = config
    def logsnr(self, t):
        return torch.zeros_like(t)

@hookimpl
def register_schedules(register):
    register("tp-flat", Flat)
"""

BROKEN_IMPORT = "import this_module_does_not_exist\n"

BROKEN_REGISTER = """
from dlbench import hookimpl
from dlbench.interfaces import ContinuousSchedule
import torch

class Ok(ContinuousSchedule):
    def __init__(self, config): pass
    def logsnr(self, t): return t

class NotASchedule:
    pass

@hookimpl
def register_schedules(register):
    register("tp-half-registered", Ok)   # rolled back when the next line fails
    register("tp-bad", NotASchedule)
"""


@pytest.fixture
def example_dist(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "dlbench-example", {"example": "dlbench_example.plugin"})
    add_to_path(monkeypatch, root)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins.reset_manager()
    return root


def test_example_plugin_discovered_through_entry_point(example_dist):
    manager = plugins.get_manager()
    info = manager.plugins["example"]
    assert info.ok, info.error
    assert info.distribution == "dlbench-example" and info.version == "0.0.1"
    assert "register_methods" in info.hooks and "register_schedules" in info.hooks
    reg = manager.registry
    assert reg.get("method", "unigram").plugin == "example"
    assert reg.get("schedule", "schedule/power-logsnr").name == "power-logsnr"


def test_broken_plugins_are_skipped_and_reported(tmp_path, monkeypatch):
    root = make_distribution(
        tmp_path / "site", "tp-plugins",
        {"tp_good": "tp_good", "tp_broken_import": "tp_broken_import", "tp_broken_reg": "tp_broken_reg"},
        {"tp_good": GOOD, "tp_broken_import": BROKEN_IMPORT, "tp_broken_reg": BROKEN_REGISTER},
    )
    add_to_path(monkeypatch, root)
    manager = PluginManager()
    manager.load_entrypoints()
    assert manager.plugins["tp_good"].ok
    assert "ModuleNotFoundError" in manager.plugins["tp_broken_import"].error
    err = manager.plugins["tp_broken_reg"].error
    assert "does not implement the schedule interface" in err and "logsnr" in err
    assert manager.plugins["tp_broken_reg"].distribution == "tp-plugins"
    names = manager.registry.names("schedule")
    assert "tp-flat" in names
    assert "tp-half-registered" not in names  # the failing plugin's partial registration was rolled back


def test_strict_mode_makes_broken_plugin_fatal(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "tp-broken", {"tp_broken_import": "tp_broken_import"},
                             {"tp_broken_import": BROKEN_IMPORT})
    add_to_path(monkeypatch, root)
    monkeypatch.setenv("DLBENCH_STRICT_PLUGINS", "1")
    monkeypatch.setenv("DLBENCH_LOAD_PLUGINS", "tp_broken_import")
    with pytest.raises(PluginLoadError, match="tp_broken_import.*tp-broken.*ModuleNotFoundError"):
        PluginManager().load_entrypoints()


def test_allow_and_block_lists(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "tp-plugins", {"tp_good": "tp_good", "tp_broken_import": "tp_broken_import"},
                             {"tp_good": GOOD, "tp_broken_import": BROKEN_IMPORT})
    add_to_path(monkeypatch, root)
    monkeypatch.setenv("DLBENCH_LOAD_PLUGINS", "tp_good")
    m = PluginManager()
    m.load_entrypoints()
    assert set(m.plugins) == {"tp_good"}

    monkeypatch.delenv("DLBENCH_LOAD_PLUGINS")
    monkeypatch.setenv("DLBENCH_DISABLE_PLUGINS", "tp_broken_import, core")
    m = PluginManager()
    m.load_entrypoints()
    assert "tp_good" in m.plugins and "tp_broken_import" not in m.plugins and "core" not in m.plugins


def test_duplicate_name_names_both_origins(tmp_path, monkeypatch):
    dup = GOOD.replace("class Flat", "class Flat2").replace("register(\"tp-flat\", Flat)", "register(\"tp-flat\", Flat2)")
    root = make_distribution(tmp_path / "site", "tp-dup", {"tp_good": "tp_good", "tp_dup": "tp_dup"},
                             {"tp_good": GOOD, "tp_dup": dup})
    add_to_path(monkeypatch, root)
    monkeypatch.setenv("DLBENCH_LOAD_PLUGINS", "tp_good,tp_dup")
    m = PluginManager()
    m.load_entrypoints()
    err = m.plugins["tp_good"].error or m.plugins["tp_dup"].error
    assert "registered twice" in err and "tp_dup.Flat2" in err and "tp_good.Flat" in err
    monkeypatch.setenv("DLBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="registered twice"):
        PluginManager().load_entrypoints()


def test_register_plugin_object_directly():
    import types

    from dlbench import hookimpl
    from dlbench.interfaces import ContinuousSchedule

    class S(ContinuousSchedule):
        def __init__(self, config):
            pass

        def logsnr(self, t):
            return t

    mod = types.SimpleNamespace()

    @hookimpl
    def register_schedules(register):
        register("direct", S, description="registered without an entry point")

    mod.register_schedules = register_schedules
    m = PluginManager()
    info = m.register_plugin(mod, "direct-plugin")
    assert info.ok and m.registry.get("schedule", "direct").description.startswith("registered without")
    with pytest.raises(UnknownComponentError, match="Did you mean 'direct'"):
        m.registry.get("schedule", "dirct")
    with pytest.raises(DuplicateComponentError):
        m.registry.add("schedule", "direct", S, plugin="again")
