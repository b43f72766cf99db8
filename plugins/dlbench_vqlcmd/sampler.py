"""DDIM sampling in embedding space (METHODS.md §A.3), k-diffusion style: one function, one signature.

``posterior(z "b h w d", t "b") -> logits "b h w k"`` is the (guided) denoiser; the sampler never sees labels
or the network, so any method diffusing a token-embedding table can reuse it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dlbench.interfaces import ContinuousSchedule

from .losses import ddim_step, expected_embedding

__all__ = ["sample_ddim", "sampling_times"]

Posterior = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sampling_times(steps: int, t_min: float, t_max: float, *, device=None) -> torch.Tensor:
    """``steps`` times evenly spaced from ``t_max`` down to ``t_min`` (both included), ``"steps"``.

    One step is the single evaluation at ``t_max``: the start noise ``z ~ N(0, I)`` is a sample at ``t_max``,
    so the network must see that time (at ``t_min`` it would read pure noise as a nearly clean latent)."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    if steps == 1:
        return torch.tensor([t_max], device=device)
    return torch.linspace(t_max, t_min, steps, device=device)


@torch.no_grad()
def sample_ddim(
    posterior: Posterior,
    z: torch.Tensor,
    times: torch.Tensor,
    schedule: ContinuousSchedule,
    table: torch.Tensor,
    *,
    temperature: float = 1.0,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic DDIM over ``times`` (decreasing), then argmax tokens at the last time (METHODS.md §A.3).

    One network evaluation per entry of ``times``: at each ``t_i`` ``z0_hat = softmax(logits / T) @ E`` and a DDIM
    step to ``t_{i+1}``; at the last time (``t_min``, or ``t_max`` for one step) the tokens are the argmax.
    ``z "b h w d"`` (the start noise), ``table "k d"``. Returns ``(tokens "b h w", logits "b h w k")``.
    """
    b = z.shape[0]
    logits = None
    for i in range(len(times)):
        t = times[i].expand(b).to(z.dtype)
        logits = posterior(z, t)
        if i + 1 < len(times):
            s = times[i + 1].expand(b).to(z.dtype)
            a_t, s_t = schedule.alpha_sigma(t)
            a_s, s_s = schedule.alpha_sigma(s)
            z0_hat = expected_embedding(logits.float(), table, temperature)
            z = ddim_step(z, z0_hat, a_t, s_t, a_s, s_s)
        if callback is not None:
            # dlbench.interfaces.SAMPLE_CALLBACK_KEYS
            callback({"i": i, "steps": len(times), "t": float(times[i]), "x": z, "x0_logits": logits})
    assert logits is not None
    return logits.argmax(-1), logits
