"""VQ-Diffusion samplers and the transforms of p(x~0 | x_t) they share (METHODS.md B.6).

Every sampler has one signature (k-diffusion style, STYLE.md lesson 4)::

    sampler(denoise, x, times, kernel, rng, *, callback=None, **options) -> x_0 "b n"

- ``denoise(x "b n", t: int) -> log p(x~0 | x_t) "b n K"`` (classifier-free guidance and truncation
  already applied, see :func:`guide` and :func:`truncate`);
- ``x "b n"``: the start state (all [MASK]);
- ``times``: descending network times ``T = t_0 > t_1 > ... >= 1`` (one network call each);
- ``kernel``: a :class:`~dlbench_vqdiffusion.kernel.TransitionKernel`;
- ``rng``: :class:`dlbench.seeding.PerSampleRNG` (row i depends only on seed i -> batch-size independent);
- ``callback(info)`` after each step with dlbench's sampler keys (``dlbench.interfaces.SAMPLE_CALLBACK_KEYS``):
  ``{"i", "steps", "t" (= t / T), "x" "b n", "x0_logits" (log p(x~0 | x_t) "b n K")}``.

Final tokens never contain [MASK]: the last ancestral jump (to t = 0) samples among real tokens only
(its [MASK] mass is exactly zero since gamma_bar_0 = 0) and the reveal samplers fill every masked
position at their last step; both assert it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlbench_vqdiffusion.kernel import LOG_FLOOR, TransitionKernel, gumbel_argmax

Denoise = Callable[[torch.Tensor, int], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Transforms of log p(x~0 | x_t)
# ---------------------------------------------------------------------------------------------


def truncate(log_p: torch.Tensor, r: float) -> torch.Tensor:
    """Truncation sampling (Gu et al. Sec. 4.3; code ``_get_truncation``): per position keep the
    smallest set of most likely tokens whose mass reaches ``r``; the rest get log-prob -70.
    The kept set is renormalised. ``"b n K" -> "b n K"``; ``r >= 1`` is the identity."""
    if r >= 1.0:
        return log_p
    sorted_lp, order = log_p.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(dim=-1) - sorted_lp.exp()
    keep_sorted = mass_before < r  # the top token always stays (mass_before = 0)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = log_p.masked_fill(~keep, float("-inf"))
    kept = kept - torch.logsumexp(kept, dim=-1, keepdim=True)
    return kept.masked_fill(~keep, LOG_FLOOR)


def guide(log_cond: torch.Tensor, log_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Discrete classifier-free guidance (Tang et al. 2022, Improved VQ-Diffusion; code ``cf_predict_start``):
    ``log p~ = log p(.|null) + s (log p(.|y) - log p(.|null))``, renormalised and clamped to [-70, 0].
    ``"b n K"`` each; ``s = 1`` returns ``log_cond`` unchanged."""
    if abs(scale - 1.0) < 1e-12:
        return log_cond
    mixed = log_uncond + scale * (log_cond - log_uncond)
    return (mixed - torch.logsumexp(mixed, dim=-1, keepdim=True)).clamp(LOG_FLOOR, 0.0)


def sharpen(log_p: torch.Tensor, purity: torch.Tensor, weight: float) -> torch.Tensor:
    """Purity sharpening (Improved VQ-Diffusion Eq. 11): ``log_softmax((1 + r purity_n) log p)``.
    ``log_p "b n K"``, ``purity "b n"`` -> ``"b n K"``."""
    if weight <= 0:
        return log_p
    return torch.log_softmax((1 + weight * purity)[..., None] * log_p, dim=-1).clamp(LOG_FLOOR, 0.0)


# ---------------------------------------------------------------------------------------------
# Time grids and reveal budgets
# ---------------------------------------------------------------------------------------------


