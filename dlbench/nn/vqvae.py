"""Convolutional VQ autoencoder tokenizer (VQ-VAE, van den Oord et al. 2017), registered as ``tokenizer/vqvae``.

Images ``"b c H W"`` in [-1, 1] -> encoder -> ``z_e "b d h w"`` -> nearest code -> ``codes "b h w"``
-> ``z_q`` -> decoder -> reconstruction. Two quantizers:

- ``straight-through``: codebook loss ``||sg(z_e) - z_q||^2`` + ``beta ||z_e - sg(z_q)||^2`` and the
  straight-through gradient ``z_e + sg(z_q - z_e)`` (VQ-VAE Eq. 3);
- ``ema``: the codebook is an exponential moving average of the encoder outputs assigned to each code
  (VQ-VAE Appendix A.1, Laplace-smoothed counts); only the commitment term is a loss.

Optional dead-code restart: every ``restart_every`` training steps, codes used fewer than
``restart_threshold`` times since the last restart are re-seeded from random encoder outputs of the
current batch (as in Jukebox / vector-quantize-pytorch ``kmeans``-free restarts).

Regularizers (METHODS.md C: prior KL, stochastic mask, PCL; D: VF alignment) attach through
:meth:`VQVAE.add_regularizer` (the runner adds those of ``tokenizer.regularizers``): a list of
``(name, weight, module)``. In training, each module's ``perturb`` may replace the decoder input (the
stochastic mask), then each is called with the keyword tensors listed on
:class:`dlbench.interfaces.Regularizer` (``logits = code_logits(z_e)``, here ``-distances``; also
``rec_loss``, the scalar reconstruction loss with its graph, and ``encoder_last_layer``, the weight of the
conv that outputs ``z_e``, where VF alignment's adaptive weight takes gradients) and returns a
scalar, added as ``weight * value`` and logged under ``name``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import nn

from dlbench.interfaces import ComponentConfig, Regularizer, Tokenizer
from dlbench.registry import DlbenchError


class TokenizerConfigError(DlbenchError, ValueError):
    pass


class VQVAEConfig(ComponentConfig):
    """Options of the conv VQ autoencoder (defaults: f4 on 32x32 -> 8x8 tokens, K=256, d=32)."""

    downsample: int = Field(4, ge=1)
    channels: int = Field(32, ge=1)
    res_blocks: int = Field(1, ge=0)
    codebook_size: int = Field(256, ge=2, description="codes in the codebook (one code carries no information)")
    code_dim: int = Field(32, ge=1)
    quantizer: Literal["straight-through", "ema"] = "straight-through"
    beta: float = Field(0.25, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    ema_eps: float = Field(1e-5, gt=0)
    restart_every: int = Field(250, ge=0, description="steps between dead-code restarts; 0 turns them off")
    restart_threshold: float = Field(1.0, ge=0)
    recon_loss: Literal["l1", "mse"] = "mse"


# ---------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------


def code_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``"b h w d", "k d" -> "b h w k"`` (expanded form, float32)."""
    z = z.float()
    codebook = codebook.float()
    return (
        z.pow(2).sum(-1, keepdim=True)
        - 2 * torch.einsum("bhwd,kd->bhwk", z, codebook)
        + codebook.pow(2).sum(-1)
    ).clamp_min(0)


@torch.no_grad()
def ema_codebook_update(weight: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor,
                        z_e: torch.Tensor, codes: torch.Tensor, decay: float, eps: float) -> None:
    """EMA codebook update in place (VQ-VAE App. A.1): N_k <- g N_k + (1-g) n_k, m_k <- g m_k + (1-g) sum z,
    e_k = m_k / N~_k with Laplace-smoothed N~_k. ``weight "k d"``, ``z_e "... d"``, ``codes "..."``;
    statistics are summed across ranks under DDP. Shared by the VQ-VAE and the VQGAN."""
    k = weight.shape[0]
    onehot = F.one_hot(codes.reshape(-1), k).float()  # "(b h w) k"
    counts = onehot.sum(0)
    sums = onehot.t() @ z_e.reshape(-1, z_e.shape[-1]).float()  # "k d"
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
        dist.all_reduce(sums)
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    weight.copy_(embed_sum / smoothed[:, None])


def perplexity(codes: torch.Tensor, k: int) -> torch.Tensor:
    """``exp(H(p))`` of the empirical code distribution of ``codes`` (any shape); K means uniform use."""
    p = torch.bincount(codes.reshape(-1), minlength=k).float()
    p = p / p.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


@dataclass
class QuantizeOutput:
    """What the quantizer produced (channels-last tensors)."""

    z_q: torch.Tensor  # "b h w d", straight-through in training
    codes: torch.Tensor  # "b h w" long
    distances: torch.Tensor  # "b h w k"
    loss_terms: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


