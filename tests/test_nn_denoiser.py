import pytest
import torch

from dlbench.nn.denoiser import (
    BACKBONE_PRESETS,
    DenoiserConfig,
    DenoiserConfigError,
    build_denoiser,
    drop_labels,
    resolve_backbone,
    sincos_2d,
    timestep_embedding,
)
from dlbench.registry import DlbenchError

SMALL = DenoiserConfig(width=32, depth=2, heads=4)


def _randomize_zero_inits(model):
    """Give AdaLN-Zero modulations and the head non-zero weights, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_token_input_shapes_and_zero_init():
    net = build_denoiser(SMALL, grid=(4, 3), out_dim=17, input="tokens", vocab_size=11, num_classes=5)
    x = torch.randint(0, 11, (2, 4, 3))
    out = net(x, torch.rand(2), torch.tensor([0, 5]))
    assert out.shape == (2, 4, 3, 17)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised final layer


def test_embedding_input_shapes():
    net = build_denoiser(SMALL, grid=(4, 4), out_dim=8, input="embeddings", in_dim=8)
    _randomize_zero_inits(net)
    out = net(torch.randn(3, 4, 4, 8), 0.5)  # scalar t broadcasts
    assert out.shape == (3, 4, 4, 8)
    assert out.abs().sum() > 0


def test_null_class_and_conditioning_matter():
    net = build_denoiser(SMALL, grid=(2, 2), out_dim=4, input="tokens", vocab_size=4, num_classes=3)
    _randomize_zero_inits(net)
    x = torch.randint(0, 4, (1, 2, 2)).repeat(4, 1, 1)
    t = torch.full((4,), 0.3)
    out = net(x, t, torch.tensor([0, 1, 3, 3]))
    assert not torch.allclose(out[0], out[1])  # classes differ
    assert torch.equal(out[2], out[3])
    assert torch.equal(net(x, t, None), net(x, t, net.null_labels(4)))  # None == null class
    assert net.null_labels(2).tolist() == [3, 3]
    # time matters too
    assert not torch.allclose(net(x[:1], torch.tensor([0.1])), net(x[:1], torch.tensor([0.9])))


def test_unconditional_rejects_labels():
    net = build_denoiser(SMALL, grid=(2, 2), out_dim=4, input="tokens", vocab_size=4)
    with pytest.raises(DlbenchError, match="unconditional"):
        net(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1), torch.tensor([1]))


def test_gradient_reaches_every_parameter():
    net = build_denoiser(
        DenoiserConfig(width=32, depth=2, heads=4, pos_embedding="learned"),
        grid=(3, 3), out_dim=5, input="tokens", vocab_size=6, num_classes=2,
    )
    x = torch.randint(0, 6, (4, 3, 3))
    target = torch.randint(0, 5, (4, 3, 3))
    # at init AdaLN-Zero passes gradient only to the head (step 1), then to the modulations
    # (step 2); from step 3 on it must reach every parameter
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first_grads = None
    for step in range(3):
        opt.zero_grad()
        logits = net(x, torch.rand(4), torch.tensor([0, 1, 2, 0]))
        torch.nn.functional.cross_entropy(logits.reshape(-1, 5), target.reshape(-1)).backward()
        if step == 0:
            first_grads = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
    assert first_grads == {"final.linear.weight", "final.linear.bias"}  # AdaLN-Zero at init
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_attention_is_permutation_equivariant_without_positions():
    """Sanity of the transformer body: with positions removed, permuting tokens permutes outputs."""
    net = build_denoiser(SMALL, grid=(1, 6), out_dim=3, input="embeddings", in_dim=4)
    _randomize_zero_inits(net)
    net.pos_embed = torch.zeros_like(net.pos_embed)
    x = torch.randn(2, 1, 6, 4)
    perm = torch.randperm(6)
    out = net(x, torch.tensor([0.2, 0.7]))
    out_p = net(x[:, :, perm], torch.tensor([0.2, 0.7]))
    torch.testing.assert_close(out_p, out[:, :, perm], atol=1e-5, rtol=1e-5)


def test_sincos_2d_matches_float64_formula():
    emb = sincos_2d(3, 5, 8)
    assert emb.shape == (15, 8)
    # position (r=2, c=4) -> index 2*5+4; quarter=2, omega = [1, 1/100]
    r, c = 2.0, 4.0
    om = torch.tensor([1.0, 0.01], dtype=torch.float64)
    ref = torch.cat([(r * om).sin(), (r * om).cos(), (c * om).sin(), (c * om).cos()]).float()
    torch.testing.assert_close(emb[14], ref)
    assert len({tuple(row.tolist()) for row in emb}) == 15  # positions distinguishable


def test_timestep_embedding_closed_form():
    e = timestep_embedding(torch.tensor([0.0, 2.0]), 6)
    assert e.shape == (2, 6)
    torch.testing.assert_close(e[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert torch.isclose(e[1, 0], torch.cos(torch.tensor(2.0)))


def test_drop_labels_rate_and_null_index():
    labels = torch.randint(0, 10, (20000,))
    g = torch.Generator().manual_seed(1)
    out = drop_labels(labels, 0.1, g, num_classes=10)
    dropped = out == 10
    assert 0.09 < dropped.float().mean() < 0.11
    assert torch.equal(out[~dropped], labels[~dropped])
    assert torch.equal(drop_labels(labels, 0.0, num_classes=10), labels)


def test_presets_and_validation():
    assert resolve_backbone("vqdiffusion-imagenet").depth == 24
    assert resolve_backbone("tiny", depth=2).depth == 2
    assert set(BACKBONE_PRESETS) >= {"tiny", "small", "base", "vqdiffusion-ffhq", "vqdiffusion-imagenet"}
    with pytest.raises(DlbenchError, match="Did you mean 'tiny'"):
        resolve_backbone("tinny")
    with pytest.raises(DlbenchError, match="divisible"):
        build_denoiser(DenoiserConfig(width=30, heads=4), grid=(2, 2), out_dim=2, input="tokens", vocab_size=3)
    with pytest.raises(DlbenchError, match="vocab_size"):
        build_denoiser(SMALL, grid=(2, 2), out_dim=2, input="tokens")
    with pytest.raises(Exception, match="extra"):
        resolve_backbone("tiny", widht=3)
    net = build_denoiser({"preset": "tiny", "depth": 1}, grid=(2, 2), out_dim=2, input="tokens", vocab_size=3)
    assert len(net.blocks) == 1 and net.config.width == 128


def test_sdpa_attention_equals_explicit_softmax_attention_in_float64():
    """Attention (SDPA or the explicit CPU form, dlbench.nn.attention) equals softmax(q k^T / sqrt(e)) v per head
    (float64)."""
    from einops import rearrange

    from dlbench.nn.denoiser import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.0).double().eval()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    q, k, v = rearrange(attn.qkv(x), "b n (three h e) -> three b h n e", three=3, h=4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
    ref = attn.proj(rearrange(weights @ v, "b h n e -> b n (h e)"))
    assert torch.allclose(attn(x), ref, atol=1e-12, rtol=0)


def test_denoiser_returns_float32_under_bf16_autocast():
    """Losses and samplers downstream stay in fp32 when the network runs in bf16."""
    torch.manual_seed(0)
    net = build_denoiser(resolve_backbone("tiny", width=32, depth=1, heads=2), grid=(2, 2), out_dim=5,
                         input="tokens", vocab_size=6, num_classes=3)
    _randomize_zero_inits(net)
    x, t, y = torch.randint(0, 6, (2, 2, 2)), torch.rand(2), torch.tensor([0, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, y)
    ref = net(x, t, y)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=0.05, rtol=0.05)
