"""Evaluation backends: torch-fidelity and clean-fid, called as they are meant to be called.

No FID/KID/precision-recall math lives here: torch-fidelity's ``calculate_metrics`` and clean-fid's
``get_folder_features`` / ``frechet_distance`` / ``kernel_distance`` compute them. dlbench only
(1) applies the protocol's uint8 round trip (and gray -> RGB), (2) hands the backend the resolved
offline Inception weights, and (3) caches the reference features under the dlbench cache dir keyed
by :meth:`EvalProtocol.reference_key`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dlbench.eval.inception import InceptionWeights, build_inception, cache_dir, inception_pool3_from_normalized
from dlbench.eval.protocol import EvalProtocol, ProtocolError

__all__ = [
    "to_uint8_rgb",
    "Uint8ImageDataset",
    "compute_backend_metrics",
    "torch_fidelity_metrics",
    "clean_fid_metrics",
    "clean_fid_extractor",
]

_TF_KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "prc_f_score",
    "inception_score_mean": "isc_mean",
    "inception_score_std": "isc_std",
}


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """The protocol's quantisation rule: ``"n c H W"`` -> uint8 ``"n 3 H W"``.

    Float input is taken to be in [-1, 1] and mapped by ``round(clamp((x + 1) * 127.5, 0, 255))``;
    uint8 passes through. One channel is repeated to three (the Inception is an RGB network).
    """
    if images.dim() != 4:
        raise ProtocolError(f"images must be 'n c H W', got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ProtocolError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
        images = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    c = images.shape[1]
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    elif c != 3:
        raise ProtocolError(f"images must have 1 or 3 channels, got {c}")
    return images.contiguous()


class Uint8ImageDataset(Dataset):
    """Items are uint8 ``"3 H W"`` tensors (what torch-fidelity's Dataset inputs require).

    Wraps a ``"n c H W"`` tensor, or a dataset yielding images or ``(image, label)`` pairs, keeping
    the first ``limit`` items.
    """

    def __init__(self, source: torch.Tensor | Dataset, limit: int | None = None):
        self.source = source
        n = len(source)  # type: ignore[arg-type]
        if limit is not None and limit > n:
            raise ProtocolError(f"asked for {limit} reference images but the split has only {n}; lower num_reference")
        self.n = n if limit is None else limit

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i >= self.n:
            raise IndexError(i)
        item = self.source[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        item = torch.as_tensor(item)
        return to_uint8_rgb(item[None])[0]


def _as_dataset(x: torch.Tensor | Dataset, limit: int | None = None) -> Uint8ImageDataset:
    return x if isinstance(x, Uint8ImageDataset) and limit is None else Uint8ImageDataset(x, limit)


class _WithProgress(Dataset):
    """Reports each item the backend reads (its DataLoader runs in this process) as progress of
    ``stage``; shows nothing when the backend never reads it (reference features from its cache)."""

    def __init__(self, source: Dataset, stage: str):
        from dlbench.observe.progress import task

        self.source = source
        self.bar = task(stage, len(source), "images", lazy=True)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.source[i]
        self.bar.update(advance=1)
        if self.bar.completed >= len(self):
            self.bar.close()
        return item


# ---------------------------------------------------------------------------------------------
# torch-fidelity
# ---------------------------------------------------------------------------------------------


def torch_fidelity_metrics(
    generated: torch.Tensor | Dataset,
    reference: torch.Tensor | Dataset,
    protocol: EvalProtocol,
    weights: InceptionWeights,
    *,
    reference_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[dict[str, float], dict[str, str]]:
    """``torch_fidelity.calculate_metrics`` on uint8 datasets; returns ``(metrics, unavailable)``."""
    import torch_fidelity

    gen, ref = _as_dataset(generated), _as_dataset(reference, protocol.num_reference)
    gen = _WithProgress(gen, "inception_features/generated")
    ref = _WithProgress(ref, "inception_features/reference")
    wanted = set(protocol.inception_metrics)
    unavailable: dict[str, str] = {}
    if "isc" in wanted and not weights.has_logits:
        wanted.discard("isc")
        unavailable["isc"] = weights.logits_unavailable_reason or "no logits"
    if "kid" in wanted and protocol.kid_subset_size > min(len(gen), len(ref)):
        raise ProtocolError(
            f"kid_subset_size={protocol.kid_subset_size} exceeds the {min(len(gen), len(ref))} images available; "
            "lower kid_subset_size or raise num_generated/num_reference"
        )
    if not wanted:
        return {}, unavailable
    device = torch.device(device)
    kwargs: dict[str, Any] = dict(
        input1=gen,
        input2=ref,
        cuda=device.type == "cuda",
        batch_size=batch_size,
        fid="fid" in wanted,
        kid="kid" in wanted,
        prc="prc" in wanted,
        isc="isc" in wanted,
        # one extractor for every metric: torch-fidelity would otherwise switch precision/recall to
        # VGG16 (its default there), whose weights are not available offline
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights.path),
        feature_extractor_internal_dtype="float64" if protocol.precision == "fp64" else "float32",
        kid_subsets=protocol.kid_subsets,
        kid_subset_size=protocol.kid_subset_size,
        prc_neighborhood=protocol.prc_neighborhood,
        rng_seed=protocol.kid_seed,
        verbose=False,
        datasets_download=False,
        # DataLoader workers = 0: worker processes only slow down feature extraction on small CPUs
        save_cpu_ram=True,
        cache=reference_cache_name is not None,
        cache_root=str(cache_dir() / "torch-fidelity"),
    )
    if reference_cache_name is not None:
        kwargs["input2_cache_name"] = reference_cache_name
    # torch-fidelity prints progress to stderr even when quiet; keep the runner's stdout pipeable
    # torch-fidelity loads its feature cache and the weights with weights_only=False; every load it
    # makes here is forced through dlbench's weights-only loader, so a planted pickle cannot run
    from dlbench.safeload import forced_weights_only

    try:
        with contextlib.redirect_stderr(io.StringIO()), forced_weights_only("torch-fidelity cache or weights file"):
            raw = torch_fidelity.calculate_metrics(**kwargs)
    finally:
        gen.bar.close()
        ref.bar.close()
    return {_TF_KEYS.get(k, k): float(v) for k, v in raw.items()}, unavailable


# ---------------------------------------------------------------------------------------------
# clean-fid
# ---------------------------------------------------------------------------------------------


def clean_fid_extractor(weights: InceptionWeights, device: torch.device | str = "cpu"):
    """A ``custom_feat_extractor`` for clean-fid built from the resolved weights (no download).

    clean-fid hands it float ``"b 3 299 299"`` in [0, 255] (already resized by PIL bicubic) and its
    own ``InceptionV3W`` computes ``layers((x - 128) / 128)``; this does the same on torch-fidelity's
    module, whose conv/BN weights are the same network (checked at conversion).
    """
    net = build_inception(weights).to(device)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, torch.float32)
        assert x.shape[2:] == (299, 299), f"clean-fid should resize to 299 first, got {tuple(x.shape)}"
        return inception_pool3_from_normalized(net, (x - 128) / 128)

    return fn


def write_png_folder(images: Dataset, folder: str | os.PathLike) -> Path:
    """Write uint8 ``"3 H W"`` items losslessly as PNG (clean-fid reads image folders)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(images)):  # type: ignore[arg-type]
        arr = images[i].permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{i:07d}.png")
    return folder


