"""``tokenizer/regvq``: the Regularized VQ tokenizer (METHODS.md C) on dlbench's conv VQ autoencoder.

Reuses :class:`dlbench.nn.vqvae.VQVAE` (encoder, decoder, codebook, ``encode``/``decode``, dead-code
restarts, its regularizer hook list) and changes the quantizer to Reg-VQ's probabilistic one:

- per-position distribution over the K codes, ``softmax(logits)`` with distance logits
  ``-||z_e - e_k||^2 / (T * sg(std_k ||z_e - e_k||^2))`` (temperature tied to the distance spread;
  ``logits="fixed"``: ``-s ||z_e - e_k||^2``); these are the ``logits`` its regularizers see;
- deterministic path: the nearest code (= argmax), with the VQ-VAE straight-through estimator
  (``estimator="vq-st"``) or Algorithm 1's softmax straight-through (``"softmax-st"``).

The Reg-VQ regularizers are components composed from the run config, not part of this class:
``tokenizer.regularizers = [prior-kl (C.2), stochastic-mask (C.3), probabilistic-contrastive (C.4)]``
(``method/regvq``'s presets set all three). Each attaches through ``add_regularizer``; the stochastic
mask replaces the decoder input through its ``perturb`` step. The paper's ablation rows are
:data:`ABLATION_ROWS` (``--set tokenizer.regularizers=...``; docs/methods/regvq.md).

``encode`` stays deterministic (argmax). Without regularizers and with ``estimator="vq-st"`` the objective
is exactly ``tokenizer/vqvae``'s (tested).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, model_validator

from dlbench.nn.vqvae import VQVAE, TokenizerConfigError, VQVAEConfig

from .quantize import (
    adaptive_distance_logits,
    distance_logits,
    squared_distances,
    st_argmax,
)
__all__ = ["ABLATION_ROWS", "RegVQConfig", "RegVQTokenizer"]


class RegVQConfig(VQVAEConfig):
    """Reg-VQ quantizer options (its regularizers are ``tokenizer.regularizers`` of the run config).

    ``logits``: how the per-position distribution over codes is formed (docs/methods/regvq.md, "Logits"):
    ``"adaptive"`` (default) ``-||z_e - e_k||^2 / (logit_temperature * sg(std_k ||z_e - e_k||^2))``;
    ``"fixed"`` ``-logit_scale * ||z_e - e_k||^2`` (Gumbel-VQ style; flat at the codebook init unless
    ``logit_scale`` is ~1e3 or more).
    """

    recon_loss: Literal["l1", "mse"] = "l1"  # C.3's reconstruction term is L1
    estimator: Literal["vq-st", "softmax-st"] = "vq-st"
    logits: Literal["adaptive", "fixed"] = "adaptive"
    logit_temperature: float = Field(0.25, gt=0)  # adaptive: logits have std 1/T over the codes
    logit_scale: float = Field(1.0, gt=0)  # fixed only

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        moved = sorted(set(data) & {"prior", "mask", "contrastive", "tau_start", "tau_end", "tau_anneal_steps"}) \
            if isinstance(data, dict) else []
        if moved:
            raise ValueError(
                f"{', '.join(moved)}: the Reg-VQ regularizers are now components of tokenizer.regularizers, e.g. "
                "--set tokenizer.regularizers='[{\"name\":\"prior-kl\",\"params\":{\"weight\":0.1}},"
                "{\"name\":\"stochastic-mask\",\"params\":{\"ratio\":0.4,\"tau_anneal_steps\":3000}}]' "
                "(docs/methods/regvq.md)"
            )
        return data


class RegVQTokenizer(VQVAE):
    """Regularized VQ tokenizer: probabilistic distance logits; regularizers composed by the run config."""

    Config = RegVQConfig

    def __init__(self, config: RegVQConfig, *, channels: int = 3, resolution: int = 32):
        if config.quantizer != "straight-through":
            raise TokenizerConfigError(
                f"tokenizer regvq: quantizer={config.quantizer!r} is not supported; Reg-VQ trains the codebook by "
                "gradient (set quantizer='straight-through')"
            )
        super().__init__(config, channels=channels, resolution=resolution)

    def code_logits(self, z_e: torch.Tensor) -> torch.Tensor:
        """Per-position logits over the codes: ``"b h w d" -> "b h w k"`` (float32; see ``RegVQConfig.logits``)."""
        c, E = self.config, self.embedding.float()
        if c.logits == "adaptive":
            return adaptive_distance_logits(z_e.float(), E, c.logit_temperature)
        return distance_logits(z_e.float(), E, c.logit_scale)

    def quantize_probabilistic(self, z_e: torch.Tensor, *, stochastic: bool) -> dict[str, torch.Tensor]:
        """Reg-VQ quantization of ``z_e "b h w d"`` (Algorithm 1).

        Returns ``logits, probs "b h w k"``, ``best, codes "b h w"`` (argmax / codes fed to the decoder),
        ``mask "b h w"`` (True = changed by a regularizer's ``perturb``, e.g. the stochastic mask),
        ``z_best, z_sampled`` (code vectors of ``best``/``codes``) and ``z_q "b h w d"`` (decoder input,
        straight-through), plus the VQ terms ``commit``, ``codebook``.
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
        if stochastic:
            out["z_q"], out["codes"], out["mask"] = self.perturb_decoder_input(logits, z_det, best)
        else:
            out["z_q"], out["codes"], out["mask"] = z_det, best, torch.zeros_like(best, dtype=torch.bool)
        out["z_sampled"] = F.embedding(out["codes"], E)
        return out

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + codebook + beta*commit + sum_r weight_r * reg_r`` (the attached regularizers)."""
        c = self.config
        z_e = rearrange(self.encoder(images), "b d h w -> b h w d")
        q = self.quantize_probabilistic(z_e, stochastic=self.training)
        recon = self.decoder(rearrange(q["z_q"], "b h w d -> b d h w"))
        rec = (recon - images).abs().mean() if c.recon_loss == "l1" else F.mse_loss(recon, images)
        terms: dict[str, torch.Tensor] = {"recon": rec, "commit": q["commit"], "codebook": q["codebook"]}
        loss = rec + q["codebook"] + c.beta * q["commit"]
        tensors = dict(
            logits=q["logits"], distances=squared_distances(z_e.float(), self.embedding.float()), probs=q["probs"],
            z_q=q["z_q"], codes=q["best"], z_best=q["z_best"], z_sampled=q["z_sampled"],
        )
        loss = self.add_regularizer_terms(loss, terms, tensors, z_e=z_e, images=images, recon=recon, rec=rec)
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
        return loss, terms


# ---------------------------------------------------------------------------------------------
# Ablation rows (METHODS.md C.5 order) as tokenizer.regularizers of tokenizer/regvq
# ---------------------------------------------------------------------------------------------

_PRIOR, _MASK, _PCL = {"name": "prior-kl"}, {"name": "stochastic-mask"}, {"name": "probabilistic-contrastive"}

#: row -> ``tokenizer.regularizers`` (component defaults: prior weight 0.1, mask ratio 0.4, contrastive weight 0.1);
#: run a row with ``--tokenizer regvq --set tokenizer.regularizers='<the list as JSON>'``
ABLATION_ROWS: dict[str, list[dict[str, Any]]] = {
    "vq": [],  # row 1: plain VQ (argmax + commitment)
    "prior": [_PRIOR],  # row 2: + prior KL
    "prior-mask": [_PRIOR, _MASK],  # row 3: + stochastic mask (ratio 0.4)
    "prior-mask-cl": [_PRIOR, _MASK, {**_PCL, "params": {"probabilistic": False}}],  # row 4: + plain patch CL
    "regvq": [_PRIOR, _MASK, _PCL],  # row 5: + probabilistic weights (full Reg-VQ)
    "gumbel": [{**_MASK, "params": {"ratio": 1.0}}],  # Gumbel-VQ: every position stochastic, no prior
}
