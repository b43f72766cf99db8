"""Embedding strategies (dlbench.embeddings): learnable / codebook / one-hot, and their diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench.embeddings import CodebookEmbedding, EmbeddingConfigError, LearnableEmbedding, OneHotEmbedding


class _StubTokenizer:
    """Stands in for a trained tokenizer: only ``codebook()`` is read."""

    def __init__(self, table):
        self.table = table

    def codebook(self):
        return self.table


def test_learnable_lookup_and_normalisation():
    emb = LearnableEmbedding(LearnableEmbedding.Config(dim=6, normalize=True), codebook_size=10)
    with torch.no_grad():
        emb.table[3] *= 50.0  # a row blown up in scale must come back to norm sqrt(d)
    norms = emb.weight().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((10,), math.sqrt(6.0)))
    tokens = torch.tensor([[3, 0], [9, 3]])
    out = emb(tokens)
    assert out.shape == (2, 2, 6)
    torch.testing.assert_close(out[0, 0], emb.weight()[3])
    out.sum().backward()
    assert emb.table.grad is not None and emb.table.grad[3].abs().sum() > 0 and emb.table.grad[1].abs().sum() == 0


def test_codebook_is_frozen_and_standardised():
    raw = torch.randn(8, 3) * 0.01 + 5.0  # tiny spread around a big offset, like an unnormalised VQ codebook
    emb = CodebookEmbedding(CodebookEmbedding.Config(), codebook_size=8, tokenizer=_StubTokenizer(raw))
    w = emb.weight()
    torch.testing.assert_close(w.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.std(0), torch.ones(3), atol=1e-5, rtol=0)
    assert list(emb.parameters()) == []  # frozen: nothing for the optimizer
    raw_emb = CodebookEmbedding(CodebookEmbedding.Config(standardize=False), codebook_size=8, tokenizer=_StubTokenizer(raw))
    torch.testing.assert_close(raw_emb.weight(), raw)


def test_codebook_errors_are_actionable():
    with pytest.raises(EmbeddingConfigError, match="needs a tokenizer"):
        CodebookEmbedding(CodebookEmbedding.Config(), codebook_size=8, tokenizer=None)
    with pytest.raises(EmbeddingConfigError, match="codebook_size=9"):
        CodebookEmbedding(CodebookEmbedding.Config(), codebook_size=9, tokenizer=_StubTokenizer(torch.randn(8, 3)))


def test_one_hot_and_registry_dict():
    emb = OneHotEmbedding(OneHotEmbedding.Config(scale=2.0), codebook_size=5)
    assert emb.dim == 5
    torch.testing.assert_close(emb(torch.tensor([4])), torch.tensor([[0.0, 0, 0, 0, 2.0]]))
    from dlbench.plugins import get_registry

    assert {"learnable", "codebook", "one-hot"} <= set(get_registry().names("embedding"))


def test_diagnostics_see_collapse_relative_to_sigma():
    emb = LearnableEmbedding(LearnableEmbedding.Config(dim=4), codebook_size=6)
    healthy = emb.diagnostics(sigma=1.0)
    with torch.no_grad():
        emb.table.mul_(0.01)
    collapsed = emb.diagnostics(sigma=1.0)
    assert collapsed["min_pairwise_dist_over_sigma"] == pytest.approx(healthy["min_pairwise_dist_over_sigma"] * 0.01)
    assert emb.diagnostics(sigma=0.01)["mean_pairwise_dist_over_sigma"] == pytest.approx(
        healthy["mean_pairwise_dist_over_sigma"]
    )
