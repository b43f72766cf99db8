"""Gaussian marginal anchors for continuous latents: the moments per position and class, and seeded samples
that reproduce them."""

from __future__ import annotations

import pytest
import torch

from dlbench_lightningdit.anchors import gaussian_marginals, sample_gaussian_marginals


def _data(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    mean = torch.stack([torch.full((2, 3, 4), 1.0), torch.linspace(-2, 2, 24).reshape(2, 3, 4)])
    std = torch.stack([torch.full((2, 3, 4), 0.5), torch.full((2, 3, 4), 2.0)])
    x = mean[labels] + std[labels] * torch.randn(n, 2, 3, 4, generator=g)
    return x, labels, mean, std


def test_moments_per_class_and_pooled():
    x, labels, mean, std = _data()
    m, s = gaussian_marginals(x, labels, 2)
    assert m.shape == s.shape == (2, 2, 3, 4) and m.dtype == torch.float64
    torch.testing.assert_close(m[1], x[labels == 1].double().mean(0))
    torch.testing.assert_close(m.float(), mean, atol=0.15, rtol=0)
    torch.testing.assert_close(s.float(), std, atol=0.15, rtol=0)
    pm, ps = gaussian_marginals(x)
    assert pm.shape == (1, 2, 3, 4)
    torch.testing.assert_close(pm[0], x.double().mean(0))
    torch.testing.assert_close(ps[0], x.double().std(0, unbiased=False))
    with pytest.raises(ValueError, match="every class"):
        gaussian_marginals(x[labels == 0], labels[labels == 0], 2)


def test_seeded_samples_reproduce_the_marginals():
    x, labels, _, _ = _data()
    m, s = gaussian_marginals(x, labels, 2)
    seeds = torch.arange(4000)
    y = torch.arange(4000) % 2
    out = sample_gaussian_marginals(m, s, seeds, y)
    assert out.shape == (4000, 2, 3, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out[y == 1].double().mean(0), m[1], atol=0.25, rtol=0)
    torch.testing.assert_close(out[y == 0].double().std(0), s[0], atol=0.05, rtol=0)
    # row i depends on its seed and label only: batch composition does not matter
    torch.testing.assert_close(sample_gaussian_marginals(m, s, seeds[5:7], y[5:7]), out[5:7])
    pooled = sample_gaussian_marginals(*gaussian_marginals(x), seeds[:3])
    assert pooled.shape == (3, 2, 3, 4)