def _encoder(in_ch: int, ch: int, levels: int, res_blocks: int, code_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, ch, 3, padding=1)]
    for _ in range(levels):
        layers += [ResBlock(ch) for _ in range(res_blocks)]
        layers.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))
    layers += [ResBlock(ch) for _ in range(res_blocks)]
    layers += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(out_ch: int, ch: int, levels: int, res_blocks: int, code_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(code_dim, ch, 3, padding=1)]
    layers += [ResBlock(ch) for _ in range(res_blocks)]
    for _ in range(levels):
        layers.append(nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))
        layers += [ResBlock(ch) for _ in range(res_blocks)]
    layers += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class VQVAE(Tokenizer):
    """Conv VQ autoencoder tokenizer: f-times downsampling to a grid of K codes of dimension d."""

    Config = VQVAEConfig

    def __init__(self, config: VQVAEConfig, *, channels: int = 3, resolution: int = 32):
        super().__init__()
        f = config.downsample
        if f < 1 or f & (f - 1):
            raise TokenizerConfigError(f"tokenizer downsample must be a power of 2 (1, 2, 4, 8...), got {f}")
        if resolution % f:
            raise TokenizerConfigError(
                f"image resolution {resolution} is not divisible by tokenizer downsample {f}"
            )
        self.config, self.channels, self.resolution = config, channels, resolution
        self.codebook_size = config.codebook_size
        levels = int(math.log2(f))
        self.encoder = _encoder(channels, config.channels, levels, config.res_blocks, config.code_dim)
        self.decoder = _decoder(channels, config.channels, levels, config.res_blocks, config.code_dim)
        k, d = config.codebook_size, config.code_dim
        embedding = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if config.quantizer == "ema":
            self.embedding = nn.Parameter(embedding, requires_grad=False)
            self.register_buffer("ema_cluster_size", torch.zeros(k))
            self.register_buffer("ema_embed_sum", embedding.clone())
        else:
            self.embedding = nn.Parameter(embedding)
        self.register_buffer("usage", torch.zeros(k))  # code counts since the last restart
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.regularizers: list[tuple[str, float, nn.Module]] = []
        self._regularizer_modules = nn.ModuleList()  # so regularizer parameters train and checkpoint

    # -- Tokenizer interface -------------------------------------------------------------------
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        f = self.config.downsample
        if height % f or width % f:
            raise TokenizerConfigError(f"image size {height}x{width} is not divisible by downsample {f}")
        return height // f, width // f

    def codebook(self) -> torch.Tensor:
        return self.embedding.detach()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z_e = rearrange(self.encoder(images), "b d h w -> b h w d")
        return code_distances(z_e, self.embedding).argmin(-1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        z_q = F.embedding(tokens, self.embedding)
        return self.decoder(rearrange(z_q, "b h w d -> b d h w")).clamp(-1, 1)

    @property
    def latent_channels(self) -> int:
        """``d`` of the pre-quantization latent ``z_e "b h w d"`` (what a regularizer's ``bind`` receives)."""
        return int(self.embedding.shape[-1])

    def add_regularizer_terms(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], tensors: dict[str, Any], *,
                              z_e: torch.Tensor, images: torch.Tensor, recon: torch.Tensor,
                              rec: torch.Tensor) -> torch.Tensor:
        """``loss`` plus each attached regularizer's ``weight * value`` (logged in ``terms`` under its name).
        ``tensors``: the quantizer's keywords; the ones every VQ autoencoder shares are added here."""
        tensors = {**tensors, "z_e": z_e, "images": images, "recon": recon, "encoder": self.encoder,
                   "step": int(self.train_steps), "rec_loss": rec, "encoder_last_layer": self.encoder[-1].weight}
        weights = {name: weight for name, weight, _ in self.regularizers}
        for name, value in self.regularizer_terms(tensors).items():
            terms[name] = value
            loss = loss + weights[name] * value
        return loss

    def add_regularizer(self, name: str, weight: float, module: nn.Module) -> None:
        """Attach a loss term to :meth:`training_loss` (see module docstring for its keywords)."""
        if any(n == name for n, _, _ in self.regularizers):
            raise TokenizerConfigError(f"tokenizer regularizer {name!r} added twice")
        self.regularizers.append((name, float(weight), module))
        self._regularizer_modules.append(module)

    # -- quantization --------------------------------------------------------------------------
    def quantize(self, z_e: torch.Tensor) -> QuantizeOutput:
        """Nearest-code quantization of ``z_e "b h w d"``; subclasses may override (e.g. stochastic)."""
        distances = code_distances(z_e, self.embedding)
        codes = distances.argmin(-1)
        z_q = F.embedding(codes, self.embedding).to(z_e.dtype)
        terms = {"commit": F.mse_loss(z_e, z_q.detach())}
        if self.config.quantizer == "straight-through":
            terms["codebook"] = F.mse_loss(z_q, z_e.detach())
        elif self.training:
            self._ema_update(z_e.detach(), codes)
            z_q = F.embedding(codes, self.embedding).to(z_e.dtype)
        z_q = z_e + (z_q - z_e).detach()  # straight-through gradient (VQ-VAE Eq. 3)
        return QuantizeOutput(z_q=z_q, codes=codes, distances=distances, loss_terms=terms)

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA codebook update (VQ-VAE App. A.1): N_k <- g N_k + (1-g) n_k, m_k <- g m_k + (1-g) sum z,
        e_k = m_k / N~_k with Laplace-smoothed N~_k. Statistics are summed across ranks under DDP."""
        ema_codebook_update(self.embedding.data, self.ema_cluster_size, self.ema_embed_sum, z_e, codes,
                            self.config.ema_decay, self.config.ema_eps)

    @torch.no_grad()
    def _restart_dead_codes(self, z_e: torch.Tensor, codes: torch.Tensor) -> int:
        """Re-seed codes used < threshold times since the last restart with random encoder outputs.
        Returns how many were restarted. Rank 0 chooses; the choice is broadcast under DDP."""
        counts = torch.bincount(codes.reshape(-1), minlength=self.codebook_size).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.usage.add_(counts)
        self.train_steps.add_(1)
        every = self.config.restart_every
        if every <= 0 or int(self.train_steps) % every:
            return 0
        dead = self.usage < self.config.restart_threshold
        flat = z_e.reshape(-1, z_e.shape[-1]).float()
        pick = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        candidates = flat[pick]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(candidates, src=0)
        self.embedding.data[dead] = candidates[dead]
        if self.config.quantizer == "ema":
            self.ema_embed_sum[dead] = candidates[dead]
            self.ema_cluster_size[dead] = 1.0
        self.usage.zero_()
        return int(dead.sum())

    def code_logits(self, z_e: torch.Tensor) -> torch.Tensor:
        """Per-position logits over the codes, ``"b h w d" -> "b h w k"``: ``-||z_e - e_k||^2`` (argmax = the
        nearest code). What regularizers read as ``logits`` and what the stochastic mask samples from."""
        return -code_distances(z_e, self.embedding)

    def perturb_decoder_input(self, logits: torch.Tensor, z_q: torch.Tensor, codes: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training only: let each regularizer's ``perturb`` replace the decoder input in turn.
        Returns ``(z_q, codes fed to the decoder, mask "b h w" of changed positions)``."""
        mask = torch.zeros_like(codes, dtype=torch.bool)
        if not self.training:
            return z_q, codes, mask
        for _, _, module in self.regularizers:
            if not isinstance(module, Regularizer):
                continue  # a plain loss module (structural interface) has no perturb step
            out = module.perturb(logits=logits, z_q=z_q, codes=codes, codebook=self.embedding,
                                 step=int(self.train_steps))
            if out is not None:
                z_q, codes, mask = out["z_q"], out["codes"], mask | out["mask"]
        return z_q, codes, mask

    def regularizer_terms(self, tensors: dict) -> dict[str, torch.Tensor]:
        """``{name: value}`` of every attached regularizer on the keyword tensors (unweighted)."""
        return {name: module(**tensors) for name, _, module in self.regularizers}

    # -- training objective --------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``recon + codebook + beta * commit + sum_r weight_r * reg_r``; terms logged separately."""
        z_e = rearrange(self.encoder(images), "b d h w -> b h w d")
        q = self.quantize(z_e)
        logits = -q.distances
        z_q, fed, mask = self.perturb_decoder_input(logits, q.z_q, q.codes)
        recon = self.decoder(rearrange(z_q, "b h w d -> b d h w"))
        if self.config.recon_loss == "l1":
            rec = (recon - images).abs().mean()
        else:
            rec = F.mse_loss(recon, images)
        terms: dict[str, torch.Tensor] = {"recon": rec, **q.loss_terms}
        loss = rec + self.config.beta * q.loss_terms["commit"] + q.loss_terms.get("codebook", 0.0)
        if self.regularizers:
            z_best = F.embedding(q.codes, self.embedding)
            tensors = dict(
                logits=logits, probs=logits.float().softmax(-1), distances=q.distances, z_q=z_q, codes=q.codes,
                z_best=z_best, z_sampled=F.embedding(fed, self.embedding),
            )
            loss = self.add_regularizer_terms(loss, terms, tensors, z_e=z_e, images=images, recon=recon, rec=rec)
            terms["perturbed_frac"] = mask.float().mean()
        if self.training:
            restarted = self._restart_dead_codes(z_e.detach(), q.codes)
            terms["restarted_codes"] = torch.tensor(float(restarted))
        terms["perplexity"] = perplexity(q.codes.detach(), self.codebook_size)
        return loss, terms
