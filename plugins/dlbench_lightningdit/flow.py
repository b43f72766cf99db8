"""Rectified flow as LightningDiT trains and samples it (METHODS.md §D.3): pure functions of tensors.

Convention of the released code (``transport/``, SiT's linear path): **t = 0 is noise, t = 1 is data**.

    x_t = t * x + (1 - t) * eps,      u = d x_t / d t = x - eps          (velocity target)

The network predicts the velocity ``v(x_t, t)``; sampling integrates ``dx/dt = v`` from ``t = 0`` (``x = eps``)
to ``t = 1``. Shapes: ``x, eps, v "b c ..."`` (channels on axis 1, as LightningDiT's ``"b c h w"``),
``t "b"``.

Sections: path and loss, time sampling, guidance, sampler.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "apply_cfg",
    "cfg_active",
    "cfg_velocity",
    "euler_sample",
    "interpolate",
    "logit_normal_cdf",
    "logit_normal_quantile",
    "logit_normal_sample",
    "sampling_times",
    "shift_time",
    "velocity_loss",
    "velocity_target",
]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t "b"`` -> ``"b 1 1 ..."`` broadcastable against ``like "b ..."``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))) if t.dim() else t


# ---------------------------------------------------------------------------------------------
# Path and loss
# ---------------------------------------------------------------------------------------------


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t x + (1 - t) eps`` (ICPlan ``compute_mu_t``; t = 0 noise, t = 1 data). ``"b ...", "b ...", "b"``."""
    tb = _bcast(t, x)
    return tb * x + (1 - tb) * eps


def velocity_target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``u = d x_t / dt = x - eps``, constant along each straight path. ``"b ..."``."""
    return x - eps


def velocity_loss(v: torch.Tensor, u: torch.Tensor, *, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample velocity MSE and velocity-direction (cosine) loss (METHODS.md §D.3; FasterDiT).

    ``mse[b] = mean_{c,...} (v - u)^2``; ``cos[b] = mean_{...} (1 - cos(v[b, :, ...], u[b, :, ...]))`` with the
    cosine taken over the channel axis at each spatial position (``F.cosine_similarity(..., dim=1)``, eps 1e-8, as
    the released ``Transport.training_losses``). ``"b c ..." -> ("b", "b")``, in float32 or wider.
    """
    v = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
    u = u.to(v.dtype)
    reduce = tuple(range(1, v.dim()))
    mse = (v - u).pow(2).mean(dim=reduce)
    cos = 1 - F.cosine_similarity(v, u, dim=channel_dim)
    cos = cos.mean(dim=tuple(range(1, cos.dim()))) if cos.dim() > 1 else cos
    return mse, cos


# ---------------------------------------------------------------------------------------------
# Time sampling and the timestep shift
# ---------------------------------------------------------------------------------------------


