"""Shared networks: the DiT-style token denoiser, the conv VQ-VAE and VQGAN tokenizers, parameter EMA."""

from dlbench.nn.denoiser import (
    BACKBONE_PRESETS,
    DenoiserConfig,
    DenoiserConfigError,
    TokenDenoiser,
    build_denoiser,
    drop_labels,
    resolve_backbone,
)

__all__ = [
    "BACKBONE_PRESETS",
    "DenoiserConfig",
    "DenoiserConfigError",
    "TokenDenoiser",
    "build_denoiser",
    "drop_labels",
    "resolve_backbone",
]

from dlbench.nn.vqgan import VQGAN, VQGANConfig  # noqa: E402
from dlbench.nn.vqvae import VQVAE, VQVAEConfig  # noqa: E402

__all__ += ["VQGAN", "VQGANConfig", "VQVAE", "VQVAEConfig"]

from dlbench.nn.ema import EMA, ema_decay_at  # noqa: E402

__all__ += ["EMA", "ema_decay_at"]
