"""Regularized Vector Quantization (Reg-VQ; Zhang et al., CVPR 2023) for dlbench (METHODS.md C).

Modules: :mod:`.quantize` (probabilistic quantizer math), :mod:`.losses` (prior KL, PatchNCE / PCL),
:mod:`.regularizers` (the registered ``regularizer/*`` components), :mod:`.features` (the frozen
feature network of the contrastive loss), :mod:`.tokenizer` (``tokenizer/regvq`` and its ablation
variants), :mod:`.method` (``method/regvq``: Reg-VQ tokens + VQ-Diffusion), :mod:`.plugin` (hooks).
"""
