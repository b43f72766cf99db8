"""Probabilistic quantizer math (METHODS.md C.1, C.3; Reg-VQ Algorithm 1). Pure functions.

Each token position carries a distribution over the K codes, ``softmax(logits)``. Two ways to pick
a code, each with a straight-through (ST) backward pass:

- deterministic: ``argmax`` forward, ``softmax`` backward;
- stochastic: ``argmax(logits + g)`` with Gumbel noise ``g`` forward, ``softmax((logits + g) / tau)``
  backward (Gumbel-softmax ST, Jang et al. 2017).

A Bernoulli spatial mask chooses, per position, which of the two feeds the decoder (C.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "squared_distances",
    "distance_logits",
    "adaptive_distance_logits",
    "st_argmax",
    "gumbel_softmax_st",
    "gumbel_temperature",
    "bernoulli_mask",
    "mix_by_mask",
    "code_usage",
]


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``||z - e_k||^2``: ``"b h w d", "k d" -> "b h w k"`` (expanded form, clamped at 0)."""
    return (
        z.pow(2).sum(-1, keepdim=True)
        - 2 * torch.einsum("bhwd,kd->bhwk", z, codebook)
        + codebook.pow(2).sum(-1)
    ).clamp_min(0)


def distance_logits(z: torch.Tensor, codebook: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gumbel-VQ style logits ``-scale * ||z - e_k||^2``: ``"b h w d", "k d" -> "b h w k"`` (C.1).

    A fixed ``scale`` is only informative when it matches the spread of the distances between codes;
    see :func:`adaptive_distance_logits` for the scale-free version (docs/methods/regvq.md).
    """
    return -scale * squared_distances(z, codebook)


def adaptive_distance_logits(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.25) -> torch.Tensor:
    """Distance logits with a per-position temperature tied to the distance spread (C.1, C.2):
    ``"b h w d", "k d" -> "b h w k"``.

    ``logits_ik = -||z_i - e_k||^2 / (T * sg(std_k ||z_i - e_k||^2))``: the Gaussian-mixture posterior
    ``p(k | z_i) ~ exp(-||z_i - e_k||^2 / (2 sigma_i^2))`` with ``2 sigma_i^2`` measured in units of the
    spread of position i's own distances, so the logits have standard deviation ``1/T`` over the codes
    whatever the scale of codes and encoder outputs (at the Taming init, codes ~ +-1/K, the distances
    differ by ~1e-3 and any fixed scale gives a flat softmax). The normaliser is detached: it acts as a
    temperature, not as a loss path, and the prior KL cannot lower its value by flattening every
    distribution through a uniform rescaling of the distances (the C.2 pitfall). The map is monotone per
    position, so ``argmax`` is still the nearest code.
    """
    if not temperature > 0:
        raise ValueError(f"logit temperature must be > 0, got {temperature}")
    d2 = squared_distances(z, codebook)
    spread = d2.detach().std(-1, keepdim=True)
    # guard a degenerate codebook (all codes equal -> spread 0): fall back to a relative floor
    spread = spread.clamp_min(1e-6 * d2.detach().mean(-1, keepdim=True) + 1e-20)
    return -d2 / (temperature * spread)


def st_argmax(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of ``argmax`` with the softmax gradient: ``"... k" -> "... k"`` (Algorithm 1, deterministic).

    Forward value is exactly one-hot; backward is d softmax(logits).
    """
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard + soft - soft.detach()


def gumbel_softmax_st(
    logits: torch.Tensor, tau: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-softmax straight-through sample: ``"... k" -> ("... k" one-hot ST, "..." codes)``.

    ``codes = argmax(logits + g)`` with ``g = -log(-log u)``, u ~ U(0,1), i.e. an exact sample of
    ``softmax(logits)`` (Gumbel-max trick); the gradient is that of ``softmax((logits + g) / tau)``.
    """
    if not tau > 0:
        raise ValueError(f"Gumbel temperature must be > 0, got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    tiny = torch.finfo(logits.dtype).tiny
    neg_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)
    g = -torch.log(neg_log_u)
    y = logits + g
    soft = (y / tau).softmax(-1)
    codes = y.argmax(-1)
    hard = F.one_hot(codes, logits.shape[-1]).to(soft.dtype)
    return hard + soft - soft.detach(), codes


def gumbel_temperature(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Geometric annealing ``tau = start * (end / start) ** min(step / anneal_steps, 1)``.

    ``anneal_steps <= 0`` keeps ``tau = start`` (fixed temperature). Taming's GumbelQuantize anneals
    from 1 towards 1/16 (METHODS.md C.3); geometric interpolation hits both endpoints exactly.
    """
    if anneal_steps <= 0:
        return float(start)
    frac = min(max(step, 0) / anneal_steps, 1.0)
    return float(start * math.exp(frac * math.log(end / start)))


def bernoulli_mask(
    shape: tuple[int, ...], ratio: float, *, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Spatial mask ``M ~ Bernoulli(ratio)`` of ``shape`` (``"b h w"``), bool; True = stochastic (C.3)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"stochastic mask ratio must be in [0, 1], got {ratio}")
    return torch.rand(shape, generator=generator, device=device) < ratio


def mix_by_mask(deterministic: torch.Tensor, stochastic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``X_argmax * (1 - M) + X_gumbel * M`` (C.3): ``"b h w ...", "b h w ...", "b h w" -> "b h w ..."``."""
    m = mask.to(deterministic.dtype)
    while m.dim() < deterministic.dim():
        m = m.unsqueeze(-1)
    return deterministic * (1 - m) + stochastic * m


@torch.no_grad()
def code_usage(codes: torch.Tensor, k: int) -> dict[str, float]:
    """Codebook statistics of a set of token ids (any shape) over K codes (METHODS.md "Minimal C").

    ``usage``: fraction of codes used at least once; ``perplexity``: ``exp(H(p))`` of the empirical
    distribution (K for uniform use, 1 for a single code); ``dead_codes``: codes never used.
    """
    counts = torch.bincount(codes.reshape(-1).long().cpu(), minlength=k).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    used = int((counts > 0).sum())
    return {
        "usage": used / k,
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "dead_codes": float(k - used),
    }
