"""Reg-VQ math (METHODS.md C.2-C.4): closed forms, float64 references, invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlbench_regvq.losses import (
    gather_patches,
    locations_to_tokens,
    patch_nce,
    pcl_weights,
    prior_kl,
    sample_patch_locations,
)
from dlbench_regvq.quantize import (
    bernoulli_mask,
    code_usage,
    gumbel_softmax_st,
    gumbel_temperature,
    mix_by_mask,
    st_argmax,
)


# -- prior KL (C.2) ------------------------------------------------------------------------------


def test_prior_kl_equals_logk_minus_entropy_of_average_float64():
    g = torch.Generator().manual_seed(0)
    k = 7
    probs = torch.softmax(torch.randn(3, 4, 5, k, generator=g, dtype=torch.float64) * 2, -1)
    avg = probs.reshape(-1, k).mean(0)
    # KL(avg || uniform) by its definition sum_n p_n log(p_n / (1/K))
    kl_def = (avg * (avg / (1.0 / k)).log()).sum()
    assert prior_kl(probs).item() == pytest.approx(kl_def.item(), abs=1e-12)
    entropy = -(avg * avg.log()).sum()
    assert prior_kl(probs).item() == pytest.approx(math.log(k) - entropy.item(), abs=1e-12)


def test_prior_kl_zero_for_uniform_usage_and_logk_for_collapse():
    k = 8
    # every code used equally often by one-hot positions: average is exactly uniform
    uniform_usage = F.one_hot(torch.arange(4 * k) % k, k).double().reshape(4, k, k)
    assert prior_kl(uniform_usage).item() == pytest.approx(0.0, abs=1e-12)
    collapsed = F.one_hot(torch.zeros(4, 3, 3, dtype=torch.long), k).double()
    assert prior_kl(collapsed).item() == pytest.approx(math.log(k), abs=1e-12)
    half = F.one_hot(torch.arange(32) % (k // 2), k).double()  # half the codebook used
    assert prior_kl(half).item() == pytest.approx(math.log(2), abs=1e-12)


def test_prior_kl_gradient_finite_with_unused_codes():
    logits = torch.full((2, 3, 4), -1e4, dtype=torch.float64)
    logits[..., 0] = 0.0
    logits.requires_grad_(True)
    prior_kl(logits.softmax(-1)).backward()
    assert torch.isfinite(logits.grad).all()


# -- stochastic mask (C.3) ----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.4, 1.0])
def test_mask_selects_requested_fraction(ratio):
    g = torch.Generator().manual_seed(1)
    m = bernoulli_mask((64, 32, 32), ratio, generator=g)
    assert m.dtype == torch.bool
    # binomial std at n = 65536 is <= 0.002; 5 sigma
    assert m.float().mean().item() == pytest.approx(ratio, abs=0.01)


def test_mix_by_mask_takes_stochastic_where_masked():
    det, sto = torch.zeros(2, 3, 3, 4), torch.ones(2, 3, 3, 4)
    m = torch.zeros(2, 3, 3, dtype=torch.bool)
    m[0, 1, 2] = True
    out = mix_by_mask(det, sto, m)
    assert out[0, 1, 2].eq(1).all() and out.sum() == 4


def test_bad_mask_ratio_is_rejected():
    with pytest.raises(ValueError, match="ratio"):
        bernoulli_mask((2, 2), 1.5)


# -- straight-through estimators ---------------------------------------------------------------


def test_st_argmax_forward_onehot_backward_softmax():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(6, dtype=torch.float64)
    y = st_argmax(logits)
    # value is one-hot up to the rounding of hard + soft - soft
    torch.testing.assert_close(y.detach(), F.one_hot(logits.argmax(-1), 6).double(), atol=1e-12, rtol=0)
    (y @ v).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    (ref.softmax(-1) @ v).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_gumbel_path_is_differentiable_and_onehot():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 8, 8, 16, requires_grad=True)
    onehot, codes = gumbel_softmax_st(logits, 0.5, generator=g)
    assert torch.equal(onehot.detach().argmax(-1), codes)
    torch.testing.assert_close(onehot.detach().sum(-1), torch.ones(4, 8, 8))
    assert onehot.detach().max(-1).values.min() > 0.999
    E = torch.randn(16, 3)
    torch.einsum("bhwk,kd->bhwd", onehot, E).pow(2).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_max_samples_follow_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0])
    _, codes = gumbel_softmax_st(logits.expand(40000, 4), 1.0, generator=g)
    freq = torch.bincount(codes, minlength=4).double() / 40000
    torch.testing.assert_close(freq, logits.double().softmax(-1), atol=0.01, rtol=0)


def test_gumbel_temperature_schedule_endpoints():
    assert gumbel_temperature(0, 1.0, 1 / 16, 100) == pytest.approx(1.0)
    assert gumbel_temperature(50, 1.0, 1 / 16, 100) == pytest.approx(0.25)
    assert gumbel_temperature(10_000, 1.0, 1 / 16, 100) == pytest.approx(1 / 16)
    assert gumbel_temperature(10_000, 0.7, 1 / 16, 0) == pytest.approx(0.7)


def test_code_usage_counts():
    stats = code_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert stats == {"usage": 0.5, "perplexity": pytest.approx(2.0), "dead_codes": 2.0}


# -- probabilistic contrastive loss (C.4) ------------------------------------------------------


def test_pcl_weights_zero_where_sampled_and_best_agree():
    g = torch.Generator().manual_seed(4)
    z_best = torch.randn(2, 4, 4, 3, generator=g, dtype=torch.float64)
    z_sampled = z_best.clone()
    z_sampled[0, 1, 2] += 1.0  # one perturbed position in image 0
    z_sampled[0, 3, 3] += 2.0
    w = pcl_weights(z_sampled, z_best)
    assert w.shape == (2, 4, 4)
    agree = (z_sampled == z_best).all(-1)
    assert w[agree].abs().max() == 0
    assert w[0].sum().item() == pytest.approx(1.0)
    assert w[0, 1, 2].item() == pytest.approx(1 / 5) and w[0, 3, 3].item() == pytest.approx(4 / 5)
    assert w[1].sum() == 0  # nothing sampled differently: no contrastive pull in image 1


def _nce_reference(q, k, tau, w, form):
    """Brute-force float64 loops over the C.4 equations."""
    b, l, _ = q.shape
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    total = 0.0
    for n in range(b):
        img = 0.0
        for i in range(l):
            pos = math.exp(float(q[n, i] @ k[n, i]) / tau)
            negs = sum(math.exp(float(q[n, i] @ k[n, j]) / tau) for j in range(l) if j != i)
            if w is None:
                img += -math.log(pos / (pos + negs)) / l
            elif form == "weighted-sum":
                img += float(w[n, i]) * -math.log(pos / (pos + negs / l))
            elif w[n, i] > 0:
                wi = float(w[n, i])
                img += -math.log(wi * pos / (wi * pos + negs / l)) / l
        total += img
    return total / b


@pytest.mark.parametrize("form", ["weighted-sum", "in-log"])
def test_patch_nce_matches_bruteforce(form):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    w = torch.rand(2, 5, generator=g, dtype=torch.float64)
    w[0, 2] = 0.0
    w = w / w.sum(1, keepdim=True)
    got = patch_nce(q, k, tau=0.3, weights=w, form=form).item()
    assert got == pytest.approx(_nce_reference(q, k, 0.3, w, form), rel=1e-10)
    vanilla = patch_nce(q, k, tau=0.3).item()
    assert vanilla == pytest.approx(_nce_reference(q, k, 0.3, None, form), rel=1e-10)


def test_patch_nce_zero_weights_give_zero_loss_and_positives_pull():
    q = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 4, dtype=torch.float64)
    assert patch_nce(q, k, weights=torch.zeros(1, 6, dtype=torch.float64)).item() == 0.0
    # aligned features (q = k) give a lower loss than misaligned ones
    aligned = patch_nce(k.clone(), k, tau=0.1).item()
    shuffled = patch_nce(k[:, torch.tensor([1, 2, 3, 4, 5, 0])], k, tau=0.1).item()
    assert aligned < shuffled


def test_patch_locations_distinct_and_token_mapping():
    g = torch.Generator().manual_seed(6)
    loc = sample_patch_locations(12, 12, 20, 3, generator=g)
    assert loc.shape == (3, 20) and all(len(set(row.tolist())) == 20 for row in loc)
    feats = torch.arange(2 * 144, dtype=torch.float64).reshape(1, 2, 12, 12)
    patches = gather_patches(feats, loc[:1])
    assert torch.equal(patches[0, :, 0], loc[0].double())
    corners = torch.tensor([[0, 11, 132, 143, 5 * 12 + 6]])
    assert locations_to_tokens(corners, (12, 12), (8, 8)).tolist() == [[0, 7, 56, 63, 3 * 8 + 4]]
