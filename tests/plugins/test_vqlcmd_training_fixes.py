"""VQ-LCMD fixes of issue 15: a calibrated consistency target, weighting, embedding learning rate, cost options.

Each test shows its mechanism: the consistency-matching (CM) target's calibration at t_max after a short training
on a token set with a known marginal, the t_min reconstruction share of the batch, the one-step sampler time, the
embedding learning-rate multiplier reaching the optimizer through the real training loop, self-conditioning.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlbench.config import TrainingConfig
from dlbench.interfaces import MethodContext
from dlbench.train.loop import TensorBatches, make_optimizer, train
from dlbench_vqlcmd.losses import denoising_ce
from dlbench_vqlcmd.method import VQLCMD
from dlbench_vqlcmd.sampler import sampling_times
from dlbench_vqlcmd.targets import cm_point, cm_time
from dlbench_vqlcmd.weighting import diffusion_weight, weight_mass
from dlbench.schedules.continuous import ShiftedCosineSchedule

TINY = {"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}}

# -- item 1: calibration of the consistency target ------------------------------------------------------

K_CAL, GRID_CAL = 8, (2, 2)
MARGINAL = torch.tensor([8.0, 4, 2, 1, 1, 1, 1, 1]) / 19.0
H_MARGINAL = float(-(MARGINAL * MARGINAL.log()).sum())  # 1.704 nats < log 8 = 2.079


def _train_on_marginal(steps: int = 150, **params) -> VQLCMD:
    """Train on i.i.d. tokens from MARGINAL (no context to learn: the t_max optimum is the marginal itself)."""
    data = torch.multinomial(MARGINAL, 512 * 4, replacement=True, generator=torch.Generator().manual_seed(0))
    data = data.view(512, *GRID_CAL)
    torch.manual_seed(0)
    ctx = MethodContext(codebook_size=K_CAL, token_grid=GRID_CAL, num_classes=None, backbone=TINY)
    m = VQLCMD(VQLCMD.Config(embed_dim=4, drop_rate=0.0, **params), context=ctx)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss, _ = m.loss(data[torch.randint(0, 512, (64,), generator=g)], None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end()
    return m.eval()


@torch.no_grad()
def _t_max_calibration(m: VQLCMD) -> tuple[float, float]:
    """``(CE(t_max) on data tokens, mean KL between the t_max predictions of two noise draws)``."""
    x = torch.multinomial(MARGINAL, 256 * 4, replacement=True, generator=torch.Generator().manual_seed(9))
    x = x.view(256, *GRID_CAL)
    t = torch.full((256,), m.config.t_max)
    a, s = m.schedule.alpha_sigma(t)
    z0 = m.embedding.weight()[x]
    logp = []
    for seed in (10, 11):
        eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
        logp.append(torch.log_softmax(m.denoise(a[:, None, None, None] * z0 + s[:, None, None, None] * eps, t, None), -1))
    ce = float(-logp[0].gather(-1, x[..., None]).mean())
    kl = float((logp[0].exp() * (logp[0] - logp[1])).sum(-1).mean())
    return ce, kl


@pytest.mark.parametrize("params", [{}, {"dm_objective": "mse", "normalize_embeddings": False}],
                         ids=["defaults", "mse-objective"])
def test_default_cm_target_is_calibrated_and_noise_independent_at_t_max(params):
    m = _train_on_marginal(**params)
    assert m.config.cm_zs == "same-noise"
    ce, kl = _t_max_calibration(m)
    # at t_max the input carries ~no signal (alpha ~ 6e-4): the best prediction is the marginal, CE = H
    assert ce <= H_MARGINAL + 0.2, (ce, H_MARGINAL)
    assert kl <= 0.1, kl


@pytest.mark.slow
def test_the_old_ddim_self_distillation_target_fails_the_same_check():
    """The pre-fix default (DDIM step with the student's own x0 and s ~ U[t_min, t), sigmoid weight, full
    reconstruction batch) is over-confident and noise-dependent at t_max: the check above can fail."""
    m = _train_on_marginal(cm_zs="ddim", dm_weighting="sigmoid", rec_fraction=1.0, dm_objective="mse",
                           normalize_embeddings=False, embed_lr_scale=1.0)
    ce, kl = _t_max_calibration(m)
    assert ce > H_MARGINAL + 0.2 or kl > 0.1, (ce, kl)


def test_cm_point_and_time():
    z0, eps = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    a_t, s_t = torch.tensor([0.6, 0.5, 0.3]), torch.tensor([0.8, math.sqrt(0.75), math.sqrt(0.91)])
    a_s, s_s = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([math.sqrt(0.19), 0.6, math.sqrt(0.51)])
    z_t = a_t[:, None, None, None] * z0 + s_t[:, None, None, None] * eps
    same = cm_point("same-noise", z0=z0, eps=eps, z_t=z_t, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s)
    ddim = cm_point("ddim", z0=z0, eps=eps, z_t=z_t, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s, x0_hat=z0)
    torch.testing.assert_close(same, ddim, rtol=1e-5, atol=1e-5)  # exact x0: both on the same trajectory
    with pytest.raises(ValueError, match="x0_hat"):
        cm_point("ddim", z0=z0, eps=eps, z_t=z_t, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s)
    t = torch.tensor([0.05, 0.5, 0.9])
    s = cm_time(t, 1e-3, "uniform", generator=torch.Generator().manual_seed(0))
    assert bool(((s >= 1e-3) & (s <= t)).all())
    torch.testing.assert_close(cm_time(t, 1e-3, "delta", 0.1), torch.tensor([1e-3, 0.4, 0.8]))


# -- item 2: weighting -----------------------------------------------------------------------------------


def test_sigmoid_weight_mass_matches_its_closed_form_and_is_not_bounded():
    sch = ShiftedCosineSchedule(ShiftedCosineSchedule.Config(shift=-2.0, t_min=1e-3, t_max=0.999))
    edges = [1e-3, 0.05, 0.34, 0.999]
    # closed form: -lambda'/2 sigmoid(lambda) dt = d softplus(lambda) / 2, so mass ~ softplus(lambda) differences
    sp = [float(torch.nn.functional.softplus(sch.logsnr(torch.tensor(e, dtype=torch.float64)))) for e in edges]
    expected = [(sp[i] - sp[i + 1]) / (sp[0] - sp[-1]) for i in range(3)]
    got = weight_mass(sch, "sigmoid", edges)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got[0] > 0.6 and got[2] < 0.05  # most mass at the smallest times, little where class decides
    assert weight_mass(sch, "constant", edges) == pytest.approx([(b - a) / 0.998 for a, b in zip(edges, edges[1:])],
                                                                 abs=1e-4)
    t = torch.tensor([1e-3], dtype=torch.float64)
    assert float(diffusion_weight(sch.logsnr(t), sch.dlogsnr(t), "sigmoid")) > 500  # ~1/t, not bounded


def test_denoising_ce_is_weighted_cross_entropy():
    logits, tokens = torch.randn(2, 3, 3, 5), torch.randint(0, 5, (2, 3, 3))
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 2), tokens.flatten(), reduction="none").view(2, 9)
    torch.testing.assert_close(denoising_ce(logits, tokens, torch.ones(2)), ref.mean())
    torch.testing.assert_close(denoising_ce(logits, tokens, torch.tensor([2.0, 0.0])), (2 * ref[0]).sum() / 18)


# -- items 3, 4: embedding learning rate, cost, sampler, self-conditioning ---------------------------------

K, GRID = 12, (3, 3)


def _method(**params) -> VQLCMD:
    torch.manual_seed(0)
    ctx = MethodContext(codebook_size=K, token_grid=GRID, num_classes=3, backbone=TINY)
    return VQLCMD(VQLCMD.Config(embed_dim=4, **params), context=ctx)


def _tokens(b=16):
    return torch.randint(0, K, (b, *GRID), generator=torch.Generator().manual_seed(1))


def test_embedding_lr_multiplier_reaches_the_optimizer_through_the_training_loop():
    m = _method(embed_lr_scale=10.0)
    opt = make_optimizer(m, 1e-3, (0.9, 0.99), 0.0)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(m.embedding.table)]["lr"] == pytest.approx(1e-2)
    assert by_param[id(m.embedding.table)]["lr_scale"] == 10.0
    others = [by_param[id(p)]["lr_scale"] for n, p in m.named_parameters() if p.requires_grad and "embedding" not in n]
    assert others and set(others) == {1.0}
    assert not any(id(p) in by_param for p in m.teacher.parameters())  # the EMA teacher is not optimised

    def moved(scale: float) -> float:
        """Max |change| of the table after one AdamW step of the real loop: Adam's first step is ~lr per entry."""
        # mse: the table gets a direct gradient at step 0 (under "ce" it only gets one through the input, which
        # is zero while the DiT head is still zero-initialised)
        m = _method(embed_lr_scale=scale, w_cm=0.0, dm_objective="mse")
        before = m.embedding.table.detach().clone()
        cfg = TrainingConfig(steps=1, batch_size=8, lr=1e-3, warmup_steps=0, grad_clip=None, ema_decay=0.0)
        tokens, labels = _tokens(8), torch.zeros(8, dtype=torch.long)
        train(m, lambda mod, batch: mod.loss(*batch), TensorBatches(tokens, labels, batch_size=8, seed=0), cfg,
              show_progress=False)
        return float((m.embedding.table.detach() - before).abs().max())

    assert moved(1.0) == pytest.approx(1e-3, rel=0.05)
    assert moved(10.0) == pytest.approx(1e-2, rel=0.05)


