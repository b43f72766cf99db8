"""``method/lightningdit`` (METHODS.md §D.3): conformance as a continuous method, the preflight pairing with
continuous tokenizers, guided Euler sampling through the method (closed form with a stub network, the 3-channel
quirk, the network evaluations nfe() reports), label dropout, refusals, and a toy training run whose samples'
class-conditional means move to the data's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlbench.interfaces import MethodContext
from dlbench_lightningdit.flow import logit_normal_quantile, sampling_times
from dlbench_lightningdit.method import LightningDiT, LightningDiTError
from dlbench_lightningdit.testing import check_continuous_method
from lightningdit_helpers import registry  # noqa: F401 - fixture

TINY = {"preset": "tiny", "width": 32, "depth": 2, "heads": 2}


def _ctx(grid=(4, 4), num_classes=2, tokenizer=None):
    return MethodContext(codebook_size=0, token_grid=grid, num_classes=num_classes, tokenizer=tokenizer, backbone=TINY)


def _method(num_classes=2, grid=(4, 4), **kw):
    torch.manual_seed(0)
    return LightningDiT(LightningDiT.Config(**{"latent_dim": 4, **kw}), context=_ctx(grid, num_classes))


# -- conformance and the preflight ----------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"cfg_channels": 3, "cfg_interval_start": 0.3},
                                    {"patch_size": 2, "norm": "layer", "mlp": "gelu", "rope": False},
                                    {"t_sampling": "uniform", "cos_weight": 0.0, "timestep_shift": 1.0}])
def test_conformance(params):
    check_continuous_method(LightningDiT, config=LightningDiT.Config(latent_dim=4, **params),
                            context=MethodContext(codebook_size=0, token_grid=(2, 4), num_classes=3, backbone=TINY))


def test_conformance_unconditional():
    check_continuous_method(LightningDiT, context=MethodContext(codebook_size=0, token_grid=(2, 2), backbone=TINY))


def test_conformance_check_catches_a_token_method():
    from dlbench_vqdiffusion.method import VQDiffusion

    with pytest.raises(AssertionError, match="inputs must be 'latents'"):
        check_continuous_method(VQDiffusion)


def test_conformance_check_catches_global_rng_sampling():
    class GlobalNoise(LightningDiT):
        def sample(self, labels, seeds, *, num_samples=None, steps=None, guidance=1.0, callback=None, **options):
            out = super().sample(labels, seeds, num_samples=num_samples, steps=steps, guidance=guidance, **options)
            return out + 0.1 * torch.randn_like(out)  # noise from the global RNG, not from the seeds

    with pytest.raises(AssertionError, match="not deterministic for fixed seeds"):
        check_continuous_method(GlobalNoise, context=_ctx(grid=(2, 2)))


def test_preflight_pairs_latent_methods_with_continuous_tokenizers(registry, monkeypatch):  # noqa: F811
    from dlbench import preflight as pf
    from dlbench.api import resolve
    from dlbench.preflight import PreflightError, preflight

    assert LightningDiT.requires.inputs == "latents"
    cfg = resolve("lightningdit", preset="quick")
    assert cfg.tokenizer.name == "kl-vae"  # the presets select the continuous tokenizer
    assert pf.LATENT_METHODS_SUPPORTED  # the run pipeline has the float latent cache and latent sampling
    preflight(cfg)
    monkeypatch.setattr(pf, "LATENT_METHODS_SUPPORTED", False)  # switched off: refused before any training
    with pytest.raises(PreflightError, match="does not run yet"):
        preflight(cfg)
    monkeypatch.setattr(pf, "LATENT_METHODS_SUPPORTED", True)
    preflight(resolve("lightningdit", preset="quick", tokenizer="kl-vae-vf"))
    with pytest.raises(PreflightError, match="trains on continuous latents but tokenizer 'vqvae' gives discrete"):
        preflight(resolve("lightningdit", preset="quick", tokenizer="vqvae"))
    # a method over token ids through an embedding table (VQ-LCMD) cannot use float latents either
    with pytest.raises(PreflightError, match="continuous latents .* discrete token ids"):
        preflight(resolve("vqlcmd", preset="quick", tokenizer="kl-vae"))


@pytest.mark.parametrize("preset", ["quick", "default", "benchmark"])
def test_presets_resolve(registry, preset):  # noqa: F811
    from dlbench.api import resolve

    cfg = resolve("lightningdit", preset=preset)
    assert cfg.tokenizer.name == "kl-vae" and cfg.method.name == "lightningdit"
    if preset != "quick":
        assert tuple(cfg.training.betas) == (0.9, 0.95) and cfg.training.grad_clip is None


def test_ladder_adds_one_switch_per_rung_and_ends_at_the_defaults():
    from dlbench_lightningdit.presets import LADDER

    configs = [LightningDiT.Config(**params) for params in LADDER.values()]
    dumps = [c.model_dump() for c in configs]
    for prev, cur in zip(dumps, dumps[1:]):
        assert len({k for k in cur if cur[k] != prev[k]}) == 1
    assert dumps[-1] == LightningDiT.Config().model_dump()
    assert dumps[0]["mlp"] == "gelu" and dumps[0]["norm"] == "layer" and not dumps[0]["rope"]


# -- sampling through the method -------------------------------------------------------------------


class StubNet(nn.Module):
    """Velocity = a constant per label (class 0: +1, class 1: -2, null class: +4 in every channel); counts the
    rows it evaluates."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.table = nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
        self.rows = 0
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, labels):
        self.rows += x.shape[0]
        self.seen.append(labels.clone())
        return self.table[labels][:, None, None, None].expand_as(x).clone()


