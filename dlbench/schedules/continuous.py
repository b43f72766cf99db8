"""Continuous variance-preserving noise schedules given by their log-SNR ``lambda(t)`` (METHODS.md §A.1).

``z_t = alpha_t z_0 + sigma_t eps`` with ``alpha_t^2 = sigmoid(lambda(t))``, ``sigma_t^2 = sigmoid(-lambda(t))``
(Kingma et al. 2021, VDM, Eq. 2-4), so ``alpha^2 + sigma^2 = 1`` for every family. ``t`` runs from clean
(``t = 0``) to noise (``t = 1``); ``lambda`` is monotone decreasing. Each family is clipped to
``[t_min, t_max]`` so ``lambda`` stays finite: ``logsnr(t)`` evaluates the family at ``clamp(t, t_min, t_max)``
and methods draw training times from that interval.

Families (a committed family is never changed in place; changed math gets a new name, STYLE.md lesson 2):

- ``cosine``:          ``lambda(t) = -2 log tan(pi t / 2)``             (Nichol & Dhariwal 2021 as log-SNR)
- ``shifted-cosine``:  ``lambda(t) = -2 log tan(pi t / 2) + s``         (Hoogeboom et al. 2023; VQ-LCMD §A.1)
- ``linear``:          ``lambda(t) = lambda_max + (lambda_min - lambda_max) t``   (linear in log-SNR)

Each also gives the analytic derivative ``dlogsnr(t) = lambda'(t)`` used by the VDM ELBO weight
``-lambda'(t) e^{lambda(t)} / 2`` (METHODS.md §A.2.2).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from dlbench.interfaces import ComponentConfig, ContinuousSchedule
from dlbench.registry import DlbenchError

__all__ = [
    "CosineSchedule",
    "LinearLogSNRSchedule",
    "ScheduleConfigError",
    "ShiftedCosineSchedule",
    "cosine_logsnr",
    "cosine_dlogsnr",
    "diffuse",
]


class ScheduleConfigError(DlbenchError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def cosine_logsnr(t: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """``lambda(t) = -2 log tan(pi t / 2) + shift`` (METHODS.md §A.1), elementwise, finite for t in (0, 1)."""
    return -2.0 * torch.log(torch.tan(0.5 * math.pi * t)) + shift


def cosine_dlogsnr(t: torch.Tensor) -> torch.Tensor:
    """``d lambda / dt = -2 pi / sin(pi t)`` for the (shifted) cosine family; the shift drops out."""
    return -2.0 * math.pi / torch.sin(math.pi * t)


def diffuse(z0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The forward process ``z_t = alpha_t z_0 + sigma_t eps`` (VDM Eq. 2; METHODS.md §A.1): ``z0``, ``eps``
    ``"b ..."``, per-sample ``alpha``, ``sigma`` ``"b"`` broadcast over the trailing axes. No dtype is changed:
    callers choose the precision (e.g. float64 for likelihood bounds)."""
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return alpha.reshape(shape) * z0 + sigma.reshape(shape) * eps


# ---------------------------------------------------------------------------------------------
# Schedule classes
# ---------------------------------------------------------------------------------------------


class _ClippedConfig(ComponentConfig):
    t_min: float = Field(1e-3, gt=0.0, lt=1.0, description="smallest time (largest finite log-SNR)")
    t_max: float = Field(1.0 - 1e-3, gt=0.0, lt=1.0, description="largest time (smallest finite log-SNR)")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be < t_max ({self.t_max}); e.g. t_min=1e-3, t_max=0.999")
        return self


class _Clipped(ContinuousSchedule):
    """Shared clipping and helpers; subclasses implement ``_logsnr`` and ``_dlogsnr`` on (t_min, t_max)."""

    Config = _ClippedConfig

    def __init__(self, config: _ClippedConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def t_min(self) -> float:
        return self.config.t_min

    @property
    def t_max(self) -> float:
        return self.config.t_max

    def clip(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t).clamp(self.t_min, self.t_max)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(clamp(t, t_min, t_max))``, same shape and dtype as ``t``."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.float()
        return self._logsnr(self.clip(t))

    def dlogsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda'(t)`` evaluated at the clipped time (analytic, negative)."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.float()
        return self._dlogsnr(self.clip(t))

    def logsnr_range(self) -> tuple[float, float]:
        """``(lambda(t_max), lambda(t_min))``: the finite log-SNR range after clipping."""
        ends = self.logsnr(torch.tensor([self.t_max, self.t_min], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def _logsnr(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dlogsnr(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CosineSchedule(_Clipped):
    """Cosine schedule as log-SNR, ``lambda(t) = -2 log tan(pi t / 2)`` (Nichol & Dhariwal 2021)."""

    def _logsnr(self, t):
        return cosine_logsnr(t, 0.0)

    def _dlogsnr(self, t):
        return cosine_dlogsnr(t)


class ShiftedCosineConfig(_ClippedConfig):
    shift: float = Field(
        -2.0,
        description="log-SNR shift s; s < 0 means more noise at every t (s = 2 log(base/scale), Hoogeboom 2023)",
    )


class ShiftedCosineSchedule(_Clipped):
    """Shifted cosine, ``lambda(t) = -2 log tan(pi t / 2) + s`` (METHODS.md §A.1; simple diffusion)."""

    Config = ShiftedCosineConfig

    def _logsnr(self, t):
        return cosine_logsnr(t, self.config.shift)

    def _dlogsnr(self, t):
        return cosine_dlogsnr(t)


class LinearLogSNRConfig(_ClippedConfig):
    t_min: float = Field(0.0, ge=0.0, lt=1.0)
    t_max: float = Field(1.0, gt=0.0, le=1.0)
    logsnr_max: float = Field(10.0, description="lambda(0)")
    logsnr_min: float = Field(-10.0, description="lambda(1)")

    @model_validator(mode="after")
    def _decreasing(self):
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min ({self.logsnr_min}) must be < logsnr_max ({self.logsnr_max}) so lambda decreases in t"
            )
        return self


class LinearLogSNRSchedule(_Clipped):
    """Linear in log-SNR, ``lambda(t) = lambda_max + (lambda_min - lambda_max) t`` (VDM's fixed baseline)."""

    Config = LinearLogSNRConfig

    def _logsnr(self, t):
        c = self.config
        return c.logsnr_max + (c.logsnr_min - c.logsnr_max) * t

    def _dlogsnr(self, t):
        c = self.config
        return torch.full_like(t, c.logsnr_min - c.logsnr_max)