def test_models_without_lr_scales_keep_the_two_groups():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(net, 1e-3, (0.9, 0.99), 0.1)
    assert [(len(g["params"]), g["weight_decay"], g["lr"]) for g in opt.param_groups] == [(1, 0.1, 1e-3),
                                                                                         (3, 0.0, 1e-3)]


@pytest.mark.parametrize("fraction, expected", [(0.125, 16 + 2), (0.5, 16 + 8), (1.0, 32), (0.01, 17)])
def test_reconstruction_batch_is_the_configured_fraction(fraction, expected):
    m = _method(rec_fraction=fraction, w_cm=0.0)
    sizes = []
    m.denoiser.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    _, terms = m.loss(_tokens(16), torch.zeros(16, dtype=torch.long))
    assert sizes == [expected] and torch.isfinite(terms["rec"])
    assert m.forwards_per_step == pytest.approx(1.0 + fraction)
    assert _method(rec_fraction=fraction).forwards_per_step == pytest.approx(1.0 + fraction + 1 / 3)  # + teacher


def test_one_step_sampler_evaluates_the_network_at_t_max():
    assert sampling_times(1, 1e-3, 0.999).tolist() == pytest.approx([0.999])
    assert sampling_times(3, 1e-3, 0.999).tolist() == pytest.approx([0.999, 0.5, 1e-3])
    m = _method().eval()
    seen = []
    m.denoiser.register_forward_hook(lambda mod, args, out: seen.append(args[1].unique().tolist()))
    m.sample(torch.tensor([0, 1]), torch.tensor([3, 4]), steps=1)
    assert seen == [[pytest.approx(m.config.t_max)]]


