"""VQ-Diffusion schedules and transition kernel against brute force (explicit (K+1)x(K+1) matrices)
and against diffusers' VQDiffusionScheduler as an independent implementation."""

from __future__ import annotations

import pytest
import torch

from dlbench.schedules.discrete import (
    DiscreteScheduleError,
    MaskAndReplaceSchedule,
    VQDiffusionAlpha1Schedule,
    linear_cumulative_coefficients,
)
from dlbench_vqdiffusion.kernel import TransitionKernel, log_onehot

K, T = 6, 7
DISCRETE_SCHEDULES = {"vqdiffusion-alpha1": VQDiffusionAlpha1Schedule, "mask-and-replace": MaskAndReplaceSchedule}
SCHEDULES = sorted(DISCRETE_SCHEDULES)


def one_step_matrix(coef: dict[str, torch.Tensor], t: int, k: int) -> torch.Tensor:
    """Row-stochastic M[i, j] = q(x_t = j | x_{t-1} = i), straight from METHODS.md B.1."""
    a, b, c = (float(coef[n][t - 1]) for n in ("alpha", "beta", "gamma"))
    m = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    m[:k, :k] = a * torch.eye(k, dtype=torch.float64) + b
    m[:k, k] = c
    m[k, k] = 1.0
    return m


def products(coef: dict[str, torch.Tensor], k: int, s: int, t: int) -> torch.Tensor:
    """q(x_t | x_s) as a matrix: M_{s+1} @ ... @ M_t (identity for s = t)."""
    out = torch.eye(k + 1, dtype=torch.float64)
    for i in range(s + 1, t + 1):
        out = out @ one_step_matrix(coef, i, k)
    return out


def make(name: str, k: int = K, steps: int = T):
    coef = DISCRETE_SCHEDULES[name]().coefficients(steps, k)
    return coef, TransitionKernel(coef, k)


# -- schedules ---------------------------------------------------------------------------------


def test_alpha1_schedule_is_effectively_mask_only():
    coef = VQDiffusionAlpha1Schedule().coefficients(100, 1024)
    assert coef["gamma_bar"][-1].item() == pytest.approx(0.99999)
    assert coef["alpha_bar"][0].item() == pytest.approx(0.99999)
    expected = torch.full((100,), 1e-6, dtype=torch.float64)
    torch.testing.assert_close(1024 * coef["beta_bar"], expected, rtol=1e-6, atol=0)


def test_mask_and_replace_schedule_endpoints_and_linearity():
    coef = MaskAndReplaceSchedule().coefficients(100, 1024)
    assert coef["gamma_bar"][-1].item() == pytest.approx(0.9)
    assert (1024 * coef["beta_bar"][-1]).item() == pytest.approx(0.1, abs=1e-4)
    for name in ("alpha_bar", "gamma_bar", "beta_bar"):
        d = coef[name].diff()
        torch.testing.assert_close(d, torch.full_like(d, d[0].item()), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_cumulative_coefficients_are_products_of_one_step(name):
    coef, _ = make(name)
    alpha_bar = torch.cumprod(coef["alpha"], 0)
    keep_bar = torch.cumprod(1 - coef["gamma"], 0)
    torch.testing.assert_close(alpha_bar, coef["alpha_bar"], rtol=1e-12, atol=0)
    torch.testing.assert_close(1 - keep_bar, coef["gamma_bar"], rtol=1e-9, atol=1e-15)


def test_bad_endpoints_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="alpha_bar_end"):
        MaskAndReplaceSchedule.Config(alpha_bar_end=0.2, gamma_bar_end=0.9)
    with pytest.raises(DiscreteScheduleError, match="num_steps"):
        linear_cumulative_coefficients(1, 4, alpha_bar_start=0.9, alpha_bar_end=0.1, gamma_bar_start=0.0,
                                       gamma_bar_end=0.5)


