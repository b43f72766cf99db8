"""The FID Inception as a dlbench ``FeatureExtractor`` (``feature_extractor/inception-v3-fid``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from dlbench.eval.backends import to_uint8_rgb
from dlbench.eval.inception import build_inception, resolve_inception_weights
from dlbench.interfaces import ComponentConfig, FeatureExtractor

__all__ = ["InceptionFIDExtractor"]


class InceptionFIDExtractor(FeatureExtractor):
    """FID Inception-v3 pool3 features (2048-d) through torch-fidelity, weights resolved offline first."""

    class Config(ComponentConfig):
        weights_path: str | None = Field(default=None, description="explicit weights; else the resolution order")

    REQUIRED: ClassVar[tuple[str, ...]] = ("features",)
    dim = 2048

    def __init__(self, config: "InceptionFIDExtractor.Config | None" = None):
        super().__init__()
        self.config = config or self.Config()
        self.weights = resolve_inception_weights(self.config.weights_path)
        self.net = build_inception(self.weights, ("2048",))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [-1, 1] float) ``"b c H W"`` -> ``"b 2048"``; torch-fidelity resizes to 299."""
        x = to_uint8_rgb(images).to(next(self.net.parameters()).device)
        return self.net(x)[0]

    def weights_sha256(self) -> str | None:
        return self.weights.sha256
