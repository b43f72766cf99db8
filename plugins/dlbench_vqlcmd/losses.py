"""VQ-LCMD loss terms and the DDIM step as pure functions of tensors (METHODS.md §A.2, §A.3).

Shapes: ``b`` batch, ``h w`` token grid, ``k`` codebook size, ``d`` embedding dim. Per-sample scalars
(``alpha``, ``sigma``, ``lambda``, weights) are ``"b"`` and broadcast over ``"h w d"``.

Reduction convention (a dlbench choice, documented in docs/methods/vqlcmd.md): every term is a *mean over
positions* and batch of a per-position quantity, summed over the ``d`` embedding dims where it has them, so
terms are "nats (or squared units) per token" and their sizes do not depend on the grid size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .weighting import diffusion_weight  # re-exported: the time weights live in weighting.py

__all__ = [
    "consistency_divergence",
    "ddim_step",
    "diffusion_loss",
    "denoising_ce",
    "diffusion_weight",
    "expected_embedding",
    "prior_kl",
    "random_drop",
    "reconstruction_ce",
]


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``"b" -> "b 1 1 ..."`` matching ``like``'s rank (scalars pass through)."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.ndim == 0:
        return x
    return x.reshape(x.shape[0], *([1] * (like.ndim - 1)))


def expected_embedding(logits: torch.Tensor, table: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``z0_hat = softmax(logits / T) @ E`` (CDCD score interpolation, METHODS.md §A.1).

    ``logits "b h w k"``, ``table "k d"`` -> ``"b h w d"``.
    """
    return torch.softmax(logits / temperature, dim=-1) @ table


def reconstruction_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``L_rec = -mean_i log P(x_i | z_{t_min})`` (METHODS.md §A.2.1). ``logits "b h w k"``, ``tokens "b h w"``."""
    return F.cross_entropy(logits.flatten(0, -2).float(), tokens.flatten())


def denoising_ce(logits: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CDCD's diffusion objective: ``mean_{b, i} w_b (-log P(x_i | z_t; t))`` at every sampled ``t``.

    ``logits "b h w k"``, ``tokens "b h w"``, ``weight "b"`` (Dieleman et al. 2022, Sec. 3: score interpolation
    trained by cross-entropy). The table gets gradients only through the input ``z_t``: unlike the L2 of
    :func:`diffusion_loss` it puts no direct pressure on the scale of E.
    """
    ce = F.cross_entropy(logits.flatten(0, -2).float(), tokens.flatten(), reduction="none").view(tokens.shape)
    return (_bcast(weight, ce) * ce).mean()


def diffusion_loss(z0: torch.Tensor, z0_hat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``L_DM = mean_{b, i} w_b ||z0_i - z0_hat_i||^2`` (sum over ``d``; METHODS.md §A.2.2).

    ``z0, z0_hat "b h w d"``, ``weight "b"``. Gradients reach the table through ``z0`` and ``z0_hat``.
    """
    sq = (z0 - z0_hat).pow(2).sum(-1)  # "b h w"
    return (_bcast(weight, sq) * sq).mean()


def prior_kl(z0: torch.Tensor, alpha_1: torch.Tensor | float, sigma_1: torch.Tensor | float) -> torch.Tensor:
    """``KL(N(alpha_1 z0, sigma_1^2 I) || N(0, I))`` per position, averaged (METHODS.md §A.2.3).

    ``= 1/2 (alpha_1^2 ||z0||^2 + d sigma_1^2 - d - d log sigma_1^2)``; ``z0 "b h w d"``.
    """
    d = z0.shape[-1]
    a2 = torch.as_tensor(alpha_1, dtype=z0.dtype, device=z0.device) ** 2
    s2 = torch.as_tensor(sigma_1, dtype=z0.dtype, device=z0.device) ** 2
    return 0.5 * (a2 * z0.pow(2).sum(-1) + d * s2 - d - d * torch.log(s2)).mean()


def ddim_step(
    z_t: torch.Tensor,
    z0_hat: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
) -> torch.Tensor:
    """Deterministic DDIM step ``t -> s`` (Song et al. 2021, Eq. 12 with eta = 0; METHODS.md §A.2.4a, §A.3).

    ``eps_hat = (z_t - alpha_t z0_hat) / sigma_t``, ``z_s = alpha_s z0_hat + sigma_s eps_hat``.
    ``z_t, z0_hat "b h w d"``; ``alpha_*, sigma_* "b"`` (or scalars). With the exact ``z0_hat = z0`` this returns
    ``alpha_s z0 + sigma_s eps`` (the CT-style point on the same trajectory).
    """
    a_t, s_t, a_s, s_s = (_bcast(x, z_t) for x in (alpha_t, sigma_t, alpha_s, sigma_s))
    eps_hat = (z_t - a_t * z0_hat) / s_t
    return a_s * z0_hat + s_s * eps_hat


def consistency_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: Literal["kl", "ce"] = "kl",
) -> torch.Tensor:
    """``L_CM = mean_i D(sg[P_teacher(x_i | z_s)] || P_student(x_i | z_t))`` (METHODS.md §A.2.4).

    ``"b h w k"`` logits each. ``kl``: ``sum_k p_T (log p_T - log p_S)`` (0 when they agree); ``ce``:
    ``-sum_k p_T log p_S`` (same gradient, offset by the teacher entropy). The teacher is detached here, so no
    gradient can flow into the target whatever the caller passes.
    """
    log_ps = torch.log_softmax(student_logits.float(), dim=-1)
    log_pt = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    pt = log_pt.exp()
    if divergence == "kl":
        per = (pt * (log_pt - log_ps)).sum(-1)
    elif divergence == "ce":
        per = -(pt * log_ps).sum(-1)
    else:
        raise ValueError(f"unknown consistency divergence {divergence!r}; use 'kl' or 'ce'")
    return per.mean()


def random_drop(
    z: torch.Tensor, mask: torch.Tensor, replacement: torch.Tensor
) -> torch.Tensor:
    """Random dropping (METHODS.md §A.2.5): positions where ``mask`` is True get ``replacement``.

    ``z "b h w d"``, ``mask "b h w"`` bool, ``replacement "d"`` (a learned [DROP] vector) or ``"b h w d"`` (noise).
    """
    if replacement.ndim == 1:
        replacement = replacement.to(z.dtype).expand_as(z)
    return torch.where(mask[..., None], replacement, z)
