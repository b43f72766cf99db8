"""VA-VAE (Yao et al., "Reconstruction vs. Generation", CVPR 2025) for dlbench: the vision-foundation (VF)
alignment loss as a tokenizer regularizer, foundation feature extractors, and tokenizers that use them.

Modules: :mod:`.losses` (pure functions), :mod:`.foundation` (DINOv2 / MAE via timm, offline weights),
:mod:`.regularizer` (``regularizer/vf-alignment``), :mod:`.tokenizers` (``tokenizer/vqvae-vf``),
:mod:`.plugin` (registration). Documentation: docs/methods/vavae.md.
"""
