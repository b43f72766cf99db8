"""Per-dataset ``--preset paper`` settings: the published 256 px experiments (FFHQ, LSUN, ImageNet).

``dlbench run vqlcmd --dataset ffhq --preset paper`` must set up the experiment the papers ran: a
VQGAN f16 tokenizer (16x16 tokens, K = 1024, d = 256), the generator size, budget, sampling steps and
protocol. :func:`apply_paper_preset` adds two layers to the run config, after the method's own
``paper`` preset and before ``--config``/CLI arguments:

1. :data:`PAPER_DATASETS` ``[dataset]`` -- settings shared by every method on that dataset (the tokenizer
   section is skipped when the method's paper preset names its own tokenizer, e.g. Reg-VQ);
2. :data:`PAPER_METHODS` ``[(dataset, method family)]`` -- what is specific to one method there.

Every value carries its provenance in :data:`PROVENANCE` (``sourced: ...`` with the METHODS.md section
or upstream config it comes from, or ``dlbench: ...`` with the reason for the choice);
``docs/scaling.md`` shows the table and a test checks that no value lacks one.
"""

from __future__ import annotations

import copy
from typing import Any

from dlbench.registry import DlbenchError

#: methods that share VQ-LCMD's per-dataset settings (its ablations)
VQLCMD_FAMILY = ("vqlcmd", "csdm", "vqlcmd-nodrop", "vqlcmd-noshift", "fixed-embedding")

_TAMING_F16 = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256,
               "codebook_size": 1024, "code_dim": 256, "disc_weight": 0.8, "codebook_weight": 1.0,
               "perceptual_weight": 1.0}
#: taming-transformers: lr = base_learning_rate (4.5e-6) x global batch; Adam betas (0.5, 0.9)
_TOK_BATCH = 64
_TOK_TRAINING = {"batch_size": _TOK_BATCH, "lr": 4.5e-6 * _TOK_BATCH, "betas": [0.5, 0.9], "weight_decay": 0.0,
                 "warmup_steps": 0, "grad_clip": None, "ema_decay": 0.0, "precision": "bf16",
                 "checkpoint_every": 5000, "log_every": 100}
#: generator global batch: VQ-Diffusion's 32 per GPU (METHODS.md B.5) on 8 GPUs
_GEN_BATCH = 256


