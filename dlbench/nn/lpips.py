"""LPIPS perceptual distance (Zhang et al. 2018) for the VQGAN loss, with its weights found offline first.

The network is the ``lpips`` package's ``LPIPS(net="vgg", version="0.1")``: a frozen VGG16 trunk
(relu1_2 ... relu5_3), unit-normalised channels, squared differences, learned non-negative 1x1
"linear" layers, spatial mean, summed over the five layers. Two weight files are needed:

- the **linear layers** ship inside the ``lpips`` wheel (``lpips/weights/v0.1/vgg.pth``, 7 KB);
- the **VGG16 trunk** is torchvision's ImageNet VGG16, which torchvision would download. dlbench
  resolves it offline first, in this order (the first that exists wins):

  1. ``explicit``: a path given in the tokenizer config (``lpips_vgg_weights``), else ``$DLBENCH_VGG16_WEIGHTS``;
  2. ``torch-hub-cache``: ``<torch hub dir>/checkpoints/vgg16-397923af.pth`` (where torchvision puts it);
  3. ``download``: torchvision's URL, only when ``$DLBENCH_OFFLINE`` is unset and the network works.

  Otherwise :class:`PerceptualWeightsError` is raised, naming the perceptual term and how to proceed
  (place the file, or set ``perceptual_weight=0``). A file with torchvision's name is checked against the
  sha256 prefix in that name (torch hub convention). Either layout is accepted: torchvision's
  (``features.<i>.weight``) or lpips's own (``net.slice<k>.<i>.weight``).

Both files are read with ``torch.load(weights_only=True)``: no code in them can run.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dlbench.registry import DlbenchError

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
VGG16_SHA256_PREFIX = "397923af"
#: VGG16 ``features`` indices of the 13 convs; lpips groups them in slices ending at relu1_2 .. relu5_3
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_SLICE_BOUNDS = (4, 9, 16, 23, 30)

Source = Literal["explicit", "torch-hub-cache", "download"]


class PerceptualWeightsError(DlbenchError):
    """The perceptual (LPIPS) term cannot be built: its weights are missing or wrong."""


@dataclass(frozen=True)
class VGGWeights:
    path: Path
    source: Source


def torch_hub_vgg16_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _refusal(reason: str) -> PerceptualWeightsError:
    offline = bool(os.environ.get("DLBENCH_OFFLINE"))
    return PerceptualWeightsError(
        f"the VQGAN perceptual (LPIPS) term needs VGG16 weights: {reason}. Put torchvision's {VGG16_FILENAME} in "
        f"{torch_hub_vgg16_path().parent} or set DLBENCH_VGG16_WEIGHTS (or tokenizer.lpips_vgg_weights) to it"
        + (", or unset DLBENCH_OFFLINE to download it" if offline else "")
        + "; or train without it: --set tokenizer.perceptual_weight=0"
    )


def _network_ok(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("download.pytorch.org", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_vgg16_weights(path: str | os.PathLike | None = None, *, allow_download: bool | None = None) -> VGGWeights:
    """Find the VGG16 trunk weights (module docstring order); raises :class:`PerceptualWeightsError`."""
    explicit = path or os.environ.get("DLBENCH_VGG16_WEIGHTS")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            who = "tokenizer.lpips_vgg_weights" if path else "DLBENCH_VGG16_WEIGHTS"
            raise _refusal(f"{p} (from {who}) does not exist")
        return VGGWeights(p, "explicit")
    hub = torch_hub_vgg16_path()
    if hub.is_file():
        return VGGWeights(hub, "torch-hub-cache")
    if allow_download is None:
        allow_download = not os.environ.get("DLBENCH_OFFLINE")
    if allow_download and _network_ok():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.hub.load_state_dict_from_url(VGG16_URL, progress=False, map_location="cpu", check_hash=True)
        return VGGWeights(hub, "download")
    raise _refusal("none found offline")


def vgg16_to_lpips_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``features.<i>.{weight,bias}`` -> lpips ``net.slice<k>.<i>.{weight,bias}`` (convs only);
    a state dict already in lpips's layout is returned as is (its ``net.`` keys)."""
    if any(k.startswith("net.slice") for k in state):
        return {k: v for k, v in state.items() if k.startswith("net.slice")}
    out = {}
    for i in VGG16_CONVS:
        k = next(n for n, bound in enumerate(_SLICE_BOUNDS, start=1) if i < bound)
        for p in ("weight", "bias"):
            src = f"features.{i}.{p}"
            if src not in state:
                raise KeyError(src)
            out[f"net.slice{k}.{i}.{p}"] = state[src]
    return out


def build_lpips(vgg_path: str | os.PathLike | None = None) -> nn.Module:
    """The frozen ``lpips.LPIPS(net="vgg")`` network with both weight files loaded (eval mode).

    Call it as ``lpips(x, y) -> "b 1 1 1"`` with images in [-1, 1]."""
    try:
        import lpips
    except ImportError:
        raise PerceptualWeightsError(
            "the VQGAN perceptual (LPIPS) term needs the `lpips` package: pip install 'dlbench[vqgan]' "
            "(or pip install lpips); or train without it: --set tokenizer.perceptual_weight=0"
        ) from None
    weights = resolve_vgg16_weights(vgg_path)
    if weights.path.name == VGG16_FILENAME:
        from dlbench.eval.inception import sha256_file

        digest = sha256_file(weights.path)
        if not digest.startswith(VGG16_SHA256_PREFIX):
            raise _refusal(f"{weights.path}: sha256 {digest[:12]}... does not match torchvision's published prefix "
                           f"{VGG16_SHA256_PREFIX} (corrupt or partial download; delete it)")
    with warnings.catch_warnings():  # lpips builds torchvision's VGG16 with the deprecated pretrained=False
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(pretrained=False, net="vgg", version="0.1", pnet_rand=True, verbose=False)
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    lins = torch.load(lin_path, map_location="cpu", weights_only=True)
    try:
        trunk = vgg16_to_lpips_keys(torch.load(weights.path, map_location="cpu", weights_only=True))
    except KeyError as exc:
        raise _refusal(f"{weights.path} ({weights.source}) is not a VGG16 state dict (no {exc.args[0]})") from None
    except Exception as exc:  # noqa: BLE001 - unreadable / not a weights-only file
        raise _refusal(f"{weights.path} ({weights.source}) cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        missing, unexpected = net.load_state_dict({**trunk, **lins}, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise _refusal(f"{weights.path} does not fit lpips's VGG16: {exc}") from None
    # lins.<i> are the same modules as lin<i> and scaling_layer holds constants: neither comes from a file
    needed = [k for k in missing if k.startswith(("net.", "lin0", "lin1", "lin2", "lin3", "lin4"))]
    if needed or unexpected:
        raise _refusal(f"{weights.path} does not fit lpips's VGG16 (missing {needed[:3]}, unexpected {unexpected[:3]})")
    net.eval().requires_grad_(False)
    net.weights_source = weights  # type: ignore[attr-defined]
    return net
