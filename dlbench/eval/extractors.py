"""The FID Inception as a dlbench ``FeatureExtractor`` (``feature_extractor/inception-v3-fid``)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from dlbench.eval.backends import to_uint8_rgb
from dlbench.eval.fid_inception import build_fid_inception
from dlbench.eval.inception import resolve_inception_weights
from dlbench.interfaces import ComponentConfig, FeatureExtractor

__all__ = ["InceptionFIDExtractor"]


class InceptionFIDExtractor(FeatureExtractor):
    """FID Inception-v3 pool3 features (2048-d): torch-fidelity's network as :class:`FidInception`
    (BN folded, ReLU fused, channels-last), weights resolved offline first. ``mode="exact"`` matches
    torch-fidelity's features within 1e-4; ``mode="bf16"`` is the fast mode."""

    class Config(ComponentConfig):
        weights_path: str | None = Field(default=None, description="explicit weights; else the resolution order")
        mode: Literal["exact", "bf16"] = Field(default="exact", description="exact (fp32) or fast (bf16) features")

    REQUIRED: ClassVar[tuple[str, ...]] = ("features",)
    dim = 2048

    def __init__(self, config: "InceptionFIDExtractor.Config | None" = None):
        super().__init__()
        self.config = config or self.Config()
        self.weights = resolve_inception_weights(self.config.weights_path)
        self.net = build_fid_inception(self.weights, self.config.mode)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [-1, 1] float) ``"b c H W"`` -> float32 ``"b 2048"``; resized to 299 as torch-fidelity does."""
        x = to_uint8_rgb(images).to(self.net.fc_weight.device)
        return self.net(x)[0]

    def weights_sha256(self) -> str | None:
        return self.weights.sha256
