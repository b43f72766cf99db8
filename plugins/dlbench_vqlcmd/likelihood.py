"""VQ-LCMD's continuous-time ELBO on held-out tokens, in nats per token (METHODS.md §A.2; VDM, Kingma et al.
2021, Eqs. 11-17).

The generative model is ``z_{t_max} ~ N(0, I)``, the reverse diffusion down to ``t_min`` with
``z0_hat = softmax(logits) @ E``, and the token decoder ``P(x | z_{t_min})`` (the denoiser at ``t_min``,
the method's reconstruction term). With ``z_0 = E[x]`` (``"h w d"``) the bound on the *discrete*
likelihood is

    -log p(x | y) <= L_rec + L_diff + L_prior
    L_rec   = E_eps[ -sum_i log P(x_i | z_{t_min}) ]                        (one eps per draw)
    L_diff  = 1/2 int_{lambda(t_max)}^{lambda(t_min)} e^lambda E_eps ||z_0 - z0_hat(z_lambda)||^2 dlambda
    L_prior = sum_i KL(N(alpha_max z_0^i, sigma_max^2 I) || N(0, I))

``L_diff`` is the VDM diffusion loss ``-1/2 int lambda'(t) e^lambda(t) ||.||^2 dt`` written in log-SNR, where
it does not depend on the schedule's parameterisation of time. Estimator: ``M`` log-SNR values per grid,
stratified uniform on ``[lambda(t_max), lambda(t_min)]`` (one uniform draw in each of ``M`` equal strata),
``L_diff ~ (range / M) sum_m 1/2 e^{lambda_m} ||z_0 - z0_hat||^2``; t is recovered from lambda by bisection
(the schedule's log-SNR is monotone). Each grid's estimate is unbiased; the spread over grids is the
standard error.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dlbench.interfaces import ContinuousSchedule
from dlbench.schedules.continuous import diffuse

from .losses import expected_embedding

#: ``(z "b h w d", t "b") -> logits "b h w k"`` (labels already bound)
Posterior = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_of_logsnr(schedule: ContinuousSchedule, lam: torch.Tensor, t_min: float, t_max: float,
                   iters: int = 60) -> torch.Tensor:
    """Invert the (decreasing) log-SNR on ``[t_min, t_max]`` by bisection: ``"m" -> "m"`` float64."""
    lo = torch.full_like(lam, t_min, dtype=torch.float64)
    hi = torch.full_like(lam, t_max, dtype=torch.float64)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = schedule.logsnr(mid).to(torch.float64) > lam  # still too clean: move right
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return (lo + hi) / 2


@torch.no_grad()
def elbo_per_grid(
    posterior: Posterior,
    table: torch.Tensor,
    schedule: ContinuousSchedule,
    tokens: torch.Tensor,
    *,
    t_min: float,
    t_max: float,
    num_t: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One Monte Carlo estimate per grid of the ELBO terms (module docstring), each ``"b"`` float64 in nats
    per token: ``rec``, ``diff``, ``prior`` and their sum ``total``.

    ``tokens "b h w"``, ``table "k d"``; ``num_t`` strata of log-SNR per grid. Noise comes from ``generator``.
    """
    b, h, w = tokens.shape
    n = h * w
    dev = tokens.device
    table = table.float()
    z0 = F.embedding(tokens, table)  # "b h w d"

    def noisy(t: torch.Tensor) -> torch.Tensor:
        a, s = schedule.alpha_sigma(t.to(torch.float64))
        eps = torch.randn(z0.shape, generator=generator, dtype=torch.float64).to(dev)
        return diffuse(z0.double(), eps, a, s).float()

    # reconstruction at t_min
    t0 = torch.full((b,), t_min, dtype=torch.float64, device=dev)
    logits0 = posterior(noisy(t0), t0.float()).double()
    rec = -torch.log_softmax(logits0, -1).gather(-1, tokens[..., None]).squeeze(-1).sum((1, 2))

    # diffusion term, stratified in log-SNR
    lam_lo, lam_hi = (float(v) for v in schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64)))
    width = (lam_hi - lam_lo) / num_t
    diff = torch.zeros(b, dtype=torch.float64, device=dev)
    strata = torch.arange(num_t, dtype=torch.float64)[:, None]
    lams = lam_lo + width * (strata + torch.rand(num_t, b, generator=generator, dtype=torch.float64))
    times = time_of_logsnr(schedule, lams, t_min, t_max)  # "m b", one bisection for all strata
    for m in range(num_t):
        t = times[m].to(dev)
        lam_t = schedule.logsnr(t).to(torch.float64)  # lambda(t(lam)) = lam up to bisection error
        z0_hat = expected_embedding(posterior(noisy(t), t.float()).float(), table).double()
        sq = (z0.double() - z0_hat).pow(2).sum((1, 2, 3))
        diff = diff + width * 0.5 * torch.exp(lam_t) * sq

    # prior KL at t_max, closed form per position
    a1, s1 = schedule.alpha_sigma(torch.tensor(t_max, dtype=torch.float64))
    d = z0.shape[-1]
    prior = 0.5 * (a1**2 * z0.double().pow(2).sum(-1) + d * s1**2 - d - d * torch.log(s1**2)).sum((1, 2))
    return {"rec": rec / n, "diff": diff / n, "prior": prior / n, "total": (rec + diff + prior) / n}
