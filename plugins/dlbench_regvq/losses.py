"""Reg-VQ loss terms as pure functions (METHODS.md C.2, C.4).

- :func:`prior_kl`: ``KL(P_post || uniform) = log K - H(P_post)`` on the batch-averaged soft
  token distribution (C.2).
- :func:`mean_entropy`: mean per-position entropy ``E_i H(p_i)``; ``prior_kl + mean_entropy`` is
  ``log K - I(code; position)`` (the MAGVIT-v2 / LFQ entropy loss; C.2 "pitfall").
- :func:`pcl_weights`: per-position weights ``||z_sampled - z_best||^2`` normalised per image (C.4).
- :func:`sample_patch_locations` / :func:`gather_patches`: PatchNCE sampling of L feature positions.
- :func:`patch_nce`: (probabilistic) patch-wise InfoNCE between features of input and reconstruction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["prior_kl", "mean_entropy", "pcl_weights", "sample_patch_locations", "gather_patches", "locations_to_tokens", "patch_nce"]


def prior_kl(probs: torch.Tensor) -> torch.Tensor:
    """``KL(mean(probs) || U_K) = log K - H(mean(probs))`` (C.2): ``"... k" -> ""``.

    The average runs over every leading axis (batch and positions): the "batch-averaged predicted token
    distribution". 0 iff average usage is uniform; ``log K`` iff every position picks one same code.
    """
    k = probs.shape[-1]
    p = probs.reshape(-1, k).mean(0)
    # p log p with 0 log 0 = 0; clamp only inside the log so gradients stay finite at p = 0
    entropy = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum()
    return math.log(k) - entropy


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-position entropy ``(1/N) sum_i H(p_i)``: ``"... k" -> ""`` (C.2 implementation note).

    ``prior_kl(p) + mean_entropy(p) = log K - [H(mean_i p_i) - mean_i H(p_i)] = log K - I(code; position)``:
    0 iff every position is one-hot and the codes are used uniformly; it blocks the escape route of the
    plain prior KL, raising ``H(mean)`` by flattening every ``p_i`` (then it equals ``log K``, like collapse).
    """
    k = probs.shape[-1]
    p = probs.reshape(-1, k)
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1).mean()


def pcl_weights(z_sampled: torch.Tensor, z_best: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-position weights ``w'_i = w_i / sum_j w_j`` with ``w_i = ||z_s,i - z_q,i||^2`` (C.4).

    ``"b h w d", "b h w d" -> "b h w"``; each image's weights sum to 1, or are all 0 when the sampled
    and best codes agree everywhere in that image (no stochastic perturbation -> no contrastive pull).
    """
    w = (z_sampled - z_best).detach().pow(2).sum(-1)
    total = w.flatten(1).sum(1)
    return w / total.clamp_min(eps)[:, None, None]


def sample_patch_locations(
    height: int, width: int, num: int, batch: int, *, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num`` distinct flat positions per image in a ``height x width`` map: ``"b l"`` long (PatchNCE)."""
    n = height * width
    num = min(num, n)
    scores = torch.rand(batch, n, generator=generator, device=device)
    return scores.argsort(-1)[:, :num]


def gather_patches(features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """``"b c H W", "b l" -> "b l c"``: the feature vectors at flat positions ``locations``."""
    flat = features.flatten(2)  # "b c (H W)"
    idx = locations[:, None, :].expand(-1, flat.shape[1], -1)
    return flat.gather(2, idx).transpose(1, 2)


def locations_to_tokens(locations: torch.Tensor, feat_hw: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Map flat feature-map positions to the flat token position covering them: ``"b l" -> "b l"``.

    A feature at row r of an ``H``-row map lies over token row ``floor(r * h / H)`` (same for columns).
    """
    (fh, fw), (h, w) = feat_hw, grid
    r, c = locations // fw, locations % fw
    return (r * h // fh) * w + (c * w // fw)


def patch_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    tau: float = 0.07,
    weights: torch.Tensor | None = None,
    form: Literal["weighted-sum", "in-log"] = "weighted-sum",
) -> torch.Tensor:
    """Patch-wise InfoNCE (C.4): ``query, key "b l c"`` (reconstruction / input patch features) -> ``""``.

    Similarities ``s_ij = <y_i, z_j> / tau`` of L2-normalised features; positives on the diagonal,
    negatives are the other L-1 positions of the same image.

    - ``weights=None``: vanilla contrastive loss ``-(1/L) sum_i log(e^s_ii / sum_j e^s_ij)``.
    - ``weights "b l"`` (each row sums to 1 or is all 0, see :func:`pcl_weights`), probabilistic
      contrastive loss (PCL):

      - ``form="weighted-sum"`` (dlbench default): ``sum_i w'_i * l_i`` with
        ``l_i = -log(e^s_ii / (e^s_ii + (1/L) sum_{j!=i} e^s_ij))``: the positive pull at position i is
        proportional to how far sampling moved its code; positions with w' = 0 contribute nothing.
      - ``form="in-log"`` (the secondary sources' equation):
        ``-sum_i log(w'_i e^s_ii / (w'_i e^s_ii + (1/L) sum_{j!=i} e^s_ij))`` over positions with
        ``w'_i > 0`` (the term is +inf at w' = 0, so those positions are left out, as C.4 says they
        "get no contrastive pull"), divided by L.

    Averaged over the batch.
    """
    b, l, _ = query.shape
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    s = torch.einsum("bic,bjc->bij", q, k) / tau  # "b l l"
    eye = torch.eye(l, dtype=torch.bool, device=s.device)
    pos = s.diagonal(dim1=1, dim2=2)  # "b l"
    if weights is None:
        return (torch.logsumexp(s, dim=-1) - pos).mean()
    # (1/L) rebalancing of negatives: log((1/L) sum_{j!=i} e^s_ij)
    neg = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=-1) - math.log(l)
    if form == "weighted-sum":
        li = torch.logaddexp(pos, neg) - pos
        return (weights * li).sum(-1).mean()
    if form == "in-log":
        active = weights > 0
        logw = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
        li = torch.logaddexp(logw + pos, neg) - (logw + pos)
        return (li * active).sum(-1).mean() / l
    raise ValueError(f"unknown PCL form {form!r}: use 'weighted-sum' or 'in-log'")
