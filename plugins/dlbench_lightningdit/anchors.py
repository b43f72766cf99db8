"""Marginal anchors for generators over continuous latents: the counterpart of the token-histogram anchor rows.

dlbench's ``class_marginals`` / ``marginals`` anchors (``dlbench.eval.anchors``) draw each position's token
independently from the training split's per-position (class-conditional) token histogram. Float latents have no
histogram; the analogue is an independent **Gaussian per position and channel** with the training latents' mean
and standard deviation (per class, or pooled). Decoded, these samples show what a generator that learned only
first and second moments per position scores under the protocol; a method that does not beat them has learned
less than that. Pure functions of tensors; a caller decodes and evaluates the samples. (The run pipeline's anchor
record does not draw them yet: for continuous tokenizers it evaluates the ``real`` and ``reconstruction`` rows and
marks ``class_marginals`` / ``marginals`` unavailable.)
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_marginals", "sample_gaussian_marginals"]


def gaussian_marginals(
    latents: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position, per-channel mean and standard deviation (population, float64) of ``latents "n h w d"``:
    ``"k h w d"`` each, ``k = num_classes`` (rows by label) or 1 (pooled, when ``labels`` is None). A class without
    latents is an error: its row would be undefined."""
    x = latents.double()
    if labels is None or not num_classes:
        return x.mean(0, keepdim=True), x.std(0, unbiased=False, keepdim=True)
    counts = torch.bincount(labels.long(), minlength=num_classes)
    if bool((counts[:num_classes] == 0).any()) or counts.numel() > num_classes:
        raise ValueError(f"every class in [0, {num_classes}) needs latents; counts per label: {counts.tolist()}")
    means = torch.stack([x[labels == c].mean(0) for c in range(num_classes)])
    stds = torch.stack([x[labels == c].std(0, unbiased=False) for c in range(num_classes)])
    return means, stds


def sample_gaussian_marginals(
    mean: torch.Tensor, std: torch.Tensor, seeds: torch.Tensor, labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``"b h w d"`` float32 with row ``i`` drawn as ``mean[y_i] + std[y_i] * n_i``, ``n_i ~ N(0, I)`` from
    ``seeds[i]`` alone (``dlbench.seeding.PerSampleRNG``); ``y_i = labels[i]``, or row 0 of pooled marginals."""
    from dlbench.seeding import PerSampleRNG

    idx = torch.zeros(len(seeds), dtype=torch.long) if labels is None else labels.long().cpu()
    noise = PerSampleRNG(seeds).randn(*mean.shape[1:], dtype=torch.float64)
    return (mean[idx] + std[idx] * noise).float()