def logit_normal_sample(n: int, mean: float = 0.0, std: float = 1.0, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``t = sigmoid(mean + std * z)``, ``z ~ N(0, 1)`` (SD3's logit-normal; LightningDiT ``use_lognorm`` with
    mean 0, std 1). ``"n"`` on the generator's device (CPU without one)."""
    z = torch.randn(n, generator=generator, device=None if generator is None else generator.device)
    return torch.sigmoid(mean + std * z)


def logit_normal_cdf(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """``P(T <= t) = Phi((logit(t) - mean) / std)`` for ``t`` in (0, 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    z = (torch.log(t) - torch.log1p(-t) - mean) / std
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def logit_normal_quantile(p: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`logit_normal_cdf`: ``sigmoid(mean + std * Phi^-1(p))``."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.sigmoid(mean + std * math.sqrt(2) * torch.erfinv(2 * p - 1))


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift ``t' = s t / (1 + (s - 1) t)`` (LightningDiT ``transport/integrators.py`` ``compute_tm``).

    A Moebius map of [0, 1] onto itself fixing 0 and 1, increasing for ``s > 0``; ``s = 1`` is the identity,
    shift ``1/s`` inverts shift ``s``. With ``t = 0`` at the noise end, ``s < 1`` (released: 0.3) spends more
    sampling steps at high noise.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0 (1 = no shift), got {shift}")
    t = torch.as_tensor(t)
    # 1 + (s - 1) t written as s t + (1 - t): the endpoints map exactly onto 0 and 1 in floating point
    return shift * t / (shift * t + (1 - t))


def sampling_times(steps: int, shift: float = 1.0, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Euler grid ``shift_time(linspace(0, 1, steps + 1))``, ``"steps+1"``, from noise (0) to data (1).

    ``steps`` is the number of Euler steps (network evaluations without guidance). The released code passes
    ``num_sampling_steps`` grid *points* to torchdiffeq, i.e. ``num_sampling_steps - 1`` steps.
    """
    if steps < 1:
        raise ValueError(f"sampling needs at least 1 step, got {steps}")
    return shift_time(torch.linspace(0.0, 1.0, steps + 1, dtype=dtype), shift).to(device)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance with an interval
# ---------------------------------------------------------------------------------------------


def cfg_active(t: float, interval_start: float) -> bool:
    """Guidance is applied at flow time ``t`` iff ``t >= interval_start``: no guidance in the high-noise part
    ``t < interval_start`` (released ``forward_with_cfg``: ``if t < cfg_interval_start: cond only``; 0.125)."""
    return float(t) >= interval_start


def apply_cfg(
    v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, *, channels: int | None = None, channel_dim: int = 1,
) -> torch.Tensor:
    """``v_uncond + scale (v_cond - v_uncond)`` on the first ``channels`` channels (all when None), ``v_cond`` on
    the rest. ``"b c ..."``.

    ``channels = 3`` is the released code's quirk (``forward_with_cfg`` guides ``model_out[:, :3]`` only and keeps
    the conditional output for the other channels; inherited from DiT, hustvl/LightningDiT#21).
    """
    guided = v_uncond + scale * (v_cond - v_uncond)
    if channels is None or channels >= v_cond.shape[channel_dim]:
        return guided
    idx = torch.arange(v_cond.shape[channel_dim], device=v_cond.device)
    shape = [1] * v_cond.dim()
    shape[channel_dim] = -1
    return torch.where((idx < channels).reshape(shape), guided, v_cond)


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_velocity(
    cond: Velocity,
    cond_and_uncond: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    *,
    interval_start: float = 0.0,
    channels: int | None = None,
) -> Velocity:
    """The sampler's velocity with guidance in an interval: at times ``t`` with :func:`cfg_active`,
    ``apply_cfg(*cond_and_uncond(x, t), scale, channels=channels)`` (two network evaluations); elsewhere
    ``cond(x, t)`` only (one). ``t "b"`` holds one time for the whole batch (the sampler's grid)."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not cfg_active(float(t.reshape(-1)[0]), interval_start):
            return cond(x, t)
        v_c, v_u = cond_and_uncond(x, t)
        return apply_cfg(v_c, v_u, scale, channels=channels)

    return velocity


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


def euler_sample(
    velocity: Velocity,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Explicit Euler for ``dx/dt = velocity(x, t)`` over ``times "k+1"`` (increasing, noise -> data):
    ``x_{i+1} = x_i + (t_{i+1} - t_i) velocity(x_i, t_i)`` (torchdiffeq ``method='euler'`` on a fixed grid, as the
    released sampler). ``velocity(x "b ...", t "b") -> "b ..."``. ``callback(i, t_{i+1}, x_{i+1}, v_i)`` after
    each step. Returns ``x`` at ``times[-1]``.
    """
    b = x.shape[0]
    for i in range(len(times) - 1):
        t0, t1 = float(times[i]), float(times[i + 1])
        v = velocity(x, torch.full((b,), t0, dtype=x.dtype, device=x.device))
        x = x + (t1 - t0) * v.to(x.dtype)
        if callback is not None:
            callback(i, t1, x, v)
    return x
