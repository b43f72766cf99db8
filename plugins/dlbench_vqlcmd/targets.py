"""Where the consistency-matching target is evaluated: the time ``s`` and the point ``z_s`` (METHODS.md §A.2.4).

Pure functions of tensors. Shapes: ``b`` batch, ``h w`` token grid, ``d`` embedding dim; per-sample times and
schedule coefficients are ``"b"``.

Two ways to put ``z_s`` on the trajectory of ``z_t = alpha_t z0 + sigma_t eps``:

- ``same-noise`` (consistency *training*, Song et al. 2023 Sec. 5): ``z_s = alpha_s z0 + sigma_s eps``, the
  conditional PF-ODE trajectory given ``z0``. Its target tends to the data token as ``s -> t_min``, so at large
  ``t`` the student's optimum is the calibrated posterior (CDCD's denoising cross-entropy is the limit).
- ``ddim`` (consistency *distillation*): one deterministic DDIM step from ``z_t`` to ``s`` with an ``x0``
  estimate. With ``s`` far below ``t`` and the student's own ``x0`` estimate this is self-distillation: the
  teacher rounds a point built from the student's guess plus the current noise, so the student learns a
  sharpened, noise-dependent copy of itself (the defect measured in docs/methods/vqlcmd.md). Use it with
  ``s = t - delta`` and a teacher step, as consistency distillation does.
"""

from __future__ import annotations

from typing import Literal

import torch

from dlbench.schedules.continuous import diffuse

from .losses import ddim_step

__all__ = ["cm_point", "cm_time"]


def cm_time(
    t: torch.Tensor,
    t_min: float,
    mode: Literal["uniform", "delta"] = "uniform",
    delta: float = 0.1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The cleaner time ``s <= t`` of L_CM, ``"b" -> "b"``.

    ``uniform``: ``s ~ U[t_min, t)`` (non-adjacent times, as the reviews describe); ``delta``:
    ``s = max(t - delta, t_min)`` (adjacent times, Song et al.'s discretised consistency loss).
    """
    if mode == "uniform":
        u = torch.rand(t.shape, device=t.device, dtype=t.dtype, generator=generator)
        return t_min + (t - t_min) * u
    if mode == "delta":
        return (t - delta).clamp_min(t_min)
    raise ValueError(f"unknown s sampling {mode!r}; use 'uniform' or 'delta'")


def cm_point(
    kind: Literal["same-noise", "ddim"],
    *,
    z0: torch.Tensor,
    eps: torch.Tensor,
    z_t: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    x0_hat: torch.Tensor | None = None,
) -> torch.Tensor:
    """``z_s "b h w d"`` on the trajectory of ``z_t`` (inputs ``"b h w d"``, coefficients ``"b"``), detached.

    ``same-noise``: ``alpha_s z0 + sigma_s eps``. ``ddim``: ``ddim_step(z_t, x0_hat, ...)`` (needs ``x0_hat``);
    with ``x0_hat = z0`` the two coincide (the CT-style identity tested in test_vqlcmd_math.py).
    """
    if kind == "same-noise":
        return diffuse(z0, eps, alpha_s.to(z0.dtype), sigma_s.to(z0.dtype)).detach()
    if kind == "ddim":
        if x0_hat is None:
            raise ValueError("cm_point('ddim') needs x0_hat (the x0 estimate of the DDIM step)")
        return ddim_step(z_t.detach(), x0_hat.detach(), alpha_t, sigma_t, alpha_s, sigma_s).detach()
    raise ValueError(f"unknown consistency target point {kind!r}; use 'same-noise' or 'ddim'")
