"""Conformance checks for continuous tokenizers (the discrete :func:`dlbench.testing.check_tokenizer`
requires token ids and a codebook, which a continuous tokenizer does not have)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_continuous_tokenizer"]


def check_continuous_tokenizer(tokenizer: Any, *, channels: int = 1, resolution: int = 32, batch: int = 2) -> None:
    """``latent_kind == "continuous"``; ``encode``: ``"b c H W" -> "b h w d"`` float on ``token_grid``, with
    ``d = latent_dim``, deterministic in eval mode; ``decode`` maps it back to images in [-1, 1];
    ``training_loss`` is a finite scalar with gradients. Call it on a tokenizer whose latent normalisation
    is ready (e.g. after ``compute_latent_stats``)."""
    if getattr(tokenizer, "latent_kind", None) != "continuous":
        raise AssertionError("a continuous tokenizer must declare latent_kind = 'continuous'")
    x = torch.rand(batch, channels, resolution, resolution) * 2 - 1
    tokenizer.eval()
    with torch.no_grad():
        z = tokenizer.encode(x)
        h, w = tokenizer.token_grid(resolution, resolution)
        d = tokenizer.latent_dim
        if z.shape != (batch, h, w, d) or not z.dtype.is_floating_point:
            raise AssertionError(f"encode must give float (b, {h}, {w}, {d}); got {z.dtype} {tuple(z.shape)}")
        if not torch.equal(tokenizer.encode(x), z):
            raise AssertionError("encode is not deterministic in eval mode")
        y = tokenizer.decode(z)
        if y.shape != x.shape:
            raise AssertionError(f"decode shape {tuple(y.shape)} != image shape {tuple(x.shape)}")
        if y.min() < -1 - 1e-4 or y.max() > 1 + 1e-4:
            raise AssertionError("decoded images must lie in [-1, 1]")
    tokenizer.train()
    loss, terms = tokenizer.training_loss(x)
    if loss.ndim != 0 or not torch.isfinite(loss) or not isinstance(terms, dict):
        raise AssertionError("training_loss must return (finite scalar, dict)")
    loss.backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer.parameters()):
        raise AssertionError("training_loss gives no gradient to any parameter")
    tokenizer.zero_grad(set_to_none=True)
