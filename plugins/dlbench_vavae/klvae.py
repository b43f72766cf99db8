"""``tokenizer/kl-vae``: LDM-style continuous conv autoencoder with a KL term (VA-VAE's tokenizer, METHODS D.1).

Images ``"b c H W"`` in [-1, 1] -> encoder -> ``(mean, logvar) "b 2d h w"`` (``double_z``) -> ``z = mean +
std * eps`` -> decoder. Architecture as the LDM / VQGAN autoencoder (Rombach et al. 2022, Esser et al. 2021),
scaled down: ``conv_in``, per level ``res_blocks`` ResNet blocks at ``channels * ch_mult[i]`` and a stride-2
conv, a middle block (ResNet, single-head self-attention, ResNet), ``GroupNorm, SiLU, conv_out``; the decoder
mirrors it with ``res_blocks + 1`` blocks per level and nearest-neighbour upsampling + conv.

Loss (LDM ``LPIPSWithDiscriminator`` without the perceptual and GAN terms, which dlbench's conv tokenizers
also leave out):

    L = sum_pixels |x - x_hat| / P  +  kl_weight * sum_latent KL(q(z|x) || N(0, I)) / P

per image, ``P = c H W`` the number of pixel values: LDM sums both terms over the image; dividing both by
``P`` keeps LDM's ratio (``kl_weight`` 1e-6) at any resolution while the numbers stay O(1).

**Latent normalisation** (VA-VAE ``latent_norm``): after training, :meth:`KLVAE.compute_latent_stats` stores
the channel-wise mean and std of posterior samples of the training images (and their horizontal flips, as
VA-VAE extracts ``latents_flip``) in buffers, so they travel with the tokenizer's weights.
:meth:`encode` returns *normalised* latents ``(z - mean) / std`` and :meth:`decode` inverts that; both refuse
to run before the statistics exist (forgetting the normalisation is the known FID ~130 failure,
hustvl/LightningDiT#34). ``finish_training(images)`` (called by the run pipeline after tokenizer training)
computes them.

Regularizers attach through the same hook list as ``tokenizer/vqvae`` (:meth:`add_regularizer`); each is
called with ``images, recon "b c H W"``, ``z_e "b h w d"`` (the posterior sample: the pre-quantization latent
of a continuous tokenizer), ``mean, logvar "b h w d"``, ``rec_loss`` and ``encoder_last_layer``. The
nested ``vf`` params attach ``regularizer/vf-alignment`` (off by default in ``kl-vae``, on in ``kl-vae-vf``).

This is a **continuous** tokenizer (``latent_kind = "continuous"``): ``encode`` gives float latents
``"b h w d"``, not token ids, and it has no codebook. dlbench's discrete methods cannot use it; the run
pipeline refuses that combination before any training.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, field_validator, model_validator
from torch import nn

from dlbench.interfaces import ComponentConfig, Tokenizer
from dlbench.registry import DlbenchError

from .regularizer import VFAlignmentConfig
from .tokenizers import attach_vf_alignment

__all__ = ["KLVAEConfig", "KLVAEVFConfig", "KLVAE", "LatentStatsMissing", "diagonal_gaussian_kl", "latent_stats"]


class LatentStatsMissing(DlbenchError):
    """The channel-wise latent statistics were never computed for this tokenizer."""


class KLVAEConfig(ComponentConfig):
    """``downsample`` f (power of 2) with ``len(ch_mult) == log2(f) + 1`` (None: 1, 2, 2, ... 2);
    ``latent_dim`` d; ``kl_weight`` as LDM (1e-6); ``attention``: self-attention in the middle blocks."""

    downsample: int = Field(4, ge=1)
    channels: int = Field(32, ge=1)
    ch_mult: tuple[int, ...] | None = None
    res_blocks: int = Field(1, ge=0)
    attention: bool = True
    latent_dim: int = Field(4, ge=1)
    kl_weight: float = Field(1e-6, ge=0)
    recon_loss: Literal["l1", "mse"] = "l1"
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    stats_flip: bool = True
    stats_batch_size: int = Field(256, ge=1)
    vf: VFAlignmentConfig = Field(default_factory=lambda: VFAlignmentConfig(weight=0.0))

    @field_validator("downsample")
    @classmethod
    def _pow2(cls, f: int) -> int:
        if f & (f - 1):
            raise ValueError(f"downsample must be a power of 2 (1, 2, 4, 8...), got {f}")
        return f

    @model_validator(mode="after")
    def _levels(self) -> "KLVAEConfig":
        if self.ch_mult is not None and len(self.ch_mult) != int(math.log2(self.downsample)) + 1:
            raise ValueError(f"ch_mult needs log2(downsample) + 1 = {int(math.log2(self.downsample)) + 1} entries "
                             f"for downsample {self.downsample}, got {list(self.ch_mult)}")
        if self.ch_mult is not None and min(self.ch_mult) < 1:
            raise ValueError("ch_mult entries must be >= 1")
        return self

    def multipliers(self) -> tuple[int, ...]:
        levels = int(math.log2(self.downsample))
        return self.ch_mult or (1,) + (2,) * levels


class KLVAEVFConfig(KLVAEConfig):
    """``kl-vae`` with VA-VAE's VF alignment on (``vf.weight`` = w_hyper = 0.1)."""

    vf: VFAlignmentConfig = Field(default_factory=VFAlignmentConfig)


