"""Pure math of VQ-LCMD: continuous schedules and loss terms against closed forms (METHODS.md §A.1-A.2)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from dlbench.schedules.continuous import (
    CosineSchedule,
    LinearLogSNRSchedule,
    ShiftedCosineSchedule,
    diffuse,
)
from dlbench_vqlcmd.losses import (
    consistency_divergence,
    ddim_step,
    diffusion_loss,
    diffusion_weight,
    expected_embedding,
    prior_kl,
    random_drop,
    reconstruction_ce,
)

CONTINUOUS_SCHEDULES = {"cosine": CosineSchedule, "shifted-cosine": ShiftedCosineSchedule, "linear": LinearLogSNRSchedule}

T = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)


# -- schedules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTINUOUS_SCHEDULES))
def test_schedule_vp_identity_finite_and_monotone(name):
    sch = CONTINUOUS_SCHEDULES[name]()
    lam = sch.logsnr(T)
    assert torch.isfinite(lam).all(), "clipping to [t_min, t_max] must keep lambda finite at t=0 and t=1"
    a, s = sch.alpha_sigma(T)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(T), rtol=0, atol=1e-12)
    inner = (T >= sch.t_min) & (T <= sch.t_max)
    assert (lam[inner].diff() < 0).all(), "lambda must be strictly decreasing inside [t_min, t_max]"
    # outside the interval the schedule is clamped to its end values
    assert lam[0] == sch.logsnr(torch.tensor(sch.t_min, dtype=torch.float64))


@pytest.mark.parametrize("shift", [0.0, -2.0, -4.0, 1.5])
def test_shifted_cosine_closed_form_and_midpoint(shift):
    sch = ShiftedCosineSchedule(ShiftedCosineSchedule.Config(shift=shift))
    assert float(sch.logsnr(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(shift, abs=1e-12)
    t = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float64)
    ref = torch.tensor([-2 * math.log(math.tan(math.pi * x / 2)) + shift for x in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(sch.logsnr(t), ref)
    # shifting by s multiplies the SNR by e^s at every t
    base = CosineSchedule()
    a, s = sch.alpha_sigma(t)
    a0, s0 = base.alpha_sigma(t)
    torch.testing.assert_close((a / s) ** 2, math.exp(shift) * (a0 / s0) ** 2)


@pytest.mark.parametrize("name", sorted(CONTINUOUS_SCHEDULES))
def test_schedule_derivative_matches_autograd(name):
    sch = CONTINUOUS_SCHEDULES[name]()
    t = torch.linspace(0.05, 0.95, 13, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sch.logsnr(t).sum(), t)
    torch.testing.assert_close(sch.dlogsnr(t.detach()), grad)


def test_schedule_config_errors():
    with pytest.raises(ValidationError, match="t_min"):
        ShiftedCosineSchedule.Config(t_min=0.6, t_max=0.4)
    with pytest.raises(ValidationError, match="logsnr_min"):
        LinearLogSNRSchedule.Config(logsnr_min=5.0, logsnr_max=-5.0)
    with pytest.raises(ValidationError):
        ShiftedCosineSchedule.Config(shfit=1.0)  # typo'd field is an error, not ignored


# -- DDIM step and losses --------------------------------------------------------------------------


def test_forward_process_per_sample_coefficients_and_variance():
    """``diffuse`` is ``alpha_i z0_i + sigma_i eps_i`` per sample (checked element by element in float64), keeps
    the inputs' dtype, and with a VP schedule keeps unit variance for unit-variance z0 and eps."""
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 2, 2, 5, dtype=torch.float64, generator=g), torch.randn(3, 2, 2, 5, dtype=torch.float64,
                                                                                      generator=g)
    a, s = ShiftedCosineSchedule().alpha_sigma(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    z = diffuse(z0, eps, a, s)
    assert z.dtype == torch.float64 and z.shape == z0.shape
    for i in range(3):
        torch.testing.assert_close(z[i], float(a[i]) * z0[i] + float(s[i]) * eps[i], rtol=0, atol=0)
    big0, bige = torch.randn(2, 200_000, generator=g), torch.randn(2, 200_000, generator=g)
    a2, s2 = CosineSchedule().alpha_sigma(torch.tensor([0.3, 0.7]))
    assert torch.allclose(diffuse(big0, bige, a2, s2).var(dim=1), torch.ones(2), atol=0.02)


def test_ddim_step_with_exact_x0_lands_on_the_same_trajectory():
    torch.manual_seed(0)
    sch = ShiftedCosineSchedule()
    z0, eps = torch.randn(3, 2, 2, 5, dtype=torch.float64), torch.randn(3, 2, 2, 5, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    s = torch.tensor([0.1, 0.45, 0.01], dtype=torch.float64)
    (a_t, s_t), (a_s, s_s) = sch.alpha_sigma(t), sch.alpha_sigma(s)
    z_t = a_t[:, None, None, None] * z0 + s_t[:, None, None, None] * eps
    z_s = ddim_step(z_t, z0, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(z_s, a_s[:, None, None, None] * z0 + s_s[:, None, None, None] * eps)
    # s = t is the identity whatever x0_hat is
    torch.testing.assert_close(ddim_step(z_t, torch.randn_like(z0), a_t, s_t, a_t, s_t), z_t)


def test_elbo_weight_is_minus_half_dlambda_exp_lambda():
    sch = CosineSchedule()
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    lam, dlam = sch.logsnr(t), sch.dlogsnr(t)
    torch.testing.assert_close(diffusion_weight(lam, dlam, "elbo"), -0.5 * dlam * lam.exp())
    # sigmoid weighting: e^lambda factor bounded by e^b, and -> the ELBO weight as b -> +inf
    w_sig = diffusion_weight(lam, dlam, "sigmoid", sigmoid_bias=1.0)
    assert (w_sig <= -0.5 * dlam * math.e + 1e-12).all()
    torch.testing.assert_close(diffusion_weight(lam, dlam, "sigmoid", sigmoid_bias=40.0), -0.5 * dlam * lam.exp())
    assert diffusion_weight(lam, dlam, "elbo", max_weight=0.5).max() == 0.5
    torch.testing.assert_close(diffusion_weight(lam, dlam, "constant"), torch.ones_like(t))


def test_diffusion_loss_is_weighted_sum_over_d_mean_over_positions():
    z0, z0_hat = torch.zeros(2, 1, 3, 4), torch.ones(2, 1, 3, 4)
    w = torch.tensor([1.0, 3.0])
    assert diffusion_loss(z0, z0_hat, w).item() == pytest.approx((1.0 * 4 + 3.0 * 4) / 2)


def test_prior_kl_matches_float64_gaussian_kl():
    torch.manual_seed(1)
    z0 = torch.randn(2, 3, 3, 6, dtype=torch.float64)
    alpha, sigma = torch.tensor(0.3, dtype=torch.float64), torch.tensor(math.sqrt(1 - 0.09), dtype=torch.float64)
    q = torch.distributions.Normal(alpha * z0, sigma.expand_as(z0))
    p = torch.distributions.Normal(torch.zeros_like(z0), torch.ones_like(z0))
    ref = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    torch.testing.assert_close(prior_kl(z0, alpha, sigma), ref)
    assert prior_kl(z0.float(), alpha.float(), sigma.float()).item() == pytest.approx(ref.item(), rel=1e-5)


def test_reconstruction_ce_and_expected_embedding():
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])  # P = (1/4, 3/4)
    assert reconstruction_ce(logits, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75))
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(expected_embedding(logits, table), torch.tensor([[[[0.25, 1.5]]]]))


def test_consistency_divergence_zero_iff_equal_and_ce_offset_by_entropy():
    torch.manual_seed(2)
    a, b = torch.randn(2, 3, 3, 7), torch.randn(2, 3, 3, 7)
    assert consistency_divergence(a, a.clone(), "kl").abs().item() < 1e-6
    assert consistency_divergence(a, b, "kl").item() > 1e-3
    p = torch.softmax(b, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(consistency_divergence(a, b, "ce"), consistency_divergence(a, b, "kl") + entropy)


def test_consistency_target_gets_no_gradient():
    student = torch.randn(2, 2, 2, 5, requires_grad=True)
    teacher = torch.randn(2, 2, 2, 5, requires_grad=True)
    consistency_divergence(student, teacher, "kl").backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_random_drop_replaces_exactly_masked_positions():
    z = torch.randn(2, 3, 3, 4)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True
    vec = torch.full((4,), 7.0)
    out = random_drop(z, mask, vec)
    assert (out[mask] == 7.0).all()
    torch.testing.assert_close(out[~mask], z[~mask])
