"""Run-config presets of ``method/lightningdit`` (read by ``dlbench run lightningdit --preset ...``).

Each preset selects the continuous tokenizer ``kl-vae`` (the method trains on its normalised latents) and
states only what differs from dlbench's base presets. Optimiser as the released recipe (METHODS.md §D.3):
AdamW betas (0.9, 0.95), no weight decay, no gradient clipping; the learning rate is dlbench's small-model
choice (the released 2e-4 is for batch 1024 and 675M parameters). No ``paper`` preset yet: the published
ImageNet setting needs a paper-scale VA-VAE tokenizer preset (f16d32, DINOv2 ViT-L) that dlbench does not
define (docs/methods/vavae.md, "LightningDiT baseline").
"""

from __future__ import annotations

from typing import Any

__all__ = ["BENCHMARK_STEPS", "LADDER", "method_presets"]

#: generator steps of the ``benchmark`` preset (one forward+backward per step, as vq-diffusion)
BENCHMARK_STEPS = 3000


def method_presets() -> dict[str, dict[str, Any]]:
    tokenizer = {"name": "kl-vae"}
    train_common = {"weight_decay": 0.0, "betas": [0.9, 0.95], "grad_clip": None, "precision": "fp32"}
    return {
        "quick": {
            "tokenizer": tokenizer,
            "method": {"params": {"sample_steps": 4}},
            "backbone": {"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}},
            "training": {"lr": 1e-3, "weight_decay": 0.0},
            "sampling": {"steps": 4, "guidance": 1.0},
            "evaluation": {"protocol": "quick"},
        },
        "default": {
            "tokenizer": tokenizer,
            "backbone": {"preset": "tiny", "params": {}},
            "training": {"lr": 5e-4, "warmup_steps": 100, "ema_decay": 0.999, **train_common},
            "sampling": {"guidance": 1.0},
            "evaluation": {"protocol": "default"},
        },
        "benchmark": {
            "tokenizer": tokenizer,
            "backbone": {"preset": "tiny", "params": {}},
            "training": {"steps": BENCHMARK_STEPS, "lr": 5e-4, "warmup_steps": 200, "ema_decay": 0.999,
                         **train_common},
            "sampling": {"guidance": 1.0},
            "evaluation": {"protocol": "default"},
        },
    }


#: The LightningDiT ablation ladder (paper Table 1; METHODS.md §D.3) as ``method.params`` per rung, each rung adding
#: one switch to the previous one; the last rung is ``lightningdit``'s defaults. Table 1 samples without the CFG
#: interval and the timestep shift, so every rung's sampling options are ``shift = 1``, ``cfg_interval_start = 0``
#: (``--set sampling.options.shift=1 --set sampling.options.cfg_interval_start=0``). The rungs that change the
#: budget (batch x4, lr x2, AdamW beta2 0.95) and the tokenizer (patch 1 + VA-VAE) are run-config settings, not
#: method params, and are left to the benchmark.
_DIT_RF = {"t_sampling": "uniform", "cos_weight": 0.0, "mlp": "gelu", "norm": "layer", "rope": False}
LADDER: dict[str, dict[str, Any]] = {
    "rectified-flow": dict(_DIT_RF),
    "+logit-normal": {**_DIT_RF, "t_sampling": "logit-normal"},
    "+cosine-loss": {**_DIT_RF, "t_sampling": "logit-normal", "cos_weight": 1.0},
    "+swiglu": {**_DIT_RF, "t_sampling": "logit-normal", "cos_weight": 1.0, "mlp": "swiglu"},
    "+rmsnorm": {**_DIT_RF, "t_sampling": "logit-normal", "cos_weight": 1.0, "mlp": "swiglu", "norm": "rms"},
    "+rope": {"t_sampling": "logit-normal", "cos_weight": 1.0, "mlp": "swiglu", "norm": "rms", "rope": True},
}