def test_self_conditioning_trains_on_a_detached_estimate_and_the_sampler_reuses_the_previous_one():
    m = _method(self_condition=True, self_condition_rate=1.0, drop_rate=0.0)
    inputs = []
    m.denoiser.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach()))
    loss, _ = m.loss(_tokens(8), torch.zeros(8, dtype=torch.long))
    loss.backward()
    first, second = inputs[0], inputs[1]  # no-grad first pass, then the trained pass (t batch + t_min rows)
    assert first.shape[-1] == 8 and bool((first[..., 4:] == 0).all())  # first pass: no previous estimate
    assert bool((second[:8, ..., 4:] != 0).any())  # the trained pass sees the first pass's x0_hat
    assert bool((second[8:, ..., 4:] == 0).all())  # the t_min rows get none
    inputs.clear()
    m.eval()
    m.sample(torch.tensor([0, 1]), torch.tensor([3, 4]), steps=3)
    assert bool((inputs[0][..., 4:] == 0).all()) and bool((inputs[1][..., 4:] != 0).any())
    # the fed estimate is softmax(previous logits) @ E: rebuild it from the first call
    logits0 = m.denoiser(inputs[0], torch.full((2,), m.config.t_max), torch.tensor([0, 1]))
    torch.testing.assert_close(inputs[1][..., 4:], torch.softmax(logits0, -1) @ m.embedding.weight())


# -- presets -----------------------------------------------------------------------------------------------


def test_benchmark_preset_gives_vqlcmd_and_one_pass_methods_equal_compute():
    from dlbench.config import BASE_PRESETS
    from dlbench_vqlcmd.method import CSDM
    from dlbench_vqlcmd.presets import BENCHMARK_STEPS, forwards_per_step

    assert BASE_PRESETS["benchmark"]["training"]["steps"] == BENCHMARK_STEPS  # one-pass methods (vq-diffusion)
    for cls in (VQLCMD, CSDM):
        fwd = forwards_per_step(cls.Config())
        steps = cls.presets["benchmark"]["training"]["steps"]
        assert abs(steps * fwd - BENCHMARK_STEPS) <= fwd / 2  # rounding to whole steps only
    assert CSDM.presets["benchmark"]["training"]["steps"] > VQLCMD.presets["benchmark"]["training"]["steps"]
    m = _method()
    assert m.forwards_per_step == pytest.approx(forwards_per_step(m.config))


def test_collapse_preset_leaves_the_table_free_to_collapse():
    from dlbench.config import build_config
    from dlbench.plugins import get_registry

    registry = get_registry()
    if "csdm" not in registry.names("method"):
        pytest.skip("dlbench entry points not installed")
    for name, has_cm in (("csdm", False), ("vqlcmd", True)):
        p = build_config(name, registry=registry, preset="collapse").method.params
        assert p["embedding"]["name"] == "learnable" and not p["embedding"]["params"]["normalize"]
        assert p["dm_objective"] == "mse" and p["embed_lr_scale"] > 1  # scale pressure, a table that moves
        assert (p["w_cm"] > 0) == has_cm
