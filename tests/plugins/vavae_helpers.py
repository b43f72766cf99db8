"""Shared test helpers of the VA-VAE plugin tests: a stand-in foundation extractor and the registry fixture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlbench import hookimpl
from dlbench.interfaces import ComponentConfig, FeatureExtractor


class GridConfig(ComponentConfig):
    dim: int = 6


class StandInGrid(FeatureExtractor):
    """A frozen random conv as foundation model: feature maps at half the image resolution."""

    Config = GridConfig
    calls = 0

    def __init__(self, config: GridConfig | None = None):
        super().__init__()
        self.config = config or GridConfig()
        self.dim = self.config.dim
        g = torch.Generator().manual_seed(0)
        self.__dict__["conv"] = nn.Conv2d(1, self.dim, 2, stride=2).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        type(self).calls += 1
        return [self.conv(images.float().mean(1, keepdim=True))]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(images.float() / 127.5 - 1)[0].mean((2, 3))


class _TestPlugin:
    @hookimpl
    def register_feature_extractors(self, register):
        register("standin-grid", StandInGrid)


@pytest.fixture
def registry():
    import dlbench_vavae.plugin as vavae
    from dlbench.plugins import get_manager

    manager = get_manager()
    if "vavae" not in manager.plugins:  # until the entry point is installed
        assert manager.register_plugin(vavae, "vavae").ok
    assert manager.register_plugin(_TestPlugin(), "vavae-test").ok
    return manager.registry


VF = {"foundation": "standin-grid", "foundation_params": {}}
