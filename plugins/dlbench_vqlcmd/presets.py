"""VQ-LCMD presets and training cost (pure functions of a ``VQLCMDConfig``; docs/methods/vqlcmd.md, "Presets").

Kept apart from method.py so the preset tables and the cost rule can be read (and tested) without the model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BENCHMARK_STEPS", "forwards_per_step", "method_presets"]


def _quick_backbone() -> dict[str, Any]:
    return {"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}}


def forwards_per_step(c) -> float:
    """Training cost per step of a ``VQLCMDConfig`` in units of one forward+backward pass over the batch (for the FLOPs column and
    equal-compute budgets): the batched t / t_min pass is ``1 + rec_fraction``; each forward without backward
    adds 1/3 (a backward costs about two forwards): the CM teacher, a teacher DDIM step, the self-conditioning
    pass on a ``self_condition_rate`` share of the batch."""
    cost = 1.0 + c.rec_fraction
    if c.w_cm > 0:
        cost += 1.0 / 3.0
        if c.cm_zs == "ddim" and c.cm_step_model == "teacher":
            cost += 1.0 / 3.0
    if c.self_condition:
        cost += c.self_condition_rate / 3.0
    return cost


def _table_dim(config, dim: int) -> dict[str, Any]:
    """``embedding.params.dim`` for a learned table (other embeddings have no dimension to set)."""
    return {"embedding": {"params": {"dim": dim}}} if config.embedding.name == "learnable" else {}


#: generator steps of the base `benchmark` preset for a method with one forward+backward per step
BENCHMARK_STEPS = 1500


def method_presets(config) -> dict[str, dict[str, Any]]:
    """Run-config presets of a VQ-LCMD-family method with defaults ``config`` (a ``VQLCMDConfig``); ``benchmark`` steps give the same compute as BENCHMARK_STEPS steps of
    a one-pass method (e.g. vq-diffusion) under this config's defaults (docs/methods/vqlcmd.md, "Presets")."""
    train_common = {"weight_decay": 0.0, "betas": [0.9, 0.99], "grad_clip": 1.0, "precision": "fp32"}
    return {
        "quick": {
            "method": {"params": {**_table_dim(config, 8), "sample_steps": 4}},
            "backbone": _quick_backbone(),
            "training": {"lr": 1e-3, "weight_decay": 0.0},
            "sampling": {"steps": 4, "guidance": 1.0},
            "evaluation": {"protocol": "quick"},
        },
        "default": {
            # Fashion-MNIST 32x32 -> 8x8 tokens, K=256, tiny backbone; budget and NFE from the base preset
            "method": {"params": {"sample_steps": 50}},
            "backbone": {"preset": "tiny", "params": {}},
            # why weight_decay 0: decay on the table is itself a shrinkage (collapse) pressure
            "training": {"lr": 5e-4, "warmup_steps": 100, "ema_decay": 0.999, **train_common},
            "sampling": {"guidance": 1.0},
            "evaluation": {"protocol": "default"},
        },
        "benchmark": {
            "method": {"params": {"sample_steps": 50}},
            "backbone": {"preset": "tiny", "params": {}},
            "training": {"steps": round(BENCHMARK_STEPS / forwards_per_step(config)), "lr": 5e-4,
                         "warmup_steps": 200, "ema_decay": 0.999, **train_common},
            "sampling": {"guidance": 1.0},
            "evaluation": {"protocol": "default"},
        },
        "collapse": {
            # the table must be free to collapse: learned, rows not normalised, an L2 objective in embedding
            # space (scale pressure) at equal weight over t, and a learning rate that moves it
            "method": {"params": {"sample_steps": 25,
                                  "embedding": {"name": "learnable", "params": {"dim": 16, "normalize": False}},
                                  "dm_objective": "mse", "dm_weighting": "constant", "embed_lr_scale": 30.0}},
            "backbone": {"preset": "tiny", "params": {}},
            "training": {"lr": 5e-4, "warmup_steps": 100, "ema_decay": 0.999, **train_common},
            "sampling": {"guidance": 1.0},
            "evaluation": {"protocol": "quick"},
        },
        "paper": {
            # [recon] ImageNet-256 class-conditional, 50 DDIM steps (paper abstract); sizes not retrieved
            "method": {"params": {**_table_dim(config, 32), "sample_steps": 50}},
            "backbone": {"preset": "base", "params": {}},
            "training": {
                "steps": 400_000,
                "batch_size": 256,
                "lr": 1e-4,
                "weight_decay": 0.0,
                "betas": [0.9, 0.99],
                "warmup_steps": 5000,
                "grad_clip": 1.0,
                "ema_decay": 0.9999,
                "precision": "bf16",
            },
            "sampling": {"num_samples": 50_000, "steps": 50, "guidance": 1.5},
            "evaluation": {"protocol": "paper"},
        },
    }
