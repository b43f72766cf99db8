"""VQ-Diffusion training loss (METHODS.md B.3, the released code's ``_train_loss``).

Per sample (t drawn with probability p(t)):

- ``L_t = sum_n KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` for t > 1,
  ``L_1 = -sum_n log p(x_0 | x_1)`` (decoder NLL);
- ``L_aux = sum_n -log p(x~0 = x0 | x_t)`` (cross-entropy on x0; at t = 1 the code uses L_1 again);
- ``L = (L_t + lambda * w(t) * L_aux) / p(t)``, averaged over batch and positions,
  ``w(t) = 2 - (t-1)/T`` (adaptive weight; the code's 0-based ``1 + (1 - t/T)``).

t is drawn by :class:`ImportanceTimeSampler`: uniform until every t has been seen more than
``warmup`` times, then ``p(t) ∝ sqrt(E[L_t^2])`` (Nichol & Dhariwal 2021 Sec. 3.3).
"""

from __future__ import annotations

import torch
from torch import nn

from dlbench_vqdiffusion.kernel import kl_categorical


class ImportanceTimeSampler(nn.Module):
    """Importance sampling of t in 1..T with a running ``E[L_t^2]`` history.

    The history and counts are persistent buffers, so a resumed run keeps its sampling distribution.
    """

    def __init__(self, num_steps: int, *, warmup: int = 10, momentum: float = 0.1, enabled: bool = True):
        super().__init__()
        self.num_steps, self.warmup, self.momentum, self.enabled = num_steps, warmup, momentum, enabled
        self.register_buffer("loss_sq_history", torch.zeros(num_steps, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_steps, dtype=torch.long))

    @property
    def warmed_up(self) -> bool:
        return self.enabled and bool((self.count > self.warmup).all())

    def probabilities(self) -> torch.Tensor:
        """``p(t)`` for t = 1..T, ``"T"`` float64: uniform before warm-up, else ∝ sqrt(E[L_t^2])."""
        if not self.warmed_up:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64, device=self.count.device)
        w = torch.sqrt(self.loss_sq_history + 1e-10) + 1e-4
        # the decoder term L_1 is on another scale; the code gives t=1 the weight of t=2
        w[0] = w[1]
        return w / w.sum()

    def sample(self, batch: int, device: torch.device, generator: torch.Generator | None = None):
        """``(t "b" long in 1..T, p(t) "b" float)``."""
        p = self.probabilities()
        idx = torch.multinomial(p.float().cpu(), batch, replacement=True, generator=generator).to(device)
        return idx + 1, p.to(device)[idx].float()

    @torch.no_grad()
    def update(self, t: torch.Tensor, loss: torch.Tensor) -> None:
        """Record per-sample losses ``"b"`` at times ``t "b"``: an EMA of ``L_t^2`` per t (samples sharing a
        t are averaged first, so the update does not depend on their order) and a seen-count."""
        idx = (t - 1).to(self.count.device)
        sq = loss.detach().to(torch.float64).pow(2).to(self.count.device)
        sums = torch.zeros_like(self.loss_sq_history).index_add_(0, idx, sq)
        counts = torch.zeros_like(self.count).index_add_(0, idx, torch.ones_like(idx))
        seen = counts > 0
        mean = sums[seen] / counts[seen]
        self.loss_sq_history[seen] = (1 - self.momentum) * self.loss_sq_history[seen] + self.momentum * mean
        self.count += counts


def vlb_terms(
    log_true: torch.Tensor,
    log_model: torch.Tensor,
    log_p_x0: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
    mask_weight: tuple[float, float] = (1.0, 1.0),
) -> dict[str, torch.Tensor]:
    """Per-sample loss terms, each ``"b"`` (summed over positions n).

    ``log_true, log_model "b n c"``: q(x_{t-1} | x_t, x0) and p(x_{t-1} | x_t); ``log_p_x0 "b n K"``;
    ``x0, x_t "b n"``; ``t "b"`` in 1..T. ``mask_weight = (masked, unmasked)`` position weights.
    Returns ``vlb`` (L_t: KL or, at t = 1, decoder NLL), ``aux`` (x0 cross-entropy; decoder NLL at
    t = 1, as in the code) and ``decoder_nll``.
    """
    is_mask = (x_t == mask_id).to(log_model.dtype)
    weight = is_mask * mask_weight[0] + (1 - is_mask) * mask_weight[1]
    kl = (kl_categorical(log_true, log_model) * weight).sum(-1)
    decoder_nll = -log_model.gather(-1, x0[..., None]).squeeze(-1).sum(-1)
    ce = (-log_p_x0.gather(-1, x0[..., None]).squeeze(-1) * weight).sum(-1)
    first = t == 1
    return {
        "vlb": torch.where(first, decoder_nll, kl),
        "aux": torch.where(first, decoder_nll, ce),
        "decoder_nll": decoder_nll,
    }


def aux_weight(t: torch.Tensor, num_steps: int, adaptive: bool = True) -> torch.Tensor:
    """``w(t) = 2 - (t-1)/T`` (``adaptive_auxiliary_loss``), else 1; ``"b" -> "b"``."""
    if not adaptive:
        return torch.ones_like(t, dtype=torch.float32)
    return 2.0 - (t - 1).float() / num_steps
