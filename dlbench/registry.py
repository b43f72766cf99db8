"""Typed registries of components, one per kind, with did-you-mean errors.

Canonical names are ``kind/name`` (``schedule/shifted-cosine``). Plugins fill the registries through
the ``register_*`` hooks (see :mod:`dlbench.hookspecs`); nobody writes to them directly.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from dlbench.interfaces import KINDS, ComponentConfig, ComponentRef, EmptyConfig, Slot, config_slots


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class DlbenchError(Exception):
    """Base of errors that the CLI prints as one line (exit code 2) instead of a traceback."""


class UnknownComponentError(DlbenchError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listing}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DuplicateComponentError(DlbenchError):
    pass


class InterfaceError(DlbenchError, TypeError):
    pass


class SlotError(DlbenchError, ValueError):
    """A component that does not exist, does not fit its slot, or has bad params (one line)."""


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[BaseModel]
    description: str = ""
    plugin: str = "?"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def canonical(self) -> str:
        return f"{self.kind}/{self.name}"

    def make_config(self, params: dict[str, Any] | BaseModel | None = None) -> BaseModel:
        if isinstance(params, self.config):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.config.model_validate(params or {})

    def build(self, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> Any:
        return self.factory(self.make_config(params), **context)


def check_interface(kind: str, factory: Any) -> None:
    """Structural check: the methods the kind requires exist on the factory (a class)."""
    base = KINDS[kind]
    if not isinstance(factory, type):
        return  # plain factory functions are checked when built (see dlbench.testing)
    required = getattr(base, "REQUIRED", ())
    missing = [m for m in required if not callable(getattr(factory, m, None))]
    alternatives = getattr(base, "REQUIRED_ANY", ())
    if alternatives and not missing:
        gaps = [[m for m in alt if not callable(getattr(factory, m, None))] for alt in alternatives]
        if all(gaps):
            missing = [" or ".join(", ".join(g) for g in gaps)]
    if missing:
        raise InterfaceError(
            f"{kind} {factory.__module__}.{factory.__qualname__} does not implement the {kind} interface: "
            f"missing {', '.join(missing)}"
        )
    abstract = sorted(getattr(factory, "__abstractmethods__", ()) or ())
    if abstract:
        raise InterfaceError(
            f"{kind} {factory.__module__}.{factory.__qualname__} is abstract: implement {', '.join(abstract)}"
        )


class Registry:
    """A mapping ``kind -> name -> ComponentSpec``."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
        #: every component looked up since the last clear (a run's provenance lists them)
        self.used: dict[str, ComponentSpec] = {}

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        config: type[BaseModel] | None = None,
        description: str = "",
        plugin: str = "?",
        **extras: Any,
    ) -> ComponentSpec:
        if kind not in self._specs:
            raise UnknownComponentError("kind", kind, list(self._specs))
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in {".", ".."}:
            # names become directory names (runs/<method>/<dataset>/...): one safe path segment each
            raise InterfaceError(
                f"bad {kind} name {name!r}: use letters, digits, '.', '_', '+' and '-', starting with a letter or "
                "digit (it is used as a directory name)"
            )
        check_interface(kind, factory)
        if config is None:
            config = getattr(factory, "Config", None) or EmptyConfig
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise InterfaceError(f"{kind}/{name}: config must be a pydantic model class, got {config!r}")
        if config.model_config.get("extra") != "forbid" and not issubclass(config, ComponentConfig):
            raise InterfaceError(f"{kind}/{name}: config {config.__name__} must set extra='forbid'")
        if not description:
            doc = (getattr(factory, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        existing = self._specs[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind}/{name} registered twice: by plugin {existing.plugin!r} "
                f"({_origin(existing.factory)}) and by plugin {plugin!r} ({_origin(factory)})"
            )
        spec = ComponentSpec(kind, name, factory, config, description, plugin, dict(extras))
        self._specs[kind][name] = spec
        return spec

    def check_kind(self, kind: str) -> str:
        if kind not in self._specs:
            raise UnknownComponentError("kind", kind, list(self._specs))
        return kind

    def get(self, kind: str, name: str) -> ComponentSpec:
        self.check_kind(kind)
        if "/" in name:
            prefix, _, rest = name.partition("/")
            if prefix == kind:
                name = rest
        try:
            spec = self._specs[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, list(self._specs[kind])) from None
        self.used[spec.canonical] = spec
        return spec

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs[kind])

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        kinds = [kind] if kind else list(self._specs)
        return [self._specs[k][n] for k in kinds for n in sorted(self._specs[k])]

    def remove_plugin(self, plugin: str) -> None:
        for table in self._specs.values():
            for name in [n for n, s in table.items() if s.plugin == plugin]:
                del table[name]


