"""Shared test helpers of the LightningDiT plugin tests: the registry fixture (registers the VA-VAE plugin, whose
kl-vae tokenizer LightningDiT trains on, and the LightningDiT plugin until their entry points are installed)."""

from __future__ import annotations

import pytest


@pytest.fixture
def registry():
    import dlbench_lightningdit.plugin as lightningdit
    import dlbench_vavae.plugin as vavae
    from dlbench.plugins import get_manager

    manager = get_manager()
    for name, module in (("vavae", vavae), ("lightningdit", lightningdit)):
        if name not in manager.plugins:
            assert manager.register_plugin(module, name).ok
    return manager.registry
