"""Pure image transforms shared by every loader: channel conversion, crop/pad/resize, decoding.

All tensors are uint8 ``"b c H W"`` (or ``"c H W"`` for one decoded image). Every loader funnels its
pixels through :func:`convert_channels` and :func:`fit_square`, so the same config gives the same
pixels whatever the on-disk format.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dlbench.data.errors import CorruptImageError

Crop = Literal["center", "resize", "pad"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"})

# ITU-R 601-2 luma in 16.16 fixed point, exactly as PIL's ``convert("L")`` computes it, so grey images
# are identical whether they were converted by PIL (files) or here (arrays such as CIFAR).
_LUMA = (19595, 38470, 7471)


def luma(images: torch.Tensor) -> torch.Tensor:
    """RGB -> grey: ``"b 3 H W" -> "b 1 H W"`` uint8, ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``."""
    x = images.to(torch.int64)
    y = (_LUMA[0] * x[:, 0] + _LUMA[1] * x[:, 1] + _LUMA[2] * x[:, 2] + 0x8000) >> 16
    return y.to(torch.uint8).unsqueeze(1)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``"b c H W" -> "b channels H W"``: grey is repeated to RGB, RGB goes to luma, RGBA drops alpha.

    Any other channel count is rejected: silently reinterpreting channels would corrupt the data.
    """
    c = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if c == 4:
        images, c = images[:, :3], 3
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3:
        return luma(images)
    raise ValueError(f"cannot convert images with {c} channels to {channels}: expected 1 (grey), 3 (RGB) or 4 (RGBA)")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 ``"b c H W"`` to ``size = (H', W')``, rounded and clamped."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = images.to(torch.float32)
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def center_crop_square(images: torch.Tensor) -> torch.Tensor:
    """Crop the central ``s x s`` square, ``s = min(H, W)`` (same offsets as torchvision's CenterCrop)."""
    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return images[..., top : top + s, left : left + s]


def pad_square(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Zero-pad ``"b c H W"`` symmetrically (extra pixel bottom/right) to ``resolution x resolution``."""
    h, w = images.shape[-2:]
    if h > resolution or w > resolution:
        raise ValueError(
            f"crop='pad' cannot pad {h}x{w} images to the smaller resolution {resolution}; "
            "use crop='center' or crop='resize', or a resolution >= the image size"
        )
    top, left = (resolution - h) // 2, (resolution - w) // 2
    return F.pad(images, (left, resolution - w - left, top, resolution - h - top), value=0)


def fit_square(images: torch.Tensor, resolution: int, crop: Crop) -> torch.Tensor:
    """``"b c H W" -> "b c R R"``, ``R = resolution``.

    ``center``: central square crop, then resize (aspect kept). ``resize``: resize both sides
    (aspect changes). ``pad``: zero padding, no resampling (MNIST-style 28 -> 32).
    """
    if crop == "pad":
        return pad_square(images, resolution)
    if crop == "center":
        images = center_crop_square(images)
    elif crop != "resize":
        raise ValueError(f"unknown crop mode {crop!r}: use 'center', 'resize' or 'pad'")
    return resize(images, (resolution, resolution))


def preprocess(images: torch.Tensor, *, resolution: int, channels: int, crop: Crop, chunk: int = 4096) -> torch.Tensor:
    """Channel conversion then square fit of a uint8 batch, in chunks to bound float memory."""
    out = [fit_square(convert_channels(images[i : i + chunk], channels), resolution, crop) for i in range(0, len(images), chunk)]
    if not out:
        return torch.empty((0, channels, resolution, resolution), dtype=torch.uint8)
    return torch.cat(out)


def pil_to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image as uint8 ``"c H W"`` with ``channels`` channels (explicit grey/RGB conversion)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs: PIL's convert("L") clips at 255; keep the top 8 bits instead.
        arr = (np.asarray(img).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_image(data: bytes, source: str, channels: int) -> torch.Tensor:
    """Decode encoded image bytes (PNG/JPEG/WebP/...) to uint8 ``"c H W"``.

    Raises :class:`CorruptImageError` naming ``source`` when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: truncated files fail here, not later
            return pil_to_tensor(img, channels)
    except CorruptImageError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise CorruptImageError(source, f"{type(exc).__name__}: {exc}") from exc
