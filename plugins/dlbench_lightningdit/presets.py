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

__all__ = ["BENCHMARK_STEPS", "method_presets"]

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
