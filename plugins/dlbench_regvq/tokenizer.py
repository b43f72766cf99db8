"""``tokenizer/regvq``: the Regularized VQ tokenizer (METHODS.md C) on dlbench's conv VQ autoencoder.

Reuses :class:`dlbench.nn.vqvae.VQVAE` (encoder, decoder, codebook, ``encode``/``decode``, dead-code
restarts, its regularizer hook list) and replaces the training objective with Reg-VQ's:

- per-position distribution over the K codes, ``softmax(logits)`` with distance logits
  ``-||z_e - e_k||^2 / (T * sg(std_k ||z_e - e_k||^2))`` (temperature tied to the distance spread;
  ``logits="fixed"``: ``-s ||z_e - e_k||^2``);
- deterministic path: the nearest code (= argmax), with the VQ-VAE straight-through estimator
  (``estimator="vq-st"``) or Algorithm 1's softmax straight-through (``"softmax-st"``);
- stochastic mask (C.3): Bernoulli(ratio) positions take a Gumbel-sampled code (Gumbel-softmax ST,
  temperature annealed geometrically from ``tau_start`` to ``tau_end``);
- prior KL (C.2) on the batch-averaged soft distribution (+ mean per-position entropy,
  ``prior.entropy_weight``), and the (probabilistic) contrastive loss (C.4) between input and
  reconstruction features.

``encode`` stays deterministic (argmax). With every regularizer disabled and ``estimator="vq-st"``
the objective is exactly ``tokenizer/vqvae``'s (tested).

Ablation variants (registered tokenizer names, paper order, METHODS.md C.5):
``regvq-vq`` -> ``regvq-prior`` -> ``regvq-prior-mask`` -> ``regvq-prior-mask-cl`` -> ``regvq`` (+PCL),
plus ``regvq-gumbel`` (every position stochastic, no prior: Gumbel-VQ).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, create_model

from dlbench.nn.vqvae import VQVAE, TokenizerConfigError, VQVAEConfig

from .quantize import (
    adaptive_distance_logits,
    distance_logits,
    gumbel_softmax_st,
    gumbel_temperature,
    squared_distances,
    st_argmax,
)
from .regularizers import (
    ContrastiveConfig,
    PriorKL,
    PriorKLConfig,
    ProbabilisticContrastive,
    StochasticMask,
    StochasticMaskConfig,
)

__all__ = ["RegVQConfig", "RegVQTokenizer", "ABLATIONS", "VARIANT_CONFIGS"]


class RegVQConfig(VQVAEConfig):
    """Reg-VQ tokenizer options (defaults = full Reg-VQ; disable a part with weight/ratio 0).

    ``logits``: how the per-position distribution over codes is formed (docs/methods/regvq.md, "Logits"):
    ``"adaptive"`` (default) ``-||z_e - e_k||^2 / (logit_temperature * sg(std_k ||z_e - e_k||^2))``;
    ``"fixed"`` ``-logit_scale * ||z_e - e_k||^2`` (Gumbel-VQ style; flat at the codebook init unless
    ``logit_scale`` is ~1e3 or more). ``tau_*``: Gumbel-softmax temperature
    schedule (``tau_anneal_steps = 0``: fixed ``tau_start``); ``prior``, ``mask``, ``contrastive``:
    the configs of ``regularizer/prior-kl``, ``regularizer/stochastic-mask``,
    ``regularizer/probabilistic-contrastive``.
    """

    recon_loss: Literal["l1", "mse"] = "l1"  # C.3's reconstruction term is L1
    estimator: Literal["vq-st", "softmax-st"] = "vq-st"
    logits: Literal["adaptive", "fixed"] = "adaptive"
    logit_temperature: float = Field(0.25, gt=0)  # adaptive: logits have std 1/T over the codes
    logit_scale: float = Field(1.0, gt=0)  # fixed only
    tau_start: float = Field(1.0, gt=0)
    tau_end: float = Field(1.0 / 16, gt=0)
    tau_anneal_steps: int = Field(0, ge=0)
    prior: PriorKLConfig = Field(default_factory=PriorKLConfig)
    mask: StochasticMaskConfig = Field(default_factory=StochasticMaskConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)


class RegVQTokenizer(VQVAE):
    """Regularized VQ tokenizer: prior KL + stochastic mask + probabilistic contrastive loss (Reg-VQ)."""

    Config = RegVQConfig

    def __init__(self, config: RegVQConfig, *, channels: int = 3, resolution: int = 32):
        if config.quantizer != "straight-through":
            raise TokenizerConfigError(
                f"tokenizer regvq: quantizer={config.quantizer!r} is not supported; Reg-VQ trains the codebook by "
                "gradient (set quantizer='straight-through')"
            )
        super().__init__(config, channels=channels, resolution=resolution)
        self.prior_reg = PriorKL(config.prior) if config.prior.weight > 0 else None
        self.mask_reg = StochasticMask(config.mask) if config.mask.ratio > 0 else None
        self.contrastive_reg = None
        if config.contrastive.weight > 0:
            self.contrastive_reg = ProbabilisticContrastive(config.contrastive)

    def temperature(self) -> float:
        c = self.config
        return gumbel_temperature(int(self.train_steps), c.tau_start, c.tau_end, c.tau_anneal_steps)

    def code_logits(self, z_e: torch.Tensor) -> torch.Tensor:
        """Per-position logits over the codes: ``"b h w d" -> "b h w k"`` (float32; see ``RegVQConfig.logits``)."""
        c, E = self.config, self.embedding.float()
        if c.logits == "adaptive":
            return adaptive_distance_logits(z_e.float(), E, c.logit_temperature)
        return distance_logits(z_e.float(), E, c.logit_scale)

    def quantize_probabilistic(self, z_e: torch.Tensor, *, stochastic: bool) -> dict[str, torch.Tensor]:
        """Reg-VQ quantization of ``z_e "b h w d"`` (Algorithm 1).

        Returns ``logits, probs "b h w k"``, ``best, codes "b h w"`` (argmax / codes fed to the decoder),
        ``mask "b h w"`` (True = stochastic), ``z_best, z_sampled`` (code vectors of ``best``/``codes``)
        and ``z_q "b h w d"`` (decoder input, straight-through), plus the VQ terms ``commit``, ``codebook``.
        """
        E = self.embedding
        logits = self.code_logits(z_e)
        best = logits.argmax(-1)
        z_best = F.embedding(best, E)
        if self.config.estimator == "vq-st":
            z_det = z_e + (z_best - z_e).detach()  # VQ-VAE Eq. 3
        else:
            z_det = torch.einsum("bhwk,kd->bhwd", st_argmax(logits), E)
        out = {
            "logits": logits, "probs": logits.softmax(-1), "best": best, "z_best": z_best,
            "commit": F.mse_loss(z_e, z_best.detach()), "codebook": F.mse_loss(z_best, z_e.detach()),
        }
        if stochastic and self.mask_reg is not None:
            onehot, sampled = gumbel_softmax_st(logits, self.temperature())
            z_sto = torch.einsum("bhwk,kd->bhwd", onehot, E)
            mask = self.mask_reg.sample_mask(tuple(best.shape), device=best.device)
            out["z_q"] = self.mask_reg.mix(z_det, z_sto, mask)
            out["codes"] = torch.where(mask, sampled, best)
            out["mask"] = mask
        else:
            out["z_q"], out["codes"], out["mask"] = z_det, best, torch.zeros_like(best, dtype=torch.bool)
        out["z_sampled"] = F.embedding(out["codes"], E)
        return out

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + codebook + beta*commit + w_prior*KL + w_cl*PCL (+ hook-list regularizers)``."""
        c = self.config
        z_e = rearrange(self.encoder(images), "b d h w -> b h w d")
        q = self.quantize_probabilistic(z_e, stochastic=self.training)
        recon = self.decoder(rearrange(q["z_q"], "b h w d -> b d h w"))
        rec = (recon - images).abs().mean() if c.recon_loss == "l1" else F.mse_loss(recon, images)
        terms: dict[str, torch.Tensor] = {"recon": rec, "commit": q["commit"], "codebook": q["codebook"]}
        loss = rec + q["codebook"] + c.beta * q["commit"]
        if self.prior_reg is not None:
            terms["prior_kl"] = self.prior_reg(probs=q["probs"])
            loss = loss + c.prior.weight * terms["prior_kl"]
        if self.contrastive_reg is not None:
            name = "pcl" if c.contrastive.probabilistic else "contrastive"
            terms[name] = self.contrastive_reg(
                images=images, recon=recon, z_sampled=q["z_sampled"], z_best=q["z_best"], encoder=self.encoder
            )
            loss = loss + c.contrastive.weight * terms[name]
        tensors = dict(
            logits=q["logits"], distances=squared_distances(z_e.float(), self.embedding.float()), probs=q["probs"],
            z_e=z_e, z_q=q["z_q"], codes=q["best"], images=images, recon=recon,
            rec_loss=rec, encoder_last_layer=self.encoder[-1].weight,
        )
        for name, weight, module in self.regularizers:  # hook list of the base autoencoder (e.g. VF alignment)
            terms[name] = module(**tensors)
            loss = loss + weight * terms[name]
        if self.training:
            terms["restarted_codes"] = torch.tensor(float(self._restart_dead_codes(z_e.detach(), q["best"])))
        with torch.no_grad():
            p = q["probs"].reshape(-1, q["probs"].shape[-1]).mean(0)
            terms["soft_perplexity"] = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())
            terms["mean_entropy"] = -(q["probs"] * q["probs"].clamp_min(1e-12).log()).sum(-1).mean()
            counts = torch.bincount(q["best"].reshape(-1), minlength=self.codebook_size).float()
            pe = counts / counts.sum()
            terms["perplexity"] = torch.exp(-(pe * pe.clamp_min(1e-12).log()).sum())
            terms["mask_frac"] = q["mask"].float().mean()
            terms["tau"] = torch.tensor(self.temperature())
        return loss, terms


