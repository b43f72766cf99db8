"""LightningDiT's rectified flow (METHODS.md §D.3) against closed forms: the path and its velocity, the velocity
MSE + cosine-direction loss, logit-normal t, the timestep shift, Euler (exact on straight-line fields), and
classifier-free guidance inside an interval of t with full-channel or first-k-channel mixing."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench_lightningdit.flow import (
    apply_cfg,
    cfg_active,
    cfg_velocity,
    euler_sample,
    interpolate,
    logit_normal_cdf,
    logit_normal_quantile,
    logit_normal_sample,
    sampling_times,
    shift_time,
    velocity_loss,
    velocity_target,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- path and loss -------------------------------------------------------------------------------


def test_path_endpoints_t0_noise_t1_data_and_velocity_is_its_derivative():
    x, eps = _rand(3, 4, 2, 2, seed=1), _rand(3, 4, 2, 2, seed=2)
    assert torch.equal(interpolate(x, eps, torch.zeros(3, dtype=torch.float64)), eps)  # t = 0: noise
    assert torch.equal(interpolate(x, eps, torch.ones(3, dtype=torch.float64)), x)  # t = 1: data
    t = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    h = 1e-6
    fd = (interpolate(x, eps, t + h) - interpolate(x, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity_target(x, eps), atol=1e-8, rtol=0)
    assert torch.equal(velocity_target(x, eps), x - eps)
    # per-sample t: sample 1 at t=0.5 is the midpoint
    torch.testing.assert_close(interpolate(x, eps, t)[1], 0.5 * (x[1] + eps[1]))


def test_velocity_loss_closed_forms():
    u = _rand(2, 3, 4, 4, seed=3)
    mse, cos = velocity_loss(u.clone(), u)
    torch.testing.assert_close(mse, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(cos, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    mse, cos = velocity_loss(-u, u)  # opposite direction: cos = -1 everywhere -> 2
    torch.testing.assert_close(mse, 4 * u.pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(cos, torch.full((2,), 2.0, dtype=torch.float64))
    mse, cos = velocity_loss(2 * u, u)  # same direction, twice as long: only the MSE sees it
    torch.testing.assert_close(mse, u.pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(cos, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    # orthogonal per position over the channel axis: u = e0, v = e1 at every position -> cos loss 1
    e0 = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    e0[:, 0] = 1
    e1 = e0.flip(1)
    assert velocity_loss(e1, e0)[1].item() == pytest.approx(1.0)


def test_velocity_loss_matches_float64_reference_cosine_over_channels_per_position():
    v, u = _rand(2, 5, 3, 4, seed=4), _rand(2, 5, 3, 4, seed=5)
    mse, cos = velocity_loss(v, u)
    for b in range(2):
        ref_mse = sum(float((v[b, c, i, j] - u[b, c, i, j]) ** 2) for c in range(5) for i in range(3)
                      for j in range(4)) / 60
        ref_cos = 0.0
        for i in range(3):
            for j in range(4):
                a, z = v[b, :, i, j], u[b, :, i, j]
                ref_cos += 1 - float(a @ z) / math.sqrt(float(a @ a) * float(z @ z))
        assert mse[b].item() == pytest.approx(ref_mse, rel=1e-12)
        assert cos[b].item() == pytest.approx(ref_cos / 12, rel=1e-10)
    # the cosine is over channels: scaling one position's vector leaves it unchanged, mixing channels does not
    v2 = v.clone()
    v2[:, :, 0, 0] *= 7.0
    torch.testing.assert_close(velocity_loss(v2, u)[1], cos)
    assert not torch.allclose(velocity_loss(v.roll(1, dims=1), u)[1], cos)


def test_velocity_loss_is_float32_under_bf16_inputs():
    v, u = torch.randn(2, 3, 2, 2).bfloat16(), torch.randn(2, 3, 2, 2)
    mse, cos = velocity_loss(v, u)
    assert mse.dtype == cos.dtype == torch.float32


# -- logit-normal t --------------------------------------------------------------------------------


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.7), (-1.0, 1.5)])
def test_logit_normal_sample_quantiles_match_the_cdf(mean, std):
    n = 20000
    t = logit_normal_sample(n, mean, std, generator=torch.Generator().manual_seed(0)).double()
    assert t.min() > 0 and t.max() < 1
    # Kolmogorov-Smirnov distance to the closed-form CDF (99.9% critical value 1.95/sqrt(n))
    ts, _ = t.sort()
    cdf = logit_normal_cdf(ts, mean, std)
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum(ecdf_hi - cdf, cdf - (ecdf_hi - 1.0 / n)).max().item()
    assert ks < 1.95 / math.sqrt(n)
    p = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(t, p), logit_normal_quantile(p, mean, std), atol=0.01, rtol=0)
    assert logit_normal_quantile(torch.tensor(0.5), mean, std).item() == pytest.approx(1 / (1 + math.exp(-mean)))
    # logit(T) is N(mean, std): its sample mean and std
    logit = torch.log(t) - torch.log1p(-t)
    assert logit.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert logit.std().item() == pytest.approx(std, rel=0.03)
    # a wrong std is detected by the same KS test (the test can fail)
    assert torch.maximum(ecdf_hi - logit_normal_cdf(ts, mean, 2 * std), torch.zeros(1)).max() > 3 / math.sqrt(n)


def test_logit_normal_cdf_and_quantile_are_inverse():
    p = torch.linspace(0.01, 0.99, 21, dtype=torch.float64)
    torch.testing.assert_close(logit_normal_cdf(logit_normal_quantile(p, 0.3, 0.8), 0.3, 0.8), p)


# -- timestep shift --------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.3, 1.0, 3.0])
def test_shift_fixed_points_monotone_closed_form(s):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ts = shift_time(t, s)
    assert ts[0].item() == 0.0 and ts[-1].item() == 1.0
    assert bool((ts.diff() > 0).all())
    assert shift_time(torch.tensor(0.5, dtype=torch.float64), s).item() == pytest.approx(s / (1 + s))
    torch.testing.assert_close(shift_time(ts, 1 / s), t)  # shift 1/s inverts shift s
    if s < 1:  # the released 0.3 moves every time toward the noise end (t = 0): smaller first steps
        assert bool((ts[1:-1] < t[1:-1]).all())
    if s == 1.0:
        torch.testing.assert_close(ts, t)


def test_shift_rejects_nonpositive():
    with pytest.raises(ValueError, match="shift"):
        shift_time(torch.tensor(0.5), 0.0)


def test_sampling_times_grid():
    g = sampling_times(10, 0.3)
    assert g.shape == (11,) and g[0] == 0 and g[-1] == 1
    torch.testing.assert_close(g, shift_time(torch.linspace(0, 1, 11, dtype=torch.float64), 0.3))
    with pytest.raises(ValueError):
        sampling_times(0)


# -- Euler -----------------------------------------------------------------------------------------


def _point_mass_field(p):
    """Exact rectified-flow velocity toward a single data point p: v(x, t) = (p - x) / (1 - t)."""
    return lambda x, t: (p - x) / (1 - t.reshape(-1, *([1] * (x.dim() - 1))))


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (3, 0.3), (7, 2.0), (25, 0.3)])
def test_euler_is_exact_on_straight_paths(steps, shift):
    """On the point-mass field every trajectory is a straight line at constant speed, so Euler is exact for any
    grid: each state lies on (1 - t) x0 + t p and the last one is p."""
    x0, p = _rand(4, 3, 2, 2, seed=6), _rand(1, 3, 2, 2, seed=7)
    times = sampling_times(steps, shift)
    seen = []
    out = euler_sample(_point_mass_field(p), x0, times, callback=lambda i, t, x, v: seen.append((t, x)))
    torch.testing.assert_close(out, p.expand_as(x0), atol=1e-12, rtol=0)
    assert len(seen) == steps
    for t, x in seen:
        torch.testing.assert_close(x, (1 - t) * x0 + t * p, atol=1e-12, rtol=0)


def test_euler_is_not_exact_on_curved_paths():
    """Control: on a field whose paths curve (v = -x, solution x0 e^{-t}) one Euler step is off, many steps converge."""
    x0 = _rand(2, 3, seed=8)
    field = lambda x, t: -x  # noqa: E731
    exact = x0 * math.exp(-1)
    err1 = (euler_sample(field, x0, sampling_times(1)) - exact).abs().max().item()
    err100 = (euler_sample(field, x0, sampling_times(100)) - exact).abs().max().item()
    assert err1 > 0.1 and err100 < 0.01


# -- guidance --------------------------------------------------------------------------------------


def test_apply_cfg_all_channels_and_first_k_quirk():
    vc, vu = _rand(2, 5, 2, 2, seed=9), _rand(2, 5, 2, 2, seed=10)
    full = apply_cfg(vc, vu, 4.0)
    torch.testing.assert_close(full, vu + 4.0 * (vc - vu))
    torch.testing.assert_close(apply_cfg(vc, vu, 1.0), vc)  # scale 1 is the conditional velocity
    quirk = apply_cfg(vc, vu, 4.0, channels=3)  # released forward_with_cfg: model_out[:, :3] only
    torch.testing.assert_close(quirk[:, :3], full[:, :3])
    torch.testing.assert_close(quirk[:, 3:], vc[:, 3:])  # the rest keep the conditional output
    assert not torch.allclose(quirk[:, 3:], full[:, 3:])
    torch.testing.assert_close(apply_cfg(vc, vu, 4.0, channels=5), full)  # k >= C: all channels


def test_cfg_gate_is_off_below_the_interval_start():
    assert not cfg_active(0.1249, 0.125) and cfg_active(0.125, 0.125) and cfg_active(0.9, 0.125)
    assert cfg_active(0.0, 0.0)  # start 0: guidance everywhere
    assert not cfg_active(0.999, 1.0)


@pytest.mark.parametrize("start,shift,channels", [(0.0, 1.0, None), (0.125, 0.3, None), (0.5, 1.0, None),
                                                   (0.5, 0.3, 2), (1.0, 1.0, None)])
def test_euler_with_cfg_interval_closed_form(start, shift, channels):
    """Constant fields (cond a, uncond b) make Euler exact: x_1 = x_0 + sum_i dt_i v_i with v_i = a before the
    interval and b + w (a - b) inside it (first ``channels`` channels; a elsewhere). The unconditional pass runs
    only inside the interval."""
    w, steps, C = 3.0, 8, 4
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64).reshape(1, C, 1, 1)
    b = torch.tensor([-1.0, 1.0, 2.0, 0.0], dtype=torch.float64).reshape(1, C, 1, 1)
    calls = {"cond": 0, "both": 0}

    def cond(x, t):
        calls["cond"] += 1
        return a.expand_as(x)

    def both(x, t):
        calls["both"] += 1
        return a.expand_as(x), b.expand_as(x)

    x0 = _rand(2, C, 2, 2, seed=11)
    times = sampling_times(steps, shift)
    out = euler_sample(cfg_velocity(cond, both, w, interval_start=start, channels=channels), x0, times)
    dt = times.diff()
    on = times[:-1] >= start
    guided = b + w * (a - b)
    if channels is not None:
        guided = torch.cat([guided[:, :channels], a[:, channels:]], dim=1)
    expected = x0 + dt[~on].sum() * a + dt[on].sum() * guided
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert calls == {"cond": int((~on).sum()), "both": int(on.sum())}
    if 0 < start < 1:  # both parts of the grid occur: the gate really switched
        assert 0 < int(on.sum()) < steps


def test_cfg_matches_the_released_forward_with_cfg():
    """Peer oracle: the released ``LightningDiT.forward_with_cfg`` (restated) on the doubled batch ``[x; x]`` with
    labels ``[y; null]``: guidance on ``model_out[:, :k]`` (k = 3 released, all channels for full CFG), the
    conditional output elsewhere, and ``cond_eps`` alone when ``t < cfg_interval_start``. Its first half equals
    :func:`cfg_velocity` with the same model, for t inside and outside the interval."""
    g = torch.Generator().manual_seed(12)
    C = 6
    weight = torch.randn(3, C, C, generator=g, dtype=torch.float64)  # one linear map per label (2 = null)

    def model(x, t, y):  # a label- and time-dependent stand-in network, "b c h w"
        return torch.einsum("bij,bjhw->bihw", weight[y], x) * (1 + t)[:, None, None, None]

    def released(x, t, y, cfg_scale, k, cfg_interval_start):
        half = x[: len(x) // 2]
        model_out = model(torch.cat([half, half]), t, y)
        eps, rest = model_out[:, :k], model_out[:, k:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        if t[0] < cfg_interval_start:
            half_eps = cond_eps
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)

    x = torch.randn(3, C, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    null = torch.full_like(y, 2)
    for k, tv in [(3, 0.05), (3, 0.6), (C, 0.05), (C, 0.6)]:
        t = torch.full((3,), tv, dtype=torch.float64)
        ref = released(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), 4.0, k, 0.125)[:3]
        ours = cfg_velocity(lambda x_, t_: model(x_, t_, y),
                            lambda x_, t_: model(torch.cat([x_, x_]), torch.cat([t_, t_]),
                                                 torch.cat([y, null])).chunk(2),
                            4.0, interval_start=0.125, channels=None if k == C else k)(x, t)
        torch.testing.assert_close(ours, ref)
