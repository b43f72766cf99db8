"""VA-VAE's vision-foundation (VF) alignment loss as pure functions (Yao et al., arXiv 2501.01423, Eq. 1-5).

Shapes (einops): ``b`` batch, ``n = h*w`` latent positions, ``f`` foundation feature dim.

- :func:`marginal_cosine_loss` (Eq. 2): ``L_mcos = mean_{b,n} ReLU(1 - m1 - cos(z'_n, f_n))``;
- :func:`marginal_distmat_loss` (Eq. 3): ``L_mdms = mean_{b,i,j} ReLU(|cos(z'_i, z'_j) - cos(f_i, f_j)| - m2)``,
  averaged over all N^2 pairs *including the diagonal*, on the projected latent ``z'`` (as the released
  code, ``vavae/ldm/modules/losses/contperceptual.py``, does);
- :func:`adaptive_vf_weight` (Eq. 4-5): ``w_adapt = ||grad_W L_rec|| / (||grad_W L_vf|| + eps)`` at the
  encoder's last conv ``W``, clamped to ``[0, 1e8]`` and detached;
- :func:`resample_to_grid`: foundation feature maps onto the latent grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "marginal_cosine_loss",
    "marginal_distmat_loss",
    "vf_alignment_loss",
    "adaptive_vf_weight",
    "resample_to_grid",
    "ADAPTIVE_EPS",
    "ADAPTIVE_MAX",
]

#: the released code's denominator guard and clamp (``calculate_adaptive_weight_vf``)
ADAPTIVE_EPS = 1e-4
ADAPTIVE_MAX = 1e8


def _check(z: torch.Tensor, f: torch.Tensor) -> None:
    if z.dim() != 3 or z.shape != f.shape:
        raise ValueError(f"VF loss needs projected latent and features of equal shape 'b n f'; got "
                         f"{tuple(z.shape)} and {tuple(f.shape)}")


def marginal_cosine_loss(z: torch.Tensor, f: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """``L_mcos`` (Eq. 2): ``z, f "b n f" -> ()``; positions with ``cos >= 1 - margin`` contribute 0."""
    _check(z, f)
    cos = F.cosine_similarity(z.float(), f.float(), dim=-1)  # "b n"
    return F.relu(1.0 - margin - cos).mean()


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """``"b n f" -> "b n n"``: cosine similarity between every pair of positions of one image."""
    x = F.normalize(x.float(), dim=-1)
    return torch.einsum("bif,bjf->bij", x, x)


def marginal_distmat_loss(z: torch.Tensor, f: torch.Tensor, margin: float = 0.25) -> torch.Tensor:
    """``L_mdms`` (Eq. 3): ``z, f "b n f" -> ()``, mean over all ``b * n * n`` pairs (diagonal included);
    pairs whose cosine similarities differ by at most ``margin`` contribute 0."""
    _check(z, f)
    diff = (cosine_matrix(z) - cosine_matrix(f)).abs()
    return F.relu(diff - margin).mean()


def vf_alignment_loss(
    z: torch.Tensor,
    f: torch.Tensor,
    *,
    cos_margin: float = 0.5,
    distmat_margin: float = 0.25,
    cos_weight: float = 1.0,
    distmat_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``cos_weight * L_mcos + distmat_weight * L_mdms`` and both terms (before any adaptive weight)."""
    mcos = marginal_cosine_loss(z, f, cos_margin)
    mdms = marginal_distmat_loss(z, f, distmat_margin)
    return cos_weight * mcos + distmat_weight * mdms, {"vf_mcos": mcos, "vf_mdms": mdms}


def adaptive_vf_weight(
    rec_loss: torch.Tensor, vf_loss: torch.Tensor, last_layer: torch.Tensor, *, eps: float = ADAPTIVE_EPS,
    max_weight: float = ADAPTIVE_MAX,
) -> torch.Tensor:
    """``clamp(||dL_rec/dW|| / (||dL_vf/dW|| + eps), 0, max_weight)``, detached (Eq. 5).

    ``W = last_layer`` is the encoder's last conv weight; both graphs are retained (the caller still
    backpropagates the total loss). Balances the VF term against reconstruction without a hand-tuned
    scale, exactly as the adaptive GAN weight of VQGAN does for the discriminator term.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True, allow_unused=True)[0]
    g_vf = torch.autograd.grad(vf_loss, last_layer, retain_graph=True, allow_unused=True)[0]
    if g_rec is None or g_vf is None:
        raise ValueError("adaptive VF weight: the reconstruction or VF loss does not depend on the given encoder "
                         "last layer (pass the conv whose output is the pre-quantization latent)")
    w = g_rec.norm() / (g_vf.norm() + eps)
    return w.clamp(0.0, max_weight).detach()


def resample_to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``"b f H' W'" -> "b f h w"``: area averaging when shrinking (each latent cell sees the mean of the
    features it covers), bilinear when enlarging; identity when the grids already match."""
    h, w = grid
    fh, fw = features.shape[-2:]
    if (fh, fw) == (h, w):
        return features
    if fh >= h and fw >= w:
        return F.interpolate(features, size=(h, w), mode="area")
    return F.interpolate(features, size=(h, w), mode="bilinear", align_corners=False)
