"""Token-level metrics: cheap, Inception-free statistics of token grids (pure functions).

Definitions (docs/protocol.md, "Token-level metrics"); ``K`` codebook size, ``P = h*w`` positions:

- **unigram KL** ``token_kl_unigram = 1/P sum_i KL(r_i || s_i)``: ``r_i`` / ``s_i`` are the add-alpha
  smoothed histograms of the token at position ``i`` over the reference (held-out) grids and over the
  sample grids, ``p(k) = (count_k + alpha) / (n + alpha K)``.
- **neighbour-pair KL** ``token_kl_pair = 1/2 (KL(R_h || S_h) + KL(R_v || S_v))``: ``R_h`` is the histogram
  of ordered pairs ``(x[r, c], x[r, c+1])`` pooled over all horizontally adjacent positions of the
  reference grids (``R_v``: ``(x[r, c], x[r+1, c])``), over ``K^2`` cells, add-``alpha/K`` smoothed.
  It sees what the unigram KL cannot: a sampler that draws every position independently from the right
  marginals has unigram KL ~ 0 but a large pair KL.

The direction ``KL(reference || samples)`` charges a sampler for reference mass it misses (mode dropping),
like a held-out likelihood of the reference under the sample histograms. Both are 0 for identical token
sets; both are biased upwards by finite n (compare numbers at the same n, as anchors and methods are).
"""

from __future__ import annotations

import torch

__all__ = [
    "position_counts",
    "pair_counts",
    "smoothed_kl",
    "unigram_kl",
    "pair_kl",
    "class_position_marginals",
    "sample_from_marginals",
    "entropy",
    "token_metrics",
]


def position_counts(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Per-position histograms: ``tokens "n h w"`` (long) -> counts ``"(h w) k"`` float64."""
    n = tokens.shape[0]
    flat = tokens.reshape(n, -1).long()
    p = flat.shape[1]
    idx = flat + torch.arange(p, device=flat.device)[None, :] * k
    return torch.bincount(idx.reshape(-1), minlength=p * k).reshape(p, k).to(torch.float64).cpu()


def pair_counts(tokens: torch.Tensor, k: int, direction: str) -> torch.Tensor:
    """Histogram of ordered neighbour pairs pooled over positions: ``"n h w" -> "(k k)"`` float64.
    ``direction``: ``"h"`` pairs ``(x[r, c], x[r, c+1])``, ``"v"`` pairs ``(x[r, c], x[r+1, c])``."""
    t = tokens.long()
    if direction == "h":
        a, b = t[:, :, :-1], t[:, :, 1:]
    elif direction == "v":
        a, b = t[:, :-1, :], t[:, 1:, :]
    else:
        raise ValueError(f"direction must be 'h' or 'v', got {direction!r}")
    return torch.bincount((a * k + b).reshape(-1), minlength=k * k).to(torch.float64).cpu()


def smoothed_kl(ref_counts: torch.Tensor, sample_counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """``KL(r || s)`` over the last axis of add-``alpha`` smoothed histograms (nats): ``"... c" -> "..."``."""
    r = (ref_counts + alpha) / (ref_counts + alpha).sum(-1, keepdim=True)
    s = (sample_counts + alpha) / (sample_counts + alpha).sum(-1, keepdim=True)
    return (r * (r.log() - s.log())).sum(-1)


def unigram_kl(samples: torch.Tensor, reference: torch.Tensor, k: int, alpha: float = 0.5) -> float:
    """Mean over positions of ``KL(reference_i || samples_i)`` (module docstring); grids ``"n h w"``."""
    _check(samples, reference, k)
    return float(smoothed_kl(position_counts(reference, k), position_counts(samples, k), alpha).mean())


def pair_kl(samples: torch.Tensor, reference: torch.Tensor, k: int, alpha: float = 0.5) -> float:
    """Neighbour-pair KL, the mean of the horizontal and vertical pooled-pair KLs (module docstring)."""
    _check(samples, reference, k)
    kls = [smoothed_kl(pair_counts(reference, k, d), pair_counts(samples, k, d), alpha / k)
           for d in ("h", "v") if (reference.shape[2] > 1 if d == "h" else reference.shape[1] > 1)]
    return float(torch.stack(kls).mean()) if kls else 0.0


def class_position_marginals(
    tokens: torch.Tensor, labels: torch.Tensor | None, k: int, num_classes: int | None
) -> torch.Tensor:
    """Maximum-likelihood per-position token marginals of a training split.

    ``tokens "n h w"``; with ``labels "n"`` and ``num_classes`` -> ``"c (h w) k"`` (class-conditional),
    else ``"1 (h w) k"``. A class without examples falls back to the unconditional marginal.
    """
    overall = position_counts(tokens, k)
    overall = overall / overall.sum(-1, keepdim=True)
    if labels is None or not num_classes:
        return overall[None]
    out = []
    for c in range(num_classes):
        sel = labels == c
        if bool(sel.any()):
            cnt = position_counts(tokens[sel], k)
            out.append(cnt / cnt.sum(-1, keepdim=True))
        else:
            out.append(overall)
    return torch.stack(out)


def sample_from_marginals(
    marginals: torch.Tensor, grid: tuple[int, int], labels: torch.Tensor | None, n: int, seed: int
) -> torch.Tensor:
    """Token grids ``"n h w"`` with every position drawn independently from its marginal.

    ``marginals "c (h w) k"`` (``c = 1``: unconditional, ``labels`` ignored); sample ``j`` uses row
    ``labels[j]``. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n, dtype=torch.long) if labels is None or marginals.shape[0] == 1 else labels.long().cpu()
    probs = marginals[rows]  # "n p k"
    flat = probs.reshape(-1, probs.shape[-1]).float()
    draws = torch.multinomial(flat, 1, replacement=True, generator=g).reshape(n, *grid)
    return draws


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis, ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def token_metrics(samples: torch.Tensor, reference: torch.Tensor, k: int, alpha: float = 0.5) -> dict[str, float]:
    """``{"token_kl_unigram", "token_kl_pair"}`` of sample grids vs reference grids (module docstring)."""
    return {"token_kl_unigram": unigram_kl(samples, reference, k, alpha),
            "token_kl_pair": pair_kl(samples, reference, k, alpha)}


def _check(samples: torch.Tensor, reference: torch.Tensor, k: int) -> None:
    if samples.dim() != 3 or reference.dim() != 3 or samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"token grids must both be 'n h w' with one grid shape, got {tuple(samples.shape)} and "
                         f"{tuple(reference.shape)}")
    for name, t in (("samples", samples), ("reference", reference)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(f"{name} token ids must lie in [0, {k})")
