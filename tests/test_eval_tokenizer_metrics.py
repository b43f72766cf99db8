import math

import pytest
import torch

from dlbench.eval.tokenizer_metrics import (
    TokenizerMetricsAccumulator, code_histogram, codebook_stats, psnr, ssim,
)


def test_codebook_usage_perplexity_dead_codes():
    tokens = torch.tensor([[0, 0, 3], [3, 5, 5]])  # exactly 3 of 8 codes used, each twice
    s = codebook_stats(code_histogram(tokens, 8))
    assert s["codebook_usage"] == pytest.approx(37.5)
    assert s["dead_codes"] == 5
    assert s["codebook_perplexity"] == pytest.approx(3.0)  # uniform over 3 codes


def test_perplexity_of_known_histogram():
    hist = torch.tensor([2, 1, 1, 0])  # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert codebook_stats(hist)["codebook_perplexity"] == pytest.approx(math.exp(1.5 * math.log(2)))


def test_token_out_of_range_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_histogram(torch.tensor([4]), 4)


def test_psnr_of_known_mse():
    x = torch.zeros(2, 1, 4, 4)
    y = x + 0.1  # MSE 0.01, range 2 -> 10 log10(4 / 0.01)
    assert psnr(x, y).tolist() == pytest.approx([10 * math.log10(400)] * 2)


def test_ssim_closed_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 16, 16, generator=g) * 2 - 1
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3)
    # constant images: variance terms vanish, SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, -0.4, (0.01 * 2) ** 2
    s = ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b))
    assert s.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_matches_brute_force_windows():
    """Per-window Eq. 13 with an explicit Gaussian weighting, looped in Python (float64)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 13, 13, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(1, 1, 13, 13, generator=g, dtype=torch.float64)).clamp(-1, 1)
    ax = torch.arange(11, dtype=torch.float64) - 5
    w = torch.exp(-(ax**2) / (2 * 1.5**2))
    w = (w[:, None] * w[None, :]) / (w.sum() ** 2)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    vals = []
    for i in range(3):
        for j in range(3):
            a, b = x[0, 0, i : i + 11, j : j + 11], y[0, 0, i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).item())
    assert ssim(x, y).item() == pytest.approx(sum(vals) / len(vals), rel=1e-10)


def test_accumulator_is_batch_size_independent():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(10, 1, 12, 12, generator=g) * 2 - 1
    rec = (imgs + 0.1 * torch.randn(10, 1, 12, 12, generator=g)).clamp(-1, 1)
    tok = torch.randint(0, 16, (10, 3, 3), generator=g)
    results = []
    for bs in (1, 3, 10):
        acc = TokenizerMetricsAccumulator(16)
        for i in range(0, 10, bs):
            acc.update(imgs[i : i + bs], rec[i : i + bs], tok[i : i + bs])
        results.append(acc.compute())
    for r in results[1:]:
        assert r == pytest.approx(results[0], rel=1e-12)
