"""Latent uniformity figures (VA-VAE Table 6): closed forms, a peer KDE, and the mechanism (an evenly spread
latent scores more uniform than a clustered one)."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench_vavae.uniformity import density_uniformity, gini, kde_density, latent_uniformity, normalized_entropy


def test_closed_forms():
    n = 8
    one_hot = torch.zeros(n)
    one_hot[3] = 1.0
    assert float(gini(torch.ones(n))) == pytest.approx(0.0, abs=1e-12)
    assert float(gini(one_hot)) == pytest.approx((n - 1) / n)
    assert float(gini(torch.tensor([1.0, 3.0]))) == pytest.approx(0.25)  # |1 - 3| / (2 * 2 * mean 2)
    assert float(normalized_entropy(torch.ones(n))) == pytest.approx(1.0)
    assert float(normalized_entropy(one_hot)) == pytest.approx(0.0, abs=1e-12)
    assert float(normalized_entropy(torch.tensor([1.0, 1.0, 2.0]))) == pytest.approx(
        -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)) / math.log(3))
    u = density_uniformity(torch.tensor([1.0, 3.0]))
    assert u["density_cv"] == pytest.approx(0.5)


def test_kde_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1
    at = torch.linspace(-5, 7, 25, dtype=torch.float64)
    ref = torch.from_numpy(scipy_stats.gaussian_kde(x.numpy())(at.numpy()))
    assert torch.allclose(kde_density(x, at), ref, rtol=1e-10)


def test_spread_latents_are_more_uniform_than_clustered():
    g = torch.Generator().manual_seed(1)
    spread = torch.rand(1500, 2, generator=g, dtype=torch.float64) * 4 - 2
    # three clusters holding 70 / 20 / 10 % of the mass: the density at the points varies between them
    centers = torch.tensor([-1.5, 0.0, 1.5], dtype=torch.float64)
    which = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), 3000, replacement=True, generator=g).reshape(1500, 2)
    clustered = centers[which] + 0.2 * torch.randn(1500, 2, generator=g, dtype=torch.float64)
    a, b = latent_uniformity(spread), latent_uniformity(clustered)
    assert a["density_cv"] < b["density_cv"] and a["gini"] < b["gini"] and a["norm_entropy"] > b["norm_entropy"]
    # leading axes are pooled: "n h w d" gives the same figures as its flattened "(n h w) d"
    z = torch.randn(20, 3, 3, 2, generator=g)
    assert latent_uniformity(z) == latent_uniformity(z.reshape(-1, 2))
