"""dlbench: train, evaluate and compare discrete latent diffusion image generators."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: decorator for plugin hook implementations (see :mod:`dlbench.hookspecs`)
hookimpl = pluggy.HookimplMarker("dlbench")

__all__ = ["__version__", "hookimpl", "run", "compare", "evaluate", "sample"]


def __getattr__(name: str):
    # lazy: importing dlbench must stay cheap for plugins that only need ``hookimpl``
    if name in {"run", "compare", "evaluate", "sample"}:
        from dlbench import api

        return getattr(api, name)
    raise AttributeError(name)
