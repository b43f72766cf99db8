"""LightningDiT backbone over continuous latents ``"b c h w"`` (METHODS.md §D.3; hustvl/LightningDiT
``models/lightningdit.py``): a DiT with AdaLN-Zero conditioning on (time + class), plus the ladder's
architecture options, each switchable so the ladder can be ablated:

- ``norm``: ``rms`` (RMSNorm with a learned gain, LLaMA) or ``layer`` (affine-free LayerNorm, DiT);
- ``mlp``: ``swiglu`` (``W3 (silu(x W1) * x W2)`` with hidden ``int(2/3 * mlp_ratio * width)``) or ``gelu``
  (DiT's tanh-GELU MLP with hidden ``mlp_ratio * width``);
- ``rope``: 2-D axial rotary position embedding on q, k (EVA ``VisionRotaryEmbeddingFast``: half of each head's
  dims rotate with the row index, half with the column index) — in the released model *in addition to* the
  fixed sin-cos absolute embedding; ``pos_embedding``: ``sincos-2d``, ``learned`` or ``none``;
- ``patch_size`` p: ``"b c (h p) (w p)" -> "b (h w) (p p c)"`` tokens through one linear map (= a stride-p conv).

Attention is :func:`dlbench.nn.attention.attend` (SDPA off CPU, the explicit form on CPU). Sections: pure pieces, blocks, model, presets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn

from dlbench.interfaces import ComponentConfig
from dlbench.nn.attention import attend
from dlbench.nn.denoiser import modulate, sincos_2d, timestep_embedding
from dlbench.registry import DlbenchError

__all__ = [
    "LightningDiTNet",
    "LightningDiTNetConfig",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "rope_angles",
    "rotate_pairs",
    "LIGHTNINGDIT_SIZES",
]


class BackboneError(DlbenchError, ValueError):
    pass


class LightningDiTNetConfig(ComponentConfig):
    """Size and architecture options of :class:`LightningDiTNet` (defaults: the released LightningDiT choices at
    dlbench's ``tiny`` size; ``time_scale`` multiplies t in [0, 1] before the sinusoidal embedding — the released
    code feeds t unscaled, i.e. 1)."""

    width: int = Field(128, ge=1)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_size: int = Field(1, ge=1)
    norm: Literal["rms", "layer"] = "rms"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    rope: bool = True
    rope_theta: float = Field(10000.0, gt=0)
    pos_embedding: Literal["sincos-2d", "learned", "none"] = "sincos-2d"
    qk_norm: bool = False
    qkv_bias: bool = True
    time_scale: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.rope and (self.width // self.heads) % 4:
            raise ValueError(f"2-D RoPE needs a head dim (width/heads = {self.width // self.heads}) divisible by 4; "
                             "change width/heads or set rope=false")
        if self.pos_embedding == "sincos-2d" and self.width % 4:
            raise ValueError(f"pos_embedding='sincos-2d' needs width divisible by 4, got {self.width}")
        return self


# ---------------------------------------------------------------------------------------------
# Pure pieces: RMSNorm, SwiGLU, 2-D RoPE
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * g`` over the last axis, computed in float32 (LLaMA; released ``rmsnorm.py``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """``W3 (silu(x W1 + b1) * (x W2 + b2)) + b3`` (Shazeer 2020; released ``SwiGLUFFN``: W1, W2 fused as ``w12``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles of 2-D axial RoPE, ``positions "n 2"`` (row, col) -> ``"n head_dim"``.

    The first ``head_dim/2`` dims take the row, the rest the column; within each half, pair ``j`` (dims ``2j,
    2j+1``) turns by ``pos * theta^(-2j / (head_dim/2))`` (EVA ``VisionRotaryEmbeddingFast``, ``freqs_for='lang'``,
    each frequency repeated for its pair).
    """
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float64) / half)  # "half/2"
    pos = positions.to(torch.float64)
    rows = pos[:, :1] * freqs[None]  # "n half/2"
    cols = pos[:, 1:2] * freqs[None]
    return torch.cat([rows.repeat_interleave(2, dim=-1), cols.repeat_interleave(2, dim=-1)], dim=-1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x_{2j}, x_{2j+1}) -> (-x_{2j+1}, x_{2j})`` on the last axis (EVA ``rotate_half``)."""
    x1, x2 = rearrange(x, "... (d r) -> r ... d", r=2)
    return rearrange(torch.stack([-x2, x1]), "r ... d -> ... (d r)")


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of ``x "... n e"`` by ``angles "n e"``: ``x cos + rotate_pairs(x) sin``."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + rotate_pairs(x) * sin


def grid_positions(h: int, w: int) -> torch.Tensor:
    """``"(h w) 2"`` (row, col) of a row-major ``h x w`` grid."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def _norm(kind: str, dim: int) -> nn.Module:
    return RMSNorm(dim) if kind == "rms" else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention ``"b n d" -> "b n d"`` with optional QK-norm and RoPE on q, k (SDPA)."""

    def __init__(self, width: int, heads: int, *, qkv_bias: bool, qk_norm: bool, norm: str, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        head_dim = width // heads
        self.q_norm = _norm(norm, head_dim) if qk_norm else nn.Identity()
        self.k_norm = _norm(norm, head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        out = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class LightningDiTBlock(nn.Module):
    """Pre-norm block with AdaLN-Zero (DiT Sec. 3.2): ``x += g1 * attn(mod(norm(x)))``, ``x += g2 * mlp(...)`` with
    six modulation vectors from ``c "b d"``; the modulation layer starts at zero, so the block starts as the
    identity."""

    def __init__(self, c: LightningDiTNetConfig):
        super().__init__()
        w = c.width
        self.norm1 = _norm(c.norm, w)
        self.attn = Attention(w, c.heads, qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, norm=c.norm, dropout=c.dropout)
        self.norm2 = _norm(c.norm, w)
        hidden = int(w * c.mlp_ratio)
        if c.mlp == "swiglu":
            self.mlp: nn.Module = SwiGLU(w, int(2 / 3 * hidden))
        else:
            self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Dropout(c.dropout),
                                     nn.Linear(hidden, w))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))

    def forward(self, x: torch.Tensor, c: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), angles)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """AdaLN then a linear map to ``p*p*c`` per token; zero-initialised (the network outputs 0 at init)."""

    def __init__(self, c: LightningDiTNetConfig, out_dim: int):
        super().__init__()
        self.norm = _norm(c.norm, c.width)
        self.linear = nn.Linear(c.width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.width, 2 * c.width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class LightningDiTNet(nn.Module):
    """``forward(x "b c h w", t "b", labels "b" | None) -> "b c h w"`` (a velocity), float32 out.

    ``t`` in [0, 1] (scaled by ``time_scale`` for the sinusoidal embedding). ``labels`` in ``[0, num_classes]``;
    index ``num_classes`` is the learned null class (classifier-free guidance), ``None`` means all-null; an
    unconditional net (``num_classes=None``) has only the null row.
    """

    #: ``backbone.compile = true`` compiles this module (:func:`dlbench.runner.generator_stage.compile_denoisers`)
    dlbench_compile: ClassVar[bool] = True

    def __init__(self, config: LightningDiTNetConfig, *, channels: int, grid: tuple[int, int],
                 num_classes: int | None = None):
        super().__init__()
        h, w = grid
        p = config.patch_size
        if h % p or w % p:
            raise BackboneError(f"latent grid {h}x{w} is not divisible by patch_size {p}; use patch_size 1 or a "
                                "divisor of both sides")
        self.config, self.channels, self.grid, self.num_classes = config, channels, (h, w), num_classes
        self.tokens = (h // p, w // p)
        width, n = config.width, (h // p) * (w // p)
        self.x_embed = nn.Linear(p * p * channels, width)
        if config.pos_embedding == "sincos-2d":
            self.register_buffer("pos_embed", sincos_2d(*self.tokens, width)[None], persistent=False)
        elif config.pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, width))
        else:
            self.pos_embed = None
        if config.rope:
            angles = rope_angles(grid_positions(*self.tokens), width // config.heads, config.rope_theta)
            self.register_buffer("rope_angles", angles.float(), persistent=False)
        else:
            self.rope_angles = None
        self.t_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.label_embed = nn.Embedding((num_classes or 0) + 1, width)
        self.blocks = nn.ModuleList(LightningDiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(config, p * p * channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """Released ``initialize_weights``: xavier linears, N(0, 0.02) label table and time MLP, AdaLN-Zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.label_embed.weight, std=0.02)
        nn.init.normal_(self.t_mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_mlp[2].weight, std=0.02)
        for block in [*self.blocks, self.final]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes or 0

    def condition(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``c = t_embed(t) + label_embed(y)``, ``"b d"``."""
        b = t.shape[0]
        if labels is None:
            labels = torch.full((b,), self.null_class, dtype=torch.long, device=t.device)
        elif self.num_classes is None and bool((labels != self.null_class).any()):
            raise BackboneError("this LightningDiT net is unconditional (num_classes=None) but got class labels")
        freq = timestep_embedding(t * self.config.time_scale, 256)
        return self.t_mlp(freq) + self.label_embed(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.channels, *self.grid):
            raise BackboneError(f"LightningDiT net expects 'b c h w' with (c, h, w)={(self.channels, *self.grid)}, "
                                f"got {tuple(x.shape)}")
        p = self.config.patch_size
        z = self.x_embed(rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p))
        if self.pos_embed is not None:
            z = z + self.pos_embed
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        cond = self.condition(t.expand(b) if t.ndim == 0 else t, labels)
        for block in self.blocks:
            z = block(z, cond, self.rope_angles)
        out = self.final(z, cond)
        hp, wp = self.tokens
        # float32 out even under bf16 autocast: the flow loss and the Euler sampler stay in fp32
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=hp, w=wp, p=p, q=p).float()


# ---------------------------------------------------------------------------------------------
# Presets: the released sizes (models/lightningdit.py); never change one in place
# ---------------------------------------------------------------------------------------------

LIGHTNINGDIT_SIZES: dict[str, dict[str, Any]] = {
    "B": {"width": 768, "depth": 12, "heads": 12},
    "L": {"width": 1024, "depth": 24, "heads": 16},
    "XL": {"width": 1152, "depth": 28, "heads": 16},
}