@pytest.mark.parametrize("start,shift,channels", [(0.0, 1.0, None), (0.5, 1.0, None), (0.125, 0.3, 3),
                                                   (1.0, 0.3, None)])
def test_sample_guided_euler_closed_form_and_nfe(start, shift, channels):
    m = _method(cfg_interval_start=start, timestep_shift=shift, cfg_channels=channels, latent_dim=5)
    m.net = StubNet()
    steps, w, n = 6, 2.5, 4
    labels = torch.tensor([0, 1, 0, 1])
    seeds = torch.arange(n) + 7
    noise = torch.stack([torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    out = m.sample(labels, seeds, steps=steps, guidance=w)
    assert out.shape == (n, 4, 4, 5)
    times = sampling_times(steps, shift)
    on = times[:-1] >= start
    dt = times.diff()
    vc = torch.tensor([1.0, -2.0])[labels]
    guided = 4.0 + w * (vc - 4.0)
    disp_guided = (dt[~on].sum() * vc + dt[on].sum() * guided).float()
    disp_cond = vc.float()  # sum of dt = 1
    expected = noise.permute(0, 2, 3, 1).clone()
    k = 5 if channels is None else channels
    expected[..., :k] += disp_guided[:, None, None, None]
    expected[..., k:] += disp_cond[:, None, None, None]  # the quirk: other channels keep the conditional velocity
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert m.net.rows == n * m.nfe(steps, w)  # nfe() counts exactly the evaluations the sampler makes
    assert m.nfe(steps, w) == steps + int(on.sum())
    assert m.nfe(steps, w, shift=1.0, cfg_interval_start=0.0) == 2 * steps


def test_sample_unguided_paths_use_one_pass():
    m = _method()
    m.net = StubNet()
    m.sample(torch.tensor([0, 1]), torch.arange(2), steps=3, guidance=1.0)
    assert m.net.rows == 2 * 3 == 2 * m.nfe(3, 1.0)
    m.net.rows = 0
    m.sample(None, torch.arange(2), num_samples=2, steps=3, guidance=3.0)  # no labels: the null class only
    assert m.net.rows == 6 and all(bool((s == 2).all()) for s in m.net.seen[-3:])


def test_sample_callback_reports_flow_time_and_latents():
    m = _method()
    seen = []
    m.sample(torch.tensor([0]), torch.arange(1), steps=4, callback=seen.append, shift=1.0)
    assert [s["i"] for s in seen] == [0, 1, 2, 3] and [s["t"] for s in seen] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[0]["x"].shape == (1, 4, 4, 4) and seen[0]["x0_logits"] is None and seen[0]["steps"] == 4


# -- training pieces -------------------------------------------------------------------------------


def test_label_dropout_in_training_only():
    m = _method(label_dropout=1.0)
    m.net = StubNet()
    z, y = torch.randn(8, 4, 4, 4), torch.tensor([0, 1] * 4)
    m.train()
    m.loss(z, y)
    assert bool((m.net.seen[-1] == 2).all())  # every label dropped to the null class
    m.eval()
    m.loss(z, y)
    assert torch.equal(m.net.seen[-1], y)
    m.loss(z, None)  # a batch without labels trains the null class
    assert bool((m.net.seen[-1] == 2).all())
    m2 = _method(label_dropout=0.5)
    m2.net = StubNet()
    m2.train()
    torch.manual_seed(3)
    m2.loss(torch.randn(400, 4, 4, 4), torch.zeros(400, dtype=torch.long))
    assert 0.4 < float((m2.net.seen[-1] == 2).float().mean()) < 0.6


def test_training_times_are_logit_normal_or_uniform():
    g = torch.Generator().manual_seed(0)
    t = _method().sample_t(20000, torch.device("cpu"), generator=g).double()
    p = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(t, p), logit_normal_quantile(p), atol=0.01, rtol=0)
    u = _method(t_sampling="uniform").sample_t(20000, torch.device("cpu"), generator=g).double()
    torch.testing.assert_close(torch.quantile(u, p), p, atol=0.01, rtol=0)


def test_loss_terms_and_weights():
    m = _method()
    with torch.no_grad():
        m.net.final.linear.bias.fill_(0.1)  # a non-zero velocity, so the cosine term is informative
    z, y = torch.randn(6, 4, 4, 4), torch.tensor([0, 1] * 3)
    torch.manual_seed(1)
    loss, terms = m.loss(z, y)
    assert loss.item() == pytest.approx(terms["mse"].item() + terms["cos"].item(), rel=1e-6)
    m.config.cos_weight = 0.0
    torch.manual_seed(1)
    loss0, terms0 = m.loss(z, y)
    assert loss0.item() == pytest.approx(terms0["mse"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="nothing to train"):
        LightningDiT.Config(mse_weight=0, cos_weight=0)


def test_refusals():
    m = _method()
    with pytest.raises(LightningDiTError, match="float latents 'b h w d'"):
        m.loss(torch.zeros(2, 4, 4, dtype=torch.long), None)
    with pytest.raises(LightningDiTError, match="float latents"):
        m.loss(torch.randn(2, 4, 4, 4).permute(0, 3, 1, 2)[:, :, :, :3], None)
    with pytest.raises(LightningDiTError, match="unknown lightningdit sampling options"):
        m.sample(torch.tensor([0]), torch.arange(1), temperature=0.5)
    with pytest.raises(LightningDiTError, match="one seed per sample"):
        m.sample(torch.tensor([0, 1]), torch.arange(1))
    with pytest.raises(LightningDiTError, match="unconditional"):
        _method(num_classes=None).sample(torch.tensor([0]), torch.arange(1))
    with pytest.raises(LightningDiTError, match="latent_dim"):
        LightningDiT(LightningDiT.Config(), context=_ctx())

    class Discrete:
        latent_kind = "discrete"

    with pytest.raises(LightningDiTError, match="continuous tokenizer"):
        LightningDiT(LightningDiT.Config(latent_dim=4), context=_ctx(tokenizer=Discrete()))
    assert m.nll_bound(torch.randn(2, 4, 4, 4), None) is None
    from dlbench.eval.token_metrics import token_metrics

    # the reasons are keyed by the metric names a discrete run records
    names = set(token_metrics(torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long), 3, 0.5))
    assert set(LightningDiT.unavailable_metrics) == names | {"nll_bound"}


def test_with_kl_vae_tokenizer_latents_decode(registry):  # noqa: F811
    """The pipeline's path in miniature: latent_dim from the tokenizer, normalised latents in, sampled latents
    decoded by the same tokenizer."""
    tok = registry.get("tokenizer", "kl-vae").build({"latent_dim": 6, "channels": 8}, channels=1, resolution=16)
    images = (torch.rand(8, 1, 16, 16) * 255).to(torch.uint8)
    tok.compute_latent_stats(images)
    z = tok.encode(images.float() / 127.5 - 1)
    grid = tok.token_grid(16, 16)
    m = LightningDiT(LightningDiT.Config(), context=_ctx(grid=grid, tokenizer=tok))
    assert m.latent_dim == 6 and z.shape == (8, *grid, 6)
    loss, _ = m.loss(z, torch.zeros(8, dtype=torch.long))
    loss.backward()
    out = tok.decode(m.sample(torch.tensor([0, 1]), torch.arange(2), steps=2))
    assert out.shape == (2, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(LightningDiTError, match="tokenizer's latent_dim"):
        LightningDiT(LightningDiT.Config(latent_dim=4), context=_ctx(grid=grid, tokenizer=tok))


def test_positions_count_patches():
    assert _method().positions == 16 and _method(patch_size=2).positions == 4


def test_loss_curve_report():
    m = _method()
    rep = m.end_of_training_report(torch.randn(4, 4, 4, 4), torch.tensor([0, 1, 0, 1]))
    curve = rep["loss_curve"]
    assert len(curve["t"]) == len(curve["mse"]) == len(curve["cos"]) == 9 and 0 < curve["t"][0] < curve["t"][-1] < 1
    assert rep["unavailable_metrics"]["nll_bound"]


# -- the mechanism: a toy 2-class latent distribution ------------------------------------------------


def test_training_moves_class_conditional_sample_means_to_the_data():
    """Two classes of 4x4x4 latents, N(+mu, 0.3^2) and N(-mu, 0.3^2) with a per-channel mu. After 300 steps the
    samples' per-class, per-channel means are the data's (an untrained model samples noise, mean 0), and CFG
    pushes them further along the class direction."""
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -1.0, 0.5, -0.5])
    m = LightningDiT(LightningDiT.Config(latent_dim=4), context=_ctx())
    labels = torch.arange(200) % 2
    before = m.sample(labels, torch.arange(200), steps=10)
    for c, s in ((0, 1.0), (1, -1.0)):
        assert (before[labels == c].mean((0, 1, 2)) - s * mu).abs().min() > 0.4
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        y = torch.randint(0, 2, (64,), generator=g)
        x = (1 - 2 * y).float()[:, None, None, None] * mu + 0.3 * torch.randn(64, 4, 4, 4, generator=g)
        loss, _ = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.sample(labels, torch.arange(200), steps=10)
    guided = m.sample(labels, torch.arange(200), steps=10, guidance=3.0, cfg_interval_start=0.0)
    for c, s in ((0, 1.0), (1, -1.0)):
        mean = after[labels == c].mean((0, 1, 2))
        torch.testing.assert_close(mean, s * mu, atol=0.2, rtol=0)
        std = after[labels == c].std((0, 1, 2))
        assert bool(((std > 0.15) & (std < 0.6)).all())  # spread of the class, not collapsed onto the mean
        push = s * mu.sign() * (guided[labels == c].mean((0, 1, 2)) - mean)
        assert bool((push[:2] > 0.1).all())  # |mu| = 1 channels: guidance extrapolates away from the null class