# ---------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------


def diagonal_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` summed over all but the batch dim: ``"b ..." -> "b"``."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise ``(mean, std)`` of ``"n h w d"`` latents over every position of every image (float64)."""
    flat = latents.double().reshape(-1, latents.shape[-1])
    return flat.mean(0), flat.std(0, unbiased=False)


# ---------------------------------------------------------------------------------------------
# Blocks (LDM's ResnetBlock / AttnBlock without time embedding or dropout)
# ---------------------------------------------------------------------------------------------


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, 32), ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h w`` positions (LDM ``AttnBlock``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


def _mid(ch: int, attention: bool) -> list[nn.Module]:
    return [ResnetBlock(ch, ch), AttnBlock(ch) if attention else nn.Identity(), ResnetBlock(ch, ch)]


def _encoder(in_ch: int, c: KLVAEConfig) -> nn.Sequential:
    mult = c.multipliers()
    layers: list[nn.Module] = [nn.Conv2d(in_ch, c.channels * mult[0], 3, padding=1)]
    ch = c.channels * mult[0]
    for i, m in enumerate(mult):
        for _ in range(c.res_blocks):
            layers.append(ResnetBlock(ch, c.channels * m))
            ch = c.channels * m
        if i < len(mult) - 1:
            layers.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))
    layers += _mid(ch, c.attention)
    layers += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * c.latent_dim, 3, padding=1)]  # conv_out, double_z
    return nn.Sequential(*layers)


def _decoder(out_ch: int, c: KLVAEConfig) -> nn.Sequential:
    mult = c.multipliers()
    ch = c.channels * mult[-1]
    layers: list[nn.Module] = [nn.Conv2d(c.latent_dim, ch, 3, padding=1)]
    layers += _mid(ch, c.attention)
    for i, m in reversed(list(enumerate(mult))):
        for _ in range(c.res_blocks + 1):
            layers.append(ResnetBlock(ch, c.channels * m))
            ch = c.channels * m
        if i > 0:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
    layers += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class KLVAE(Tokenizer):
    """Continuous KL autoencoder: ``"b c H W" -> "b h w d"`` normalised latents and back."""

    Config: ClassVar[type[ComponentConfig]] = KLVAEConfig
    latent_kind: ClassVar[str] = "continuous"
    codebook_size = 0  # no codebook: a continuous tokenizer

    def __init__(self, config: KLVAEConfig, *, channels: int = 3, resolution: int = 32):
        super().__init__()
        if resolution % config.downsample:
            raise DlbenchError(f"tokenizer kl-vae: image resolution {resolution} is not divisible by downsample "
                               f"{config.downsample}")
        self.config, self.channels, self.resolution = config, channels, resolution
        self.latent_dim = config.latent_dim
        self.encoder = _encoder(channels, config)
        self.decoder = _decoder(channels, config)
        d = config.latent_dim
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_std", torch.ones(d))
        self.register_buffer("latent_stats_images", torch.zeros((), dtype=torch.long))  # 0: not computed
        self.regularizers: list[tuple[str, float, nn.Module]] = []
        self._regularizer_modules = nn.ModuleList()
        self.vf = attach_vf_alignment(self, config.vf, d)

    # -- posterior -----------------------------------------------------------------------------
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``"b c H W" -> (mean, logvar)`` each ``"b d h w"`` (logvar clamped as LDM)."""
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        lo, hi = self.config.logvar_clamp
        return mean, logvar.clamp(lo, hi)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    # -- normalisation -------------------------------------------------------------------------
    @property
    def has_latent_stats(self) -> bool:
        return int(self.latent_stats_images) > 0

    def _require_stats(self) -> None:
        if not self.has_latent_stats:
            raise LatentStatsMissing(
                "kl-vae: channel-wise latent statistics were never computed; call compute_latent_stats(train images) "
                "after training (un-normalised latents are the known FID ~130 failure)"
            )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``"b h w d"`` -> ``(z - mean) / std`` channel-wise."""
        self._require_stats()
        return (z - self.latent_mean.to(z.dtype)) / self.latent_std.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        self._require_stats()
        return z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)

    @torch.no_grad()
    def compute_latent_stats(self, images: torch.Tensor, *, seed: int = 0) -> dict[str, Any]:
        """Store channel-wise mean/std of posterior samples of ``images`` (uint8 or float in [-1, 1],
        ``"n c H W"``; with ``stats_flip`` also of their horizontal flips). Deterministic given ``seed``."""
        was_training = self.training
        self.eval()
        device = self.latent_mean.device
        g = torch.Generator(device=device).manual_seed(seed)
        chunks = []
        bs = self.config.stats_batch_size
        for i in range(0, len(images), bs):
            x = images[i:i + bs].to(device)
            x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
            views = [x, x.flip(-1)] if self.config.stats_flip else [x]
            for v in views:
                mean, logvar = self.posterior(v)
                chunks.append(rearrange(self.sample(mean, logvar, g), "b d h w -> b h w d").double().cpu())
        mu, std = latent_stats(torch.cat(chunks))
        self.latent_mean.copy_(mu.to(self.latent_mean))
        self.latent_std.copy_(std.clamp_min(1e-6).to(self.latent_std))
        self.latent_stats_images.fill_(len(images))
        self.train(was_training)
        return {"latent_mean": mu.tolist(), "latent_std": std.tolist(), "images": len(images),
                "flip": self.config.stats_flip}

    def finish_training(self, images: torch.Tensor) -> dict[str, Any]:
        """Called once after training with the training images (the run pipeline's optional hook)."""
        return self.compute_latent_stats(images)

    # -- Tokenizer interface -------------------------------------------------------------------
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        f = self.config.downsample
        if height % f or width % f:
            raise DlbenchError(f"kl-vae: image size {height}x{width} is not divisible by downsample {f}")
        return height // f, width // f

    def codebook(self) -> torch.Tensor:
        raise DlbenchError("kl-vae is a continuous tokenizer: it has no codebook")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``"b c H W" -> "b h w d"`` normalised latents (posterior mean; ``sample=True``: a posterior sample)."""
        mean, logvar = self.posterior(images)
        z = self.sample(mean, logvar, generator) if sample else mean
        return self.normalize(rearrange(z, "b d h w -> b h w d"))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``"b h w d"`` -> images ``"b c H W"`` in [-1, 1]."""
        z = self.denormalize(latents.float())
        return self.decoder(rearrange(z, "b h w d -> b d h w")).clamp(-1, 1)

    def run_metadata(self) -> dict[str, Any]:
        return {"latent_kind": "continuous", "latent_dim": self.latent_dim,
                "latent_stats_images": int(self.latent_stats_images),
                "vf_alignment": None if self.vf is None else self.vf.run_metadata()}

    @property
    def latent_channels(self) -> int:
        """``d`` of the latent (what a regularizer's ``bind`` receives)."""
        return int(self.latent_dim)

    def add_regularizer(self, name: str, weight: float, module: nn.Module) -> None:
        """Attach a loss term to :meth:`training_loss` (keywords: module docstring)."""
        if any(n == name for n, _, _ in self.regularizers):
            raise DlbenchError(f"tokenizer regularizer {name!r} added twice")
        self.regularizers.append((name, float(weight), module))
        self._regularizer_modules.append(module)

    # -- training objective --------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + kl_weight * KL / P + sum_r weight_r * reg_r`` (module docstring); terms logged separately."""
        mean, logvar = self.posterior(images)
        z = self.sample(mean, logvar) if self.training else mean
        recon = self.decoder(z)
        p = images[0].numel()
        err = (recon - images).abs() if self.config.recon_loss == "l1" else (recon - images).pow(2)
        rec = err.mean()  # = sum over the image / P, averaged over the batch
        kl = diagonal_gaussian_kl(mean, logvar).mean()
        loss = rec + self.config.kl_weight * kl / p
        terms: dict[str, torch.Tensor] = {"recon": rec, "kl": kl}
        to_last = lambda t: rearrange(t, "b d h w -> b h w d")  # noqa: E731
        tensors = dict(images=images, recon=recon, z_e=to_last(z), mean=to_last(mean), logvar=to_last(logvar),
                       rec_loss=rec, encoder_last_layer=self.encoder[-1].weight)
        for name, weight, module in self.regularizers:
            value = module(**tensors)
            terms[name] = value
            loss = loss + weight * value
        if self.vf is not None:
            terms.update(self.vf.last_terms)
        return loss, terms
