"""Frozen vision-foundation feature extractors for the VF alignment loss (kind ``feature_extractor``).

VA-VAE aligns its latent with DINOv2 ViT-L/14 patch tokens (MAE ViT-L/16 as the alternative). Here they
are ``timm`` architectures whose weights are resolved **offline first, never downloaded silently**, in the
same order as dlbench's Inception weights (:mod:`dlbench.eval.inception`):

1. ``explicit``: ``weights_path`` in the extractor's config;
2. ``env``: ``$DLBENCH_DINOV2_WEIGHTS`` / ``$DLBENCH_MAE_WEIGHTS``;
3. ``hf-cache``: the user's Hugging Face hub cache (``timm/<arch>``, ``model.safetensors`` then
   ``pytorch_model.bin``), where ``timm.create_model(arch, pretrained=True)`` or
   ``huggingface-cli download`` put them; looked up without network access;
4. otherwise refused with a one-line instruction (:class:`FoundationWeightsError`).

A weights file is a safetensors file or a ``torch.load(weights_only=True)`` state dict, in timm's layout
or the original facebookresearch layout (converted by timm's own ``checkpoint_filter_fn``).

Besides the ``FeatureExtractor`` interface (``features``: uint8 ``"b c H W" -> "b f"``, the mean patch
token), a foundation extractor has ``feature_grid(images, grid)``: float images in [-1, 1] ``"b c H W"``
-> patch tokens ``"b f h w"`` on exactly the latent grid ``(h, w)`` -- the image is resized to
``(h * patch, w * patch)`` first, as VA-VAE resizes 256 px images to 224 = 16 x 14 for a 16 x 16 latent
(class and register tokens dropped). ``bias`` is a one-line statement of what aligning to it favours,
recorded in run metadata by the VF regularizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dlbench.eval.inception import sha256_file
from dlbench.interfaces import ComponentConfig, FeatureExtractor
from dlbench.registry import DlbenchError

__all__ = [
    "FoundationWeightsError",
    "ResolvedWeights",
    "resolve_foundation_weights",
    "hf_cache_file",
    "TimmFoundationConfig",
    "TimmFoundation",
    "DINOv2",
    "MAE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

Source = Literal["explicit", "env", "hf-cache"]


class FoundationWeightsError(DlbenchError):
    """No usable weights for a foundation model (or a file that does not fit its architecture)."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: Source


