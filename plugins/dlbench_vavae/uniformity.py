"""Latent uniformity figures (VA-VAE, arXiv 2501.01423, Table 6; METHODS.md §D.2): how evenly a latent space is
occupied, from a Gaussian kernel density estimate (KDE) evaluated at the latents themselves.

VA-VAE reports three numbers of the KDE density of the latents: its coefficient of variation (std / mean, lower is
more uniform), its Gini coefficient (lower is more uniform) and the normalised entropy of the densities taken as a
distribution over the points (``H(p) / log n`` with ``p_i = rho_i / sum_j rho_j``; higher is more uniform, 1 for equal
densities). The paper estimates the density of its d = 32 latents after a 2-D projection; dlbench has no such
projection in its dependencies and uses **one KDE per latent channel** (each channel of the normalised latents
``"n h w d"`` pooled over images and positions), averaging the three figures over channels. The figures are therefore
per-dimension uniformity, comparable between tokenizers with the same ``d``, not with the paper's numbers.
Pure functions, float64.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gini", "normalized_entropy", "kde_density", "density_uniformity", "latent_uniformity"]


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values ``"n"``: ``sum_i (2i - n - 1) x_(i) / (n sum x)`` over the sorted
    values (0: all equal; ``(n - 1) / n``: one value holds everything)."""
    v = x.double().flatten().sort().values
    n = v.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return ((2 * i - n - 1) * v).sum() / (n * v.sum())


def normalized_entropy(x: torch.Tensor) -> torch.Tensor:
    """``H(p) / log n`` of ``p = x / sum x`` for non-negative ``x "n"`` (1: uniform; 0: one point)."""
    p = x.double().flatten()
    p = p / p.sum()
    h = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return h / math.log(p.numel())


def kde_density(points: torch.Tensor, at: torch.Tensor | None = None, bandwidth: float | None = None) -> torch.Tensor:
    """1-D Gaussian KDE of ``points "n"`` evaluated at ``at "m"`` (default: the points themselves), bandwidth by
    Scott's rule ``sigma * n^(-1/5)`` (``scipy.stats.gaussian_kde``'s default in one dimension)."""
    x = points.double().flatten()
    q = x if at is None else at.double().flatten()
    n = x.numel()
    h = bandwidth if bandwidth is not None else float(x.std(unbiased=True)) * n ** (-0.2)
    h = max(h, 1e-12)
    z = (q[:, None] - x[None, :]) / h
    return torch.exp(-0.5 * z * z).sum(1) / (n * h * math.sqrt(2 * math.pi))


def density_uniformity(density: torch.Tensor) -> dict[str, float]:
    """``{"density_cv", "gini", "norm_entropy"}`` of densities ``"n"`` (Table 6's three figures)."""
    d = density.double().flatten()
    return {"density_cv": float(d.std(unbiased=False) / d.mean()), "gini": float(gini(d)),
            "norm_entropy": float(normalized_entropy(d))}


def latent_uniformity(latents: torch.Tensor, *, max_points: int = 2000, seed: int = 0) -> dict[str, float]:
    """Per-channel KDE uniformity of latents ``"... d"`` (every leading axis pooled), averaged over the ``d``
    channels (module docstring). At most ``max_points`` values per channel (a seeded subsample: the KDE costs
    ``O(n^2)``)."""
    flat = latents.double().reshape(-1, latents.shape[-1])
    if flat.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        flat = flat[torch.randperm(flat.shape[0], generator=g)[:max_points]]
    per = [density_uniformity(kde_density(flat[:, j])) for j in range(flat.shape[1])]
    return {k: sum(p[k] for p in per) / len(per) for k in per[0]}
