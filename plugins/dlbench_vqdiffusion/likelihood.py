"""VQ-Diffusion's variational bound on held-out tokens, in nats per token (METHODS.md B.2, B.3).

For one token grid ``x_0`` (``N`` positions) the VLB of the discrete diffusion (Gu et al. 2022, Eq. 4; the
released code's ``_train_loss`` summed over *all* t instead of one importance-sampled t) is

    -log p(x_0 | y) <= L_T + sum_{t=2..T} E_q[ KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t, y)) ]
                        + E_q[ -log p(x_0 | x_1, y) ]

with ``L_T = KL(q(x_T | x_0) || p(x_T))`` and the fixed prior ``p(x_T)``: [MASK] with probability
``gamma_bar_T``, each real token ``(1 - gamma_bar_T) / K`` (the code's ``kl_prior``). Every KL is summed
over positions. The expectation over ``x_t ~ q(x_t | x_0)`` is estimated with one draw per t per Monte
Carlo repeat, so each grid's estimate is unbiased; the spread over grids gives the standard error.
"""

from __future__ import annotations

from typing import Callable

import torch

from dlbench_vqdiffusion.kernel import TransitionKernel, log_onehot

#: ``(x_t "b n", t "b" in 1..T, labels "b" | None) -> log p(x~0 | x_t, y) "b n K"``
PredictX0 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` over the last axis with ``0 log 0 = 0`` (q may have exact zeros): ``"b n c" -> "b n"``."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def prior_kl(kernel: TransitionKernel, x0: torch.Tensor) -> torch.Tensor:
    """``L_T = sum_n KL(q(x_T | x_0) || p(x_T))``, ``x0 "b n"`` -> ``"b"`` float64."""
    T = kernel.num_steps
    t = torch.full((x0.shape[0],), T, dtype=torch.long, device=x0.device)
    log_q = kernel.q_xt_given_x0(x0, t, torch.float64)
    gbar = kernel.gamma_bar[T].to(torch.float64)
    real = torch.log((1 - gbar) / kernel.num_classes).expand(kernel.num_classes)
    log_prior = torch.cat([real, gbar.log().reshape(1)])
    return _kl(log_q, log_prior.to(log_q.device)).sum(-1)


@torch.no_grad()
def vlb_per_grid(
    predict_x0: PredictX0,
    kernel: TransitionKernel,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """One Monte Carlo estimate of the VLB (module docstring) per grid, in nats per token.

    ``x0 "b n"`` real token ids; returns ``"b"`` float64. One network call per t = 1..T. The Gumbel noise
    of ``x_t ~ q(x_t | x_0)`` comes from ``generator`` (CPU), never from the global RNG.
    """
    b, n = x0.shape
    k = kernel.num_classes
    total = prior_kl(kernel, x0)
    onehot = log_onehot(x0, k)
    for step in range(1, kernel.num_steps + 1):
        t = torch.full((b,), step, dtype=torch.long, device=x0.device)
        u = torch.rand(b, n, k + 1, generator=generator, dtype=torch.float64).clamp(1e-20, 1 - 1e-12)
        x_t = kernel.q_sample(x0, t, (-torch.log(-torch.log(u))).to(x0.device))
        log_p_x0 = predict_x0(x_t, t, labels).to(torch.float64)
        log_model = kernel.posterior(log_p_x0, x_t, t)
        if step == 1:  # decoder term -log p(x_0 | x_1)
            total = total - log_model.gather(-1, x0[..., None]).squeeze(-1).sum(-1)
        else:
            log_true = kernel.posterior(onehot, x_t, t)
            total = total + _kl(log_true, log_model).sum(-1)
    return total / n
