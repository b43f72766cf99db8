"""dlbench's own components, registered through the same hooks a third-party plugin uses.

Declared in pyproject as the entry point ``core = "dlbench.builtin"`` (pytest's ``default_plugins``
idea): nothing in dlbench reaches into the registry by another path.
"""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_datasets(register):
    from dlbench.data import DATASETS

    for name, cls in DATASETS.items():
        register(name, cls)


@hookimpl
def register_tokenizers(register):
    from dlbench.nn import TOKENIZERS

    for name, cls in TOKENIZERS.items():
        register(name, cls)


@hookimpl
def register_schedules(register):
    from dlbench.schedules.continuous import CosineSchedule, LinearLogSNRSchedule, ShiftedCosineSchedule
    from dlbench.schedules.discrete import MaskAndReplaceSchedule, VQDiffusionAlpha1Schedule

    register("cosine", CosineSchedule)
    register("shifted-cosine", ShiftedCosineSchedule)
    register("linear", LinearLogSNRSchedule)
    register("vqdiffusion-alpha1", VQDiffusionAlpha1Schedule)
    register("mask-and-replace", MaskAndReplaceSchedule)


@hookimpl
def register_embeddings(register):
    from dlbench.embeddings import CodebookEmbedding, LearnableEmbedding, OneHotEmbedding

    register("learnable", LearnableEmbedding)
    register("codebook", CodebookEmbedding)
    register("one-hot", OneHotEmbedding)


@hookimpl
def register_feature_extractors(register):
    from dlbench.eval import FEATURE_EXTRACTORS

    for name, cls in FEATURE_EXTRACTORS.items():
        register(name, cls)


@hookimpl
def register_loggers(register):
    from dlbench.observe.loggers import LOGGERS

    for name, cls in LOGGERS.items():
        register(name, cls)
