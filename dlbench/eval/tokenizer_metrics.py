"""Tokenizer metrics: reconstruction quality and codebook usage, dataset-level.

All functions are pure; :class:`TokenizerMetricsAccumulator` sums per-image values and the code
histogram, so the result is the same for any batching of the same split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "code_histogram", "codebook_stats", "TokenizerMetricsAccumulator"]


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR ``"b c H W", "b c H W" -> "b"`` in dB: ``10 log10(R^2 / MSE)``.

    ``data_range`` R is 2 for images in [-1, 1]. Identical images give ``inf``.
    """
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM ``"b c H W", "b c H W" -> "b"`` (Wang et al. 2004, Eq. 13).

    Gaussian window (11 px, sigma 1.5), statistics over the *valid* region (no padding), averaged
    over positions and channels; population (biased) local variances as in the paper. The window
    shrinks to the image size for images smaller than 11 px.
    """
    x, y = x.double(), y.double()
    c = x.shape[1]
    win_size = min(win_size, x.shape[-1], x.shape[-2])
    w = _gaussian_window(win_size, sigma).to(x.device)[None, None].expand(c, 1, -1, -1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def code_histogram(tokens: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts of each code id over all positions: ``"b ..." -> "k"`` (int64)."""
    t = tokens.reshape(-1).long()
    if t.numel() and (t.min() < 0 or t.max() >= codebook_size):
        raise ValueError(f"token ids must lie in [0, {codebook_size}), got [{t.min().item()}, {t.max().item()}]")
    return torch.bincount(t.cpu(), minlength=codebook_size)


def codebook_stats(hist: torch.Tensor) -> dict[str, float]:
    """From a code histogram ``"k"``: ``codebook_usage`` (% of codes used at least once),
    ``codebook_perplexity`` ``exp(H(p))`` with ``p`` the normalised histogram (nats), and
    ``dead_codes`` (codes never used)."""
    k = hist.numel()
    used = int((hist > 0).sum())
    p = hist.double() / hist.sum()
    p = p[p > 0]
    return {
        "codebook_usage": 100.0 * used / k,
        "codebook_perplexity": math.exp(float(-(p * p.log()).sum())),
        "dead_codes": float(k - used),
    }


class TokenizerMetricsAccumulator:
    """Feed batches of ``(images, reconstructions, tokens)``; :meth:`compute` gives dataset-level
    ``psnr`` / ``ssim`` (means of per-image values), ``mse``, and the codebook statistics."""

    def __init__(self, codebook_size: int, data_range: float = 2.0):
        self.codebook_size, self.data_range = codebook_size, data_range
        self.hist = torch.zeros(codebook_size, dtype=torch.long)
        self.n = 0
        self.sum_psnr = self.sum_ssim = self.sum_mse = 0.0

    def update(self, images: torch.Tensor, recon: torch.Tensor, tokens: torch.Tensor) -> None:
        images, recon = images.detach().cpu(), recon.detach().cpu()
        self.sum_psnr += float(psnr(images, recon, self.data_range).sum())
        self.sum_ssim += float(ssim(images, recon, self.data_range).sum())
        self.sum_mse += float((images.double() - recon.double()).pow(2).flatten(1).mean(1).sum())
        self.hist += code_histogram(tokens, self.codebook_size)
        self.n += images.shape[0]

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no batches were added")
        return {
            "psnr": self.sum_psnr / self.n,
            "ssim": self.sum_ssim / self.n,
            "mse": self.sum_mse / self.n,
            **codebook_stats(self.hist),
        }
