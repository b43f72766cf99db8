"""VQGAN tokenizer: closed-form losses, the single-optimizer GAN split, LPIPS weights, safe checkpoint import."""

import os
import sys

import pytest
import torch

from dlbench.interfaces import Tokenizer
from dlbench.nn.vqgan import VQGAN, VQGANConfig
from dlbench.nn.vqgan_loss import adaptive_weight, adopt_weight, hinge_d_loss, hinge_g_loss
from dlbench.registry import DlbenchError, Registry

from _vqgan_data import taming_ckpt as _taming_ckpt

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16, code_dim=4,
            disc_channels=8, disc_layers=2, perceptual_weight=0.0, restart_every=0)


def _model(channels=3, resolution=16, **kw):
    torch.manual_seed(0)
    return VQGAN(VQGANConfig(**{**TINY, **kw}), channels=channels, resolution=resolution)


# ---------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------


def test_hinge_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 5/6 ; relu(1 + fake) = [0, 1, 2] -> 1
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1)))
    assert torch.isclose(hinge_g_loss(fake), torch.tensor(1 / 3))  # -mean([-2, 0, 1])
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)) == 0  # beyond the margins: no loss


def test_adaptive_weight_is_ratio_of_gradient_norms_and_clamped():
    w = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    lam = adaptive_weight((a * w).sum(), (b * w).sum(), w)  # gradients are a and b
    torch.testing.assert_close(lam, a.norm() / (b.norm() + 1e-4))
    assert not lam.requires_grad
    assert adaptive_weight((a * w).sum(), (0 * w).sum(), w) == 1e4  # vanishing GAN gradient -> the clamp


def test_adopt_weight_delays_the_discriminator():
    assert [adopt_weight(0.7, s, 3) for s in range(5)] == [0, 0, 0, 0.7, 0.7]


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def test_registers_shapes_and_taming_layout():
    Registry().add("tokenizer", "vqgan", VQGAN)  # structural interface check
    m = _model()
    assert isinstance(m, Tokenizer)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = m.encode(x)
    assert codes.shape == (2, 8, 8) and m.token_grid(16, 16) == (8, 8)
    y = m.decode(codes)
    assert y.shape == x.shape and y.abs().max() <= 1
    with torch.device("meta"):  # the full f16 model's names, without allocating its 72M parameters
        keys = set(VQGAN(VQGANConfig(), channels=3, resolution=256).state_dict())
    # taming-transformers names (f16: 5 levels, attention at the 16x16 level only, 3 decoder blocks per level)
    for k in ("encoder.down.4.attn.1.q.weight", "encoder.down.3.downsample.conv.weight", "encoder.mid.attn_1.proj_out.weight",
              "decoder.up.0.block.2.conv2.weight", "decoder.up.1.upsample.conv.weight", "decoder.up.4.attn.2.k.weight",
              "quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.weight", "encoder.down.2.block.0.nin_shortcut.weight"):
        assert k in keys, k
    assert not any(k.startswith("encoder.down.3.attn") for k in keys)
    with pytest.raises(DlbenchError, match="not divisible"):
        VQGAN(VQGANConfig(), channels=3, resolution=40)