def _origin(factory: Any) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


# ---------------------------------------------------------------------------------------------
# Slots: {name, params} references checked against the registry
# ---------------------------------------------------------------------------------------------


def schedule_family(factory: Any) -> str | None:
    """``continuous`` / ``discrete`` of a schedule class: its ``family``, else what it implements."""
    family = getattr(factory, "family", None)
    if family in ("continuous", "discrete"):
        return family
    if callable(getattr(factory, "coefficients", None)):
        return "discrete"
    if callable(getattr(factory, "logsnr", None)):
        return "continuous"
    return None


def _fits(spec: ComponentSpec, slot: Slot) -> str | None:
    """Why ``spec`` does not fit ``slot`` (None when it fits)."""
    if slot.family is not None:
        family = schedule_family(spec.factory)
        if family != slot.family:
            return f"it is a {family or 'unknown-family'} {spec.kind}; this slot takes a {slot.family} {spec.kind}"
    if slot.stage is not None:
        stage = getattr(spec.factory, "stage", None)
        if stage != slot.stage:
            return f"it is a {stage or 'stage-less'} {spec.kind}; this slot takes a {slot.stage}-stage {spec.kind}"
    return None


def resolve_ref(registry: Registry, ref: ComponentRef | str | dict, slot: Slot, *, where: str
                ) -> tuple[ComponentSpec, BaseModel]:
    """The spec and validated config of the component ``ref`` names, refused with a one-line
    :class:`SlotError` when it is unknown (did-you-mean), does not fit ``slot`` or has bad params."""
    ref = ref if isinstance(ref, ComponentRef) else ComponentRef.model_validate(ref)
    try:
        spec = registry.get(slot.kind, ref.name)
    except UnknownComponentError as exc:
        fitting = [s.name for s in registry.specs(slot.kind) if _fits(s, slot) is None]
        close = difflib.get_close_matches(ref.name, fitting, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SlotError(f"{where}: unknown {exc.kind} {ref.name!r}.{hint} Fitting: {', '.join(fitting) or '(none)'}") \
            from None
    why = _fits(spec, slot)
    if why is not None:
        fitting = [s.name for s in registry.specs(slot.kind) if _fits(s, slot) is None]
        raise SlotError(f"{where}: {spec.canonical} does not fit here: {why} (one of: {', '.join(fitting) or '(none)'})")
    try:
        config = spec.make_config(ref.params)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise SlotError(f"{where}.params for {spec.canonical}: {msgs}") from None
    resolve_slots(registry, config, where=f"{where}.params")
    return spec, config


def resolve_slots(registry: Registry, config: BaseModel, *, where: str) -> None:
    """Check every slot of ``config`` (a component config) and write each ref back complete:
    canonical name and the component's params with defaults filled in (round-trippable)."""
    for name, (slot, many) in config_slots(type(config)).items():
        value = getattr(config, name)
        refs = list(value) if many else [value]
        for i, r in enumerate(refs):
            spec, cfg = resolve_ref(registry, r, slot, where=f"{where}.{name}" + (f".{i}" if many else ""))
            r.name, r.params = spec.name, cfg.model_dump(mode="json")


def build_ref(registry: Registry, ref: ComponentRef | str | dict, slot: Slot, *, where: str = "slot",
              **context: Any) -> Any:
    """Build the component ``ref`` names for ``slot`` as ``factory(config, **context)``."""
    spec, config = resolve_ref(registry, ref, slot, where=where)
    return spec.factory(config, **context)


#: the slot of a run config's ``tokenizer.regularizers``
TOKENIZER_REGULARIZERS = Slot("regularizer", stage="tokenizer")


def attach_regularizers(registry: Registry, tokenizer: Any, refs: list[ComponentRef | str | dict], *,
                        where: str = "tokenizer.regularizers") -> None:
    """Build each tokenizer-stage regularizer of ``refs`` and attach it with
    ``tokenizer.add_regularizer(name, weight, module)`` (weight: the component config's ``weight``, else 1)."""
    from dlbench.interfaces import Regularizer

    for i, r in enumerate(refs):
        spec, config = resolve_ref(registry, r, TOKENIZER_REGULARIZERS, where=f"{where}.{i}")
        module = spec.factory(config)
        if isinstance(module, Regularizer):  # size its own parameters by the tokenizer's latent
            module.bind(tokenizer, int(tokenizer.latent_channels))
        tokenizer.add_regularizer(spec.name, float(getattr(config, "weight", 1.0)), module)