def _clean_features(images: Uint8ImageDataset, fn, batch_size: int, device: torch.device,
                    stage: str = "inception_features") -> np.ndarray:
    from cleanfid import fid as cfid

    from dlbench.observe.progress import task

    with tempfile.TemporaryDirectory(prefix="dlbench-cleanfid-") as tmp:
        write_png_folder(images, tmp)
        with task(stage, len(images), "images") as bar:

            def counted(x: torch.Tensor) -> torch.Tensor:
                out = fn(x)
                bar.update(advance=len(x))
                return out

            with contextlib.redirect_stdout(io.StringIO()):
                return cfid.get_folder_features(
                    tmp, counted, num_workers=0, batch_size=batch_size, device=device, mode="clean", verbose=False
                )


def clean_fid_metrics(
    generated: torch.Tensor | Dataset,
    reference: torch.Tensor | Dataset,
    protocol: EvalProtocol,
    weights: InceptionWeights,
    *,
    reference_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[dict[str, float], dict[str, str]]:
    """clean-fid (``mode="clean"``) FID and KID; returns ``(metrics, unavailable)``."""
    from cleanfid import fid as cfid

    device = torch.device(device)
    gen, ref = _as_dataset(generated), _as_dataset(reference, protocol.num_reference)
    fn = clean_fid_extractor(weights, device)
    cache_file = cache_dir() / "clean-fid" / f"{reference_cache_name}.npz" if reference_cache_name else None
    if cache_file is not None and cache_file.is_file():
        from dlbench.safeload import CorruptFileError, np_load

        ref_feats = np_load(cache_file, what="clean-fid reference features").get("feats")
        if ref_feats is None or ref_feats.ndim != 2:
            raise CorruptFileError(f"{cache_file}: clean-fid reference features lack a 2-d 'feats' array; delete it")
    else:
        ref_feats = _clean_features(ref, fn, batch_size, device, "inception_features/reference")
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, feats=ref_feats)
            os.replace(tmp, cache_file)
    gen_feats = _clean_features(gen, fn, batch_size, device, "inception_features/generated")
    out: dict[str, float] = {}
    if "fid" in protocol.inception_metrics:
        mu1, s1 = np.mean(gen_feats, axis=0), np.cov(gen_feats, rowvar=False)
        mu2, s2 = np.mean(ref_feats, axis=0), np.cov(ref_feats, rowvar=False)
        out["fid"] = float(cfid.frechet_distance(mu1, s1, mu2, s2))
    if "kid" in protocol.inception_metrics:
        # kernel_distance draws subsets from numpy's global RNG: seed it locally and restore it
        state = np.random.get_state()
        try:
            np.random.seed(protocol.kid_seed)
            out["kid_mean"] = cfid.kernel_distance(
                gen_feats, ref_feats, num_subsets=protocol.kid_subsets, max_subset_size=protocol.kid_subset_size
            )
        finally:
            np.random.set_state(state)
    return out, {}


def compute_backend_metrics(
    generated: torch.Tensor | Dataset,
    reference: torch.Tensor | Dataset,
    protocol: EvalProtocol,
    weights: InceptionWeights,
    **kwargs: Any,
) -> tuple[dict[str, float], dict[str, str]]:
    """Dispatch on ``protocol.backend``."""
    if protocol.feature_extractor_sha256 not in (None, weights.sha256):
        raise ProtocolError(
            f"protocol expects Inception weights sha256 {protocol.feature_extractor_sha256[:12]}... but the resolved "
            f"weights ({weights.source}: {weights.path}) have {weights.sha256[:12]}...; these numbers would not be "
            "comparable. Point DLBENCH_INCEPTION_WEIGHTS at the matching file or re-resolve the protocol"
        )
    fn = {"torch-fidelity": torch_fidelity_metrics, "clean-fid": clean_fid_metrics}[protocol.backend]
    return fn(generated, reference, protocol, weights, **kwargs)
