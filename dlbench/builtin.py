"""dlbench's own components, registered through the same hooks a third-party plugin uses.

Declared in pyproject as the entry point ``core = "dlbench.builtin"`` (pytest's ``default_plugins``
idea): nothing in dlbench reaches into the registry by another path.
"""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_datasets(register):
    from dlbench.data import DATASET_CLASSES

    for cls in DATASET_CLASSES:
        register(cls.name, cls)


@hookimpl
def register_tokenizers(register):
    from dlbench.nn import VQGAN, VQVAE

    register("vqvae", VQVAE)
    register("vqgan", VQGAN)


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
    from dlbench.eval.domain import DomainClassifierExtractor
    from dlbench.eval.extractors import InceptionFIDExtractor

    register("inception-v3-fid", InceptionFIDExtractor)
    register("domain-classifier", DomainClassifierExtractor)


@hookimpl
def register_loggers(register):
    from dlbench.observe.loggers import JsonlLogger, TensorBoardLogger

    register("jsonl", JsonlLogger)
    register("tensorboard", TensorBoardLogger)
