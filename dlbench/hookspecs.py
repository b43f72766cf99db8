"""The dlbench plugin API (pluggy hook specifications).

A plugin is a module (or object) with functions decorated by :data:`dlbench.hookimpl`, exposed
through the ``dlbench`` entry-point group::

    [project.entry-points.dlbench]
    myplugin = "my_package.plugin"

Each ``register_*`` hook receives a ``register`` callback::

    register(name, factory, *, config=None, description="", **extras)

``factory`` is usually a class implementing the kind's interface (:mod:`dlbench.interfaces`);
``config`` defaults to ``factory.Config``; ``description`` defaults to the first docstring line.
Built-in components register through exactly these hooks.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("dlbench")

Register = Callable[..., Any]


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers (kind ``tokenizer``): images -> token grids -> images."""


@hookspec
def register_embeddings(register: Register) -> None:
    """Register embedding strategies (kind ``embedding``): token ids -> what a generator diffuses."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register noise schedules (kind ``schedule``): continuous log-SNR or discrete transition families."""


@hookspec
def register_regularizers(register: Register) -> None:
    """Register regularizers (kind ``regularizer``): named loss terms for a tokenizer or generator stage."""


@hookspec
def register_methods(register: Register) -> None:
    """Register methods (kind ``method``): generators over token grids with ``loss`` and ``sample``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register image datasets (kind ``dataset``)."""


@hookspec
def register_feature_extractors(register: Register) -> None:
    """Register feature extractors (kind ``feature_extractor``) for evaluation and losses."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register run loggers (kind ``logger``): receive every event of a run (experiment trackers)."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``dlbench`` Typer app (``app.command()(fn)`` or ``app.add_typer``)."""
