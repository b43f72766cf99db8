"""Gradient accumulation: one optimizer step over ``micro_batches`` equal slices of this rank's batch.

``training.grad_accum = m`` lets a global batch that does not fit in device memory be reached with the
same optimizer step: each rank splits its ``batch_size / world`` rows into ``m`` equal slices, runs
forward + backward on each with the loss scaled by ``1/m`` (so the summed gradient is the gradient of
the batch mean, as without accumulation), and under DDP synchronises gradients only on the last slice
(``no_sync``). The batch a step sees is unchanged (:class:`dlbench.train.loop.TensorBatches`), so a run
can resume with another world size and ``grad_accum`` and keep its global batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from dlbench.registry import DlbenchError


def check_accumulation(batch_size: int, world: int, micro_batches: int) -> None:
    """The per-rank batch must split into ``micro_batches`` equal slices (equal slices keep the mean exact)."""
    per_rank = batch_size // world
    if micro_batches < 1 or per_rank % micro_batches:
        raise DlbenchError(
            f"training.grad_accum={micro_batches} does not divide the per-process batch {per_rank} "
            f"(batch_size {batch_size} / world size {world}); pick a divisor of {per_rank}")


def accumulate_backward(
    wrapped: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]], batch: tuple[torch.Tensor, ...],
    micro_batches: int, autocast: Callable[[], Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward + backward of ``batch`` in ``micro_batches`` slices; returns the detached mean loss and the
    mean of each logged term. ``autocast()`` gives the precision context of one forward."""
    slices = list(zip(*(t.chunk(micro_batches) for t in batch)))
    total: torch.Tensor | None = None
    sums: dict[str, torch.Tensor] = {}
    for i, part in enumerate(slices):
        last = i == len(slices) - 1
        sync = contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
        with sync:
            with autocast():
                loss, terms = wrapped(*part)
            (loss.float() / len(slices)).backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
        for k, v in terms.items():
            v = torch.as_tensor(v).detach().float().mean()
            sums[k] = v if k not in sums else sums[k] + v
    assert total is not None
    n = len(slices)
    return total / n, {k: v / n for k, v in sums.items()}
