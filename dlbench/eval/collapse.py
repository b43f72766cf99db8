"""Embedding-collapse diagnostics of a table ``E`` (METHODS.md §A.5).

Collapse is measured *relative to the noise scale* ``sigma``: rows closer than ``sigma`` are
indistinguishable after noising, whatever their absolute scale, so the pairwise distances are also
reported divided by ``sigma``.
"""

from __future__ import annotations

import torch

__all__ = ["collapse_diagnostics"]


@torch.no_grad()
def collapse_diagnostics(E: torch.Tensor, sigma: float = 1.0) -> dict[str, float]:
    """Scalar collapse diagnostics of an embedding table ``E`` ``"k d"`` (METHODS.md §A.5).

    - ``mean_pairwise_dist`` / ``min_pairwise_dist``: Euclidean distances over the ``k(k-1)/2``
      distinct row pairs; ``*_over_sigma`` divides them by ``sigma``.
    - ``effective_rank``: ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values
      (Roy & Vetterli 2007); 1 for a rank-1 table, ``min(k, d)`` for orthonormal rows.
    - ``participation_ratio``: ``(sum s^2)^2 / sum s^4`` over the singular values ``s`` of ``E``.
    - ``mean_cosine``: mean off-diagonal cosine similarity of the rows.
    - ``mean_norm``: mean row norm.

    Computed in float64 on CPU so the numbers do not depend on the device or the table's dtype.
    """
    if E.dim() != 2:
        raise ValueError(f"collapse_diagnostics expects a 'k d' table, got shape {tuple(E.shape)}")
    k = E.shape[0]
    if k < 2:
        raise ValueError(f"collapse_diagnostics needs at least 2 rows, got {k}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    E = E.detach().to("cpu", torch.float64)

    # Gram-based distances: exact enough in float64 and O(k^2 d) without a "k k d" intermediate.
    sq = (E * E).sum(1)
    gram = E @ E.T
    d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    iu = torch.triu_indices(k, k, offset=1)
    dist = d2[iu[0], iu[1]].sqrt()

    norms = sq.sqrt()
    # a zero row has no direction: count its cosine as 0 rather than NaN
    unit = E / norms.clamp_min(1e-300)[:, None]
    cos = unit @ unit.T
    off = ~torch.eye(k, dtype=torch.bool)
    mean_cos = cos[off].mean()

    s = torch.linalg.svdvals(E)
    total = s.sum()
    if total > 0:
        p = s / total
        p = p[p > 0]
        eff_rank = torch.exp(-(p * p.log()).sum())
        s2 = s * s
        pr = s2.sum() ** 2 / (s2 * s2).sum()
    else:  # an all-zero table is fully collapsed
        eff_rank = torch.tensor(0.0, dtype=torch.float64)
        pr = torch.tensor(0.0, dtype=torch.float64)

    mean_d, min_d = dist.mean().item(), dist.min().item()
    return {
        "mean_pairwise_dist": mean_d,
        "min_pairwise_dist": min_d,
        "mean_pairwise_dist_over_sigma": mean_d / sigma,
        "min_pairwise_dist_over_sigma": min_d / sigma,
        "effective_rank": eff_rank.item(),
        "participation_ratio": pr.item(),
        "mean_cosine": mean_cos.item(),
        "mean_norm": norms.mean().item(),
    }
