"""Discrete transition schedules with an absorbing [MASK] state (VQ-Diffusion, METHODS.md B.1).

A schedule fixes, for t = 1..T, the one-step probabilities of a real token (index < K) to

- stay:                 alpha_t + beta_t
- move to another real: beta_t each (K beta_t in total, with the "stay" share included once)
- become [MASK]:        gamma_t,               alpha_t = 1 - K beta_t - gamma_t,

[MASK] (index K) being absorbing. The cumulative coefficients of q(x_t | x_0) have the same form:
``alpha_bar_t = prod alpha_i``, ``1 - gamma_bar_t = prod (1 - gamma_i)``,
``beta_bar_t = (1 - alpha_bar_t - gamma_bar_t) / K`` (the block ``alpha I + beta 11^T`` is closed
under products, so these are exact).

Both families here parameterise the *cumulative* curves linearly in t, as the released code does
(``alpha_schedule`` in ``diffusion_transformer.py``): ``alpha_bar`` falls linearly from
``alpha_bar_start`` to ``alpha_bar_end`` and ``gamma_bar`` rises linearly from ``gamma_bar_start``
to ``gamma_bar_end``; ``K beta_bar = 1 - alpha_bar - gamma_bar`` is then linear too. Per-step values
follow from ratios of consecutive cumulative values.

Committed schedules are never changed in place (STYLE.md lesson 2): new curves get a new name.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from dlbench.interfaces import ComponentConfig, DiscreteSchedule
from dlbench.registry import DlbenchError


class DiscreteScheduleError(DlbenchError, ValueError):
    """A discrete schedule whose coefficients are not valid probabilities."""


class LinearCumulativeConfig(ComponentConfig):
    """Endpoints of the linear cumulative curves (t = 1 and t = T)."""

    alpha_bar_start: float = Field(0.99999, gt=0, le=1)
    alpha_bar_end: float = Field(0.000009, gt=0, le=1)
    gamma_bar_start: float = Field(0.000009, ge=0, lt=1)
    gamma_bar_end: float = Field(0.99999, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "LinearCumulativeConfig":
        for name in ("start", "end"):
            a, g = getattr(self, f"alpha_bar_{name}"), getattr(self, f"gamma_bar_{name}")
            if a + g >= 1:
                raise ValueError(
                    f"alpha_bar_{name} + gamma_bar_{name} = {a + g} must be < 1 so that the uniform-replace "
                    "mass K*beta_bar stays positive (the posterior divides by it); lower one of them"
                )
        if self.alpha_bar_end > self.alpha_bar_start or self.gamma_bar_end < self.gamma_bar_start:
            raise ValueError("alpha_bar must fall (alpha_bar_end <= alpha_bar_start) and gamma_bar rise with t")
        return self


def linear_cumulative_coefficients(
    num_steps: int,
    num_classes: int,
    *,
    alpha_bar_start: float,
    alpha_bar_end: float,
    gamma_bar_start: float,
    gamma_bar_end: float,
) -> dict[str, torch.Tensor]:
    """One-step and cumulative (alpha, beta, gamma), float64 ``"T"`` (index 0 is t = 1).

    The released code's ``alpha_schedule`` (METHODS.md B.1) with ``K = num_classes`` real tokens.
    """
    if num_steps < 2:
        raise DiscreteScheduleError(f"a discrete schedule needs num_steps >= 2, got {num_steps}")
    if num_classes < 2:
        raise DiscreteScheduleError(f"a discrete schedule needs num_classes (K real tokens) >= 2, got {num_classes}")
    frac = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    alpha_bar = alpha_bar_start + frac * (alpha_bar_end - alpha_bar_start)
    gamma_bar = gamma_bar_start + frac * (gamma_bar_end - gamma_bar_start)
    beta_bar = (1 - alpha_bar - gamma_bar) / num_classes
    prev_alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    prev_gamma_bar = torch.cat([torch.zeros(1, dtype=torch.float64), gamma_bar[:-1]])
    alpha = alpha_bar / prev_alpha_bar
    gamma = 1 - (1 - gamma_bar) / (1 - prev_gamma_bar)
    beta = (1 - alpha - gamma) / num_classes
    coef = dict(alpha=alpha, beta=beta, gamma=gamma, alpha_bar=alpha_bar, beta_bar=beta_bar, gamma_bar=gamma_bar)
    check_coefficients(coef, num_classes)
    return coef


def check_coefficients(coef: dict[str, torch.Tensor], num_classes: int) -> None:
    """Every one-step and cumulative coefficient is a probability, ``beta``'s are > 0 (the
    x_0-parameterised posterior divides by ``q(x_t | x_0)``) and each row sums to one."""
    for name in ("alpha", "beta", "alpha_bar", "beta_bar"):
        v = coef[name]
        if not bool((v > 0).all() and (v <= 1).all()):
            bad = int(torch.nonzero(~((v > 0) & (v <= 1)))[0, 0]) + 1
            raise DiscreteScheduleError(
                f"schedule coefficient {name} at t={bad} is {float(v[bad - 1]):.3g}, outside (0, 1]: the cumulative "
                "curves must give alpha_t <= 1 - gamma_t at every step; change the endpoints"
            )
    for name in ("gamma", "gamma_bar"):
        v = coef[name]
        if not bool(((v >= 0) & (v < 1)).all()):
            raise DiscreteScheduleError(f"schedule coefficient {name} leaves [0, 1); change the endpoints")
    for a, b, g in (("alpha", "beta", "gamma"), ("alpha_bar", "beta_bar", "gamma_bar")):
        total = coef[a] + num_classes * coef[b] + coef[g]
        if not torch.allclose(total, torch.ones_like(total), atol=1e-9):
            raise DiscreteScheduleError(f"{a} + K*{b} + {g} != 1 (max error {float((total - 1).abs().max()):.3g})")


class _LinearCumulativeSchedule(DiscreteSchedule):
    Config: ClassVar[type[ComponentConfig]] = LinearCumulativeConfig

    def __init__(self, config: LinearCumulativeConfig | None = None, **_: object):
        self.config = config if config is not None else self.Config()

    def coefficients(self, num_steps: int, num_classes: int) -> dict[str, torch.Tensor]:
        """Float64 ``"T"`` tensors ``alpha, beta, gamma, alpha_bar, beta_bar, gamma_bar`` (index 0 = t=1);
        ``num_classes`` is K, the number of real tokens (the [MASK] state is extra)."""
        return linear_cumulative_coefficients(num_steps, num_classes, **self.config.model_dump())


class VQDiffusionAlpha1Schedule(_LinearCumulativeSchedule):
    """Released VQ-Diffusion code schedule (`alpha1`): gamma_bar 9e-6 -> 0.99999, effectively mask-only.

    ``alpha_bar + gamma_bar = 0.999999`` at every t, so ``K beta_bar = 1e-6``: almost no uniform
    replacement (METHODS.md B.1 "Gotcha"). These are the defaults of diffusers' ``VQDiffusionScheduler``.
    """

    Config: ClassVar[type[ComponentConfig]] = LinearCumulativeConfig


class MaskAndReplaceConfig(LinearCumulativeConfig):
    """Paper schedule (Gu et al. Sec. 4.1): gamma_bar rises linearly to ~0.9, K beta_bar to ~0.1."""

    gamma_bar_end: float = Field(0.9, ge=0, lt=1)


class MaskAndReplaceSchedule(_LinearCumulativeSchedule):
    """Paper mask-and-replace schedule: gamma_bar_T = 0.9, K beta_bar_T ~= 0.1 (alpha_bar_T ~= 0).

    At t = T about 10% of the tokens are uniformly random instead of [MASK] (METHODS.md B.1).
    """

    Config: ClassVar[type[ComponentConfig]] = MaskAndReplaceConfig
