"""LightningDiT backbone (METHODS.md §D.3): AdaLN-Zero blocks start as the identity; 2-D RoPE is a rotation whose
q.k depends only on position differences; RMSNorm and SwiGLU match their closed forms; p x p patches map back to
their own locations; every switch of the ladder builds and trains."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dlbench_lightningdit.backbone import (
    LightningDiTBlock,
    LightningDiTNet,
    LightningDiTNetConfig,
    RMSNorm,
    SwiGLU,
    apply_rope,
    grid_positions,
    rope_angles,
)


def _cfg(**kw):
    return LightningDiTNetConfig(**{"width": 32, "depth": 2, "heads": 2, **kw})


# -- AdaLN-Zero ------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,mlp", [("rms", "swiglu"), ("layer", "gelu")])
def test_adaln_zero_block_is_identity_at_init(norm, mlp):
    torch.manual_seed(0)
    net = LightningDiTNet(_cfg(norm=norm, mlp=mlp), channels=4, grid=(4, 4), num_classes=3)
    block = net.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c, net.rope_angles), x, atol=0, rtol=0)
    # the whole net outputs 0 (zero head): the velocity at init is 0 whatever the input
    assert torch.equal(net(torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([0, 3])), torch.zeros(2, 4, 4, 4))
    # control: once the modulation is non-zero the block is no longer the identity
    with torch.no_grad():
        block.adaLN_modulation[-1].bias.normal_()
    assert not torch.allclose(block(x, c, net.rope_angles), x)


def test_block_receives_gradients_through_zero_gates():
    """AdaLN-Zero still trains: the gate parameters get gradients at init (the rest follows after one step)."""
    torch.manual_seed(0)
    block = LightningDiTBlock(_cfg())
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    block(x, c).pow(2).sum().backward()
    assert block.adaLN_modulation[-1].weight.grad.abs().sum() > 0


# -- 2-D RoPE --------------------------------------------------------------------------------------


def test_rope_is_a_rotation():
    torch.manual_seed(0)
    pos = grid_positions(5, 7)
    angles = rope_angles(pos, 16)
    x = torch.randn(3, 2, 35, 16, dtype=torch.float64)
    y = apply_rope(x, angles)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # norm-preserving per vector
    # pairwise: each (2j, 2j+1) pair keeps its own norm (a rotation per pair, not a mixing of pairs)
    torch.testing.assert_close(y.reshape(3, 2, 35, 8, 2).norm(dim=-1), x.reshape(3, 2, 35, 8, 2).norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, torch.zeros(35, 16, dtype=torch.float64)), x)  # position 0: identity
    # rotating back by -angles undoes it
    torch.testing.assert_close(apply_rope(y, -angles), x)


def test_rope_dot_product_depends_only_on_position_difference():
    torch.manual_seed(1)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(pq, pk):
        a = rope_angles(torch.tensor([pq, pk]), 16)
        return float(apply_rope(q, a[0]) @ apply_rope(k, a[1]))

    base = score((1, 2), (3, 5))
    for shift in [(0, 1), (4, 0), (2, 3), (-1, 7)]:
        sq = (1 + shift[0], 2 + shift[1])
        sk = (3 + shift[0], 5 + shift[1])
        assert score(sq, sk) == pytest.approx(base, abs=1e-12)
    # control: moving only one of the two positions changes the score
    assert abs(score((1, 2), (3, 6)) - base) > 1e-3
    assert abs(score((1, 2), (4, 5)) - base) > 1e-3


def test_rope_axes_rows_in_first_half_columns_in_second():
    a = rope_angles(torch.tensor([[0, 0], [0, 3], [2, 0]]), 16)
    assert torch.equal(a[1, :8], torch.zeros(8)) and a[1, 8:].abs().sum() > 0  # column move: second half only
    assert torch.equal(a[2, 8:], torch.zeros(8)) and a[2, :8].abs().sum() > 0  # row move: first half only
    # frequencies theta^(-2j/(e/2)), each repeated for its pair
    torch.testing.assert_close(a[2, :8], 2 * torch.tensor([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                                                          dtype=torch.float64))


# -- RMSNorm, SwiGLU -------------------------------------------------------------------------------


def test_rmsnorm_closed_form():
    torch.manual_seed(2)
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 4, 6)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 7.0)
    torch.testing.assert_close(norm(x), ref)
    if hasattr(torch.nn, "RMSNorm"):  # peer implementation
        peer = torch.nn.RMSNorm(6, eps=1e-6)
        with torch.no_grad():
            peer.weight.copy_(norm.weight)
        torch.testing.assert_close(norm(x), peer(x))
    # scale invariance (unlike LayerNorm it does not subtract the mean)
    torch.testing.assert_close(norm(5 * x), norm(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(norm(x + 1), norm(x))


def test_swiglu_closed_form_and_released_hidden_size():
    torch.manual_seed(3)
    f = SwiGLU(8, 5)
    x = torch.randn(2, 3, 8)
    W1, W2 = f.w12.weight[:5], f.w12.weight[5:]
    b1, b2 = f.w12.bias[:5], f.w12.bias[5:]
    ref = (F.silu(x @ W1.T + b1) * (x @ W2.T + b2)) @ f.w3.weight.T + f.w3.bias
    torch.testing.assert_close(f(x), ref)
    block = LightningDiTBlock(_cfg(width=48, heads=2, mlp="swiglu"))
    assert block.mlp.w3.in_features == int(2 / 3 * 4 * 48)  # released: int(2/3 * mlp_hidden_dim)
    assert LightningDiTBlock(_cfg(mlp="gelu")).mlp[0].out_features == 4 * 32


# -- patches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
def test_patches_map_back_to_their_locations(p):
    """Without positions (no RoPE, no absolute embedding) the net is permutation-equivariant over tokens, so
    swapping two p x p patches of the input swaps the same patches of the output: patchify and unpatchify agree."""
    torch.manual_seed(4)
    net = LightningDiTNet(_cfg(patch_size=p, rope=False, pos_embedding="none"), channels=3, grid=(4, 4),
                          num_classes=None)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    assert net.tokens == (4 // p, 4 // p)
    x, t = torch.randn(2, 3, 4, 4), torch.rand(2)
    y = net(x, t)
    assert y.shape == x.shape

    def swap(z):  # swap the top-left and bottom-right p x p patches
        z = z.clone()
        tl, br = z[..., :p, :p].clone(), z[..., -p:, -p:].clone()
        z[..., :p, :p], z[..., -p:, -p:] = br, tl
        return z

    torch.testing.assert_close(net(swap(x), t), swap(y), atol=1e-5, rtol=1e-5)
    if p == 2:  # control: a swap that cuts through patches breaks the correspondence
        z = x.clone()
        z[..., 0, 0], z[..., 3, 3] = x[..., 3, 3], x[..., 0, 0]
        w = y.clone()
        w[..., 0, 0], w[..., 3, 3] = y[..., 3, 3], y[..., 0, 0]
        assert not torch.allclose(net(z, t), w, atol=1e-3)


def test_patch_size_must_divide_the_grid():
    with pytest.raises(ValueError, match="patch_size"):
        LightningDiTNet(_cfg(patch_size=3), channels=4, grid=(4, 4))


# -- every switch builds and trains ----------------------------------------------------------------


@pytest.mark.parametrize("norm,mlp,rope,pos", list(itertools.product(
    ["rms", "layer"], ["swiglu", "gelu"], [True, False], ["sincos-2d", "learned", "none"])))
def test_all_switches_forward_and_backward(norm, mlp, rope, pos):
    torch.manual_seed(5)
    net = LightningDiTNet(_cfg(norm=norm, mlp=mlp, rope=rope, pos_embedding=pos, qk_norm=rope), channels=4,
                          grid=(2, 4), num_classes=2)
    with torch.no_grad():
        net.final.linear.weight.normal_()
    out = net(torch.randn(3, 4, 2, 4), torch.rand(3), torch.tensor([0, 1, 2]))
    assert out.shape == (3, 4, 2, 4) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert net.x_embed.weight.grad.abs().sum() > 0


def test_rope_head_dim_validation_and_unconditional_refuses_labels():
    with pytest.raises(ValueError, match="RoPE"):
        _cfg(width=36, heads=6)  # head dim 6
    _cfg(width=36, heads=6, rope=False, pos_embedding="learned")
    net = LightningDiTNet(_cfg(), channels=2, grid=(2, 2), num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 2, 2, 2), torch.rand(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(1, 2, 2, 3), torch.rand(1))


def test_rope_matches_the_released_eva_vision_rotary_embedding():
    """Peer oracle: the released ``VisionRotaryEmbeddingFast(dim=head_dim/2, pt_seq_len=n)`` (EVA-02), restated:
    per axis ``freqs = theta^(-arange(0, dim, 2)/dim)`` repeated for each pair, rows then columns concatenated by
    broadcasting, ``t * cos + rotate_half(t) * sin`` with ``rotate_half`` on interleaved pairs."""
    from einops import rearrange, repeat

    n, head_dim, theta = 5, 16, 10000.0
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
    t = torch.arange(n).double()
    f = repeat(torch.einsum("..., f -> ... f", t, freqs), "... n -> ... (n r)", r=2)  # "n dim"
    both = torch.cat([f[:, None, :].expand(n, n, dim), f[None, :, :].expand(n, n, dim)], dim=-1)
    cos, sin = both.cos().reshape(-1, head_dim), both.sin().reshape(-1, head_dim)

    def rotate_half(x):
        x1, x2 = rearrange(x, "... (d r) -> ... d r", r=2).unbind(dim=-1)
        return rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")

    x = torch.randn(2, 3, n * n, head_dim, dtype=torch.float64)
    ref = x * cos + rotate_half(x) * sin
    torch.testing.assert_close(apply_rope(x, rope_angles(grid_positions(n, n), head_dim, theta)), ref)
