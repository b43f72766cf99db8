"""DiT-style transformer denoiser over a token grid, shared by every generator method.

One network family for all methods (DESIGN.md principle 3, "same denoiser backbone family"): a
bidirectional transformer over the ``h*w`` positions of a token grid with AdaLN-Zero conditioning
on (time embedding + class embedding), as in DiT (Peebles & Xie 2023, Sec. 3.2) and LightningDiT
(METHODS.md D.3). VQ-Diffusion's blocks (METHODS.md B.4) condition through AdaLN the same way.

Inputs are either token ids ``"b h w"`` (discrete methods; the vocabulary may contain a [MASK] id)
or float embeddings ``"b h w d"`` (continuous methods on a token-embedding table). The output is
``"b h w out_dim"`` (logits over the codebook, or an embedding-space prediction).

Sections: embeddings, blocks, model, presets.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import nn

from dlbench.interfaces import ComponentConfig
from dlbench.nn.attention import attend
from dlbench.registry import DlbenchError


class DenoiserConfig(ComponentConfig):
    """Size and options of the transformer denoiser.

    ``time_scale`` multiplies ``t`` before the sinusoidal embedding: with ``t`` in [0, 1] the default
    1000 gives DiT's ``[0, 1000]`` timestep range, whose frequencies resolve small changes of ``t``.
    """

    width: int = Field(128, ge=1)
    depth: int = Field(4, ge=1, description="transformer blocks (0 would build a model that ignores its input)")
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    pos_embedding: Literal["sincos-2d", "learned"] = "sincos-2d"
    dropout: float = Field(0.0, ge=0, lt=1)
    time_scale: float = Field(1000.0, gt=0)


class DenoiserConfigError(DlbenchError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``"b" -> "b dim"`` (Vaswani et al. 2017; DiT ``TimestepEmbedder``).

    ``[cos(t f_0..f_{dim/2-1}), sin(t f_0..)]`` with ``f_i = max_period^(-i / (dim/2))``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``"(h w) dim"`` (MAE / DiT ``get_2d_sincos_pos_embed``).

    Half of the channels encode the row, half the column, each as a 1-D sin-cos embedding.
    """
    if dim % 4:
        raise DenoiserConfigError(f"sincos-2d position embedding needs width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(h, dtype=torch.float64)[:, None] * omega[None]  # "h q"
    cols = torch.arange(w, dtype=torch.float64)[:, None] * omega[None]  # "w q"
    row_emb = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(h, w, 2 * quarter)
    col_emb = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([row_emb, col_emb], dim=-1).reshape(h * w, dim).float()


def drop_labels(
    labels: torch.Tensor, p: float, generator: torch.Generator | None = None, *, num_classes: int
) -> torch.Tensor:
    """Label dropout for classifier-free guidance (Ho & Salimans 2022): each label -> null class
    ``num_classes`` with probability ``p``. ``"b" -> "b"``."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class TimestepEmbedder(nn.Module):
    """``t "b" -> "b width"``: sinusoidal features then a 2-layer SiLU MLP (DiT)."""

    def __init__(self, width: int, freq_dim: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t * self.time_scale, self.freq_dim))


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: ``x * (1 + scale) + shift`` with ``x "b n d"``, ``shift, scale "b d"``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention ``"b n d" -> "b n d"`` (bidirectional, no mask; kernel by device: :mod:`dlbench.nn.attention`)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        out = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero (DiT Sec. 3.2): six modulation vectors from the
    conditioning ``c "b d"``; the gates start at zero so each block starts as the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """AdaLN then a linear head to ``out_dim``; both zero-initialised, so the network outputs 0 at init."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class TokenDenoiser(nn.Module):
    """Transformer over a ``h x w`` token grid, conditioned on time and (optionally) class.

    ``forward(x, t, labels)``:
      - ``x``: long ``"b h w"`` ids in ``[0, vocab_size)`` (``input="tokens"``), or float ``"b h w in_dim"``
        (``input="embeddings"``);
      - ``t``: float ``"b"`` (or a scalar, broadcast); the method chooses its meaning (t in [0, 1], t/T,
        a scaled log-SNR); it is multiplied by ``config.time_scale`` before the sinusoidal embedding;
      - ``labels``: long ``"b"`` in ``[0, num_classes]``, index ``num_classes`` being the learned null
        class (classifier-free guidance); ``None`` means all-null.
    Returns ``"b h w out_dim"``.
    """

    def __init__(
        self,
        config: DenoiserConfig,
        *,
        grid: tuple[int, int],
        out_dim: int,
        input: Literal["tokens", "embeddings"],
        vocab_size: int | None = None,
        in_dim: int | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        _validate(config, grid=grid, out_dim=out_dim, input=input, vocab_size=vocab_size, in_dim=in_dim)
        self.config, self.grid, self.out_dim, self.input = config, tuple(grid), out_dim, input
        self.vocab_size, self.in_dim, self.num_classes = vocab_size, in_dim, num_classes
        width, n = config.width, grid[0] * grid[1]
        if input == "tokens":
            self.token_embed: nn.Module = nn.Embedding(vocab_size, width)  # type: ignore[arg-type]
        else:
            self.token_embed = nn.Linear(in_dim, width)  # type: ignore[arg-type]
        if config.pos_embedding == "sincos-2d":
            self.register_buffer("pos_embed", sincos_2d(grid[0], grid[1], width)[None], persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, n, width))
        self.t_embed = TimestepEmbedder(width, time_scale=config.time_scale)
        # one extra row: the learned null class; an unconditional model has only that row
        self.label_embed = nn.Embedding((num_classes or 0) + 1, width)
        self.blocks = nn.ModuleList(
            DiTBlock(width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        self.final = FinalLayer(width, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT init: xavier linears, N(0, 0.02) embeddings, AdaLN-Zero modulations and head at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.token_embed, nn.Embedding):
            nn.init.normal_(self.token_embed.weight, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.label_embed.weight, std=0.02)
        for layer in self.t_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in [*self.blocks, self.final]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes or 0

    def null_labels(self, b: int) -> torch.Tensor:
        """All-null labels ``"b"`` (unconditional branch of classifier-free guidance)."""
        return torch.full((b,), self.null_class, dtype=torch.long, device=self.label_embed.weight.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        h, w = self.grid
        b = x.shape[0]
        if self.input == "tokens":
            if x.dtype != torch.long or tuple(x.shape[1:]) != (h, w):
                raise DenoiserConfigError(
                    f"token denoiser expects long token ids 'b h w' with (h, w)={self.grid}, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            tokens = self.token_embed(rearrange(x, "b h w -> b (h w)"))
        else:
            if not x.is_floating_point() or tuple(x.shape[1:]) != (h, w, self.in_dim):
                raise DenoiserConfigError(
                    f"embedding denoiser expects float 'b h w d' with (h, w, d)={(h, w, self.in_dim)}, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            tokens = self.token_embed(rearrange(x, "b h w d -> b (h w) d"))
        t = torch.as_tensor(t, dtype=torch.float32, device=tokens.device)
        if t.ndim == 0:
            t = t.expand(b)
        if labels is None:
            labels = self.null_labels(b)
        elif self.num_classes is None and bool((labels != self.null_class).any()):
            raise DenoiserConfigError("this denoiser is unconditional (num_classes=None) but got class labels")
        c = self.t_embed(t) + self.label_embed(labels)
        z = tokens + self.pos_embed
        for block in self.blocks:
            z = block(z, c)
        # float32 out even under bf16 autocast: losses and samplers (log-softmax, Gumbel) stay in fp32
        return rearrange(self.final(z, c), "b (h w) o -> b h w o", h=h, w=w).float()


def _validate(
    config: DenoiserConfig,
    *,
    grid: tuple[int, int],
    out_dim: int,
    input: str,
    vocab_size: int | None,
    in_dim: int | None,
) -> None:
    if config.width % config.heads:
        raise DenoiserConfigError(
            f"denoiser width {config.width} is not divisible by heads {config.heads}; pick heads dividing width"
        )
    if len(grid) != 2 or min(grid) < 1:
        raise DenoiserConfigError(f"denoiser grid must be (h, w) with positive sides, got {grid!r}")
    if out_dim < 1:
        raise DenoiserConfigError(f"denoiser out_dim must be >= 1, got {out_dim}")
    if input == "tokens" and not vocab_size:
        raise DenoiserConfigError("input='tokens' needs vocab_size (codebook size, plus 1 if a [MASK] id is used)")
    if input == "embeddings" and not in_dim:
        raise DenoiserConfigError("input='embeddings' needs in_dim (the embedding dimension)")
    if input not in ("tokens", "embeddings"):
        raise DenoiserConfigError(f"denoiser input must be 'tokens' or 'embeddings', got {input!r}")


# ---------------------------------------------------------------------------------------------
# Presets (never change a committed preset in place: add a new name, STYLE.md lesson 2)
# ---------------------------------------------------------------------------------------------

BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 128, "depth": 4, "heads": 4},  # METHODS.md "Minimal CPU-scale versions"
    "small": {"width": 256, "depth": 6, "heads": 8},
    "base": {"width": 512, "depth": 12, "heads": 8},
    "vqdiffusion-ffhq": {"width": 512, "depth": 20, "heads": 16},  # METHODS.md B.5
    "vqdiffusion-imagenet": {"width": 512, "depth": 24, "heads": 16},  # METHODS.md B.5
}


def resolve_backbone(preset: str = "tiny", **overrides: Any) -> DenoiserConfig:
    """A :class:`DenoiserConfig` from a named preset plus field overrides (validated, extra=forbid)."""
    if preset not in BACKBONE_PRESETS:
        import difflib

        close = difflib.get_close_matches(preset, list(BACKBONE_PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DenoiserConfigError(
            f"unknown backbone preset {preset!r}.{hint} Known presets: {', '.join(BACKBONE_PRESETS)}"
        )
    return DenoiserConfig.model_validate({**BACKBONE_PRESETS[preset], **overrides})


def build_denoiser(
    config: DenoiserConfig | dict[str, Any],
    *,
    grid: tuple[int, int],
    out_dim: int,
    input: Literal["tokens", "embeddings"],
    vocab_size: int | None = None,
    in_dim: int | None = None,
    num_classes: int | None = None,
) -> TokenDenoiser:
    """Build a :class:`TokenDenoiser`. A dict config may name a ``preset`` plus field overrides
    (the shape of ``MethodContext.backbone``: ``{"preset": "tiny", "depth": 2}``)."""
    if isinstance(config, dict):
        params = dict(config)
        preset = params.pop("preset", None)
        if isinstance(params.get("params"), dict):  # {"preset": ..., "params": {...}} (run-config section)
            params = {**{k: v for k, v in params.items() if k != "params"}, **params["params"]}
        config = resolve_backbone(preset, **params) if preset else DenoiserConfig.model_validate(params)
    return TokenDenoiser(
        config, grid=grid, out_dim=out_dim, input=input, vocab_size=vocab_size, in_dim=in_dim, num_classes=num_classes
    )
