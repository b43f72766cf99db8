"""VQ-Diffusion sampler pieces: truncation, discrete CFG, purity, time grids, reveal budgets."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlbench_vqdiffusion.sampling import guide, reveal_schedule, sharpen, time_grid, truncate


def test_truncation_keeps_exactly_the_smallest_top_set_with_mass_r():
    p = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64)
    for r, kept in [(0.4, {1}), (0.75, {1, 3}), (0.85, {1, 3, 2}), (0.99, {0, 1, 2, 3})]:
        out = truncate(p.log()[None, None], r)[0, 0]
        assert {i for i in range(4) if out[i] > -70} == kept, r
        # the kept tokens keep their relative probabilities, renormalised
        idx = sorted(kept)
        torch.testing.assert_close(out[idx].exp(), p[idx] / p[idx].sum())
        assert bool((out[[i for i in range(4) if i not in kept]] == -70).all())


def test_truncation_matches_brute_force_on_random_distributions():
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(2 * torch.randn(50, 6, generator=g, dtype=torch.float64), -1)
    r = 0.8
    out = truncate(log_p[None], r)[0]
    for row, o in zip(log_p.exp(), out):
        # brute force over all subsets: the smallest set with mass >= r (ties impossible here)
        best = min((s for m in range(1, 7) for s in itertools.combinations(range(6), m) if row[list(s)].sum() >= r),
                   key=lambda s: (len(s), -float(row[list(s)].sum())))
        assert {i for i in range(6) if o[i] > -70} == set(best)
    assert truncate(log_p, 1.0) is log_p


def test_guidance_scale_one_is_the_identity_and_zero_is_unconditional():
    g = torch.Generator().manual_seed(1)
    cond = torch.log_softmax(torch.randn(2, 5, 7, generator=g), -1)
    uncond = torch.log_softmax(torch.randn(2, 5, 7, generator=g), -1)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guide(cond, uncond, 0.0), uncond)
    s = 2.5
    expected = torch.softmax(uncond + s * (cond - uncond), -1)  # ∝ p_c^s p_u^(1-s)
    torch.testing.assert_close(guide(cond, uncond, s).exp(), expected)
    assert float(guide(cond, uncond, 40.0).min()) >= -70.0


def test_purity_sharpening_lowers_entropy_more_where_purity_is_high():
    log_p = torch.log_softmax(torch.tensor([[[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]]), -1)
    out = sharpen(log_p, torch.tensor([[0.0, 1.0]]), weight=1.0)
    torch.testing.assert_close(out[0, 0], log_p[0, 0])  # purity 0: unchanged
    torch.testing.assert_close(out[0, 1].exp(), torch.softmax(2 * log_p[0, 1], -1))  # (1 + r) log p


def test_time_grids():
    assert time_grid(10) == list(range(10, 0, -1))
    assert time_grid(10, stride=3) == [10, 7, 4, 1]
    assert time_grid(100, steps=4) == [100, 67, 34, 1]
    assert time_grid(10, steps=1) == [10]
    with pytest.raises(ValueError):
        time_grid(10, steps=11)


@pytest.mark.parametrize("n,steps", [(1024, 100), (64, 7), (5, 8)])
def test_reveal_schedule_spreads_all_positions(n, steps):
    budget = reveal_schedule(n, steps)
    assert len(budget) == steps and sum(budget) == n and max(budget) - min(budget) <= 1