# ---------------------------------------------------------------------------------------------
# Ablation variants (METHODS.md C.5 order)
# ---------------------------------------------------------------------------------------------

_OFF = {"prior": {"weight": 0.0}, "mask": {"ratio": 0.0}, "contrastive": {"weight": 0.0}}

#: registered tokenizer name -> (overrides of RegVQConfig's defaults, description), in paper order
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "regvq-vq": (dict(_OFF), "Reg-VQ ablation row 1: plain VQ (argmax + commitment), no regularizer"),
    "regvq-prior": ({**_OFF, "prior": {"weight": 0.1}}, "Reg-VQ ablation row 2: VQ + prior KL"),
    "regvq-prior-mask": (
        {**_OFF, "prior": {"weight": 0.1}, "mask": {"ratio": 0.4}},
        "Reg-VQ ablation row 3: + stochastic mask (ratio 0.4)",
    ),
    "regvq-prior-mask-cl": (
        {"prior": {"weight": 0.1}, "mask": {"ratio": 0.4}, "contrastive": {"weight": 0.1, "probabilistic": False}},
        "Reg-VQ ablation row 4: + plain patch contrastive loss",
    ),
    # row 5 (+ probabilistic weights) is ``regvq`` itself (RegVQConfig defaults)
    "regvq-gumbel": ({**_OFF, "mask": {"ratio": 1.0}}, "Gumbel-VQ: every position stochastic, no prior"),
}

_NESTED = {"prior": PriorKLConfig, "mask": StochasticMaskConfig, "contrastive": ContrastiveConfig}


def _variant_config(name: str, overrides: dict[str, Any]) -> type[RegVQConfig]:
    fields: dict[str, Any] = {}
    for key, value in overrides.items():
        cls = _NESTED[key]
        fields[key] = (cls, Field(default_factory=lambda cls=cls, value=value: cls(**value)))
    title = "".join(part.capitalize() for part in name.split("-")) + "Config"
    model = create_model(title, __base__=RegVQConfig, **fields)
    model.__doc__ = f"{ABLATIONS[name][1]} (RegVQConfig with other defaults)."
    return model


VARIANT_CONFIGS: dict[str, type[RegVQConfig]] = {n: _variant_config(n, o) for n, (o, _) in ABLATIONS.items()}
