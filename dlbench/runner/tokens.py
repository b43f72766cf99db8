"""Stage 2: token arrays of a dataset split, extracted once by the run's tokenizer into the memory-mapped
token cache next to it (:mod:`dlbench.data.token_cache`), and the ``--skip-bad`` bookkeeping.

A continuous tokenizer (``latent_kind == "continuous"``) gets the float latent cache instead: the same
functions then return a :class:`~dlbench.data.token_cache.LatentArray` of normalised posterior samples
``"n h w d"`` wherever a discrete run gets token ids."""

from __future__ import annotations

from typing import Any

import torch

from dlbench.interfaces import ImageDataset, Tokenizer
from dlbench.runner.common import cache_root, is_continuous
from dlbench.train.dist import DistContext


def tokenize_split(
    tokenizer: Tokenizer, dataset: ImageDataset, split: str, key: str, ctx: DistContext, batch_size: int = 256
) -> tuple[Any, torch.Tensor]:
    """``(tokens "n h w", labels long "n")`` of a split, extracted once into a memory-mapped cache next to
    the tokenizer (:mod:`dlbench.data.token_cache`; sharded over ranks). ``tokens`` is a
    :class:`~dlbench.data.token_cache.TokenArray`: indexing it returns long tensors, rows are read on demand."""
    from dlbench.data.token_cache import extract_tokens

    split_ds = dataset.split(split)
    if is_continuous(tokenizer):
        tokens, labels = split_latents(tokenizer, dataset, split, key, ctx, flips=False)
        return tokens, labels
    tokens, labels = extract_tokens(tokenizer.encode, split_ds, cache_root() / "tokenizers" / key, split,
                                    dataset.fingerprint(split), codebook_size=tokenizer.codebook_size, ctx=ctx,
                                    device=ctx.device, batch_size=batch_size)
    # the cache holds only the readable images: the difference is what --skip-bad skipped (also on reuse)
    note_skipped(dataset, split, max(len(split_ds) - len(labels), 0))
    return tokens, labels


#: seed of the posterior noise in the latent cache (part of its file names); the tokenizer's own seed is in ``key``
LATENT_ENCODE_SEED = 0


def split_latents(tokenizer: Tokenizer, dataset: ImageDataset, split: str, key: str, ctx: DistContext, *,
                  flips: bool) -> tuple[Any, torch.Tensor]:
    """``(latents "n h w d", labels long "n")`` of a split from the float latent cache of a continuous tokenizer
    (:func:`~dlbench.data.token_cache.extract_latents`). ``flips=True``: ``2n`` rows, the images then their
    horizontal flips, labels repeated -- the training set of a latent method (VA-VAE's ``latents_flip``)."""
    from dlbench.data.token_cache import LatentArray, extract_latents

    split_ds = dataset.split(split)
    lat, flip, labels = extract_latents(tokenizer.encode, split_ds, cache_root() / "tokenizers" / key, split,
                                        dataset.fingerprint(split), seed=LATENT_ENCODE_SEED, ctx=ctx,
                                        device=ctx.device)
    note_skipped(dataset, split, max(len(split_ds) - len(labels), 0))
    if flips:
        return LatentArray(lat, flip), torch.cat([labels, labels])
    return LatentArray(lat), labels


def training_inputs(tokenizer: Tokenizer, dataset: ImageDataset, key: str, ctx: DistContext) -> tuple[Any, torch.Tensor]:
    """What the generator trains on: the training split's token ids, or, for a continuous tokenizer, its latents
    together with the latents of the flipped images (:func:`split_latents`)."""
    if is_continuous(tokenizer):
        return split_latents(tokenizer, dataset, "train", key, ctx, flips=True)
    return tokenize_split(tokenizer, dataset, "train", key, ctx)


def heldout_tokens(tokenizer: Tokenizer, dataset: ImageDataset, key: str, ctx: DistContext, labelled: bool,
                   limit: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to ``limit`` tokens (and labels when ``labelled``) of the test split (train when it has none)."""
    from dlbench.preflight import split_available

    split = "test" if split_available(dataset, "test") else "train"
    tokens, labels = tokenize_split(tokenizer, dataset, split, key, ctx)
    return tokens[:limit].to(ctx.device), (labels[:limit].to(ctx.device) if labelled else None)


def note_skipped(dataset: ImageDataset, split: str, n: int) -> None:
    """Remember how many unreadable images of ``split`` were skipped (also when its tokens came from the
    cache, where the images are not read again)."""
    counts = dataset.__dict__.setdefault("_dlbench_skipped", {})
    counts[split] = max(n, counts.get(split, 0))


def skipped_report(dataset: ImageDataset) -> dict[str, int]:
    """``{split: unreadable images skipped}`` over the splits this process used (``--skip-bad``)."""
    counts = dict(dataset.__dict__.get("_dlbench_skipped", {}))
    for split, ds in (getattr(dataset, "_cache", None) or {}).items():
        counts[split] = max(counts.get(split, 0), int(getattr(ds, "skipped", 0) or 0))
    return counts
