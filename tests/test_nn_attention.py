"""dlbench.nn.attention: the explicit CPU form computes SDPA's function (float64 reference, gradients), the
kernel choice follows the device and length rule, and the denoiser's output does not depend on the kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlbench.nn.attention import EXPLICIT_MAX_TOKENS, attend, attention_kernel
from dlbench.nn.denoiser import build_denoiser


def _qkv(dtype=torch.float64, b=3, h=2, n=16, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, e, generator=g, dtype=dtype) for _ in range(3)]


def _reference(q, k, v):  # float64 closed form
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


def test_explicit_matches_float64_reference_and_sdpa(monkeypatch):
    monkeypatch.setenv("DLBENCH_ATTENTION", "explicit")
    q, k, v = _qkv()
    ref = _reference(q, k, v)
    assert (attend(q, k, v) - ref).abs().max() < 1e-12  # float64 stays float64 (softmax in >= fp32)
    out32 = attend(*(x.float() for x in (q, k, v))).double()
    assert (out32 - ref).abs().max() < 1e-5
    sdpa32 = F.scaled_dot_product_attention(*(x.float() for x in (q, k, v))).double()
    assert (out32 - sdpa32).abs().max() < 1e-5
    out16 = attend(*(x.bfloat16() for x in (q, k, v))).double()
    assert out16.dtype == torch.float64 and (out16 - ref).abs().max() < 0.05  # bf16 rounding, no worse


def test_explicit_gradients_match_sdpa(monkeypatch):
    q, k, v = (x.float().requires_grad_() for x in _qkv(seed=1))
    g = torch.randn_like(q)
    monkeypatch.setenv("DLBENCH_ATTENTION", "explicit")
    grads_e = torch.autograd.grad((attend(q, k, v) * g).sum(), (q, k, v))
    grads_s = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v) * g).sum(), (q, k, v))
    for a, b in zip(grads_e, grads_s):
        assert (a - b).abs().max() < 1e-5


def test_kernel_choice_by_device_length_and_override(monkeypatch):
    monkeypatch.delenv("DLBENCH_ATTENTION", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attention_kernel(cpu, 64) == "explicit"
    assert attention_kernel(cpu, EXPLICIT_MAX_TOKENS + 1) == "sdpa"  # the n x n scores would cost memory
    assert attention_kernel(cuda, 64) == "sdpa"  # fused kernels on GPUs
    monkeypatch.setenv("DLBENCH_ATTENTION", "sdpa")
    assert attention_kernel(cpu, 64) == "sdpa"


def test_dropout_drops_attention_weights(monkeypatch):
    monkeypatch.setenv("DLBENCH_ATTENTION", "explicit")
    q, k, v = (x.float() for x in _qkv(seed=2))
    torch.manual_seed(0)
    a = attend(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    b = attend(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.allclose(a, attend(q, k, v))


def test_denoiser_output_does_not_depend_on_the_kernel(monkeypatch):
    torch.manual_seed(0)
    net = build_denoiser({"preset": "tiny", "width": 32, "depth": 2, "heads": 2}, grid=(4, 4), out_dim=8,
                         input="tokens", vocab_size=8, num_classes=3).eval()
    for p in net.parameters():  # AdaLN-Zero starts every block as the identity: perturb so attention matters
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randint(0, 8, (5, 4, 4)), torch.rand(5), torch.randint(0, 3, (5,))
    outs = {}
    for kernel in ("sdpa", "explicit"):
        monkeypatch.setenv("DLBENCH_ATTENTION", kernel)
        with torch.no_grad():
            outs[kernel] = net(x, t, y)
    assert (outs["sdpa"] - outs["explicit"]).abs().max() < 1e-5
