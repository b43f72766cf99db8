"""Foundation extractors (feature_extractor/dinov2, /mae): offline weight resolution and loading.

Stand-in weights: a timm model with random weights saved in the upstream (Hugging Face ``timm/<arch>``)
layout, so the real key names and the real cache layout are exercised without any download.
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from dlbench.testing import check_feature_extractor  # noqa: E402
from dlbench_vavae.foundation import (  # noqa: E402
    DINOv2,
    FoundationWeightsError,
    MAE,
    resolve_foundation_weights,
)

ARCH = "vit_small_patch14_dinov2.lvd142m"


def _hf_layout(root, arch, filename="model.safetensors", state=None):
    """``<hub cache>/models--timm--<arch>/{refs/main, snapshots/<rev>/<filename>}`` as huggingface_hub writes it."""
    rev = "0" * 40
    repo = root / f"models--timm--{arch}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    path = snap / filename
    if state is None:
        path.write_bytes(b"stand-in")
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))
    monkeypatch.delenv("DLBENCH_DINOV2_WEIGHTS", raising=False)
    monkeypatch.delenv("DLBENCH_MAE_WEIGHTS", raising=False)
    return root


def test_resolution_order(hub, tmp_path, monkeypatch):
    arch = "vit_base_patch16_224.mae"
    with pytest.raises(FoundationWeightsError) as err:
        resolve_foundation_weights("mae", arch, None, "DLBENCH_MAE_WEIGHTS")
    msg = str(err.value)
    assert "\n" not in msg and f"huggingface-cli download timm/{arch}" in msg and "$DLBENCH_MAE_WEIGHTS" in msg
    cached = _hf_layout(hub, arch)
    got = resolve_foundation_weights("mae", arch, None, "DLBENCH_MAE_WEIGHTS")
    assert (got.source, got.path) == ("hf-cache", cached)
    env_file = tmp_path / "env.safetensors"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("DLBENCH_MAE_WEIGHTS", str(env_file))
    assert resolve_foundation_weights("mae", arch, None, "DLBENCH_MAE_WEIGHTS").source == "env"
    explicit = tmp_path / "explicit.safetensors"
    explicit.write_bytes(b"x")
    got = resolve_foundation_weights("mae", arch, str(explicit), "DLBENCH_MAE_WEIGHTS")
    assert (got.source, got.path) == ("explicit", explicit)
    with pytest.raises(FoundationWeightsError, match="weights_path = .* is not a file"):
        resolve_foundation_weights("mae", arch, str(tmp_path / "nope"), "DLBENCH_MAE_WEIGHTS")
    monkeypatch.setenv("DLBENCH_MAE_WEIGHTS", str(tmp_path / "nope"))
    with pytest.raises(FoundationWeightsError, match=r"\$DLBENCH_MAE_WEIGHTS"):
        resolve_foundation_weights("mae", arch, None, "DLBENCH_MAE_WEIGHTS")


def test_mae_refuses_without_weights(hub):
    with pytest.raises(FoundationWeightsError, match="never downloads"):
        MAE()


def test_dinov2_loads_standin_from_hf_cache(hub):
    torch.manual_seed(0)
    ref = timm.create_model(ARCH, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    _hf_layout(hub, ARCH, state={k: v.contiguous() for k, v in ref.state_dict().items()})
    ext = DINOv2()
    assert ext.weights.source == "hf-cache" and ext.dim == 384 and ext.patch == 14
    assert len(ext.weights_sha256()) == 64
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    grid = ext.feature_grid(images, (8, 8))
    assert grid.shape == (2, 384, 8, 8)
    # the loaded weights are the stand-in's: same patch tokens as the reference model on the same input
    x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(112, 112), mode="bicubic")
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expect = ref.forward_features(((x + 1) / 2 - mean) / std)[:, 1:]
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), expect, atol=1e-5, rtol=1e-4)
    check_feature_extractor(ext, channels=3, resolution=32)


def test_wrong_keys_are_refused(hub, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"not.a.vit": torch.zeros(2)}, str(bad))
    with pytest.raises(FoundationWeightsError, match="does not fit timm"):
        DINOv2(DINOv2.Config(weights_path=str(bad)))
