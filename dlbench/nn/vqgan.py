"""VQGAN tokenizer (Esser, Rombach, Ommer 2021, "Taming Transformers"), registered as ``tokenizer/vqgan``.

Images ``"b c H W"`` in [-1, 1] -> :class:`Encoder` -> ``quant_conv`` -> ``z_e "b h w d"`` -> nearest
code -> ``codes "b h w"`` -> ``z_q`` -> ``post_quant_conv`` -> :class:`Decoder` -> reconstruction.
The networks follow taming-transformers' ``diffusionmodules/model.py`` layout (ResNet blocks with
GroupNorm(32) and SiLU, asymmetric-padded strided-conv downsampling, nearest+conv upsampling,
single-head self-attention at the lowest resolution, ``ch_mult`` per level, ``f = 2^(len(ch_mult)-1)``),
with the same parameter names, so taming's and VQ-Diffusion's released checkpoints load into it
(:mod:`dlbench.nn.vqgan_import`). Defaults are taming's f16 ImageNet/FFHQ setting: ``ch=128,
ch_mult=(1,1,2,2,4), 2 res blocks, z=256, K=1024, d=256`` -> a 16x16 grid at 256 px.

Objective (taming ``VQLPIPSWithDiscriminator``, Esser et al. Eq. 4-7)::

    L = l1_weight |x - x_hat| + perceptual_weight LPIPS(x, x_hat)                 (L_rec)
        + codebook_weight (||sg(z_e) - z_q||^2 + beta ||z_e - sg(z_q)||^2)          (L_VQ)
        + f(step) lambda disc_weight (-D(x_hat))                                    (L_GAN, generator)
        + f(step) hinge(D(x), D(sg(x_hat)))                                         (discriminator)

with ``lambda`` the adaptive weight of Eq. 7 at ``decoder.conv_out.weight`` and ``f(step) = 1[step >=
disc_start]`` (delayed discriminator start). dlbench trains generator and discriminator with *one*
optimizer in one simultaneous step: the generator term sees the discriminator through detached
parameters and the discriminator term sees ``sg(x_hat)``, so each network's gradient is exactly its
own loss's gradient (taming alternates two Adam optimizers with equal lr on the same batch).

Quantizer: ``straight-through`` (codebook + commitment losses) or ``ema`` (VQ-VAE App. A.1), with
dead-code restarts from the batch's encoder outputs every ``restart_every`` steps (as in
:mod:`dlbench.nn.vqvae`).

Longer than ~350 lines because the encoder/decoder keep taming-transformers' module layout and parameter
names in one file, so released checkpoints load unchanged; checkpoint import (:mod:`dlbench.nn.vqgan_import`)
and the discriminator/loss (:mod:`dlbench.nn.vqgan_loss`) are separate.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn

from dlbench.interfaces import ComponentConfig, Tokenizer
from dlbench.nn.vqgan_loss import PatchDiscriminator, adaptive_weight, adopt_weight, hinge_d_loss, hinge_g_loss
from dlbench.nn.vqvae import TokenizerConfigError, code_distances, perplexity

ARCH_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_levels", "z_channels", "codebook_size", "code_dim")


class VQGANConfig(ComponentConfig):
    """VQGAN options. Architecture defaults: taming's f16 / K=1024 / d=256 models (METHODS.md B.5)."""

    ch: int = Field(128, gt=0, description="base width; level i has ch * ch_mult[i] channels")
    ch_mult: list[int] = Field(default_factory=lambda: [1, 1, 2, 2, 4],
                               description="width multipliers per level; downsampling f = 2^(len - 1)")
    num_res_blocks: int = Field(2, gt=0)
    attn_levels: list[int] | None = Field(
        None, description="levels (0 = full resolution) with self-attention; None = the lowest only (taming)")
    z_channels: int = Field(256, gt=0)
    codebook_size: int = Field(1024, gt=1)
    code_dim: int = Field(256, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    quantizer: Literal["straight-through", "ema"] = "straight-through"
    beta: float = Field(0.25, ge=0, description="commitment weight")
    ema_decay: float = Field(0.99, gt=0, lt=1)
    ema_eps: float = Field(1e-5, gt=0)
    restart_every: int = Field(500, ge=0, description="dead-code restart period in steps (0 = never)")
    restart_threshold: float = Field(1.0, ge=0)
    # -- loss (taming VQLPIPSWithDiscriminator) --
    l1_weight: float = Field(1.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0, description="LPIPS weight; 0 trains without VGG16 weights")
    codebook_weight: float = Field(1.0, ge=0)
    disc_weight: float = Field(0.8, ge=0, description="scales the adaptive weight (taming: 0.8)")
    disc_start: int = Field(10_000, ge=0, description="step at which the discriminator switches on")
    disc_channels: int = Field(64, gt=0)
    disc_layers: int = Field(3, gt=0)
    lpips_vgg_weights: str | None = Field(None, description="VGG16 weights file for LPIPS (else resolved offline)")
    # -- import (dlbench.nn.vqgan_import) --
    pretrained: str | None = Field(None, description="a known released checkpoint by name (needs checkpoint=PATH)")
    checkpoint: str | None = Field(None, description="local taming/VQ-Diffusion checkpoint to import")
    checkpoint_sha256: str | None = Field(None, description="expected sha256 of checkpoint (verified when set)")

    @model_validator(mode="before")
    @classmethod
    def _pretrained_arch(cls, data: Any) -> Any:
        """A named checkpoint supplies its architecture (fields the user did not set)."""
        if isinstance(data, dict) and data.get("pretrained"):
            from dlbench.nn.vqgan_import import PRETRAINED, unknown_pretrained

            entry = PRETRAINED.get(data["pretrained"])
            if entry is None:
                raise ValueError(unknown_pretrained(data["pretrained"]))
            data = {**entry.arch, **({"checkpoint_sha256": entry.sha256} if entry.sha256 else {}), **data}
        return data

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ---------------------------------------------------------------------------------------------
# Blocks (taming-transformers diffusionmodules/model.py layout and names)
# ---------------------------------------------------------------------------------------------


def Normalize(ch: int) -> nn.GroupNorm:  # noqa: N802 - taming's name, kept for the layout's sake
    return nn.GroupNorm(32 if ch % 32 == 0 else math.gcd(ch, 32), ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = Normalize(in_ch), nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2, self.dropout = Normalize(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h w`` positions (1x1 conv projections)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = Normalize(ch)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v; flash/SDPA on CUDA
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=hh, w=ww))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric pad: exact halving with a 3x3/2 conv


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attn_levels(cfg: VQGANConfig) -> set[int]:
    return set(cfg.attn_levels) if cfg.attn_levels is not None else {len(cfg.ch_mult) - 1}


class Encoder(nn.Module):
    """``"b c H W" -> "b z (H/f) (W/f)"``."""

    def __init__(self, cfg: VQGANConfig, in_channels: int):
        super().__init__()
        ch, mult, attn = cfg.ch, cfg.ch_mult, _attn_levels(cfg)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * (1 if i == 0 else mult[i - 1])
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * m, cfg.dropout))
                block_in = ch * m
                if i in attn:
                    level.attn.append(AttnBlock(block_in))
            if i != len(mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``"b z h w" -> "b c (h f) (w f)"`` (``num_res_blocks + 1`` blocks per level, as in taming)."""

    def __init__(self, cfg: VQGANConfig, out_channels: int):
        super().__init__()
        ch, mult, attn = cfg.ch, cfg.ch_mult, _attn_levels(cfg)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout)
        levels: list[nn.Module] = []
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout))
                block_in = ch * mult[i]
                if i in attn:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level, as in taming
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer over ``embedding.weight "k d"`` (taming's ``quantize.embedding`` name)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        k, d = cfg.codebook_size, cfg.code_dim
        self.cfg = cfg
        self.embedding = nn.Embedding(k, d)
        self.embedding.weight.data.uniform_(-1.0 / k, 1.0 / k)
        if cfg.quantizer == "ema":
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.zeros(k))
            self.register_buffer("ema_embed_sum", self.embedding.weight.data.clone())
        self.register_buffer("usage", torch.zeros(k))  # code counts since the last restart
        self._restarted_at = -1

    def forward(self, z_e: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``z_e "b h w d"`` -> ``(z_q straight-through "b h w d", codes "b h w", loss terms)``."""
        w = self.embedding.weight
        codes = code_distances(z_e, w).argmin(-1)
        z_q = F.embedding(codes, w).to(z_e.dtype)
        terms = {"commit": F.mse_loss(z_e, z_q.detach())}
        if self.cfg.quantizer == "straight-through":
            terms["codebook"] = F.mse_loss(z_q, z_e.detach())
        elif self.training:
            self._ema_update(z_e.detach(), codes)
            z_q = F.embedding(codes, self.embedding.weight).to(z_e.dtype)
        if self.training:
            terms["restarted_codes"] = torch.tensor(float(self._restart_dead_codes(z_e.detach(), codes, step)))
        return z_e + (z_q - z_e).detach(), codes, terms

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """VQ-VAE App. A.1 (Laplace-smoothed counts), statistics summed over ranks under DDP."""
        from dlbench.nn.vqvae import ema_codebook_update

        ema_codebook_update(self.embedding.weight.data, self.ema_cluster_size, self.ema_embed_sum, z_e, codes,
                            self.cfg.ema_decay, self.cfg.ema_eps)

    @torch.no_grad()
    def _restart_dead_codes(self, z_e: torch.Tensor, codes: torch.Tensor, step: int) -> int:
        """Codes used < ``restart_threshold`` times in the last period get random encoder outputs of this
        batch (rank 0's choice, broadcast under DDP). ``step`` counts from 1."""
        counts = torch.bincount(codes.reshape(-1), minlength=self.cfg.codebook_size).float()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        self.usage.add_(counts)
        every = self.cfg.restart_every
        if every <= 0 or step % every or step == self._restarted_at:  # once per step under grad accumulation
            return 0
        self._restarted_at = step
        dead = self.usage < self.cfg.restart_threshold
        flat = z_e.reshape(-1, z_e.shape[-1]).float()
        candidates = flat[torch.randint(0, flat.shape[0], (self.cfg.codebook_size,), device=flat.device)]
        if distributed:
            dist.broadcast(candidates, src=0)
        self.embedding.weight.data[dead] = candidates[dead].to(self.embedding.weight.dtype)
        if self.cfg.quantizer == "ema":
            self.ema_embed_sum[dead] = candidates[dead]
            self.ema_cluster_size[dead] = 1.0
        self.usage.zero_()
        return int(dead.sum())


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class VQGAN(Tokenizer):
    """Taming-style VQGAN tokenizer (module docstring); trained by dlbench or imported."""

    Config = VQGANConfig

    def __init__(self, config: VQGANConfig, *, channels: int = 3, resolution: int = 256):
        super().__init__()
        f = config.downsample
        if resolution % f:
            raise TokenizerConfigError(
                f"image resolution {resolution} is not divisible by the VQGAN downsampling f={f} "
                f"(len(ch_mult)={len(config.ch_mult)}); shorten tokenizer.ch_mult or change the resolution")
        bad = [lv for lv in (config.attn_levels or []) if not 0 <= lv < len(config.ch_mult)]
        if bad:
            raise TokenizerConfigError(f"tokenizer.attn_levels {bad} outside 0..{len(config.ch_mult) - 1}")
        self.config, self.channels, self.resolution = config, channels, resolution
        self.codebook_size = config.codebook_size
        self.encoder = Encoder(config, channels)
        self.decoder = Decoder(config, channels)
        self.quant_conv = nn.Conv2d(config.z_channels, config.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.code_dim, config.z_channels, 1)
        self.quantize = VectorQuantizer(config)
        self.discriminator = PatchDiscriminator(channels, config.disc_channels, config.disc_layers)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self._lpips: list[nn.Module] = []  # kept out of the module tree: frozen, never saved with the tokenizer
        self.imported: dict[str, Any] | None = None
        if config.checkpoint or config.pretrained:
            from dlbench.nn.vqgan_import import import_checkpoint

            self.imported = import_checkpoint(self, config)

    @property
    def pretrained(self) -> bool:
        """True when the weights were imported: the pipeline then skips tokenizer training."""
        return self.imported is not None

    # -- Tokenizer interface -------------------------------------------------------------------
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        f = self.config.downsample
        if height % f or width % f:
            raise TokenizerConfigError(f"image size {height}x{width} is not divisible by the VQGAN downsampling {f}")
        return height // f, width // f

    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight.detach()

    def _z_e(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.quant_conv(self.encoder(images)), "b d h w -> b h w d")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return code_distances(self._z_e(images), self.quantize.embedding.weight).argmin(-1)

    def _decode_z(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(rearrange(z_q, "b h w d -> b d h w")))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._decode_z(F.embedding(tokens, self.quantize.embedding.weight)).clamp(-1, 1)

    # -- training --------------------------------------------------------------------------------
    def prepare_training(self) -> None:
        """Build what training needs beyond the weights (LPIPS); raises before any step when it cannot."""
        if self.config.perceptual_weight > 0 and not self._lpips:
            from dlbench.nn.lpips import build_lpips

            self._lpips.append(build_lpips(self.config.lpips_vgg_weights))

    def on_step_end(self) -> None:
        """Called by the training loop after each optimizer step: counts steps (not micro-batches) for the
        delayed discriminator start and the restart period; the count is saved with the weights."""
        self.train_steps.add_(1)

    def perceptual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS per image ``"b 1 1 1"``; grey images are repeated to 3 channels for VGG."""
        self.prepare_training()
        net = self._lpips[0]
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return net(x.float(), y.float())

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective of the module docstring for one batch ``"b c H W"``; terms logged separately."""
        cfg = self.config
        step = int(self.train_steps) + 1  # the optimizer step being computed (1-based); see on_step_end
        z_e = self._z_e(images)
        z_q, codes, vq_terms = self.quantize(z_e, step)
        recon = self._decode_z(z_q)
        l1 = (recon - images).abs().mean()
        terms: dict[str, torch.Tensor] = {"l1": l1.detach()}
        rec = cfg.l1_weight * l1
        if cfg.perceptual_weight > 0:
            p = self.perceptual(images, recon).mean()
            rec = rec + cfg.perceptual_weight * p
            terms["lpips"] = p.detach()
        vq = vq_terms.get("codebook", 0.0) + cfg.beta * vq_terms["commit"]
        loss = rec + cfg.codebook_weight * vq
        factor = adopt_weight(1.0, step, cfg.disc_start)
        if cfg.disc_weight > 0 and factor > 0:
            disc = self.discriminator
            frozen = {n: p.detach() for n, p in disc.named_parameters()}
            g_loss = hinge_g_loss(torch.func.functional_call(disc, {**frozen, **dict(disc.named_buffers())}, (recon,)))
            if torch.is_grad_enabled() and recon.requires_grad:
                lam = adaptive_weight(rec, g_loss, self.decoder.conv_out.weight)
            else:  # no graph (evaluation): Eq. 7 is undefined, report the unweighted term
                lam = torch.ones(())
            d_loss = hinge_d_loss(disc(images.detach()), disc(recon.detach()))
            loss = loss + factor * (lam * cfg.disc_weight * g_loss + d_loss)
            terms.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), adaptive_weight=lam)
        terms.update({k: v.detach() for k, v in vq_terms.items()})
        terms["rec"] = rec.detach()
        terms["perplexity"] = perplexity(codes.detach(), self.codebook_size)
        return loss, terms
