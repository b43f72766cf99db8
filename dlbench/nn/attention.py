"""Scaled dot-product attention with the kernel chosen for the device (the denoisers' one attention call).

``attend(q, k, v)`` with ``q, k, v "b h n e"`` returns ``softmax(q kᵀ / sqrt(e)) v`` as ``"b h n e"``. On CUDA
(and any non-CPU device) it is ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels). On CPU, for the short sequences of token grids (n <= ``EXPLICIT_MAX_TOKENS``), it is the explicit
form: two batched matmuls with the softmax in fp32. Why: measured in
``benchmarks/results/train_mfu.md`` ("Attention kernel"), torch's CPU flash-attention backward runs at 7-10
GFLOP/s in bf16 on an AMX Xeon, slower than in fp32, and took ~75 % of the matmul time of a bf16 train step,
while bf16 batched matmuls run on AMX; one forward+backward of the explicit form was 4.8-5.0x faster in bf16 and
1.2x in fp32 at ``b=64, h=4-8, n=64, e=32``. Above the threshold the ``n x n`` score matrix would cost memory, so SDPA is kept.

``DLBENCH_ATTENTION=sdpa|explicit`` forces one form (for measurements; both compute the same function up to
rounding: tested against a float64 reference).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__all__ = ["EXPLICIT_MAX_TOKENS", "attend", "attention_kernel"]

#: longest sequence for which the CPU path materialises the ``"b h n n"`` scores
EXPLICIT_MAX_TOKENS = 1024


def attention_kernel(device: torch.device, n: int) -> str:
    """``"explicit"`` or ``"sdpa"`` for a sequence of ``n`` tokens on ``device`` (``DLBENCH_ATTENTION`` wins)."""
    forced = os.environ.get("DLBENCH_ATTENTION", "").strip().lower()
    if forced in ("sdpa", "explicit"):
        return forced
    return "explicit" if device.type == "cpu" and n <= EXPLICIT_MAX_TOKENS else "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``"b h n e", "b h m e", "b h m e" -> "b h n e"``: bidirectional attention (no mask); ``dropout_p`` drops
    attention weights, as SDPA does (pass 0 in eval)."""
    if attention_kernel(q.device, max(q.shape[-2], k.shape[-2])) == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # "b h n m", in q's (autocast) dtype
    # softmax in at least fp32 (bf16 exp/sum lose ~3 digits; float64 inputs stay float64)
    weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, v)
