"""VQ-LCMD method: losses wired correctly, teacher, dropping, sampling invariances, quick train->sample."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dlbench.interfaces import MethodContext
from dlbench.embeddings import EmbeddingConfigError
from dlbench_vqlcmd.method import CSDM, VQLCMD, FixedEmbedding, VQLCMDError, VQLCMDNoDrop, VQLCMDNoShift
from dlbench_vqlcmd.regularizers import RandomDropping

K, GRID = 12, (3, 3)
TINY = {"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}}


def _ctx(num_classes=None, tokenizer=None):
    return MethodContext(codebook_size=K, token_grid=GRID, num_classes=num_classes, tokenizer=tokenizer, backbone=TINY)


def _method(cls=VQLCMD, num_classes=None, **params):
    torch.manual_seed(0)
    m = cls(cls.Config(embed_dim=4, **params), context=_ctx(num_classes))
    # the denoiser head is zero-initialised (DiT); perturb it so posteriors are not all uniform
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if m.teacher is not None:
        m.teacher["denoiser"].load_state_dict(m.denoiser.state_dict())
    return m


def _tokens(b=4, seed=1):
    return torch.randint(0, K, (b, *GRID), generator=torch.Generator().manual_seed(seed))


def _batch_ctx(m, b=4):
    """The tensors ``_consistency`` consumes, built like ``loss`` does (no dropping)."""
    tokens = _tokens(b)
    table = m.embedding.weight()
    z0 = table[tokens]
    t = torch.linspace(0.2, 0.8, b)
    eps = torch.randn_like(z0)
    a, s = m.schedule.alpha_sigma(t)
    z_t = a[:, None, None, None] * z0 + s[:, None, None, None] * eps
    logits_t = m.denoiser(z_t, t, None)
    return tokens, z0, z_t, eps, t, logits_t, table


# -- consistency matching ----------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", ["ema", "stopgrad"])
@pytest.mark.parametrize("zs", ["ddim", "same-noise"])
def test_cm_is_zero_when_teacher_equals_student_and_s_equals_t(teacher, zs):
    m = _method(teacher=teacher, cm_zs=zs, drop_rate=0.0).eval()
    tokens, z0, z_t, eps, t, logits_t, table = _batch_ctx(m)
    m._sample_s = lambda t: t  # s = t
    assert m._consistency(tokens, z0, z_t, eps, t, None, logits_t, table).item() == pytest.approx(0.0, abs=1e-5)
    m._sample_s = lambda t: t * 0.2  # and clearly not zero for s << t
    assert m._consistency(tokens, z0, z_t, eps, t, None, logits_t, table).item() > 1e-4


def test_no_gradient_reaches_the_teacher_target():
    m = _method(teacher="stopgrad", w_rec=0.0, w_dm=0.0, w_prior=0.0, drop_rate=0.0).train()
    seen = {}
    orig = m.cm.forward

    def spy(**tensors):
        seen["teacher_requires_grad"] = tensors["teacher_logits"].requires_grad
        seen["student_requires_grad"] = tensors["student_logits"].requires_grad
        return orig(**tensors)

    m.cm.forward = spy
    loss, terms = m.loss(_tokens(), None)
    assert set(terms) >= {"rec", "dm", "prior", "cm"}
    assert seen == {"teacher_requires_grad": False, "student_requires_grad": True}
    loss.backward()
    assert m.denoiser.final.linear.weight.grad.abs().sum() > 0

    ema = _method(teacher="ema")
    ema.loss(_tokens(), None)[0].backward()
    assert all(p.grad is None for p in ema.teacher.parameters())
    assert not any(p.requires_grad for p in ema.teacher.parameters())


@pytest.mark.parametrize("term", ["w_rec", "w_dm"])
def test_embedding_gets_gradient_from_reconstruction_and_diffusion(term):
    weights = {"w_rec": 0.0, "w_dm": 0.0, "w_prior": 0.0, "w_cm": 0.0, term: 1.0}
    m = _method(drop_rate=0.0, **weights)
    m.loss(_tokens(), None)[0].backward()
    g = m.embedding.table.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_ema_teacher_update_formula():
    m = _method(teacher="ema", ema_decay=0.9)
    live, ema = m.embedding.table, m.teacher["embedding"].table
    before = ema.detach().clone()
    with torch.no_grad():
        live.add_(1.0)
    m.on_step_end()
    torch.testing.assert_close(ema, 0.9 * before + 0.1 * live.detach())
    assert CSDM(context=_ctx()).teacher is None  # no CM -> no teacher copy, on_step_end is a no-op
    CSDM(context=_ctx()).on_step_end()


# -- random dropping ---------------------------------------------------------------------------------


def test_dropping_replaces_exactly_sampled_positions_at_rate():
    drop = RandomDropping(RandomDropping.Config(rate=0.3, dim=4)).train()
    with torch.no_grad():
        drop.drop_vector.fill_(9.0)
    z = torch.randn(64, 8, 8, 4)
    out, mask = drop.drop(z, generator=torch.Generator().manual_seed(0))
    assert (out[mask] == 9.0).all()
    torch.testing.assert_close(out[~mask], z[~mask])
    # 4096 Bernoulli(0.3) draws: sd ~ 0.007, so 0.03 is > 4 sd
    assert abs(mask.float().mean().item() - 0.3) < 0.03
    assert drop(mask=mask).item() == pytest.approx(mask.float().mean().item())
    out_eval, mask_eval = drop.eval().drop(z)
    assert not mask_eval.any() and torch.equal(out_eval, z)


def test_drop_vector_is_learned_through_the_loss():
    m = _method(drop_rate=0.5, w_cm=0.0)
    m.loss(_tokens(8), None)[0].backward()
    assert m.dropping.drop_vector.grad is not None and m.dropping.drop_vector.grad.abs().sum() > 0


# -- sampling ----------------------------------------------------------------------------------------


def test_sampling_is_batch_size_independent_and_seeded():
    m = _method(num_classes=3)
    seeds = torch.tensor([11, 12, 13, 14])
    labels = torch.tensor([0, 1, 2, 1])
    full = m.sample(labels, seeds, steps=4, guidance=2.0)
    halves = torch.cat([m.sample(labels[:2], seeds[:2], steps=4, guidance=2.0), m.sample(labels[2:], seeds[2:], steps=4, guidance=2.0)])
    assert full.shape == (4, *GRID) and full.dtype == torch.long
    assert torch.equal(full, halves)
    assert torch.equal(full, m.sample(labels, seeds, steps=4, guidance=2.0))
    assert m.nfe(4, 2.0) == 8 and m.nfe(4, 1.0) == 4


def test_sampler_callback_and_option_errors():
    m = _method()
    calls = []
    m.sample(None, torch.arange(2), num_samples=2, steps=3, callback=calls.append)
    assert [c["i"] for c in calls] == [0, 1, 2]
    assert calls[0]["t"] == pytest.approx(m.config.t_max) and calls[-1]["t"] == pytest.approx(m.config.t_min)
    with pytest.raises(VQLCMDError, match="unknown VQ-LCMD sampling options"):
        m.sample(None, torch.arange(2), num_samples=2, steps=2, temprature=0.5)
    with pytest.raises(VQLCMDError, match="one seed per sample"):
        m.sample(None, torch.arange(3), num_samples=2, steps=2)
    with pytest.raises(VQLCMDError, match="unconditional"):
        m.sample(torch.tensor([0, 1]), torch.arange(2), steps=2)


# -- end to end --------------------------------------------------------------------------------------


def test_quick_train_then_sample_on_random_tokens():
    torch.manual_seed(0)
    # rec_fraction=1: the assertion below is about memorising all 16 grids at t_min within 40 steps
    m = VQLCMD(VQLCMD.Config(embed_dim=4, ema_decay=0.5, rec_fraction=1.0), context=_ctx(num_classes=2))
    tokens, labels = _tokens(16, seed=3), torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    m.train()
    rec0 = m.ce_curve(tokens, labels, points=2)["ce"][0]
    for _ in range(40):
        loss, terms = m.loss(tokens, labels)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end()
    report = m.end_of_training_report(tokens, labels)
    # the model memorises a 16-grid batch at t_min: its reconstruction CE must fall well below the start
    assert report["ce_curve"]["ce"][0] < 0.8 * rec0
    assert len(report["ce_curve"]["t"]) == m.config.ce_curve_points
    assert {"embed/min_pairwise_dist_over_sigma", "embed/effective_rank", "embed/mean_cosine"} <= set(report)
    out = m.sample(torch.tensor([0, 1]), torch.tensor([5, 6]), steps=5, guidance=1.5)
    assert out.shape == (2, *GRID) and int(out.min()) >= 0 and int(out.max()) < K
    assert m.training  # sample() restores the mode


# -- ablations, config, registration -----------------------------------------------------------------


def test_ablation_defaults():
    assert CSDM.Config().w_cm == 0 and CSDM.Config().drop_rate == 0 and CSDM.Config().schedule.name == "cosine"
    assert VQLCMDNoDrop.Config().drop_rate == 0 and VQLCMDNoDrop.Config().w_cm > 0
    assert VQLCMDNoShift.Config().schedule.model_dump() == {"name": "shifted-cosine", "params": {"shift": 0.0}}
    assert FixedEmbedding.requires.needs_codebook and FixedEmbedding.Config().embedding.name == "codebook"
    _, terms = CSDM(CSDM.Config(embed_dim=4), context=_ctx()).loss(_tokens(), None)
    assert "cm" not in terms and "drop_frac" not in terms


def test_fixed_embedding_uses_the_frozen_codebook():
    class Tok:
        def codebook(self):
            return torch.randn(K, 5)

    m = FixedEmbedding(context=_ctx(tokenizer=Tok()))
    assert m.embedding.dim == 5 and not any(p is m.embedding.table for p in m.parameters())
    m.loss(_tokens(), None)[0].backward()
    with pytest.raises(EmbeddingConfigError, match="needs a tokenizer"):
        FixedEmbedding(context=_ctx())


def test_config_errors():
    with pytest.raises(ValidationError):
        VQLCMD.Config(w_cmm=1.0)
    with pytest.raises(ValidationError, match="only applies to schedule 'shifted-cosine'"):
        VQLCMD.Config(schedule="cosine", shift=-2.0)  # the pre-slot flat field, still honoured
    assert VQLCMD.Config(shift=-1.0).schedule.params == {"shift": -1.0}
    assert VQLCMD.Config(embed_dim=4).embedding.params["dim"] == 4
    with pytest.raises(ValidationError, match="cm_step_model"):
        VQLCMD.Config(cm_zs="same-noise", cm_step_model="teacher")
    with pytest.raises(VQLCMDError, match="'b h w'"):
        _method().loss(torch.zeros(2, 4, 4, dtype=torch.long), None)


def test_plugin_registers_methods_and_regularizers():
    from dlbench import plugins

    manager = plugins.PluginManager()
    import dlbench_vqlcmd.plugin as plugin

    info = manager.register_plugin(plugin, "vqlcmd-test")
    assert info.ok, info.error
    reg = manager.registry
    assert {"vqlcmd", "csdm", "vqlcmd-nodrop", "vqlcmd-noshift", "fixed-embedding"} <= set(reg.names("method"))
    assert {"consistency-matching", "random-dropping"} <= set(reg.names("regularizer"))
    assert reg.get("regularizer", "consistency-matching").factory.stage == "generator"
    for name in ("vqlcmd", "csdm"):
        presets = reg.get("method", name).factory.presets
        assert set(presets) == {"quick", "default", "benchmark", "collapse", "paper"}
    m = reg.get("method", "csdm").build({"embed_dim": 4}, context=_ctx())
    assert isinstance(m, CSDM)


@pytest.mark.parametrize("cls", [VQLCMD, CSDM, VQLCMDNoDrop, VQLCMDNoShift, FixedEmbedding])
@pytest.mark.parametrize("preset", ["quick", "default", "benchmark", "collapse", "paper"])
def test_presets_are_valid_run_configs(cls, preset):
    from dlbench.config import BASE_PRESETS, RunConfig, deep_merge

    data = deep_merge(BASE_PRESETS[preset], cls.presets[preset])
    data["method"] = {"name": "vqlcmd", **data.get("method", {})}
    cfg = RunConfig.model_validate(data)
    cls.Config.model_validate(cfg.method.params)  # method params are real fields of this method
    from dlbench.nn.denoiser import resolve_backbone

    resolve_backbone(cfg.backbone.preset, **cfg.backbone.params)
