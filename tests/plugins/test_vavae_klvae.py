"""tokenizer/kl-vae: KL term, channel-wise latent normalisation stored with the weights, VF hook, conformance."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dlbench.testing import check_config_roundtrip
from dlbench_vavae.klvae import KLVAE, KLVAEConfig, KLVAEVFConfig, LatentStatsMissing, diagonal_gaussian_kl, latent_stats
from dlbench_vavae.testing import check_continuous_tokenizer

from vavae_helpers import VF, registry  # noqa: F401 - fixture


def _tiny(**kw):
    torch.manual_seed(0)
    return KLVAE(KLVAEConfig(channels=8, latent_dim=3, **kw), channels=1, resolution=16)


def test_kl_matches_torch_distributions_float64():
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(diagonal_gaussian_kl(mean, logvar), ref)
    assert diagonal_gaussian_kl(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0  # posterior = prior


def test_latent_stats_closed_form():
    z = torch.tensor([[[[1.0, 10.0], [3.0, 10.0]]], [[[5.0, 10.0], [7.0, 10.0]]]])  # "n h w d", d=2
    mean, std = latent_stats(z)
    assert mean.tolist() == [4.0, 10.0]
    assert std[0].item() == pytest.approx(5 ** 0.5) and std[1].item() == 0.0


def test_config_validation():
    check_config_roundtrip(KLVAEConfig)
    check_config_roundtrip(KLVAEVFConfig)
    assert KLVAEConfig().vf.weight == 0.0 and KLVAEVFConfig().vf.weight == 0.1
    with pytest.raises(ValueError, match="power of 2"):
        KLVAEConfig(downsample=3)
    with pytest.raises(ValueError, match=r"ch_mult needs log2\(downsample\) \+ 1 = 3 entries"):
        KLVAEConfig(downsample=4, ch_mult=(1, 2))


def test_shapes_and_loss_terms():
    tok = _tiny(kl_weight=0.5)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    mean, logvar = tok.posterior(x)
    assert mean.shape == logvar.shape == (2, 3, 4, 4)  # f4, d = 3
    tok.eval()  # eval: z = posterior mean, so the loss is reproducible
    loss, terms = tok.training_loss(x)
    expected = terms["recon"] + 0.5 * terms["kl"] / x[0].numel()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["kl"], diagonal_gaussian_kl(mean, logvar).mean())


def test_normalisation_required_and_roundtrip():
    tok = _tiny()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with pytest.raises(LatentStatsMissing, match="FID ~130"):
        tok.encode(x)
    with pytest.raises(LatentStatsMissing):
        tok.decode(torch.zeros(1, 4, 4, 3))
    images = (torch.rand(6, 1, 16, 16) * 255).to(torch.uint8)
    info = tok.compute_latent_stats(images, seed=3)
    assert info["images"] == 6 and info["flip"]
    # the stored statistics are those of posterior samples of the images and their flips (same seed)
    g = torch.Generator().manual_seed(3)
    xf = images.float() / 127.5 - 1
    with torch.no_grad():
        samples = [tok.sample(*tok.posterior(v), g).permute(0, 2, 3, 1) for v in (xf, xf.flip(-1))]
    normed = tok.normalize(torch.cat(samples)).double().reshape(-1, 3)
    torch.testing.assert_close(normed.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # decode(normalised latent) inverts the normalisation: equals the decoder on the raw posterior mean
    with torch.no_grad():
        z = tok.encode(x)
        raw = tok.posterior(x)[0]
        torch.testing.assert_close(tok.decode(z), tok.decoder(raw).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tok.latent_std, torch.ones(3))  # the statistics were really non-trivial
    # stored with the weights: a fresh tokenizer loading the state dict decodes identically
    fresh = KLVAE(KLVAEConfig(channels=8, latent_dim=3), channels=1, resolution=16)
    fresh.load_state_dict(tok.state_dict())
    assert fresh.has_latent_stats
    with torch.no_grad():
        torch.testing.assert_close(fresh.decode(z), tok.decode(z))


def test_conformance():
    tok = _tiny()
    tok.finish_training((torch.rand(4, 1, 16, 16) * 255).to(torch.uint8))
    check_continuous_tokenizer(tok, channels=1, resolution=16)
    assert tok.run_metadata()["latent_kind"] == "continuous"
    with pytest.raises(Exception, match="no codebook"):
        tok.codebook()


def test_registered_and_vf_on_kl_vae(registry):  # noqa: F811
    spec = registry.get("tokenizer", "kl-vae-vf")
    tok = spec.build({"channels": 8, "latent_dim": 3, "vf": VF}, channels=1, resolution=16)
    assert tok.vf is not None and tok.vf.proj.weight.shape == (6, 3, 1, 1)
    loss, terms = tok.training_loss(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert {"vf_alignment", "vf_mcos", "vf_mdms", "vf_adaptive_weight"} <= set(terms)
    loss.backward()
    assert tok.vf.proj.weight.grad.abs().sum() > 0 and tok.encoder[-1].weight.grad.abs().sum() > 0
    assert registry.get("tokenizer", "kl-vae").build({}, channels=1, resolution=16).vf is None
    tok.zero_grad(set_to_none=True)
    tok.finish_training((torch.rand(4, 1, 16, 16) * 255).to(torch.uint8))
    check_continuous_tokenizer(tok, channels=1, resolution=16)


def _train_vf(registry, weight, steps=15):
    torch.manual_seed(0)
    tok = registry.get("tokenizer", "kl-vae-vf").build(
        {"channels": 8, "latent_dim": 3, "vf": {**VF, "weight": weight, "cos_margin": 0.0, "distmat_margin": 0.0}},
        channels=1, resolution=16)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(steps):
        loss, terms = tok.training_loss(x)
        first = first or (terms["vf_mcos"].item(), terms["vf_mdms"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, terms = tok.training_loss(x)
    return first, (terms["vf_mcos"].item(), terms["vf_mdms"].item())


def test_vf_training_aligns_the_latent(registry):  # noqa: F811
    """Optimiser steps on the VF-regularised objective lower both alignment losses; with a negligible VF weight
    (same seed, same data) the cosine loss stays where it started."""
    first, aligned = _train_vf(registry, 1.0)
    assert aligned[0] < 0.9 * first[0] and aligned[1] < 0.9 * first[1]
    first_c, control = _train_vf(registry, 1e-6)
    assert first_c == first  # same start
    assert aligned[0] < control[0] - 0.05
