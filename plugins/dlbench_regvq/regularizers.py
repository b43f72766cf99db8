"""The Reg-VQ regularizers as registered components (kind ``regularizer``, stage ``tokenizer``).

- ``prior-kl`` (:class:`PriorKL`, METHODS.md C.2): reads ``probs`` or ``logits "b h w k"``.
- ``stochastic-mask`` (:class:`StochasticMask`, C.3): acts on the reconstruction path through ``perturb``
  (Bernoulli(ratio) positions feed the decoder a Gumbel-softmax sample of the tokenizer's code logits); it
  adds no loss term of its own (``forward`` returns 0).
- ``probabilistic-contrastive`` (:class:`ProbabilisticContrastive`, C.4): reads ``images``, ``recon``
  ``"b c H W"``, for the probabilistic weights ``z_sampled``, ``z_best`` ``"b h w d"``, and ``encoder``
  (the tokenizer's encoder module: the fallback feature network).

All three attach to any tokenizer with ``add_regularizer`` (``tokenizer/vqvae``: ``logits = -distances``;
``tokenizer/regvq``: its adaptive distance logits) through ``tokenizer.regularizers`` of a run config.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import Field

from dlbench.interfaces import ComponentConfig, Regularizer

from .losses import (
    gather_patches,
    locations_to_tokens,
    mean_entropy,
    patch_nce,
    pcl_weights,
    prior_kl,
    sample_patch_locations,
)
from .quantize import bernoulli_mask, gumbel_softmax_st, gumbel_temperature, mix_by_mask

__all__ = [
    "PriorKLConfig", "PriorKL", "StochasticMaskConfig", "StochasticMask",
    "ContrastiveConfig", "ProbabilisticContrastive",
]


class PriorKLConfig(ComponentConfig):
    """``weight`` of the prior term in the tokenizer loss (0 disables it; the paper gives none).

    ``entropy_weight`` lambda: the term is ``KL(P_post || uniform) + lambda * mean_i H(p_i)``; lambda = 1 makes it
    ``log K - I(code; position)`` (default; C.2 pitfall; docs/methods/regvq.md "Prior KL"), 0 is the paper's
    bare KL, which collapsed the hard code usage in benchmarks/results/regvq_tokenizer.md.
    """

    weight: float = Field(0.1, ge=0)
    entropy_weight: float = Field(1.0, ge=0)


class PriorKL(Regularizer):
    """Prior distribution regularization: KL(batch-averaged soft token distribution || uniform)
    (+ ``entropy_weight`` x mean per-position entropy)."""

    Config = PriorKLConfig
    stage: ClassVar = "tokenizer"

    def __init__(self, config: PriorKLConfig | None = None):
        super().__init__()
        self.config = config or PriorKLConfig()

    def forward(self, probs: torch.Tensor | None = None, logits: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if probs is None:
            if logits is None:
                raise TypeError("prior-kl needs 'probs' or 'logits' ('b h w k')")
            probs = logits.float().softmax(-1)
        kl = prior_kl(probs)
        if self.config.entropy_weight > 0:
            kl = kl + self.config.entropy_weight * mean_entropy(probs)
        return kl


class StochasticMaskConfig(ComponentConfig):
    """``ratio``: probability that a position feeds the decoder its Gumbel-sampled code (paper best: 0.4).
    ``tau_*``: Gumbel-softmax temperature, annealed geometrically from ``tau_start`` to ``tau_end`` over
    ``tau_anneal_steps`` tokenizer steps (0: fixed ``tau_start``)."""

    ratio: float = Field(0.4, ge=0, le=1)
    tau_start: float = Field(1.0, gt=0)
    tau_end: float = Field(1.0 / 16, gt=0)
    tau_anneal_steps: int = Field(0, ge=0)


class StochasticMask(Regularizer):
    """Stochastic mask regularization: Bernoulli(ratio) positions use Gumbel-sampled codes, others argmax."""

    Config = StochasticMaskConfig
    stage: ClassVar = "tokenizer"

    def __init__(self, config: StochasticMaskConfig | None = None):
        super().__init__()
        self.config = config or StochasticMaskConfig()

    def sample_mask(self, shape: tuple[int, ...], *, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``"b h w"`` bool, True = stochastic."""
        return bernoulli_mask(shape, self.config.ratio, device=device, generator=generator)

    @staticmethod
    def mix(deterministic: torch.Tensor, stochastic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mix_by_mask(deterministic, stochastic, mask)

    def temperature(self, step: int) -> float:
        c = self.config
        return gumbel_temperature(step, c.tau_start, c.tau_end, c.tau_anneal_steps)

    def perturb(self, *, logits: torch.Tensor, z_q: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor,
                step: int) -> dict[str, torch.Tensor] | None:
        """C.3: ``z_q' = z_q (1 - M) + onehot_gumbel(logits) E M`` with ``M ~ Bernoulli(ratio)`` per position;
        ``logits "b h w k"``, ``z_q "b h w d"``, ``codes "b h w"``, ``codebook "k d"``."""
        if self.config.ratio <= 0:
            return None
        onehot, sampled = gumbel_softmax_st(logits.float(), self.temperature(step))
        z_sto = torch.einsum("bhwk,kd->bhwd", onehot, codebook.float()).to(z_q.dtype)
        mask = self.sample_mask(tuple(codes.shape), device=codes.device)
        return {"z_q": self.mix(z_q, z_sto, mask), "codes": torch.where(mask, sampled, codes), "mask": mask}

    def forward(self, **tensors: Any) -> torch.Tensor:
        # the regularization is the perturbed reconstruction path itself; no extra loss term
        ref = next((t for t in tensors.values() if isinstance(t, torch.Tensor)), None)
        return torch.zeros((), device=None if ref is None else ref.device)


class ContrastiveConfig(ComponentConfig):
    """Patch-wise contrastive loss between input and reconstruction features (C.4).

    ``probabilistic``: weight positives by ``||z_sampled - z_best||^2`` (PCL) instead of uniformly (CL).
    ``form``: how the weight enters, see :func:`dlbench_regvq.losses.patch_nce`.
    ``extractor``: a registered ``feature_extractor`` with a ``feature_maps`` method
    (default: the frozen FID-Inception stem); ``encoder`` uses the tokenizer's own encoder instead.
    """

    weight: float = Field(0.1, ge=0)
    tau: float = Field(0.07, gt=0)
    num_patches: int = Field(64, ge=2)
    probabilistic: bool = True
    form: Literal["weighted-sum", "in-log"] = "weighted-sum"
    extractor: str = "inception-early"
    extractor_params: dict[str, Any] = Field(default_factory=dict)


def _build_extractor(name: str, params: dict[str, Any]):
    """The feature extractor ``name`` from the registry (this plugin's ``inception-early`` is no special case)."""
    from dlbench.plugins import get_registry

    ext = get_registry().get("feature_extractor", name).build(params)
    if not callable(getattr(ext, "feature_maps", None)):
        raise TypeError(f"feature_extractor/{name} has no feature_maps(images) method (spatial maps for PCL)")
    return ext


class ProbabilisticContrastive(Regularizer):
    """Probabilistic contrastive loss: PatchNCE on frozen features, positives weighted by sampling error."""

    Config = ContrastiveConfig
    stage: ClassVar = "tokenizer"

    def __init__(self, config: ContrastiveConfig | None = None):
        super().__init__()
        self.config = config or ContrastiveConfig()
        self.source = "unresolved"  # which features were used: extractor name or "encoder"

    def _resolve(self, encoder: Callable[[torch.Tensor], torch.Tensor] | None):
        """The feature-map function; the extractor is built once, the encoder fallback per call (it is the
        caller's live module, so copies of the tokenizer, e.g. EMA, use their own encoder)."""
        if self.source == "unresolved" and self.config.extractor != "encoder":
            try:
                self.__dict__["_extractor"] = _build_extractor(self.config.extractor, self.config.extractor_params)
                self.source = self.config.extractor
            except Exception as exc:  # noqa: BLE001 - documented fallback
                if encoder is None:
                    raise
                warnings.warn(
                    f"probabilistic-contrastive: feature extractor {self.config.extractor!r} unavailable "
                    f"({exc}); falling back to the tokenizer encoder's features",
                    stacklevel=3,
                )
                self.source = "encoder"
        if self.config.extractor == "encoder":
            self.source = "encoder"
        if self.source == "encoder":
            if encoder is None:
                raise TypeError("probabilistic-contrastive with encoder features needs the 'encoder' keyword")
            return lambda x: [encoder(x)]
        return self.__dict__["_extractor"].feature_maps

    def forward(
        self,
        images: torch.Tensor | None = None,
        recon: torch.Tensor | None = None,
        z_sampled: torch.Tensor | None = None,
        z_best: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if images is None or recon is None:
            raise TypeError("probabilistic-contrastive needs 'images' and 'recon' ('b c H W')")
        feature_maps = self._resolve(encoder)
        with torch.no_grad():
            real = feature_maps(images)
        fake = feature_maps(recon)
        weights_grid = None
        if self.config.probabilistic:
            if z_sampled is None or z_best is None:
                raise TypeError("probabilistic-contrastive needs 'z_sampled' and 'z_best' ('b h w d')")
            weights_grid = pcl_weights(z_sampled, z_best)  # "b h w"
        total = recon.new_zeros(())
        for fr, ff in zip(real, fake):
            b, _, fh, fw = ff.shape
            loc = sample_patch_locations(fh, fw, self.config.num_patches, b, device=ff.device, generator=generator)
            q, k = gather_patches(ff, loc), gather_patches(fr.detach(), loc)
            w = None
            if weights_grid is not None:
                h, wd = weights_grid.shape[1:]
                tok = locations_to_tokens(loc, (fh, fw), (h, wd))
                w = weights_grid.flatten(1).gather(1, tok)
                # renormalise over the sampled locations so each image's weights sum to 1 (or stay 0)
                w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
            total = total + patch_nce(q, k, tau=self.config.tau, weights=w, form=self.config.form)
        return total / len(fake)