def _epochs_to_steps(epochs: int, images: int, batch: int = _GEN_BATCH) -> int:
    return -(-epochs * images // batch)


_SIZES = {"ffhq": 70_000, "imagenet": 1_281_167}

PAPER_DATASETS: dict[str, dict[str, Any]] = {
    "ffhq": {
        "dataset": {"name": "ffhq", "params": {"resolution": 256}},
        "tokenizer": {"name": "vqgan", "params": {**_TAMING_F16, "disc_start": 50_001},
                      "training": {**_TOK_TRAINING, "steps": 300_000}},
        "backbone": {"preset": "vqdiffusion-ffhq"},
        "training": {"batch_size": _GEN_BATCH, "steps": _epochs_to_steps(300, _SIZES["ffhq"])},
        "sampling": {"num_samples": 50_000, "batch_size": 250, "guidance": 1.0},
        "evaluation": {"protocol": "paper"},
    },
    "lsun-church": {
        "dataset": {"name": "lsun-church", "params": {"resolution": 256}},
        "tokenizer": {"name": "vqgan", "params": {**_TAMING_F16, "disc_start": 50_001},
                      "training": {**_TOK_TRAINING, "steps": 300_000}},
        "backbone": {"preset": "vqdiffusion-ffhq"},
        "training": {"batch_size": _GEN_BATCH, "steps": 200_000},
        "sampling": {"num_samples": 50_000, "batch_size": 250, "guidance": 1.0},
        "evaluation": {"protocol": "paper"},
    },
    "lsun-bedroom": {
        "dataset": {"name": "lsun-bedroom", "params": {"resolution": 256}},
        "tokenizer": {"name": "vqgan", "params": {**_TAMING_F16, "disc_start": 50_001},
                      "training": {**_TOK_TRAINING, "steps": 300_000}},
        "backbone": {"preset": "vqdiffusion-ffhq"},
        "training": {"batch_size": _GEN_BATCH, "steps": 400_000},
        "sampling": {"num_samples": 50_000, "batch_size": 250, "guidance": 1.0},
        "evaluation": {"protocol": "paper"},
    },
    "imagenet": {
        "dataset": {"name": "imagenet", "params": {"resolution": 256}},
        "tokenizer": {"name": "vqgan", "params": {**_TAMING_F16, "disc_start": 250_001},
                      "training": {**_TOK_TRAINING, "steps": 500_000}},
        "backbone": {"preset": "vqdiffusion-imagenet"},
        "training": {"batch_size": _GEN_BATCH, "steps": _epochs_to_steps(100, _SIZES["imagenet"]),
                     "warmup_steps": 5000},
        "sampling": {"num_samples": 50_000, "batch_size": 250},
        "evaluation": {"protocol": "paper"},
    },
}

_VQLCMD_200 = {"method": {"params": {"sample_steps": 200}}, "sampling": {"steps": 200}}
PAPER_METHODS: dict[tuple[str, str], dict[str, Any]] = {
    ("ffhq", "vqlcmd"): _VQLCMD_200,
    ("lsun-church", "vqlcmd"): _VQLCMD_200,
    ("lsun-bedroom", "vqlcmd"): _VQLCMD_200,
    ("imagenet", "vqlcmd"): {"method": {"params": {"sample_steps": 50}}, "sampling": {"steps": 50}},
    ("imagenet", "vq-diffusion"): {"sampling": {"options": {"truncation": 0.869}}},
}

_TOK = "sourced: taming-transformers configs/imagenet_vqgan.yaml (the f16 VQGAN of METHODS.md B.5)"
PROVENANCE: dict[str, str] = {
    "dataset.name": "sourced: METHODS.md A.0 / B.7 (256x256)",
    "dataset.params.resolution": "sourced: METHODS.md A.0 (all rows 256x256)",
    "tokenizer.name": "sourced: METHODS.md B.5 (Taming VQGAN; the VQ-LCMD baselines share VQ-Diffusion's tokenizer, A.0)",
    "tokenizer.params.ch": _TOK, "tokenizer.params.ch_mult": _TOK + "; f16 -> 16x16 tokens at 256 px (B.5)",
    "tokenizer.params.num_res_blocks": _TOK, "tokenizer.params.z_channels": _TOK,
    "tokenizer.params.codebook_size": "sourced: METHODS.md B.5 (FFHQ: 1024 codes); ImageNet: dlbench (VQ-Diffusion "
                                      "uses taming's 16384 remapped to 974 used codes; import it with "
                                      "tokenizer.pretrained=taming-imagenet-f16-16384); LSUN: dlbench (not retrieved)",
    "tokenizer.params.code_dim": _TOK, "tokenizer.params.disc_weight": _TOK, "tokenizer.params.codebook_weight": _TOK,
    "tokenizer.params.perceptual_weight": "sourced: taming VQLPIPSWithDiscriminator default (1.0)",
    "tokenizer.params.disc_start": "ImageNet sourced: imagenet_vqgan.yaml (250001); others dlbench (not retrieved)",
    "tokenizer.training.lr": "sourced: taming base_learning_rate 4.5e-6 x global batch",
    "tokenizer.training.betas": "sourced: taming VQModel Adam betas (0.5, 0.9)",
    "tokenizer.training.batch_size": "dlbench: 64 (taming: 3 per GPU x its GPUs, not retrieved)",
    "tokenizer.training.steps": "dlbench: not retrieved (taming ImageNet starts its discriminator at 250k)",
    "tokenizer.training.weight_decay": "sourced: taming uses plain Adam",
    "tokenizer.training.warmup_steps": "sourced: taming has no warm-up",
    "tokenizer.training.grad_clip": "sourced: taming does not clip", "tokenizer.training.ema_decay": "sourced: no EMA",
    "tokenizer.training.precision": "dlbench: bf16 autocast on GPUs", "tokenizer.training.checkpoint_every": "dlbench",
    "tokenizer.training.log_every": "dlbench",
    "backbone.preset": "VQ-Diffusion sourced: METHODS.md B.5 (FFHQ 20x512x16, ImageNet 24x512x16); VQ-LCMD and LSUN: "
                       "dlbench (sizes not retrieved; the baseline's size keeps the comparison matched)",
    "training.batch_size": "sourced: METHODS.md B.5 (32 per GPU) x 8 GPUs (dlbench)",
    "training.steps": "FFHQ sourced: B.5 300 epochs (= steps at 256/batch); ImageNet sourced: B.5 100 epochs; "
                      "LSUN dlbench (not retrieved)",
    "training.warmup_steps": "sourced: METHODS.md B.5 (ImageNet warm-up 5000 it)",
    "sampling.num_samples": "sourced: METHODS.md B.7 (50k samples)",
    "sampling.guidance": "sourced: FFHQ/LSUN are unconditional (METHODS.md A.0); ImageNet keeps the method's own", "sampling.batch_size": "dlbench",
    "evaluation.protocol": "sourced: METHODS.md B.7 (50k samples vs all training images)",
    "method.params.sample_steps": "sourced: METHODS.md A.0 (FFHQ/LSUN 200 steps), A.3 (ImageNet 50)",
    "sampling.steps": "sourced: METHODS.md A.0 (FFHQ/LSUN 200 steps), A.3 (ImageNet 50)",
    "sampling.options.truncation": "sourced: METHODS.md B.6 (r = 0.869 for the ImageNet FID)",
}


class PaperPresetError(DlbenchError, ValueError):
    pass


def method_family(method: str) -> str:
    return "vqlcmd" if method in VQLCMD_FAMILY else method


def apply_paper_preset(data: dict[str, Any], method: str, dataset: str, *, method_owns_tokenizer: bool) -> dict[str, Any]:
    """``data`` with the dataset layer and the (dataset, method) layer merged in (module docstring)."""
    from dlbench.config import deep_merge

    if dataset not in PAPER_DATASETS:
        raise PaperPresetError(
            f"--preset paper is defined for the datasets {', '.join(PAPER_DATASETS)} (the published 256 px "
            f"experiments), not {dataset!r}; pass --dataset with one of them, or use --preset default")
    layer = copy.deepcopy(PAPER_DATASETS[dataset])
    if method_owns_tokenizer:
        layer.pop("tokenizer")
    elif data.get("tokenizer", {}).get("name") not in (None, layer["tokenizer"]["name"]):
        data = {**data, "tokenizer": {k: v for k, v in data["tokenizer"].items() if k != "params"}}
    data = deep_merge(data, layer)
    return deep_merge(data, PAPER_METHODS.get((dataset, method_family(method)), {}))


def leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the non-dict values of ``d``."""
    out: list[str] = []
    for k, v in d.items():
        out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out
