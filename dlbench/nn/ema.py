"""Exponential moving average of a model's parameters (Polyak averaging; DiT ``update_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """Warmed-up decay ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's ``num_updates`` rule):
    short runs average over the steps actually taken instead of staying near the initialisation."""
    return min(decay, (1 + step) / (10 + step))


class EMA(nn.Module):
    """A frozen shadow copy of ``model``; :meth:`update` moves trained parameters towards the model
    (``p_ema <- d p_ema + (1 - d) p``) and copies buffers and non-trained parameters verbatim."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        src = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            q = src[name]
            if q.requires_grad and decay > 0:
                p.lerp_(q.detach(), 1.0 - decay)
            else:
                p.copy_(q.detach())
        src_buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(src_buffers[name])

    def train(self, mode: bool = True) -> "EMA":  # the shadow always stays in eval mode
        return super().train(False)
