"""VQ-Diffusion transition kernel: forward marginals, posteriors, the x0-parameterised reverse step.

State space: K real tokens ``0..K-1`` plus the absorbing [MASK] at index ``K`` (METHODS.md B.1).
Distributions are log-probabilities with the class axis *last*: ``"b n c"`` with ``c = K+1``
(or ``K`` for distributions over x_0, which is never [MASK]). Time is the paper's index
``t = 1..T``; ``t = 0`` is the data (identity kernel).

Coefficient tables are float64 ``"T+1"`` buffers (index 0 = identity); the tensors fed to the math
are cast to the working dtype only after gathering, so float32 training keeps float64 schedules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: log-probability floor, as in the released code (``clamp(-70, 0)``): exp(-70) ~ 4e-31
LOG_FLOOR = -70.0


def log_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``"b n" -> "b n c"`` log one-hot (``-inf`` off the index; exact, no 1e-30 fudge)."""
    return torch.log(F.one_hot(x, num_classes).to(torch.float64))


def log_marginal(log_p: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, log_c: torch.Tensor) -> torch.Tensor:
    """Push a distribution over real tokens through a kernel with coefficients (a, b, c).

    ``log_p "b n K"`` (normalised over K) -> ``"b n K+1"``: real ``j``: ``log(a p_j + b)``, [MASK]:
    ``log c``. With cumulative coefficients this is q(x_t | x_0 ~ p) (METHODS.md B.1, closed form);
    ``log_a, log_b, log_c`` broadcast against ``"b 1 1"``.
    """
    real = torch.logaddexp(log_p + log_a, log_b.expand_as(log_p))
    mask = log_c.expand(*log_p.shape[:-1], 1)
    return torch.cat([real, mask], dim=-1)


