"""Token-level metrics: closed forms on tiny hand-made grids, invariants, marginal samplers."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench.eval.token_metrics import (
    class_position_marginals,
    entropy,
    pair_counts,
    pair_kl,
    position_counts,
    sample_from_marginals,
    token_metrics,
    unigram_kl,
)


def test_identical_token_sets_have_zero_kl():
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 7, (50, 3, 4), generator=g)
    shuffled = toks[torch.randperm(50, generator=g)]  # same multiset of grids
    assert unigram_kl(shuffled, toks, 7) == 0.0
    assert pair_kl(shuffled, toks, 7) == 0.0


def test_pair_kl_matches_hand_computation():
    # K = 2, one row of 3 positions -> horizontal pairs only (no vertical neighbours)
    ref = torch.tensor([[[0, 0, 1]], [[1, 1, 1]]])  # h-pairs: (0,0) (0,1) (1,1) (1,1)
    smp = torch.tensor([[[0, 1, 0]], [[0, 1, 0]]])  # h-pairs: (0,1) (1,0) (0,1) (1,0)
    assert pair_counts(ref, 2, "h").tolist() == [1, 1, 0, 2]
    assert pair_counts(smp, 2, "h").tolist() == [0, 2, 2, 0]
    a = 0.5 / 2  # add-(alpha/K) per pair cell
    r = [(c + a) / (4 + 4 * a) for c in (1, 1, 0, 2)]
    s = [(c + a) / (4 + 4 * a) for c in (0, 2, 2, 0)]
    hand = sum(ri * math.log(ri / si) for ri, si in zip(r, s))
    assert pair_kl(smp, ref, 2, alpha=0.5) == pytest.approx(hand, rel=1e-12)


def test_unigram_kl_matches_hand_computation():
    ref = torch.tensor([[[0, 1]], [[0, 1]], [[1, 1]]])
    smp = torch.tensor([[[1, 0]], [[1, 0]], [[1, 0]]])
    assert position_counts(ref, 2).tolist() == [[2, 1], [0, 3]]

    def kl(rc, sc, a=0.5):
        r = [(c + a) / (sum(rc) + 2 * a) for c in rc]
        s = [(c + a) / (sum(sc) + 2 * a) for c in sc]
        return sum(x * math.log(x / y) for x, y in zip(r, s))

    hand = (kl([2, 1], [0, 3]) + kl([0, 3], [3, 0])) / 2
    assert unigram_kl(smp, ref, 2) == pytest.approx(hand, rel=1e-12)


def test_pair_kl_sees_dependence_that_unigram_kl_misses():
    g = torch.Generator().manual_seed(1)
    # reference: every grid is constant (strong neighbour dependence), value uniform in 0..3
    ref = torch.randint(0, 4, (4000, 1, 1), generator=g).expand(4000, 4, 4).clone()
    indep = sample_from_marginals(class_position_marginals(ref, None, 4, None), (4, 4), None, 4000, seed=2)
    m = token_metrics(indep, ref, 4)
    assert m["token_kl_unigram"] < 0.01  # right marginals
    assert m["token_kl_pair"] > 0.5  # wrong pairs: the joint of constant grids is diagonal


def test_class_marginals_recover_known_marginals():
    g = torch.Generator().manual_seed(3)
    k, grid, c = 5, (2, 3), 2
    true = torch.softmax(torch.randn(c, 6, k, generator=g) * 2, -1).double()
    labels = torch.arange(20000) % c
    data = sample_from_marginals(true, grid, labels, 20000, seed=4)
    est = class_position_marginals(data, labels, k, c)
    assert est.shape == (c, 6, k)
    assert (est - true).abs().max() < 0.03  # ~ 4 binomial standard errors at n = 10000 per class
    # unconditional marginals are the class mixture
    uncond = class_position_marginals(data, None, k, None)[0]
    assert torch.allclose(uncond, true.mean(0), atol=0.02)
    assert torch.allclose(entropy(torch.tensor([0.5, 0.5])), torch.tensor(math.log(2)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="lie in"):
        unigram_kl(torch.full((2, 2, 2), 9), torch.zeros(2, 2, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="grid shape"):
        pair_kl(torch.zeros(2, 2, 3, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long), 4)


def test_token_settings_are_in_the_protocol_hash_and_old_hashes_stay():
    from dlbench.eval.protocol import resolve_protocol

    plain = resolve_protocol("quick")
    with_tokens = resolve_protocol("quick", token_metrics={})
    assert "token_metrics" not in plain.canonical_json()  # protocols from before keep their hash
    assert with_tokens.name == "quick" and with_tokens.hash() != plain.hash()
    assert with_tokens.diff(plain) == {"token_metrics": (with_tokens.token_metrics.model_dump(), None)}
    other = resolve_protocol("quick", token_metrics={"smoothing": 1.0})
    assert other.hash() != with_tokens.hash()
    only_tokens = resolve_protocol("quick", token_metrics={}, domain_metrics=False)  # still computes something
    assert only_tokens.token_metrics is not None
