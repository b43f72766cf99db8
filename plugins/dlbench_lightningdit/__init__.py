"""LightningDiT (Yao et al., "Reconstruction vs. Generation", CVPR 2025; hustvl/LightningDiT) for dlbench: the
continuous baseline generator over ``kl-vae`` latents.

Modules: :mod:`.flow` (rectified flow, losses, time sampling, shift, CFG interval, Euler; pure functions),
:mod:`.backbone` (AdaLN-Zero DiT with RMSNorm / SwiGLU / 2-D RoPE options), :mod:`.method`
(``method/lightningdit``), :mod:`.presets` (incl. the ablation ladder), :mod:`.anchors` (Gaussian marginal
anchors for float latents), :mod:`.testing` (conformance checks for continuous methods), :mod:`.plugin`
(registration). Documentation: docs/methods/vavae.md, "LightningDiT baseline".
"""
