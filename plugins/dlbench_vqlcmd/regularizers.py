"""VQ-LCMD's generator-stage regularizers: consistency matching and random dropping (METHODS.md §A.2.4-5).

Both are registered as ``regularizer/consistency-matching`` and ``regularizer/random-dropping``, and the
VQ-LCMD method composes these same classes, so the registered component is the one that trains.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from dlbench.interfaces import ComponentConfig, Regularizer

from .losses import consistency_divergence, random_drop

__all__ = ["ConsistencyMatching", "RandomDropping"]


class ConsistencyMatchingConfig(ComponentConfig):
    weight: float = Field(1.0, ge=0.0, description="w_cm, applied by the owner")
    divergence: Literal["kl", "ce"] = Field("kl", description="D in L_CM: KL(teacher || student) or CE")


class ConsistencyMatching(Regularizer):
    """Consistency matching: the student's token posterior at ``t`` matches the stop-grad teacher's at ``s < t``.

    ``forward(student_logits="b h w k", teacher_logits="b h w k") -> scalar`` (METHODS.md §A.2.4).
    """

    Config = ConsistencyMatchingConfig
    stage: ClassVar[Literal["tokenizer", "generator"]] = "generator"

    def __init__(self, config: ConsistencyMatchingConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ConsistencyMatchingConfig()

    def forward(self, **tensors: torch.Tensor) -> torch.Tensor:
        missing = [k for k in ("student_logits", "teacher_logits") if k not in tensors]
        if missing:
            raise TypeError(f"consistency-matching needs keyword tensors {missing}")
        return consistency_divergence(tensors["student_logits"], tensors["teacher_logits"], self.config.divergence)


class RandomDroppingConfig(ComponentConfig):
    rate: float = Field(0.2, ge=0.0, lt=1.0, description="m_RD: probability that a position's input is dropped")
    mode: Literal["learned", "noise"] = Field(
        "learned", description="replace with a learned [DROP] vector, or with fresh N(0, I) noise"
    )
    dim: int = Field(16, ge=1, description="embedding dim d of the [DROP] vector (set by the owner)")


class RandomDropping(Regularizer):
    """Random dropping of input positions (METHODS.md §A.2.5): an input-side regularizer.

    :meth:`drop` replaces each position of ``z_t`` with probability ``rate`` by the learned [DROP] vector; the
    losses stay on all positions, so dropped tokens must be inferred from context. ``forward`` returns the
    (detached) fraction of dropped positions of a mask, a logging quantity: this regularizer adds no loss term.
    """

    Config = RandomDroppingConfig
    stage: ClassVar[Literal["tokenizer", "generator"]] = "generator"

    def __init__(self, config: RandomDroppingConfig | None = None):
        super().__init__()
        self.config = config if config is not None else RandomDroppingConfig()
        # zero init: distinct from any z_t (which has norm ~ sqrt(d) under a VP schedule)
        self.drop_vector = nn.Parameter(torch.zeros(self.config.dim))

    def sample_mask(self, shape: tuple[int, ...], *, device=None, generator: torch.Generator | None = None):
        """Bernoulli(rate) mask ``"b h w"`` (bool)."""
        return torch.rand(shape, device=device, generator=generator) < self.config.rate

    def drop(
        self, z: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z "b h w d" -> (z_dropped "b h w d", mask "b h w")``; identity when ``rate == 0`` or not training."""
        if self.config.rate <= 0 or not self.training:
            return z, torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
        mask = self.sample_mask(tuple(z.shape[:-1]), device=z.device, generator=generator)
        if self.config.mode == "learned":
            replacement = self.drop_vector
        else:
            replacement = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        return random_drop(z, mask, replacement), mask

    def forward(self, **tensors: torch.Tensor) -> torch.Tensor:
        mask = tensors.get("mask")
        if mask is None:
            raise TypeError("random-dropping forward needs mask='b h w' (from .drop); it adds no loss term")
        return mask.float().mean().detach()