def time_grid(num_steps: int, steps: int | None = None, stride: int | None = None) -> list[int]:
    """Descending network times from T: every step (default), ``steps`` evenly spaced ones, or a
    fixed ``stride`` Delta (fast inference: T, T-Delta, ...). The chain then jumps to the next grid
    time and finally to 0."""
    if steps is not None and stride is not None:
        raise ValueError("give either steps or stride, not both")
    if stride is not None:
        return list(range(num_steps, 0, -stride))
    steps = num_steps if steps is None else steps
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in [1, T={num_steps}], got {steps}")
    grid = torch.linspace(num_steps, 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


def reveal_schedule(num_positions: int, num_steps: int) -> list[int]:
    """Tokens revealed per step, as even as possible, summing to ``num_positions`` (the high-quality
    sampler's ``n_sample`` budget, e.g. ~10.24 per step for 1024 tokens over 100 steps)."""
    edges = torch.linspace(0, num_positions, num_steps + 1, dtype=torch.float64).round().long()
    return (edges[1:] - edges[:-1]).tolist()


# ---------------------------------------------------------------------------------------------
# Samplers (one signature)
# ---------------------------------------------------------------------------------------------


def _step_info(i: int, times: list[int], t: int, kernel: TransitionKernel, x: torch.Tensor,
               log_p_x0: torch.Tensor) -> dict[str, Any]:
    """The sampler-callback dict (``dlbench.interfaces.SAMPLE_CALLBACK_KEYS``) of grid step ``i`` at time ``t``."""
    return {"i": i, "steps": len(times), "t": t / kernel.num_steps, "x": x, "x0_logits": log_p_x0}


def sample_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    times: list[int],
    kernel: TransitionKernel,
    rng: Any,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **_: Any,
) -> torch.Tensor:
    """Ancestral sampling, Algorithm of Gu et al. (Sec. 4.3): at each grid time t, predict x~0 and draw
    ``x_s ~ sum q(x_s | x_t, x~0) p(x~0 | x_t)`` for *every* position (tokens may be replaced).
    A grid coarser than 1..T is fast inference: the jump t -> s uses the exact multi-step posterior."""
    b, k = x.shape[0], kernel.num_classes
    for i, t in enumerate(times):
        s = times[i + 1] if i + 1 < len(times) else 0
        log_p_x0 = denoise(x, t)
        tt = torch.full((b,), t, dtype=torch.long, device=x.device)
        log_prev = kernel.posterior(log_p_x0, x, tt, torch.full_like(tt, s))
        noise = rng.gumbel(x.shape[1], k + 1).to(log_prev)
        if s == 0:
            # q(x_0 | x_1, x0) puts exactly zero mass on [MASK] (gamma_bar_0 = 0); sample real tokens only
            x = gumbel_argmax(log_prev[..., :k], noise[..., :k])
        else:
            x = gumbel_argmax(log_prev, noise)
        if callback is not None:
            callback(_step_info(i, times, t, kernel, x, log_p_x0))
    assert not bool((x == kernel.mask_id).any()), "ancestral sampler emitted [MASK]"
    return x


def sample_reveal(
    denoise: Denoise,
    x: torch.Tensor,
    times: list[int],
    kernel: TransitionKernel,
    rng: Any,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    purity_weight: float | None = None,
    **_: Any,
) -> torch.Tensor:
    """Improved VQ-Diffusion high-quality inference (``prior_rule=1``) or, with ``purity_weight`` set,
    the purity prior (``prior_rule=2``, Eq. 11). At each grid step only a budget of masked positions
    (:func:`reveal_schedule`) is filled, with tokens drawn directly from p(x~0 | x_t); revealed tokens
    stay fixed. Positions are chosen without replacement among masked ones, uniformly (high-quality)
    or with probability ∝ purity = max_k p(x~0 = k) (normalised by its max over positions), by
    Gumbel-top-k; purity also sharpens p to ``softmax((1 + r purity) log p)``."""
    b, n = x.shape
    k, mask_id = kernel.num_classes, kernel.mask_id
    budget = reveal_schedule(n, len(times))
    for i, t in enumerate(times):
        log_p_x0 = denoise(x, t)
        masked = x == mask_id
        if purity_weight is None:
            score = torch.ones(b, n, dtype=log_p_x0.dtype, device=x.device)
            log_draw = log_p_x0
        else:
            purity = log_p_x0.exp().amax(dim=-1)
            score = purity / purity.amax(dim=1, keepdim=True).clamp_min(1e-10)
            log_draw = sharpen(log_p_x0, score, purity_weight)
        candidate = gumbel_argmax(log_draw, rng.gumbel(n, k).to(log_draw))
        position_keys = score.clamp_min(1e-30).log() + rng.gumbel(n).to(score)
        position_keys = position_keys.masked_fill(~masked, float("-inf"))
        remaining = int(masked.sum(dim=1).min())
        count = remaining if i == len(times) - 1 else min(budget[i], remaining)
        if count > 0:
            chosen_idx = position_keys.topk(count, dim=1).indices
            chosen = torch.zeros_like(masked).scatter(1, chosen_idx, True) & masked
            x = torch.where(chosen, candidate, x)
        if callback is not None:
            callback(_step_info(i, times, t, kernel, x, log_p_x0))
    assert not bool((x == mask_id).any()), "reveal sampler left [MASK] tokens"
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ancestral": sample_ancestral,
    "fast": sample_ancestral,
    "high-quality": sample_reveal,
    "purity": sample_reveal,
}


class SamplingOptions(BaseModel):
    """``sampling.options`` of ``vq-diffusion`` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal["ancestral", "fast", "high-quality", "purity"] = Field(
        "ancestral", description="ancestral | fast (strided) | high-quality | purity (Improved VQ-Diffusion)"
    )
    truncation: float = Field(1.0, gt=0, le=1, description="truncation r: keep the top tokens with mass >= r")
    stride: int | None = Field(None, ge=1, description="fast inference stride Delta (network times T, T-D, ...)")
    purity_weight: float = Field(1.0, ge=0, description="r of Eq. 11 (purity sharpening); purity sampler only")
