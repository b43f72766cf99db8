"""Embedding strategies: how token ids become the vectors a continuous generator diffuses (DESIGN.md).

- ``learnable``: a trained table ``E "k d"`` (VQ-LCMD / CDCD, METHODS.md §A.1), optionally with rows
  renormalised to norm ``sqrt(d)`` (CDCD) so collapse can only happen in direction, not scale.
- ``codebook``: the tokenizer's frozen code vectors (``tokenizer.codebook()``), optionally standardised to zero
  mean / unit variance per dimension so the schedule's noise scale means the same as for a learned table.
- ``one-hot``: the identity table (``d = k``), the embedding implicit in discrete methods.

Built as ``cls(config, codebook_size=int, tokenizer=Tokenizer | None)``; ``forward`` takes ids of any shape
``"..."`` and returns ``"... d"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dlbench.eval.collapse import collapse_diagnostics
from dlbench.interfaces import ComponentConfig, EmbeddingStrategy, Tokenizer
from dlbench.registry import DlbenchError

__all__ = ["CodebookEmbedding", "EmbeddingConfigError", "LearnableEmbedding", "OneHotEmbedding"]


class EmbeddingConfigError(DlbenchError, ValueError):
    pass


def _check_ids(tokens: torch.Tensor) -> None:
    if tokens.dtype != torch.long:
        raise EmbeddingConfigError(f"embedding expects long token ids, got {tokens.dtype}")


class _Base(EmbeddingStrategy):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``"..." -> "... d"`` rows of :meth:`weight`."""
        _check_ids(tokens)
        return F.embedding(tokens, self.weight())

    def diagnostics(self, sigma: float = 1.0) -> dict[str, float]:
        """Collapse diagnostics of :meth:`weight` relative to ``sigma`` (METHODS.md §A.5)."""
        return collapse_diagnostics(self.weight(), sigma)


class LearnableConfig(ComponentConfig):
    dim: int = Field(16, ge=1, description="embedding dimension d (METHODS.md tiny: 8-16)")
    normalize: bool = Field(False, description="renormalise every row to norm sqrt(d) (CDCD)")
    init_std: float = Field(1.0, gt=0.0, description="N(0, init_std^2) init; 1 gives row norms ~ sqrt(d)")


class LearnableEmbedding(_Base):
    """Learnable table ``E "k d"`` trained jointly with the denoiser (VQ-LCMD, METHODS.md §A.1)."""

    Config = LearnableConfig

    def __init__(self, config: LearnableConfig | None = None, *, codebook_size: int, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config if config is not None else LearnableConfig()
        self.codebook_size, self.dim = int(codebook_size), self.config.dim
        if self.codebook_size < 2:
            raise EmbeddingConfigError(f"codebook_size must be >= 2, got {codebook_size}")
        self.table = nn.Parameter(torch.randn(self.codebook_size, self.dim) * self.config.init_std)

    def weight(self) -> torch.Tensor:
        if not self.config.normalize:
            return self.table
        return F.normalize(self.table, dim=-1) * math.sqrt(self.dim)


class CodebookConfig(ComponentConfig):
    standardize: bool = Field(True, description="zero-mean, unit-variance per dimension (over the k rows)")


class CodebookEmbedding(_Base):
    """The tokenizer's frozen code vectors ``tokenizer.codebook()`` (fixed-embedding baseline)."""

    Config = CodebookConfig

    def __init__(self, config: CodebookConfig | None = None, *, codebook_size: int, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config if config is not None else CodebookConfig()
        if tokenizer is None:
            raise EmbeddingConfigError(
                "embedding 'codebook' needs a tokenizer (its frozen codebook vectors); "
                "build it with tokenizer=... or use embedding 'learnable'"
            )
        table = tokenizer.codebook().detach().to("cpu", torch.float64)
        if table.dim() != 2 or table.shape[0] != codebook_size:
            raise EmbeddingConfigError(
                f"tokenizer.codebook() has shape {tuple(table.shape)}, expected ({codebook_size}, d) for "
                f"codebook_size={codebook_size}; the tokenizer and the method disagree on the codebook"
            )
        if self.config.standardize:
            # why: the schedule's sigma is on the unit-variance scale; raw VQ codes can be tiny or huge
            # (in float64: codebooks can have a large offset and a small spread)
            table = (table - table.mean(0)) / table.std(0).clamp_min(1e-12)
        table = table.float()
        self.codebook_size, self.dim = int(codebook_size), table.shape[1]
        self.register_buffer("table", table)

    def weight(self) -> torch.Tensor:
        return self.table


class OneHotConfig(ComponentConfig):
    scale: float = Field(1.0, gt=0.0, description="row norm of the one-hot vectors")


class OneHotEmbedding(_Base):
    """The identity table ``scale * I_k`` (``d = k``): the embedding implicit in discrete methods."""

    Config = OneHotConfig

    def __init__(self, config: OneHotConfig | None = None, *, codebook_size: int, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config if config is not None else OneHotConfig()
        self.codebook_size = self.dim = int(codebook_size)
        self.register_buffer("table", torch.eye(self.codebook_size) * self.config.scale)

    def weight(self) -> torch.Tensor:
        return self.table
