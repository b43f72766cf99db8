"""Per-dataset ``--preset paper`` settings: the published 256 px experiments (FFHQ, LSUN, ImageNet).

``dlbench run vqlcmd --dataset ffhq --preset paper`` must set up the experiment the papers ran: a
VQGAN f16 tokenizer (16x16 tokens, K = 1024, d = 256), the generator size, budget, sampling steps and
protocol. :func:`apply_paper_preset` adds two layers to the run config, after the method's own
``paper`` preset and before ``--config``/CLI arguments:

1. :data:`PAPER_DATASETS` ``[dataset]`` -- settings shared by every method on that dataset (the tokenizer
   section is skipped when the method's paper preset names its own tokenizer, e.g. Reg-VQ);
2. :data:`PAPER_METHODS` ``[(dataset, method family)]`` -- what is specific to one method there.

Every value carries its provenance in :data:`PROVENANCE` (``sourced: ...`` naming the paper, upstream
config or author answer it comes from, in full in :data:`SOURCES`, or ``dlbench: ...`` with the reason
for the choice); ``docs/scaling.md`` shows :func:`provenance_table` and a test checks that no value lacks one.
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
#: generator global batch: VQ-Diffusion's 32 per GPU (its configs; METHODS.md B.5) on 8 GPUs
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

#: the sources the provenance strings name, in full (docs/scaling.md lists them)
SOURCES: dict[str, str] = {
    "VQ-LCMD": "Nguyen et al., \"Improving Vector-Quantized Image Modeling with Latent Consistency-Matching "
               "Diffusion\", arXiv 2410.14758 (v1: \"Mitigating Embedding Collapse in Diffusion Models for "
               "Categorical Data\")",
    "Bernoulli Flow Models": "the Bernoulli Flow Models preprint (2026), Table 1, which quotes VQ-LCMD's unconditional "
                             "FFHQ / LSUN results with its re-trained D3PM and VQ-Diffusion baselines",
    "VQ-Diffusion": "Gu et al., \"Vector Quantized Diffusion Model for Text-to-Image Synthesis\", CVPR 2022, "
                    "arXiv 2111.14822; code github.com/microsoft/VQ-Diffusion (configs/ffhq.yaml, configs/imagenet.yaml)",
    "cientgu/VQ-Diffusion#14": "the VQ-Diffusion authors' answer on its evaluation protocol, "
                               "github.com/cientgu/VQ-Diffusion issue 14",
    "taming-transformers": "Esser, Rombach, Ommer, \"Taming Transformers for High-Resolution Image Synthesis\", "
                           "CVPR 2021, arXiv 2012.09841; code github.com/CompVis/taming-transformers "
                           "(configs/imagenet_vqgan.yaml, taming/modules/losses/vqperceptual.py)",
}

_TOK = "sourced: taming-transformers configs/imagenet_vqgan.yaml (the f16 VQGAN that VQ-Diffusion builds on)"
_LCMD_STEPS = ("sourced: VQ-LCMD: FFHQ/LSUN results at 200 sampling steps (as quoted in Bernoulli Flow Models, "
               "Table 1); ImageNet FID 6.81 at 50 steps (VQ-LCMD abstract)")
PROVENANCE: dict[str, str] = {
    "dataset.name": "sourced: the datasets of VQ-LCMD's and VQ-Diffusion's results (FFHQ, LSUN Churches, "
                    "LSUN Bedrooms, ImageNet)",
    "dataset.params.resolution": "sourced: VQ-LCMD and VQ-Diffusion report all these results at 256x256",
    "tokenizer.name": "sourced: VQ-Diffusion uses taming-transformers VQGANs (configs/ffhq.yaml, imagenet.yaml); "
                      "dlbench: VQ-LCMD's re-trained discrete baselines are read as sharing that tokenizer",
    "tokenizer.params.ch": _TOK, "tokenizer.params.ch_mult": _TOK + "; f16 -> 16x16 tokens at 256 px (VQ-Diffusion)",
    "tokenizer.params.num_res_blocks": _TOK, "tokenizer.params.z_channels": _TOK,
    "tokenizer.params.codebook_size": "sourced: VQ-Diffusion configs/ffhq.yaml (taming FFHQ VQGAN, 1024 codes); "
                                      "ImageNet: dlbench (VQ-Diffusion uses taming's 16384 codes remapped to the "
                                      "974 used; import it with tokenizer.pretrained=taming-imagenet-f16-16384); "
                                      "LSUN: dlbench (no source gives it)",
    "tokenizer.params.code_dim": _TOK, "tokenizer.params.disc_weight": _TOK, "tokenizer.params.codebook_weight": _TOK,
    "tokenizer.params.perceptual_weight": "sourced: taming-transformers VQLPIPSWithDiscriminator default (1.0)",
    "tokenizer.params.disc_start": "ImageNet sourced: taming-transformers imagenet_vqgan.yaml (250001); "
                                   "others dlbench (no source gives it)",
    "tokenizer.training.lr": "sourced: taming-transformers base_learning_rate 4.5e-6 x global batch",
    "tokenizer.training.betas": "sourced: taming-transformers VQModel Adam betas (0.5, 0.9)",
    "tokenizer.training.batch_size": "dlbench: 64 (taming-transformers: 3 per GPU x its GPU count, not given)",
    "tokenizer.training.steps": "dlbench: no source gives it (taming-transformers' ImageNet config starts its "
                                "discriminator at 250k)",
    "tokenizer.training.weight_decay": "sourced: taming-transformers uses plain Adam",
    "tokenizer.training.warmup_steps": "sourced: taming-transformers has no warm-up",
    "tokenizer.training.grad_clip": "sourced: taming-transformers does not clip",
    "tokenizer.training.ema_decay": "sourced: taming-transformers keeps no EMA",
    "tokenizer.training.precision": "dlbench: bf16 autocast on GPUs", "tokenizer.training.checkpoint_every": "dlbench",
    "tokenizer.training.log_every": "dlbench",
    "backbone.preset": "VQ-Diffusion sourced: configs/ffhq.yaml (20 layers x width 512 x 16 heads), "
                       "configs/imagenet.yaml (24x512x16); VQ-LCMD and LSUN: dlbench (sizes not published; the "
                       "baseline's size keeps the comparison matched)",
    "training.batch_size": "sourced: VQ-Diffusion configs (32 per GPU) x 8 GPUs (dlbench)",
    "training.steps": "FFHQ sourced: VQ-Diffusion configs/ffhq.yaml, 300 epochs (= steps at batch 256); ImageNet "
                      "sourced: configs/imagenet.yaml, 100 epochs; LSUN dlbench (no source gives it)",
    "training.warmup_steps": "sourced: VQ-Diffusion configs/imagenet.yaml (warm-up 5000 iterations)",
    "sampling.num_samples": "sourced: cientgu/VQ-Diffusion#14 (FID from 50k samples)",
    "sampling.guidance": "sourced: the FFHQ/LSUN results are unconditional (VQ-LCMD); ImageNet keeps the method's own",
    "sampling.batch_size": "dlbench",
    "evaluation.protocol": "sourced: cientgu/VQ-Diffusion#14 (50k samples vs all training images)",
    "method.params.sample_steps": _LCMD_STEPS,
    "sampling.steps": _LCMD_STEPS,
    "sampling.options.truncation": "sourced: cientgu/VQ-Diffusion#14 (r = 0.869 for the ImageNet FID)",
}


def provenance_table() -> str:
    """The markdown table of docs/scaling.md: every paper-preset value per dataset with its provenance.

    Rows follow the first appearance of each setting in :data:`PAPER_DATASETS`, then :data:`PAPER_METHODS`;
    a method-layer value shows as ``method: value``, a value the preset leaves to the method as "(method's)"."""
    import json

    def get(d: dict[str, Any], path: str) -> Any:
        for k in path.split("."):
            if not isinstance(d, dict) or k not in d:
                return _MISSING
            d = d[k]
        return d

    paths: list[str] = []
    for layer in [*PAPER_DATASETS.values(), *PAPER_METHODS.values()]:
        paths += [p for p in leaves(layer) if p not in paths]
    lines = ["| setting | " + " | ".join(PAPER_DATASETS) + " | provenance |", "|---|" + "---|" * (len(PAPER_DATASETS) + 1)]
    for path in paths:
        cells = []
        for ds, layer in PAPER_DATASETS.items():
            v = get(layer, path)
            per_method = [f"{m}: {json.dumps(get(ml, path))}" for (d, m), ml in PAPER_METHODS.items()
                          if d == ds and get(ml, path) is not _MISSING]
            cells.append(", ".join(per_method) if per_method else "(method's)" if v is _MISSING else json.dumps(v))
        lines.append(f"| `{path}` | " + " | ".join(cells) + f" | {PROVENANCE[path]} |")
    return "\n".join(lines)


_MISSING = object()


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
