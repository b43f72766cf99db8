"""``method/regvq``: the VQ-Diffusion generator trained on Reg-VQ tokens (METHODS.md C.5).

Reg-VQ is a tokenizer method; the paper evaluates its tokens with VQ-Diffusion (text-to-image) and a
Taming transformer. dlbench pairs it with ``method/vq-diffusion`` from ``dlbench_vqdiffusion``: the
class is that plugin's own, subclassed only to carry presets that select ``tokenizer/regvq``.
"""

from __future__ import annotations

from typing import Any

from dlbench.config import deep_merge
from dlbench.registry import DlbenchError

__all__ = ["REGVQ_PRESET_OVERRIDES", "vqdiffusion_method_class", "make_regvq_method"]

_PRIOR, _MASK = {"name": "prior-kl"}, {"name": "stochastic-mask"}

#: what ``method/regvq`` changes in VQ-Diffusion's presets: the tokenizer, its size per preset and its
#: regularizers (full Reg-VQ, :data:`dlbench_regvq.tokenizer.ABLATION_ROWS` ``"regvq"``)
REGVQ_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "quick": {
        "tokenizer": {
            "name": "regvq",
            "params": {"codebook_size": 64, "code_dim": 16, "channels": 32},
            "regularizers": [_PRIOR, _MASK, {"name": "probabilistic-contrastive", "params": {"num_patches": 16}}],
        }
    },
    "default": {
        "tokenizer": {
            "name": "regvq",
            "regularizers": [_PRIOR, {**_MASK, "params": {"tau_anneal_steps": 3000}},
                             {"name": "probabilistic-contrastive"}],
        }
    },
    # METHODS.md C.5: N = 1024, d = 256 (VQGAN default, unverified), 256 px, f16
    "paper": {
        "tokenizer": {
            "name": "regvq",
            "params": {"codebook_size": 1024, "code_dim": 256, "downsample": 16, "channels": 128, "res_blocks": 2},
            "regularizers": [_PRIOR, _MASK, {"name": "probabilistic-contrastive",
                                             "params": {"num_patches": 256, "extractor_params": {"resize": 256}}}],
        }
    },
}


class VQDiffusionUnavailable(DlbenchError):
    pass


def vqdiffusion_method_class() -> type:
    """``dlbench_vqdiffusion``'s public method class (the Python package this plugin builds on; its
    components still come from the registry at config time, like any method's)."""
    try:
        from dlbench_vqdiffusion.method import VQDiffusion
    except ImportError as exc:
        raise VQDiffusionUnavailable(f"method/regvq needs the dlbench_vqdiffusion plugin: {exc}") from exc
    return VQDiffusion


def make_regvq_method(base: type | None = None) -> type:
    """Subclass of VQ-Diffusion's method class whose presets select ``tokenizer/regvq``."""
    base = base or vqdiffusion_method_class()
    base_presets = getattr(base, "presets", {}) or {}
    presets = {
        name: deep_merge(base_presets.get(name, {}), REGVQ_PRESET_OVERRIDES.get(name, {}))
        for name in sorted(set(base_presets) | set(REGVQ_PRESET_OVERRIDES))
    }
    return type(
        "RegVQDiffusion",
        (base,),
        {
            "__doc__": "VQ-Diffusion on Reg-VQ tokens (prior KL + stochastic mask + probabilistic contrastive).",
            "__module__": __name__,
            "presets": presets,
        },
    )
