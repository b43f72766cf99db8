"""``regularizer/vf-alignment``: VA-VAE's vision-foundation alignment loss (stage ``tokenizer``).

Built as ``VFAlignment(config, latent_channels=d)`` (``d``: channels of the tokenizer's pre-quantization
latent; ``config.latent_channels`` when the caller cannot pass it). Per training batch
(Yao et al. 2025, Eq. 1-5):

1. ``f = foundation(images)``: frozen features ``"b f h w"`` on the latent grid (the foundation
   extractor's ``feature_grid``, or the last of its ``feature_maps`` resampled by area/bilinear);
2. ``z' = W z``: a 1x1 conv without bias, ``d -> f`` channels, trained with the encoder;
3. ``L = cos_weight * L_mcos(z', f) + distmat_weight * L_mdms(z', f)`` (:mod:`.losses`);
4. ``w_adapt = ||grad_W_last L_rec|| / (||grad_W_last L|| + 1e-4)`` at the encoder's last conv ``W_last``,
   clamped to [0, 1e8], detached (``adaptive=False``: 1).

``forward`` returns ``w_adapt * L``; the owning tokenizer multiplies it by ``config.weight`` (``w_hyper``,
0.1), so the tokenizer loss gains ``w_hyper * w_adapt * (L_mcos + L_mdms)`` (Eq. 5). The parts are kept in
``last_terms`` (detached) for logging.

Keyword tensors read (the tokenizer regularizer hook, ``dlbench.nn.vqvae``): ``images "b c H W"`` in
[-1, 1], ``z_e "b h w d"`` (the pre-quantization latent, channels last), and for the adaptive weight
``rec_loss`` (scalar, the reconstruction loss with its graph) and ``encoder_last_layer`` (the weight of
the conv producing ``z_e``). Unknown keywords are ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from einops import rearrange
from pydantic import Field
from torch import nn

from dlbench.interfaces import ComponentConfig, Regularizer
from dlbench.registry import DlbenchError

from .losses import ADAPTIVE_MAX, adaptive_vf_weight, resample_to_grid, vf_alignment_loss

__all__ = ["VFAlignmentConfig", "VFAlignment", "FOUNDATION_DEFAULT_PARAMS", "FOUNDATION_BIAS", "VFConfigError"]

#: dlbench's default params per foundation extractor (used when ``foundation_params`` is None)
FOUNDATION_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # the deepest layer of the stem: 192 channels, 12x12 for a 64 px input (resampled to the latent grid)
    "inception-early": {"layers": ["conv_4"]},
}

#: what aligning the latent to each extractor favours (recorded in run metadata)
FOUNDATION_BIAS: dict[str, str] = {
    "inception-early": (
        "offline stand-in for DINOv2: early (stem) layers of the FID Inception-v3, ImageNet-supervised; "
        "it aligns the latent to the evaluation metric's own network, so Inception FID/rFID may be favoured "
        "(domain_* metrics use a different network)"
    ),
}


class VFConfigError(DlbenchError, ValueError):
    pass


class VFAlignmentConfig(ComponentConfig):
    """VF loss options (defaults: the paper's m1 = 0.5, m2 = 0.25, w_hyper = 0.1, both weights 1).

    ``foundation``: a registered ``feature_extractor`` with ``feature_grid(images, grid)`` or
    ``feature_maps(images)`` (``dinov2``, ``mae``, ``inception-early``); ``foundation_params``: its config
    (None: dlbench's default for it). ``adaptive``: scale by the gradient-norm ratio of Eq. 5.
    """

    weight: float = Field(0.1, ge=0, description="w_hyper")
    foundation: str = "inception-early"
    foundation_params: dict[str, Any] | None = None
    cos_margin: float = Field(0.5, ge=0, le=2, description="m1")
    distmat_margin: float = Field(0.25, ge=0, le=2, description="m2")
    cos_weight: float = Field(1.0, ge=0)
    distmat_weight: float = Field(1.0, ge=0)
    adaptive: bool = True
    adaptive_max: float = Field(ADAPTIVE_MAX, gt=0)
    latent_channels: int | None = Field(None, ge=1, description="d of the latent; the tokenizer passes it")


def build_foundation(name: str, params: dict[str, Any] | None) -> Any:
    from dlbench.plugins import get_registry

    params = FOUNDATION_DEFAULT_PARAMS.get(name, {}) if params is None else params
    ext = get_registry().get("feature_extractor", name).build(params)
    if not callable(getattr(ext, "feature_grid", None)) and not callable(getattr(ext, "feature_maps", None)):
        raise VFConfigError(f"vf-alignment: feature_extractor/{name} has neither feature_grid(images, grid) nor "
                            "feature_maps(images); it gives no spatial features to align with")
    return ext


class VFAlignment(Regularizer):
    """VF loss: marginal cosine + marginal distance-matrix similarity to frozen foundation features."""

    Config = VFAlignmentConfig
    stage: ClassVar = "tokenizer"

    def __init__(self, config: VFAlignmentConfig | None = None, *, latent_channels: int | None = None):
        super().__init__()
        self.config = config or VFAlignmentConfig()
        d = latent_channels or self.config.latent_channels
        ext = build_foundation(self.config.foundation, self.config.foundation_params)
        self.__dict__["foundation"] = ext  # frozen: kept out of the module tree and the tokenizer checkpoint
        # Z' = W Z (Eq. 1, reverse_proj); sized in bind() when attached through tokenizer.regularizers
        self.proj: nn.Conv2d | None = None if d is None else nn.Conv2d(d, int(ext.dim), 1, bias=False)
        self.last_terms: dict[str, torch.Tensor] = {}

    def bind(self, tokenizer: nn.Module, latent_channels: int) -> None:
        """Attached through ``tokenizer.regularizers``: build the projection for the tokenizer's ``d``."""
        if self.proj is None:
            self.proj = nn.Conv2d(latent_channels, int(self.foundation.dim), 1, bias=False)
        elif self.proj.in_channels != latent_channels:
            raise VFConfigError(f"vf-alignment: latent_channels {self.proj.in_channels} but the tokenizer's latent "
                                f"has {latent_channels} channels; leave latent_channels unset")

    def __deepcopy__(self, memo: dict[int, Any]) -> "VFAlignment":
        """Copies (e.g. the tokenizer's EMA shadow) share the frozen foundation network instead of duplicating it."""
        import copy

        memo[id(self.foundation)] = self.foundation
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def run_metadata(self) -> dict[str, Any]:
        """Which foundation features the latent was aligned to, and what that favours."""
        ext, name = self.foundation, self.config.foundation
        bias = FOUNDATION_BIAS.get(name) or getattr(ext, "bias", "") or "not documented for this extractor"
        params = self.config.foundation_params
        params = FOUNDATION_DEFAULT_PARAMS.get(name, {}) if params is None else params
        return {"foundation": name, "foundation_params": params,
                "foundation_dim": int(ext.dim), "foundation_weights_sha256": ext.weights_sha256(),
                "foundation_bias": bias}

    @torch.no_grad()
    def target_features(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Frozen foundation features of ``images "b c H W"`` on ``grid``: ``"b f h w"``."""
        ext = self.foundation
        if callable(getattr(ext, "feature_grid", None)):
            return ext.feature_grid(images, grid).float()
        return resample_to_grid(ext.feature_maps(images)[-1].float(), grid)

    def forward(
        self,
        images: torch.Tensor | None = None,
        z_e: torch.Tensor | None = None,
        rec_loss: torch.Tensor | None = None,
        encoder_last_layer: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if images is None or z_e is None:
            raise TypeError("vf-alignment needs 'images' ('b c H W') and 'z_e' (pre-quantization latent 'b h w d')")
        c = self.config
        grid = (z_e.shape[1], z_e.shape[2])
        f = rearrange(self.target_features(images, grid), "b f h w -> b (h w) f")
        if self.proj is None:
            raise VFConfigError("vf-alignment needs the tokenizer's latent channels: attach it through "
                                "tokenizer.regularizers, or build it with latent_channels=d")
        z = rearrange(self.proj(rearrange(z_e, "b h w d -> b d h w").to(self.proj.weight.dtype)),
                      "b f h w -> b (h w) f")
        loss, parts = vf_alignment_loss(z, f, cos_margin=c.cos_margin, distmat_margin=c.distmat_margin,
                                        cos_weight=c.cos_weight, distmat_weight=c.distmat_weight)
        w = torch.ones((), device=loss.device)
        if c.adaptive and torch.is_grad_enabled() and loss.requires_grad:
            if rec_loss is None or encoder_last_layer is None:
                raise TypeError("vf-alignment with adaptive=True needs 'rec_loss' and 'encoder_last_layer' from the "
                                "tokenizer (or set adaptive=false)")
            w = adaptive_vf_weight(rec_loss, loss, encoder_last_layer, max_weight=c.adaptive_max)
        # no graph (evaluation): the unweighted loss is reported, w_adapt = 1
        self.last_terms = {**{k: v.detach() for k, v in parts.items()}, "vf_adaptive_weight": w.detach()}
        return w * loss
