"""Exponential moving average of a model's parameters (Polyak averaging; DiT ``update_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """Warmed-up decay ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's ``num_updates`` rule):
    short runs average over the steps actually taken instead of staying near the initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(shadow: nn.Module, model: nn.Module, decay: float) -> None:
    """In place, matched by name: ``p_shadow <- d p_shadow + (1 - d) p`` for trained parameters; buffers and
    parameters that do not train are copied verbatim. Shared by :class:`EMA` and method-owned EMA copies
    (VQ-LCMD's teacher)."""
    src = dict(model.named_parameters())
    for name, p in shadow.named_parameters():
        q = src[name]
        if q.requires_grad and decay > 0:
            p.lerp_(q.detach(), 1.0 - decay)
        else:
            p.copy_(q.detach())
    src_buffers = dict(model.named_buffers())
    for name, b in shadow.named_buffers():
        b.copy_(src_buffers[name])


class EMA(nn.Module):
    """A frozen shadow copy of ``model``; :meth:`update` moves trained parameters towards the model
    (``p_ema <- d p_ema + (1 - d) p``) and copies buffers and non-trained parameters verbatim."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def update(self, model: nn.Module, decay: float) -> None:
        ema_update(self.shadow, model, decay)

    def train(self, mode: bool = True) -> "EMA":  # the shadow always stays in eval mode
        return super().train(False)
