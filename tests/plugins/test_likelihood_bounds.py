"""NLL bounds of VQ-Diffusion (VLB) and VQ-LCMD (continuous-time ELBO) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench.eval.token_metrics import entropy, sample_from_marginals
from dlbench.schedules.continuous import LinearLogSNRSchedule, ShiftedCosineSchedule
from dlbench.schedules.discrete import linear_cumulative_coefficients
from dlbench_vqdiffusion.kernel import TransitionKernel
from dlbench_vqdiffusion.likelihood import vlb_per_grid
from dlbench_vqlcmd.likelihood import elbo_per_grid, time_of_logsnr


def _marginals(k: int, positions: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(positions, k, generator=g) * 1.5, -1).double()


def test_vqdiffusion_vlb_of_true_marginal_model_is_the_entropy():
    """Data i.i.d. per position from pi and the Bayes-optimal denoiser for it: p(x0 | x_t) = pi at masked
    positions (independence) and the revealed token elsewhere. With a (near-)absorbing schedule that ends
    fully masked the model's joint equals the forward process's, the bound is tight and E[VLB(x0)] =
    -log pi(x0); averaged over x0 ~ pi that is H(pi) per token."""
    k, grid, T, n = 4, (2, 2), 8, 1000
    pi = _marginals(k, 4, 0)
    coef = linear_cumulative_coefficients(T, k, alpha_bar_start=1 - 2e-8, alpha_bar_end=1e-9,
                                          gamma_bar_start=1e-8, gamma_bar_end=1 - 1e-8)
    kernel = TransitionKernel(coef, k)
    x0 = sample_from_marginals(pi[None], grid, None, n, seed=1).reshape(n, -1)
    log_pi = pi.log().float()

    def predict(x_t, t, labels):
        revealed = torch.log(torch.nn.functional.one_hot(x_t.clamp(max=k - 1), k).float()).clamp(min=-70.0)
        return torch.where((x_t == k)[..., None], log_pi.expand(x_t.shape[0], -1, -1), revealed)

    est = vlb_per_grid(predict, kernel, x0, None, generator=torch.Generator().manual_seed(2))
    exact = -pi.log().gather(1, x0.T).T.mean(1)  # -log pi(x0) per token, "n"
    se = float((est - exact).std() / math.sqrt(n))
    assert abs(float((est - exact).mean())) < 4 * se + 1e-6
    assert float(est.mean()) == pytest.approx(float(entropy(pi).mean()), abs=4 * float(est.std() / math.sqrt(n)))
    assert bool((est > 0).all())


def test_vqdiffusion_method_bound_runs_and_is_reproducible():
    from dlbench.interfaces import MethodContext
    from dlbench_vqdiffusion.method import VQDiffusion, VQDiffusionConfig

    torch.manual_seed(0)
    m = VQDiffusion(VQDiffusionConfig(num_steps=4), context=MethodContext(
        codebook_size=8, token_grid=(2, 2), num_classes=3,
        backbone={"preset": "tiny", "width": 16, "depth": 1, "heads": 2}))
    toks = torch.randint(0, 8, (5, 2, 2))
    state = torch.get_rng_state()
    a = m.nll_bound(toks, torch.tensor([0, 1, 2, 0, 1]), mc=2, seed=3)
    b = m.nll_bound(toks, torch.tensor([0, 1, 2, 0, 1]), mc=2, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert a.value == b.value and a.n == 5 and a.stderr > 0
    assert a.value > 0


def test_time_of_logsnr_inverts_the_schedule():
    sch = ShiftedCosineSchedule(ShiftedCosineSchedule.Config(shift=-2.0, t_min=1e-3, t_max=1 - 1e-3))
    t = torch.tensor([0.01, 0.3, 0.77, 0.99], dtype=torch.float64)
    assert torch.allclose(time_of_logsnr(sch, sch.logsnr(t).double(), 1e-3, 1 - 1e-3), t, atol=1e-9)


def test_vqlcmd_elbo_zero_table_marginal_model_is_the_entropy():
    """E = 0 makes z carry no information: L_diff = 0, L_rec = -log pi(x), and with sigma_max^2 = 1 - 1e-13
    the prior term vanishes, so the bound is exactly the cross-entropy of the data under pi."""
    k, grid, n, d = 5, (2, 3), 4000, 3
    pi = _marginals(k, 6, 5)
    sch = LinearLogSNRSchedule(LinearLogSNRSchedule.Config(logsnr_min=-30.0, logsnr_max=10.0))
    toks = sample_from_marginals(pi[None], grid, None, n, seed=6)
    logits = pi.log().float().reshape(*grid, k)

    def posterior(z, t):
        return logits.expand(z.shape[0], -1, -1, -1)

    terms = elbo_per_grid(posterior, torch.zeros(k, d), sch, toks, t_min=sch.t_min, t_max=sch.t_max, num_t=4,
                          generator=torch.Generator().manual_seed(7))
    exact = -pi.log().gather(1, toks.reshape(n, -1).T).T.mean(1)
    assert torch.allclose(terms["total"], exact, atol=1e-9)
    assert float(terms["total"].mean()) == pytest.approx(float(entropy(pi).mean()), abs=0.03)


def test_vqlcmd_elbo_diffusion_term_matches_closed_form():
    """A denoiser that ignores z gives a t-independent error c = ||z0 - pi E||^2, so
    L_diff = c/2 (SNR(t_min) - SNR(t_max)); the stratified estimator must find it."""
    k, grid, d = 4, (1, 2), 3
    pi = _marginals(k, 2, 8)
    g = torch.Generator().manual_seed(9)
    table = torch.randn(k, d, generator=g)
    sch = ShiftedCosineSchedule(ShiftedCosineSchedule.Config(shift=-2.0))
    toks = torch.tensor([[[0, 3]], [[2, 1]]])
    logits = pi.log().float().reshape(*grid, k)

    def posterior(z, t):
        return logits.expand(z.shape[0], -1, -1, -1)

    terms = elbo_per_grid(posterior, table, sch, toks, t_min=sch.t_min, t_max=sch.t_max, num_t=256,
                          generator=torch.Generator().manual_seed(10))
    z0 = table[toks].double()
    c = (z0 - (pi.float() @ table).double().reshape(1, *grid, d)).pow(2).sum((1, 2, 3))
    lo, hi = sch.logsnr(torch.tensor([sch.t_max, sch.t_min], dtype=torch.float64))
    exact = 0.5 * c * (math.exp(hi) - math.exp(lo)) / 2
    assert torch.allclose(terms["diff"], exact, rtol=0.02)
    a1, s1 = sch.alpha_sigma(torch.tensor(sch.t_max, dtype=torch.float64))
    prior = 0.5 * (a1**2 * z0.pow(2).sum(-1) + d * s1**2 - d - d * torch.log(s1**2)).sum((1, 2)) / 2
    assert torch.allclose(terms["prior"], prior, rtol=1e-9)


def test_vqlcmd_method_bound_runs_and_is_reproducible():
    from dlbench.interfaces import MethodContext
    from dlbench_vqlcmd.method import VQLCMD, VQLCMDConfig

    torch.manual_seed(0)
    m = VQLCMD(VQLCMDConfig(embed_dim=4), context=MethodContext(
        codebook_size=8, token_grid=(2, 2), num_classes=3,
        backbone={"preset": "tiny", "width": 16, "depth": 1, "heads": 2}))
    toks = torch.randint(0, 8, (5, 2, 2))
    state = torch.get_rng_state()
    a = m.nll_bound(toks, torch.tensor([0, 1, 2, 0, 1]), seed=3)
    b = m.nll_bound(toks, torch.tensor([0, 1, 2, 0, 1]), seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert a.value == b.value and a.n == 5 and a.value > 0 and "8 log-SNR strata" in a.estimator
