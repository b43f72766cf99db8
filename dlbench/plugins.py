"""Plugin discovery and loading: entry points -> pluggy -> registry, one plugin at a time.

Every plugin, built-in or third-party, comes from the ``dlbench`` entry-point group. Each is loaded
and registered in isolation: a plugin that fails to import or register is recorded (name,
distribution, error) and skipped, and whatever it had registered is rolled back, so the rest keeps
working. ``DLBENCH_STRICT_PLUGINS=1`` turns such failures into errors.

Environment:
  ``DLBENCH_LOAD_PLUGINS=a,b``     load only these entry-point names (allow-list)
  ``DLBENCH_DISABLE_PLUGINS=x,y``  never load these (block-list)
  ``DLBENCH_STRICT_PLUGINS=1``     a broken plugin is fatal
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from dlbench import hookspecs
from dlbench.registry import DlbenchError, DuplicateComponentError, Registry

ENTRY_POINT_GROUP = "dlbench"
#: the distribution whose entry points are the built-ins: they load first and keep their names
BUILTIN_DISTRIBUTION = "dlbench"

#: hook name -> registry kind
REGISTER_HOOKS: dict[str, str] = {
    "register_tokenizers": "tokenizer",
    "register_embeddings": "embedding",
    "register_schedules": "schedule",
    "register_regularizers": "regularizer",
    "register_methods": "method",
    "register_datasets": "dataset",
    "register_feature_extractors": "feature_extractor",
    "register_loggers": "logger",
}


class PluginLoadError(DlbenchError):
    pass


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    components: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _strict() -> bool:
    return os.environ.get("DLBENCH_STRICT_PLUGINS", "").lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """Loads plugins into a :class:`~dlbench.registry.Registry`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}
        self.strict = _strict()

    # -- loading ---------------------------------------------------------------------------
    def load_entrypoints(self) -> None:
        """Load every entry point of the group: the built-in distribution's first (so a third-party
        plugin can never take a built-in's plugin or component name), then the others by name."""
        allow, block = _env_list("DLBENCH_LOAD_PLUGINS"), _env_list("DLBENCH_DISABLE_PLUGINS") or set()
        seen: dict[str, str | None] = {}

        def dist_name(ep: Any) -> str | None:
            dist = getattr(ep, "dist", None)
            return dist.metadata["Name"] if dist is not None else None

        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: (dist_name(e) != BUILTIN_DISTRIBUTION, e.name))
        for ep in eps:
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name,
                distribution=dist_name(ep),
                version=dist.version if dist is not None else None,
                module=ep.value,
            )
            if ep.name in seen:
                if seen[ep.name] == info.distribution:  # the same distribution visible twice on sys.path
                    continue
                first = self.plugins.get(ep.name)
                clash = PluginInfo(f"{ep.name}@{info.distribution}", info.distribution, info.version, ep.value)
                self._fail(clash, PluginLoadError(
                    f"entry point {ep.name!r} of distribution {info.distribution or '?'} {info.version or ''} clashes "
                    f"with plugin {ep.name!r} of distribution {seen[ep.name] or '?'} "
                    f"{(first.version if first else '') or ''}; it was not loaded (rename the entry point)"
                ))
                continue
            seen[ep.name] = info.distribution
            if (allow is not None and ep.name not in allow) or ep.name in block:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                self._fail(info, exc)
                continue
            self.register_plugin(obj, ep.name, info=info)

    def register_plugin(self, obj: Any, name: str, *, info: PluginInfo | None = None) -> PluginInfo:
        """Register one plugin object and run its register hooks, transactionally."""
        info = info or PluginInfo(name, module=getattr(obj, "__name__", repr(obj)))
        if name in self.plugins and self.plugins[name].ok:
            return self._fail(info, PluginLoadError(f"a plugin named {name!r} is already loaded"))
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:  # noqa: BLE001
            return self._fail(info, exc)
        info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(obj) or [])
        try:
            for hook_name, kind in REGISTER_HOOKS.items():
                caller = getattr(self.pm.hook, hook_name)
                for impl in caller.get_hookimpls():
                    if impl.plugin is obj:
                        impl.function(register=self._register_callback(kind, name, info))
        except Exception as exc:  # noqa: BLE001
            self.registry.remove_plugin(name)
            self.pm.unregister(obj)
            return self._fail(info, exc)
        self.plugins[name] = info
        return info

    def add_commands(self, app: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:  # noqa: BLE001
                info = self.plugins.get(impl.plugin_name) or PluginInfo(impl.plugin_name)
                self._fail(info, exc)

    def _register_callback(self, kind: str, plugin: str, info: PluginInfo):
        def register(name: str, factory: Any, *, config: Any = None, description: str = "", **extras: Any):
            try:
                spec = self.registry.add(
                    kind, name, factory, config=config, description=description, plugin=plugin, **extras
                )
            except DuplicateComponentError as exc:
                owner = self.registry.get(kind, name)
                other = self.plugins.get(owner.plugin)
                raise PluginLoadError(
                    f"{exc}; distributions: {_dist_label(other)} (plugin {owner.plugin!r}, keeps the name) and "
                    f"{_dist_label(info)} (plugin {plugin!r}, not loaded)"
                ) from None
            info.components.append(spec.canonical)
            return spec

        return register

    def _fail(self, info: PluginInfo, exc: BaseException) -> PluginInfo:
        info.error = f"{type(exc).__name__}: {exc}"
        self.plugins[info.name] = info
        if self.strict:
            raise PluginLoadError(
                f"plugin {info.name!r} (distribution {info.distribution or '?'}) failed to load: {info.error}"
            ) from exc
        if os.environ.get("DLBENCH_DEBUG_PLUGINS"):
            traceback.print_exception(exc)
        return info

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if not p.ok]


def _dist_label(info: PluginInfo | None) -> str:
    if info is None or not info.distribution:
        return "?"
    return f"{info.distribution} {info.version}" if info.version else info.distribution


def component_provenance(specs: Any) -> dict[str, dict[str, Any]]:
    """``{"kind/name": {"plugin", "distribution", "version"}}`` of registered components (the run's
    provenance in meta.json and the compare table)."""
    manager = get_manager()
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        info = manager.plugins.get(spec.plugin)
        out[spec.canonical] = {"plugin": spec.plugin, "distribution": info.distribution if info else None,
                               "version": info.version if info else None}
    return dict(sorted(out.items()))


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _MANAGER
    if _MANAGER is None:
        manager = PluginManager()
        manager.load_entrypoints()
        _MANAGER = manager
    return _MANAGER


def get_registry() -> Registry:
    return get_manager().registry


def reset_manager() -> None:
    """Forget the loaded plugins (tests; after changing the DLBENCH_* plugin variables)."""
    global _MANAGER
    _MANAGER = None