def hf_cache_file(repo_id: str, filenames: tuple[str, ...] = WEIGHT_FILES) -> Path | None:
    """The first of ``filenames`` present in the local Hugging Face hub cache for ``repo_id`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def resolve_foundation_weights(name: str, arch: str, explicit: str | None, env_var: str) -> ResolvedWeights:
    """Explicit path -> ``$env_var`` -> HF hub cache of ``timm/<arch>`` -> :class:`FoundationWeightsError`."""
    for value, source in ((explicit, "explicit"), (os.environ.get(env_var) or None, "env")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                what = "weights_path" if source == "explicit" else f"${env_var}"
                raise FoundationWeightsError(f"{name}: {what} = {value} is not a file")
            return ResolvedWeights(path, source)  # type: ignore[arg-type]
    cached = hf_cache_file(f"timm/{arch}")
    if cached is not None:
        return ResolvedWeights(cached, "hf-cache")
    raise FoundationWeightsError(
        f"{name}: no {arch} weights on this machine (dlbench never downloads them itself); run "
        f"`huggingface-cli download timm/{arch} model.safetensors` once, or set weights_path or ${env_var}"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from dlbench.safeload import torch_load

    blob = torch_load(path, what="foundation model weights")
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):  # MAE's released files wrap it
        blob = blob["model"]
    if not isinstance(blob, dict):
        raise FoundationWeightsError(f"{path}: not a state dict")
    return blob


_MODELS: dict[tuple[str, str], tuple[nn.Module, str]] = {}


def _load_timm(name: str, arch: str, path: Path) -> tuple[nn.Module, str]:
    key = (arch, str(path))
    if key not in _MODELS:
        try:
            import timm
            from timm.models.vision_transformer import checkpoint_filter_fn
        except ImportError:
            raise FoundationWeightsError(
                f"{name} needs timm: `pip install 'dlbench[foundation]'` (or `pip install timm`)"
            ) from None
        # dynamic_img_size: the position embedding is interpolated to the grid asked for (feature_grid)
        model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        state = checkpoint_filter_fn(_read_state_dict(path), model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier heads are unused
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise FoundationWeightsError(
                f"{name}: {path} does not fit timm {arch}: missing {list(missing)[:3]}, unexpected "
                f"{list(unexpected)[:3]} ({len(missing)}/{len(unexpected)} keys)"
            )
        model.eval().requires_grad_(False)
        _MODELS[key] = (model, sha256_file(path))
    return _MODELS[key]


class TimmFoundationConfig(ComponentConfig):
    """``arch``: a timm ViT name; ``weights_path``: an explicit weights file (else env var, then HF cache)."""

    arch: str
    weights_path: str | None = None


class TimmFoundation(FeatureExtractor):
    """A frozen timm ViT; patch tokens as a feature grid (class/register tokens dropped)."""

    Config: ClassVar[type[ComponentConfig]] = TimmFoundationConfig
    display_name: ClassVar[str] = "foundation"
    env_var: ClassVar[str] = "DLBENCH_FOUNDATION_WEIGHTS"
    bias: ClassVar[str] = ""

    def __init__(self, config: TimmFoundationConfig | None = None):
        super().__init__()
        self.config = config or self.Config()
        self.weights = resolve_foundation_weights(self.display_name, self.config.arch, self.config.weights_path,
                                                  self.env_var)
        model, self._sha256 = _load_timm(self.display_name, self.config.arch, self.weights.path)
        self.__dict__["_model"] = model  # frozen and shared: kept out of module trees and checkpoints
        self.dim = int(model.embed_dim)
        self.patch = int(model.patch_embed.patch_size[0])
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def weights_sha256(self) -> str | None:
        return self._sha256

    def feature_grid(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Float images in [-1, 1] ``"b c H W"`` (c = 1 or 3) -> patch tokens ``"b f h w"`` with ``(h, w) = grid``."""
        model = self._model
        device = images.device
        if next(model.parameters()).device != device:
            model.to(device)
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = grid
        x = F.interpolate(x, size=(h * self.patch, w * self.patch), mode="bicubic", align_corners=False)
        x = ((x + 1) / 2 - self._mean.to(device)) / self._std.to(device)
        tokens = model.forward_features(x)[:, model.num_prefix_tokens:]  # "b (h w) f"
        return tokens.transpose(1, 2).reshape(len(x), self.dim, h, w)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``"b c H W" -> "b f"``: mean patch token on a 16 x 16 grid (VA-VAE's 224 px for patch 14)."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        return self.feature_grid(x, (16, 16)).mean((2, 3))


class DINOv2Config(TimmFoundationConfig):
    """Default ViT-S/14 (the CPU-scale spec's choice at 112 px for an 8 x 8 grid); the paper's is
    ``vit_large_patch14_dinov2.lvd142m``."""

    arch: str = Field("vit_small_patch14_dinov2.lvd142m")


class DINOv2(TimmFoundation):
    """DINOv2 (self-supervised ViT, LVD-142M) patch tokens: VA-VAE's default foundation model."""

    Config = DINOv2Config
    display_name = "dinov2"
    env_var = "DLBENCH_DINOV2_WEIGHTS"
    bias = "none known towards dlbench's metrics (DINOv2: self-supervised, ImageNet-scale LVD-142M; the paper's setting)"


class MAEConfig(TimmFoundationConfig):
    """Default ViT-B/16 (the smallest released MAE); the paper's is ``vit_large_patch16_224.mae``."""

    arch: str = Field("vit_base_patch16_224.mae")


class MAE(TimmFoundation):
    """MAE (masked-autoencoder pretrained ViT, ImageNet-1k) patch tokens: VA-VAE's alternative."""

    Config = MAEConfig
    display_name = "mae"
    env_var = "DLBENCH_MAE_WEIGHTS"
    bias = "none known towards dlbench's metrics (MAE: self-supervised on ImageNet-1k; the paper's alternative)"
