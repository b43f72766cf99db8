"""dlbench hooks of the VA-VAE plugin (entry point ``vavae = "dlbench_vavae.plugin"``).

Registers ``regularizer/vf-alignment``, ``feature_extractor/dinov2``, ``feature_extractor/mae``,
``tokenizer/vqvae-vf``, ``tokenizer/kl-vae`` and ``tokenizer/kl-vae-vf`` (continuous).
"""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_regularizers(register):
    from .regularizer import VFAlignment

    register("vf-alignment", VFAlignment,
             description="VA-VAE vision-foundation alignment: marginal cosine + distance-matrix loss (arXiv 2501.01423)")


@hookimpl
def register_feature_extractors(register):
    from .foundation import DINOv2, MAE

    register("dinov2", DINOv2, description="DINOv2 ViT patch tokens via timm (offline weights; VF foundation model)")
    register("mae", MAE, description="MAE ViT patch tokens via timm (offline weights; VF foundation model)")


@hookimpl
def register_tokenizers(register):
    from .klvae import KLVAE, KLVAEVFConfig
    from .tokenizers import VQVAEVF

    register("vqvae-vf", VQVAEVF, description="conv VQ-VAE + VA-VAE VF alignment on the pre-quantization latent")
    register("kl-vae", KLVAE, description="continuous LDM-style KL autoencoder, channel-wise latent normalisation")
    register("kl-vae-vf", KLVAE, config=KLVAEVFConfig, description="kl-vae + VA-VAE VF alignment (VA-VAE)")