def test_generator_and_discriminator_gradients_are_each_their_own_loss():
    """One optimizer, one backward: D's gradient is exactly grad hinge_d(D(x), D(sg(x_hat))), and the
    generator's adversarial term enters with the adaptive weight (Eq. 7)."""
    m = _model(disc_start=0).train()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    loss, terms = m.training_loss(x)
    assert {"l1", "g_loss", "d_loss", "adaptive_weight", "commit", "codebook", "perplexity"} <= set(terms)
    d_params = list(m.discriminator.parameters())
    g_total = torch.autograd.grad(loss, d_params, retain_graph=True)
    z_q, _, _ = m.quantize(m._z_e(x), 2)
    ref = hinge_d_loss(m.discriminator(x), m.discriminator(m._decode_z(z_q).detach()))
    for a, b in zip(g_total, torch.autograd.grad(ref, d_params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    expected = (terms["rec"] + terms["codebook"] + 0.25 * terms["commit"]
                + terms["adaptive_weight"] * 0.8 * terms["g_loss"] + terms["d_loss"])
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0 and m.quantize.embedding.weight.grad.abs().sum() > 0


def test_discriminator_is_off_before_disc_start():
    m = _model(disc_start=3).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for step in (1, 2):
        loss, terms = m.training_loss(x)
        assert "d_loss" not in terms
        assert all(g is None for g in torch.autograd.grad(loss, list(m.discriminator.parameters()), allow_unused=True))
        m.on_step_end()  # the loop's per-optimizer-step hook advances the count
    assert int(m.train_steps) == 2
    _, terms = m.training_loss(x)  # step 3
    assert "d_loss" in terms and "g_loss" in terms


def test_dead_codes_restart_and_ema_quantizer():
    m = _model(restart_every=1, codebook_size=64).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    _, terms = m.training_loss(x)
    assert terms["restarted_codes"] > 0  # 128 positions cannot use all 64 codes of a random init... some stay dead
    e = _model(quantizer="ema", disc_start=10).train()
    before = e.quantize.embedding.weight.clone()
    e.training_loss(x)
    assert not e.quantize.embedding.weight.requires_grad and not torch.equal(before, e.quantize.embedding.weight)


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_standin(tmp_path_factory):
    """A VGG16 trunk in torchvision's layout (``features.<i>.*``) with random weights."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-standin.pth"
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16().features, no classifier
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    return path


def test_lpips_loads_standin_trunk_and_package_linear_layers(vgg_standin):
    pytest.importorskip("lpips")
    import lpips

    from dlbench.nn.lpips import build_lpips

    net = build_lpips(vgg_standin)
    file = torch.load(vgg_standin, weights_only=True)
    torch.testing.assert_close(net.net.slice1[0].weight, file["features.0.weight"])
    torch.testing.assert_close(getattr(net.net.slice5, "28").bias, file["features.28.bias"])
    lins = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/vgg.pth"), weights_only=True,
                      map_location="cpu")
    torch.testing.assert_close(net.lin2.model[1].weight, lins["lin2.model.1.weight"])
    assert net.weights_source.source == "explicit"
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert net(x, x).abs().max() < 1e-6 and (net(x, y) > 0).all()


def test_full_vqgan_loss_with_lpips_on_grey_images(vgg_standin):
    pytest.importorskip("lpips")
    m = _model(channels=1, resolution=32, perceptual_weight=1.0, lpips_vgg_weights=str(vgg_standin), disc_start=0).train()
    loss, terms = m.training_loss(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert terms["lpips"] > 0 and {"g_loss", "d_loss", "adaptive_weight"} <= set(terms)
    torch.testing.assert_close(terms["rec"], terms["l1"] + terms["lpips"])
    loss.backward()
    assert not any(k.startswith("_lpips") or "perceptual" in k for k in m.state_dict())  # VGG never saved with it


def test_perceptual_term_refused_by_name_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBENCH_OFFLINE", "1")
    monkeypatch.delenv("DLBENCH_VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    m = _model(perceptual_weight=1.0)
    with pytest.raises(DlbenchError, match=r"perceptual \(LPIPS\) term.*perceptual_weight=0"):
        m.prepare_training()
    m0 = _model(perceptual_weight=0.0)
    m0.prepare_training()  # weight 0: nothing to resolve


# ---------------------------------------------------------------------------------------------
# import of upstream checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nest", ["", "first_stage_model."], ids=["taming-ckpt", "vqdiffusion-ffhq"])
def test_import_upstream_layout_with_lightning_metadata(tmp_path, nest):
    src = _model(resolution=32)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = _taming_ckpt(src, tmp_path / ("last.ckpt" if not nest else "vqgan_ffhq_f16_1024.pth"), nest)
    m = VQGAN(VQGANConfig(**TINY, checkpoint=str(path)), channels=3, resolution=32)
    assert m.pretrained and m.imported["discriminator"] and len(m.imported["sha256"]) == 64
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(m.decode(m.encode(x)), src.eval().decode(src.encode(x)))
    torch.testing.assert_close(m.discriminator.main[0].weight, src.discriminator.main[0].weight)


def test_import_checks_shapes_and_sha256(tmp_path):
    path = _taming_ckpt(_model(), tmp_path / "last.ckpt", lightning=False)
    with pytest.raises(DlbenchError, match=r"quantize.embedding.weight has shape \(16, 4\).*codebook_size': 16"):
        VQGAN(VQGANConfig(**{**TINY, "codebook_size": 32}, checkpoint=str(path)), channels=3, resolution=16)
    with pytest.raises(DlbenchError, match="sha256"):
        VQGAN(VQGANConfig(**TINY, checkpoint=str(path), checkpoint_sha256="0" * 64), channels=3, resolution=16)
    with pytest.raises(DlbenchError, match="needs the file"):
        VQGAN(VQGANConfig(pretrained="taming-imagenet-f16-1024", perceptual_weight=0), channels=3, resolution=256)
    with pytest.raises(ValueError, match="Did you mean 'taming-imagenet-f16-1024'"):
        VQGANConfig(pretrained="taming-imagenet-f16-1023")
    assert VQGANConfig(pretrained="taming-imagenet-f16-16384").codebook_size == 16384


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _model().state_dict(), "callbacks": _Evil(marker)}, path)
    with pytest.raises(DlbenchError, match=rf"{path}: refused to load.*(posix|os)\.system"):
        VQGAN(VQGANConfig(**TINY, checkpoint=str(path)), channels=3, resolution=16)
    assert not marker.exists()
