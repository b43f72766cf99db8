"""Reg-VQ math (METHODS.md C.2-C.4): closed forms, float64 references, invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlbench_regvq.losses import (
    gather_patches,
    locations_to_tokens,
    mean_entropy,
    patch_nce,
    pcl_weights,
    prior_kl,
    sample_patch_locations,
)
from dlbench_regvq.quantize import (
    adaptive_distance_logits,
    bernoulli_mask,
    code_usage,
    distance_logits,
    gumbel_softmax_st,
    gumbel_temperature,
    mix_by_mask,
    squared_distances,
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


def test_prior_kl_plus_mean_entropy_is_logk_minus_mutual_information_float64():
    """The entropy-augmented prior (``prior.entropy_weight = 1``) is log K - I(code; position): it scores
    "every position flat" like collapse (log K), whereas the bare KL scores it as perfect (0)."""
    k = 8
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 6, k, generator=g, dtype=torch.float64) * 3, -1)
    joint = probs.reshape(-1, k) / 30  # p(position, code) with uniform positions
    marg = joint.sum(0)
    mi = (joint * (joint / (marg[None] / 30)).log()).sum()  # brute-force I(code; position)
    total = prior_kl(probs) + mean_entropy(probs)
    assert total.item() == pytest.approx(math.log(k) - mi.item(), abs=1e-12)
    flat = torch.full((4, k), 1.0 / k, dtype=torch.float64)
    assert prior_kl(flat).item() == pytest.approx(0.0, abs=1e-12)
    assert (prior_kl(flat) + mean_entropy(flat)).item() == pytest.approx(math.log(k), abs=1e-12)
    uniform_onehot = F.one_hot(torch.arange(2 * k) % k, k).double()
    assert (prior_kl(uniform_onehot) + mean_entropy(uniform_onehot)).item() == pytest.approx(0.0, abs=1e-12)


def test_prior_kl_gradient_finite_with_unused_codes():
    logits = torch.full((2, 3, 4), -1e4, dtype=torch.float64)
    logits[..., 0] = 0.0
    logits.requires_grad_(True)
    prior_kl(logits.softmax(-1)).backward()
    assert torch.isfinite(logits.grad).all()


# -- distance logits (C.1): temperature tied to the distance spread ------------------------------


def _taming_init(k, d, g):
    """Codebook ``"k d"`` as dlbench's VQVAE initialises it: U(-1/K, 1/K)."""
    return (torch.rand(k, d, generator=g, dtype=torch.float64) * 2 - 1) / k


def _entropy(p):
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def test_adaptive_logits_keep_nearest_code_have_std_one_over_t_and_are_scale_free():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 3, 6, generator=g, dtype=torch.float64)
    e = torch.randn(20, 6, generator=g, dtype=torch.float64)
    logits = adaptive_distance_logits(z, e, temperature=0.5)
    # monotone per position: argmax = nearest code (encode stays the plain VQ assignment)
    assert torch.equal(logits.argmax(-1), squared_distances(z, e).argmin(-1))
    # by construction the logits spread over the codes is exactly 1/T at every position
    torch.testing.assert_close(logits.std(-1), torch.full((2, 3, 3), 2.0, dtype=torch.float64))
    # invariant to a common rescaling and translation of codes and encoder outputs, up to a per-position
    # constant (softmax-invariant)
    shift = torch.randn(6, generator=g, dtype=torch.float64)
    moved = adaptive_distance_logits(1e-3 * (z + shift), 1e-3 * (e + shift), temperature=0.5)
    torch.testing.assert_close(moved.softmax(-1), logits.softmax(-1))


def test_adaptive_logits_at_init_are_peaked_per_position_but_uniform_on_average():
    """The fix of the flat-softmax problem: with the Taming init (codes ~ +-1/K) a fixed scale gives
    per-position entropy ~ log K, so prior KL and Gumbel samples carry no information; the adaptive
    temperature gives peaked per-position distributions whose batch average is still near uniform."""
    g = torch.Generator().manual_seed(0)
    k, d = 512, 32
    e = _taming_init(k, d, g)
    z = torch.randn(8, 8, 8, d, generator=g, dtype=torch.float64)  # 512 positions, varied encoder outputs
    fixed = distance_logits(z, e, 1.0).softmax(-1)
    adaptive = adaptive_distance_logits(z, e, 0.25).softmax(-1)
    log_k = math.log(k)
    assert _entropy(fixed).mean() > log_k - 1e-3  # the bug: flat everywhere
    assert _entropy(adaptive).mean() < log_k - 3.0  # peaked: ~2.2 nats, i.e. ~10 plausible codes
    assert _entropy(adaptive.reshape(-1, k).mean(0)) > log_k - 0.5  # average usage still near uniform


def test_prior_kl_sees_hard_collapse_only_with_adaptive_logits():
    """All encoder outputs near one point -> hard usage collapsed to a few codes (KL_hard > 4 nats). The soft
    prior KL on fixed-scale logits is ~0 (no signal, tiny gradient); on adaptive logits it reports a
    large KL and its gradient reaches the codebook."""
    g = torch.Generator().manual_seed(1)
    k, d = 512, 32
    e0 = _taming_init(k, d, g)
    noise = torch.randn(4, 8, 8, d, generator=g, dtype=torch.float64)
    z = torch.randn(d, generator=g, dtype=torch.float64) + 0.05 * noise
    counts = torch.bincount(squared_distances(z, e0).argmin(-1).flatten(), minlength=k).double()
    kl_hard = math.log(k) - _entropy(counts / counts.sum()).item()
    assert kl_hard > 4.0  # a handful of codes out of 512
    results = {}
    logit_fns = {
        "fixed": lambda e: distance_logits(z, e, 1.0),
        "adaptive": lambda e: adaptive_distance_logits(z, e, 0.25),
    }
    for name, fn in logit_fns.items():
        e = e0.clone().requires_grad_(True)
        kl = prior_kl(fn(e).softmax(-1))
        kl.backward()
        results[name] = (kl.item(), e.grad.norm().item())
    assert results["fixed"][0] < 1e-3
    assert results["adaptive"][0] > 0.5 * kl_hard
    assert results["adaptive"][1] > 1e3 * results["fixed"][1]


def test_adaptive_logits_degenerate_codebook_is_finite_and_uniform():
    z = torch.randn(1, 2, 2, 4, dtype=torch.float64)
    logits = adaptive_distance_logits(z, torch.zeros(5, 4, dtype=torch.float64))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.softmax(-1), torch.full((1, 2, 2, 5), 0.2, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        adaptive_distance_logits(z, torch.zeros(5, 4), temperature=0.0)


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
