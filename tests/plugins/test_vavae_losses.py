"""VA-VAE VF loss as pure functions: closed forms, margins, float64 references, the adaptive weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlbench_vavae.losses import (
    ADAPTIVE_EPS,
    adaptive_vf_weight,
    marginal_cosine_loss,
    marginal_distmat_loss,
    resample_to_grid,
    vf_alignment_loss,
)


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_mcos_closed_form():
    # three positions at 0, 90 and 180 degrees from their targets: cos 1, 0, -1
    f = torch.tensor([[_unit(0), _unit(0), _unit(0)]])
    z = torch.tensor([[_unit(0), _unit(90), _unit(180)]]) * torch.tensor([[[1.0], [3.0], [0.5]]])  # norm is irrelevant
    expected = (0.0 + 0.5 + 1.5) / 3  # ReLU(1 - 0.5 - cos)
    assert marginal_cosine_loss(z, f, 0.5).item() == pytest.approx(expected, abs=1e-6)
    assert marginal_cosine_loss(z, f, 0.0).item() == pytest.approx((0 + 1 + 2) / 3, abs=1e-6)


def test_mcos_zero_inside_margin_and_positive_just_outside():
    # every position at 59 degrees (cos 0.515 >= 1 - m1 = 0.5): inside the margin -> exactly 0 and no gradient
    f = torch.tensor([[_unit(0)] * 4])
    z = torch.tensor([[_unit(59)] * 4], requires_grad=True)
    loss = marginal_cosine_loss(z, f, 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad.abs().max() == 0
    z61 = torch.tensor([[_unit(61)] * 4])
    assert marginal_cosine_loss(z61, f, 0.5).item() == pytest.approx(0.5 - math.cos(math.radians(61)), abs=1e-6)


def test_mdms_closed_form_includes_diagonal():
    # z: both positions along e1 -> cos matrix all ones; f: e1, e2 -> identity. |diff| = [[0,1],[1,0]]
    z = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # ReLU(|diff| - 0.25) = [[0, .75], [.75, 0]], averaged over all N^2 = 4 pairs (not the 2 off-diagonal ones)
    assert marginal_distmat_loss(z, f, 0.25).item() == pytest.approx(0.375, abs=1e-6)


def test_mdms_zero_inside_margin():
    torch.manual_seed(0)
    f = torch.randn(2, 9, 5)
    z = f + 0.02 * torch.randn(2, 9, 5)
    gap = (F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).transpose(1, 2)
           - F.normalize(f, dim=-1) @ F.normalize(f, dim=-1).transpose(1, 2)).abs().max()
    assert 0 < gap <= 0.25
    assert marginal_distmat_loss(z, f, 0.25).item() == 0.0
    assert marginal_distmat_loss(z, f, 0.0).item() > 0


def _reference(z, f, m1, m2):
    """float64 loops over positions and pairs, literally Eq. 2 and Eq. 3."""
    b, n, _ = z.shape
    z, f = z.double(), f.double()
    cos = lambda a, c: float(a @ c / (a.norm() * c.norm()))  # noqa: E731
    mcos = sum(max(0.0, 1 - m1 - cos(z[i, j], f[i, j])) for i in range(b) for j in range(n)) / (b * n)
    mdms = sum(max(0.0, abs(cos(z[i, p], z[i, q]) - cos(f[i, p], f[i, q])) - m2)
               for i in range(b) for p in range(n) for q in range(n)) / (b * n * n)
    return mcos, mdms


def test_losses_match_float64_reference():
    torch.manual_seed(1)
    z, f = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mcos, mdms = _reference(z, f, 0.5, 0.25)
    total, parts = vf_alignment_loss(z, f, cos_weight=2.0, distmat_weight=3.0)
    assert parts["vf_mcos"].item() == pytest.approx(mcos, abs=1e-6)
    assert parts["vf_mdms"].item() == pytest.approx(mdms, abs=1e-6)
    assert total.item() == pytest.approx(2 * mcos + 3 * mdms, abs=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="b n f"):
        marginal_cosine_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 2))


def test_adaptive_weight_closed_form():
    # L_rec = <a, W>, L_vf = c * ||W||^2: gradients a and 2cW, so w = ||a|| / (||2cW|| + eps)
    torch.manual_seed(2)
    W = torch.randn(3, 4, requires_grad=True)
    a = torch.randn(3, 4)
    rec, vf = (a * W).sum(), 0.7 * W.pow(2).sum()
    w = adaptive_vf_weight(rec, vf, W)
    expected = a.norm() / ((2 * 0.7 * W.detach()).norm() + ADAPTIVE_EPS)
    assert w.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not w.requires_grad  # detached
    (rec + w * vf).backward()  # graphs were retained for the caller's backward
    assert W.grad is not None


def test_adaptive_weight_is_ratio_of_grad_norms_at_encoder_last_conv():
    torch.manual_seed(3)
    enc = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 2, 1))
    dec = torch.nn.Conv2d(2, 1, 3, padding=1)
    x = torch.randn(2, 1, 6, 6)
    z = enc(x)
    rec = F.mse_loss(dec(z), x)
    vf = marginal_cosine_loss(z.flatten(2).transpose(1, 2), torch.randn(2, 36, 2), 0.0)
    last = enc[-1].weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0].norm()
    g_vf = torch.autograd.grad(vf, last, retain_graph=True)[0].norm()
    w = adaptive_vf_weight(rec, vf, last)
    assert w.item() == pytest.approx((g_rec / (g_vf + ADAPTIVE_EPS)).item(), rel=1e-6)
    assert w.item() == pytest.approx((g_rec / g_vf).item(), rel=1e-3)  # eps is negligible at these norms
    # consequence of detaching: the weighted VF gradient has the reconstruction gradient's norm
    g_weighted = torch.autograd.grad(w * vf, last, retain_graph=True)[0].norm()
    assert g_weighted.item() == pytest.approx(g_rec.item(), rel=1e-3)


def test_adaptive_weight_clamp_and_unused_layer():
    W = torch.ones(2, requires_grad=True)
    rec = 1e6 * W.sum()
    vf = 0.0 * W.sum()  # zero gradient: ratio 1e6 * sqrt(2) / 1e-4, clamped
    assert adaptive_vf_weight(rec, vf, W, max_weight=1e8).item() == pytest.approx(1e8)
    other = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="last layer"):
        adaptive_vf_weight(rec, other.sum(), W)


def test_resample_to_grid():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(resample_to_grid(x, (4, 4)), x)
    down = resample_to_grid(x, (2, 2))
    assert torch.allclose(down, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 block means
    assert resample_to_grid(torch.ones(2, 3, 12, 12), (8, 8)).allclose(torch.ones(2, 3, 8, 8))
    assert resample_to_grid(torch.ones(1, 3, 2, 2), (8, 8)).shape == (1, 3, 8, 8)
