"""The evaluation protocol's image quantisation: the one place its uint8 rounding rule is written.

Generated images always pass through uint8 before any feature or metric (docs/protocol.md): float
images in [-1, 1] become ``round(clamp((x + 1) * 127.5, 0, 255))``; uint8 images pass through.
"""

from __future__ import annotations

import torch

from dlbench.eval.protocol import ProtocolError

__all__ = ["quantize_uint8", "to_uint8_rgb"]


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """The protocol's uint8 round trip, keeping channels: float in [-1, 1] -> uint8 (on the CPU); uint8 as is."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ProtocolError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """The protocol's quantisation (:func:`quantize_uint8`) of ``"n c H W"`` images, as uint8 ``"n 3 H W"``:
    one channel is repeated to three (the Inception is an RGB network)."""
    if images.dim() != 4:
        raise ProtocolError(f"images must be 'n c H W', got shape {tuple(images.shape)}")
    images = quantize_uint8(images)
    c = images.shape[1]
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    elif c != 3:
        raise ProtocolError(f"images must have 1 or 3 channels, got {c}")
    return images.contiguous()