def log_likelihood_rows(
    x_t: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, log_c: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``log q(x_t | x_prev = k)`` for every real ``k``: ``"b n" -> "b n K"``.

    x_t real ``j``: ``log(a + b)`` at ``k = j``, ``log b`` elsewhere; x_t = [MASK]: ``log c`` for every k.
    (The row for ``x_prev = [MASK]`` is 1 if x_t is [MASK] else 0; see :func:`log_posterior`.)
    """
    is_mask = (x_t == num_classes)[..., None]
    same = F.one_hot(x_t.clamp(max=num_classes - 1), num_classes).bool()
    log_ab = torch.logaddexp(log_a, log_b)
    real = torch.where(same, log_ab, log_b.expand(*x_t.shape, num_classes))
    return torch.where(is_mask, log_c.expand_as(real), real)


def log_posterior(
    log_p_x0: torch.Tensor,
    x_t: torch.Tensor,
    cumulative_t: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cumulative_s: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    transition_st: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """x0-parameterised reverse step ``p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)``, s < t.

    ``log_p_x0 "b n K"`` (normalised), ``x_t "b n"`` -> ``"b n K+1"``, clamped to ``[-70, 0]``.
    Uses the released code's trick (``q_posterior``, METHODS.md B.2): since
    ``q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0)``, weight each candidate x0 by
    ``p(x0) / q(x_t | x0)``, push the weights through the cumulative kernel to s, and multiply by the
    likelihood ``q(x_t | x_s)``: O(K) per position instead of O(K^2). With a one-hot ``log_p_x0`` this
    is the exact posterior q(x_s | x_t, x0) (Bayes' rule). ``s = t - 1`` is the ancestral step; larger
    gaps are the fast sampler's ``p(x_{t-Delta} | x_t)`` (Gu et al. Sec. 4.3, exact multi-step kernel).
    Each coefficient triple is ``(log_a, log_b, log_c)`` shaped ``"b 1 1"``.
    """
    num_classes = log_p_x0.shape[-1]
    # log q(x_t | x0 = k): the normaliser of Bayes' rule for each candidate x0
    log_q_t_x0 = log_likelihood_rows(x_t, *cumulative_t, num_classes)
    q = log_p_x0 - log_q_t_x0
    lse = torch.logsumexp(q, dim=-1, keepdim=True)
    q = q - lse  # normalise so that log_marginal's "+ b" term is the b * sum(weights) it should be
    # likelihood q(x_t | x_s = k) for k real, and for x_s = [MASK] (absorbing: 1 iff x_t is [MASK])
    lik = log_likelihood_rows(x_t, *transition_st, num_classes)
    lik_mask = torch.where(x_t == num_classes, 0.0, float("-inf")).to(lik.dtype)[..., None]
    out = log_marginal(q, *cumulative_s) + torch.cat([lik, lik_mask], dim=-1) + lse
    return out.clamp(LOG_FLOOR, 0.0)


def kl_categorical(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` over the last axis: ``"b n c" -> "b n"`` (the code's ``multinomial_kl``)."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def gumbel_argmax(logits: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """Categorical sample by the Gumbel-max trick: ``argmax(logits + g)``, ``"b n c" -> "b n"``."""
    return (logits + gumbel).argmax(dim=-1)


class TransitionKernel(nn.Module):
    """Coefficient tables of one discrete schedule (float64, non-persistent: derived from config).

    ``coefficients`` is what :meth:`DiscreteSchedule.coefficients` returns (``"T"``, index 0 = t=1);
    the tables here are ``"T+1"`` with index 0 = t=0 (``alpha_bar = 1``, ``beta_bar = gamma_bar = 0``).
    """

    def __init__(self, coefficients: dict[str, torch.Tensor], num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.num_steps = int(coefficients["alpha"].shape[0])
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        pad = {"alpha": one, "beta": zero, "gamma": zero, "alpha_bar": one, "beta_bar": zero, "gamma_bar": zero}
        for name, first in pad.items():
            table = torch.cat([first, coefficients[name].to(torch.float64)])
            self.register_buffer(name, table, persistent=False)

    @property
    def mask_id(self) -> int:
        return self.num_classes

    def _gather(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)[t].reshape(-1, 1, 1)

    def cumulative(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """``(log alpha_bar_t, log beta_bar_t, log gamma_bar_t)``, each ``"b 1 1"``; t ``"b"`` in 0..T."""
        return tuple(self._gather(n, t).log().to(dtype) for n in ("alpha_bar", "beta_bar", "gamma_bar"))

    def transition(self, s: torch.Tensor, t: torch.Tensor, dtype: torch.dtype = torch.float32):
        """Coefficients of ``q(x_t | x_s)`` for ``0 <= s < t``: ``"b 1 1"`` logs of (alpha, beta, gamma).

        One step (``s = t-1``) reads the schedule's own values; a longer jump composes them:
        ``alpha = abar_t/abar_s``, ``1-gamma = (1-gbar_t)/(1-gbar_s)``, ``beta = (1-gamma-alpha)/K``.
        """
        if bool((s >= t).any()) or bool((s < 0).any()):
            raise ValueError("transition(s, t) needs 0 <= s < t")
        a_bar_t, a_bar_s = self._gather("alpha_bar", t), self._gather("alpha_bar", s)
        keep_t, keep_s = 1 - self._gather("gamma_bar", t), 1 - self._gather("gamma_bar", s)
        alpha = a_bar_t / a_bar_s
        keep = keep_t / keep_s
        beta = (keep - alpha) / self.num_classes
        gamma = 1 - keep
        one_step = (s == t - 1).reshape(-1, 1, 1)
        alpha = torch.where(one_step, self._gather("alpha", t), alpha)
        beta = torch.where(one_step, self._gather("beta", t), beta)
        gamma = torch.where(one_step, self._gather("gamma", t), gamma)
        return tuple(v.log().to(dtype) for v in (alpha, beta, gamma))

    # -- convenience wrappers over the pure functions above ------------------------------------

    def q_xt_given_x0(self, x0: torch.Tensor, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``log q(x_t | x_0)``: ``x0 "b n"`` (real ids), ``t "b"`` -> ``"b n K+1"`` (closed form, B.1)."""
        return log_marginal(log_onehot(x0, self.num_classes).to(dtype), *self.cumulative(t, dtype))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
        """``x_t ~ q(x_t | x_0)`` by Gumbel-max; ``gumbel "b n c"`` standard Gumbel noise."""
        return gumbel_argmax(self.q_xt_given_x0(x0, t, gumbel.dtype), gumbel)

    def posterior(
        self, log_p_x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p(x_s | x_t)`` mixing ``q(x_s | x_t, x0)`` over ``log_p_x0 "b n K"``; ``s`` defaults to
        ``t - 1``. ``"b n K+1"``. See :func:`log_posterior`."""
        s = t - 1 if s is None else s
        dtype = log_p_x0.dtype
        return log_posterior(
            log_p_x0, x_t, self.cumulative(t, dtype), self.cumulative(s, dtype), self.transition(s, t, dtype)
        )
