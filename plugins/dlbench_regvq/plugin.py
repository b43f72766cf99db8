"""dlbench hooks of the Reg-VQ plugin (entry point ``regvq = "dlbench_regvq.plugin"``).

Registers ``tokenizer/regvq`` (its ablation rows are ``tokenizer.regularizers`` configs,
:data:`dlbench_regvq.tokenizer.ABLATION_ROWS`), ``regularizer/prior-kl``,
``regularizer/stochastic-mask``, ``regularizer/probabilistic-contrastive``,
``feature_extractor/inception-early`` and ``method/regvq``.
"""

from __future__ import annotations

import warnings

from dlbench import hookimpl



@hookimpl
def register_tokenizers(register):
    from .tokenizer import RegVQTokenizer

    register("regvq", RegVQTokenizer, description="Reg-VQ (CVPR 2023) quantizer; its regularizers come from "
             "tokenizer.regularizers (prior-kl, stochastic-mask, probabilistic-contrastive)")


@hookimpl
def register_regularizers(register):
    from .regularizers import PriorKL, ProbabilisticContrastive, StochasticMask

    register("prior-kl", PriorKL)
    register("stochastic-mask", StochasticMask)
    register("probabilistic-contrastive", ProbabilisticContrastive)


@hookimpl
def register_feature_extractors(register):
    from .features import InceptionEarly

    register("inception-early", InceptionEarly)


@hookimpl
def register_methods(register):
    from .method import VQDiffusionUnavailable, make_regvq_method

    try:
        cls = make_regvq_method()
    except VQDiffusionUnavailable as exc:
        # keep the tokenizer and regularizers usable without the generator plugin
        warnings.warn(f"method/regvq not registered: {exc}", stacklevel=2)
        return
    register("regvq", cls, description="VQ-Diffusion on Reg-VQ tokens (METHODS.md C)")