# -- forward marginal --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("k", [3, 16])
def test_closed_form_marginal_equals_matrix_product(name, k):
    coef, kernel = make(name, k=k)
    x0 = torch.arange(k)[None]  # every start token at once, "1 k"
    for t in range(1, T + 1):
        closed = kernel.q_xt_given_x0(x0, torch.tensor([t]), torch.float64)[0].exp()  # "k c"
        brute = products(coef, k, 0, t)[:k]
        torch.testing.assert_close(closed, brute, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(closed.sum(-1), torch.ones(k, dtype=torch.float64))


def test_q_sample_follows_the_marginal():
    coef, kernel = make("mask-and-replace", k=4, steps=5)
    x0 = torch.zeros(1, 40_000, dtype=torch.long)
    t = torch.tensor([4])
    u = torch.rand(1, 40_000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = kernel.q_sample(x0, t, -torch.log(-torch.log(u)))
    freq = torch.bincount(xt[0], minlength=5).double() / xt.numel()
    torch.testing.assert_close(freq, products(coef, 4, 0, 4)[0], atol=0.01, rtol=0)


# -- posterior ---------------------------------------------------------------------------------


def bayes_posterior(coef, k, s, t, x0, xt):
    """q(x_s = . | x_t, x0) = q(x_s | x0) q(x_t | x_s) / q(x_t | x0) from explicit matrices, "c"."""
    num = products(coef, k, 0, s)[x0] * products(coef, k, s, t)[:, xt]
    return num / products(coef, k, 0, t)[x0, xt]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("gap", [1, 3])
def test_posterior_equals_bayes_rule(name, gap):
    coef, kernel = make(name)
    for t in range(1, T + 1):
        s = max(t - gap, 0)
        x0 = torch.arange(K).repeat_interleave(K + 1)[None]  # every (x0, x_t) pair
        xt = torch.arange(K + 1).repeat(K)[None]
        post = kernel.posterior(log_onehot(x0, K), xt, torch.tensor([t]), torch.tensor([s]))[0].exp()
        brute = torch.stack([bayes_posterior(coef, K, s, t, int(a), int(b)) for a, b in zip(x0[0], xt[0])])
        torch.testing.assert_close(post, brute, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(post.sum(-1), torch.ones(len(post), dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_x0_parameterised_reverse_is_the_mixture_of_posteriors(name):
    coef, kernel = make(name)
    g = torch.Generator().manual_seed(1)
    log_p = torch.log_softmax(3 * torch.randn(1, K + 1, K, generator=g, dtype=torch.float64), -1)
    xt = torch.arange(K + 1)[None]  # one position per x_t value
    for t in range(1, T + 1):
        model = kernel.posterior(log_p, xt, torch.tensor([t]))[0].exp()
        for j in range(K + 1):
            mix = sum(log_p[0, j, k].exp() * bayes_posterior(coef, K, t - 1, t, k, j) for k in range(K))
            torch.testing.assert_close(model[j], mix, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_last_step_puts_no_mass_on_mask(name):
    _, kernel = make(name)
    log_p = torch.log_softmax(torch.randn(2, K + 1, K, dtype=torch.float64), -1)
    xt = torch.arange(K + 1).repeat(2, 1)
    post = kernel.posterior(log_p, xt, torch.tensor([1, 1])).exp()
    assert float(post[..., K].max()) < 1e-30  # only the -70 floor
    torch.testing.assert_close(post[..., :K].sum(-1), torch.ones(2, K + 1, dtype=torch.float64))
    # x_0 given x_1 is just p(x~0 | x_1): the posterior of a real x_1 = j given x0 = k is delta(k)
    torch.testing.assert_close(post[..., :K], log_p.exp(), rtol=1e-10, atol=1e-12)


def test_float32_posterior_matches_float64():
    _, kernel = make("vqdiffusion-alpha1", k=64, steps=100)
    g = torch.Generator().manual_seed(2)
    log_p = torch.log_softmax(2 * torch.randn(8, 10, 64, generator=g, dtype=torch.float64), -1)
    xt = torch.randint(0, 65, (8, 10), generator=g)
    t = torch.randint(1, 101, (8,), generator=g)
    p64 = kernel.posterior(log_p, xt, t).exp()
    p32 = kernel.posterior(log_p.float(), xt, t).exp().double()
    torch.testing.assert_close(p32, p64, atol=1e-5, rtol=0)


# -- oracle: diffusers' VQDiffusionScheduler -----------------------------------------------------


@pytest.mark.parametrize("name,gamma_end", [("vqdiffusion-alpha1", 0.99999), ("mask-and-replace", 0.9)])
def test_posterior_matches_diffusers_vq_diffusion_scheduler(name, gamma_end):
    sched_mod = pytest.importorskip("diffusers.schedulers.scheduling_vq_diffusion")
    k, steps, n = 8, 10, 12
    sched = sched_mod.VQDiffusionScheduler(num_vec_classes=k + 1, num_train_timesteps=steps, gamma_cum_end=gamma_end)
    # diffusers stores float32 logs of float64 schedules; rebuild them in float64 from its own helpers
    at, att = sched_mod.alpha_schedules(steps, 0.99999, 0.000009)
    ct, ctt = sched_mod.gamma_schedules(steps, 0.000009, gamma_end)
    bt, btt = (1 - at - ct) / k, (1 - att - ctt) / k
    for attr, v in dict(log_at=at, log_bt=bt, log_ct=ct, log_cumprod_at=att, log_cumprod_bt=btt,
                        log_cumprod_ct=ctt).items():
        setattr(sched, attr, torch.log(torch.tensor(v, dtype=torch.float64)))
    _, kernel = make(name, k=k, steps=steps)

    g = torch.Generator().manual_seed(3)
    log_p = torch.log_softmax(2 * torch.randn(2, n, k, generator=g, dtype=torch.float64), -1)  # "b n k"
    xt = torch.randint(0, k + 1, (2, n), generator=g)
    xt[:, :3] = k  # some masked positions for sure
    for t in range(1, steps + 1):
        ours = kernel.posterior(log_p, xt, torch.tensor([t, t]))  # "b n c"
        # diffusers: 0-based timestep t-1, layout "b c n", mask class last; t-1 = 0 returns p(x0) itself
        theirs = log_p.transpose(1, 2) if t == 1 else sched.q_posterior(log_p.transpose(1, 2), xt, t - 1)
        theirs = theirs.transpose(1, 2)
        if t == 1:
            theirs = torch.cat([theirs, torch.full_like(theirs[..., :1], -70.0)], -1)
        # x_{t-1} = [MASK] is impossible when x_t is real: we clamp it to -70, diffusers leaves
        # log(1e-30) + log gamma_bar + ... (about -55); both are zero probability
        impossible = torch.zeros_like(ours, dtype=torch.bool)
        impossible[..., k] = xt != k
        torch.testing.assert_close(ours[~impossible], theirs[~impossible], atol=1e-5, rtol=0)
        assert bool((ours[impossible] == -70).all()) and bool((theirs[impossible] < -50).all())
        torch.testing.assert_close(ours.exp(), theirs.exp(), atol=1e-12, rtol=1e-5)


def test_diffusers_float32_schedule_agrees_with_ours():
    sched_mod = pytest.importorskip("diffusers.schedulers.scheduling_vq_diffusion")
    sched = sched_mod.VQDiffusionScheduler(num_vec_classes=257, num_train_timesteps=100)
    coef = VQDiffusionAlpha1Schedule().coefficients(100, 256)
    for ours, theirs in [("alpha", "log_at"), ("gamma", "log_ct"), ("alpha_bar", "log_cumprod_at"),
                         ("beta_bar", "log_cumprod_bt"), ("gamma_bar", "log_cumprod_ct"), ("beta", "log_bt")]:
        torch.testing.assert_close(coef[ours].log().float(), getattr(sched, theirs)[:100], rtol=1e-5, atol=1e-5)
