"""Tokenizers with the VF alignment loss attached through the regularizer hook list.

``tokenizer/vqvae-vf``: ``tokenizer/vqvae`` (:class:`dlbench.nn.vqvae.VQVAE`) plus ``regularizer/vf-alignment``
on its pre-quantization latent ``z_e``, configured by the nested ``vf`` params (``vf.weight = 0`` leaves the
plain VQ-VAE objective and builds no foundation extractor). It is the config-level way to select the
regularizer until tokenizers take a list of regularizers; it uses only the public hook
(:meth:`VQVAE.add_regularizer`) so the same module attaches to any tokenizer that passes ``images``,
``z_e``, ``rec_loss`` and ``encoder_last_layer``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from dlbench.nn.vqvae import VQVAE, VQVAEConfig

from .regularizer import VFAlignment, VFAlignmentConfig

__all__ = ["VQVAEVFConfig", "VQVAEVF", "attach_vf_alignment"]

REG_NAME = "vf_alignment"


def attach_vf_alignment(tokenizer: Any, config: VFAlignmentConfig, latent_channels: int) -> VFAlignment | None:
    """Build ``regularizer/vf-alignment`` for a ``d = latent_channels`` latent and add it to ``tokenizer``'s hook
    list with weight ``config.weight`` (w_hyper); nothing when the weight is 0."""
    if config.weight <= 0:
        return None
    module = VFAlignment(config, latent_channels=latent_channels)
    tokenizer.add_regularizer(REG_NAME, config.weight, module)
    return module


class VQVAEVFConfig(VQVAEConfig):
    """``tokenizer/vqvae`` options plus ``vf``: the ``regularizer/vf-alignment`` config."""

    vf: VFAlignmentConfig = Field(default_factory=VFAlignmentConfig)


class VQVAEVF(VQVAE):
    """Conv VQ autoencoder with VA-VAE's VF alignment on the pre-quantization latent (METHODS D.1 on VQ)."""

    Config = VQVAEVFConfig

    def __init__(self, config: VQVAEVFConfig, *, channels: int = 3, resolution: int = 32):
        super().__init__(config, channels=channels, resolution=resolution)
        self.vf = attach_vf_alignment(self, config.vf, config.code_dim)

    def run_metadata(self) -> dict[str, Any]:
        return {"vf_alignment": None if self.vf is None else self.vf.run_metadata()}

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, terms = super().training_loss(images)
        if self.vf is not None:
            terms.update(self.vf.last_terms)  # L_mcos, L_mdms and w_adapt next to the weighted term
        return loss, terms
