"""Time weighting of VQ-LCMD's diffusion term and where its mass lies (METHODS.md §A.2.2).

Pure functions of tensors: ``logsnr``, ``dlogsnr`` and weights are per-sample ``"b"``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["WEIGHTINGS", "diffusion_weight", "weight_mass"]

Weighting = Literal["elbo", "sigmoid", "constant"]
WEIGHTINGS: tuple[str, ...] = ("elbo", "sigmoid", "constant")


def diffusion_weight(
    logsnr: torch.Tensor,
    dlogsnr: torch.Tensor,
    weighting: Weighting = "elbo",
    *,
    sigmoid_bias: float = 0.0,
    max_weight: float | None = None,
) -> torch.Tensor:
    """Per-sample weight ``w(t)`` of ``||z0 - z0_hat||^2`` under ``t ~ U`` (METHODS.md §A.2.2), ``"b" -> "b"``.

    - ``elbo``: the continuous-time VDM ELBO weight ``-lambda'(t) e^{lambda(t)} / 2`` (Kingma et al. 2021, Eq. 17
      rewritten in x-space: ``||eps - eps_hat||^2 = e^lambda ||x - x_hat||^2``).
    - ``sigmoid``: Kingma & Gao (2023) sigmoid weighting ``sigmoid(b - lambda)`` of the ELBO,
      ``-lambda'(t) e^lambda sigmoid(b - lambda) / 2 = -lambda'(t) e^b sigmoid(lambda - b) / 2``. The factor
      ``e^lambda sigmoid(b - lambda)`` is bounded by ``e^b``, **the weight is not**: ``-lambda'(t)`` of the cosine
      family is ``2 pi / sin(pi t)``, so the weight grows like ``1 / t`` as ``t -> 0`` (about 1000 at
      ``t_min = 1e-3``) and most of its mass sits at the smallest times (:func:`weight_mass`).
    - ``constant``: 1 (plain x0 mean-squared error, equal weight at every ``t``).
    ``max_weight`` additionally clamps the weight from above (the bounded-weight option).
    """
    if weighting == "elbo":
        w = -0.5 * dlogsnr * torch.exp(logsnr)
    elif weighting == "sigmoid":
        # e^lambda * sigmoid(b - lambda) = e^b * sigmoid(lambda - b): computed in the stable form
        w = -0.5 * dlogsnr * torch.exp(torch.as_tensor(sigmoid_bias, dtype=logsnr.dtype)) * torch.sigmoid(
            logsnr - sigmoid_bias
        )
    elif weighting == "constant":
        w = torch.ones_like(logsnr)
    else:
        raise ValueError(f"unknown diffusion weighting {weighting!r}; use 'elbo', 'sigmoid' or 'constant'")
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return w


def weight_mass(
    schedule,
    weighting: Weighting,
    edges: list[float],
    *,
    sigmoid_bias: float = 0.0,
    max_weight: float | None = None,
    points: int = 400_001,
) -> list[float]:
    """Fraction of ``E_{t ~ U[t_min, t_max]} w(t)`` in each interval ``[edges[i], edges[i+1])`` (float64 trapezoid).

    ``schedule`` is a :class:`dlbench.interfaces.ContinuousSchedule` with ``t_min``/``t_max``; ``edges`` are
    clipped to that range. Returns ``len(edges) - 1`` fractions of the total mass.
    """
    t = torch.linspace(schedule.t_min, schedule.t_max, points, dtype=torch.float64)
    w = diffusion_weight(schedule.logsnr(t), schedule.dlogsnr(t), weighting, sigmoid_bias=sigmoid_bias,
                         max_weight=max_weight)
    seg = 0.5 * (w[1:] + w[:-1]) * (t[1:] - t[:-1])  # trapezoid per cell, "points-1"
    mid = 0.5 * (t[1:] + t[:-1])
    total = seg.sum()
    return [float(seg[(mid >= lo) & (mid < hi)].sum() / total) for lo, hi in zip(edges[:-1], edges[1:])]
