import math

import pytest
import torch

from dlbench.eval.collapse import collapse_diagnostics


def test_all_equal_rows_are_fully_collapsed():
    d = collapse_diagnostics(torch.full((6, 4), 0.7))
    assert d["min_pairwise_dist"] == pytest.approx(0.0, abs=1e-12)
    assert d["mean_pairwise_dist"] == pytest.approx(0.0, abs=1e-12)
    assert d["mean_cosine"] == pytest.approx(1.0)
    assert d["effective_rank"] == pytest.approx(1.0)
    assert d["participation_ratio"] == pytest.approx(1.0)
    assert d["mean_norm"] == pytest.approx(0.7 * 2)


def test_orthonormal_rows_closed_forms():
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    E = q[:5]  # 5 orthonormal rows in 8-d
    d = collapse_diagnostics(E, sigma=0.5)
    assert d["mean_pairwise_dist"] == pytest.approx(math.sqrt(2))
    assert d["min_pairwise_dist"] == pytest.approx(math.sqrt(2))
    assert d["min_pairwise_dist_over_sigma"] == pytest.approx(math.sqrt(2) / 0.5)
    assert d["mean_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert d["effective_rank"] == pytest.approx(5.0)
    assert d["participation_ratio"] == pytest.approx(5.0)
    assert d["mean_norm"] == pytest.approx(1.0)


def test_distances_match_brute_force_and_scale():
    E = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    pair = [torch.dist(E[i].double(), E[j].double()).item() for i in range(7) for j in range(i + 1, 7)]
    d = collapse_diagnostics(E)
    assert d["mean_pairwise_dist"] == pytest.approx(sum(pair) / len(pair), rel=1e-9)
    assert d["min_pairwise_dist"] == pytest.approx(min(pair), rel=1e-6)
    # collapse is scale-relative: scaling E and sigma together leaves the *_over_sigma values unchanged
    d2 = collapse_diagnostics(3 * E, sigma=3.0)
    assert d2["mean_pairwise_dist_over_sigma"] == pytest.approx(d["mean_pairwise_dist_over_sigma"])
    assert d2["effective_rank"] == pytest.approx(d["effective_rank"])


def test_bad_shape_is_an_error():
    with pytest.raises(ValueError, match="'k d'"):
        collapse_diagnostics(torch.zeros(3))
