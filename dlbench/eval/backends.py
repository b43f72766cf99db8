"""Evaluation backends: torch-fidelity and clean-fid (:mod:`dlbench.eval.cleanfid_backend`), called as they
are meant to be called.

No FID/KID/precision-recall math lives here: torch-fidelity's metric functions (``metric_fid``,
``metric_kid``, ``metric_prc``, ``metric_isc``) and clean-fid's ``get_folder_features`` /
``frechet_distance`` / ``kernel_distance`` compute them. dlbench only (1) applies the protocol's
uint8 round trip (and gray -> RGB), (2) extracts the torch-fidelity backend's features with
:class:`~dlbench.eval.fid_inception.FidInception` (torch-fidelity's network and resize, BN-folded and
fused: within 1e-4 of torch-fidelity's own extractor in exact mode, several times faster in bf16
mode) from the resolved offline Inception weights, and (3) caches the reference features under the
dlbench cache dir keyed by :meth:`EvalProtocol.reference_key`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from dlbench.eval.fid_inception import FidInception, build_fid_inception
from dlbench.eval.inception import InceptionWeights, cache_dir
from dlbench.eval.protocol import EvalProtocol, ProtocolError
from dlbench.eval.quantize import to_uint8_rgb

__all__ = [
    "to_uint8_rgb",
    "Uint8ImageDataset",
    "compute_backend_metrics",
    "torch_fidelity_metrics",
    "extract_inception_features",
    "extract_inception_features_sharded",
    "FeatureProgress",
    "feature_mode",
    "bf16_fid_deviation",
    "reference_feature_file",
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


# ---------------------------------------------------------------------------------------------
# torch-fidelity
# ---------------------------------------------------------------------------------------------


class FeatureProgress:
    """Progress of one feature extraction through the shared progress display (stage
    ``inception_features/<label>``: rich bar on a terminal, plain lines in a log file) and an
    ``events("features", ...)`` record with images/s when it ends."""

    def __init__(self, label: str, total: int, events: Callable[..., None] | None = None, mode: str = "exact"):
        from dlbench.observe.progress import task

        self.label, self.total, self.events, self.mode = label, total, events, mode
        self.done, self.start = 0, time.perf_counter()
        self.bar = task(f"inception_features/{label}", total, "images", info=f"{mode} mode") if total > 0 else None

    @property
    def images_per_s(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.done)

    def close(self) -> dict[str, Any]:
        if self.bar is not None:
            self.bar.close()
        record = {"input": self.label, "mode": self.mode, "n": self.done,
                  "seconds": round(time.perf_counter() - self.start, 3), "images_per_s": round(self.images_per_s, 3)}
        if self.events is not None:
            self.events("features", **record)
        return record


def extract_inception_features(
    images: torch.Tensor | Dataset,
    net: FidInception,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    logits: bool = False,
    label: str = "generated",
    events: Callable[..., None] | None = None,
) -> dict[str, torch.Tensor]:
    """torch-fidelity-style features dict ``{"2048": "n 2048"[, "logits_unbiased": "n 1008"]}`` (float32,
    CPU) of uint8 images, batched in order, with a progress bar and a ``features`` event (images/s)."""
    data = _as_dataset(images)
    n = len(data)
    device = torch.device(device)
    net = net.to(device)
    pools, logit_parts = [], []
    progress = FeatureProgress(label, n, events, net.mode)
    try:
        for start in range(0, n, batch_size):
            batch = torch.stack([data[i] for i in range(start, min(start + batch_size, n))]).to(device)
            pool, lg = net(batch, logits=logits)
            pools.append(pool.cpu())
            if lg is not None:
                logit_parts.append(lg.cpu())
            progress.update(len(batch))
    finally:
        progress.close()
    out = {"2048": torch.cat(pools) if pools else torch.empty(0, 2048)}
    if logits:
        out["logits_unbiased"] = torch.cat(logit_parts) if logit_parts else torch.empty(0, 1008)
    return out


def extract_inception_features_sharded(
    shard: torch.Tensor | Dataset,
    indices: torch.Tensor,
    n: int,
    net: FidInception,
    ctx: Any,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    logits: bool = False,
    label: str = "generated",
    events: Callable[..., None] | None = None,
) -> dict[str, torch.Tensor] | None:
    """Features of ``n`` images extracted by all ranks of ``ctx`` (a :class:`dlbench.train.dist.DistContext`)
    together: each rank passes its ``shard`` (uint8 ``"m c H W"``, the images at ``indices`` ``"m"`` of
    ``range(n)``, e.g. ``dlbench.seeding.shard_indices``) and rank 0 receives the features of all ``n``
    in index order (the dict of :func:`extract_inception_features`); other ranks get None.

    Every image goes through the same network alone per row, so the gathered features are the ones one
    process would extract (up to the kernel's batch-size dependence: see tests/test_eval_sharded.py)."""
    data = _as_dataset(shard)
    if len(data) != len(indices):
        raise ProtocolError(f"sharded feature extraction: {len(data)} images for {len(indices)} indices")
    from dlbench.train.dist import gather_to_main_by_index

    local = extract_inception_features(data, net, batch_size=batch_size, device=device, logits=logits,
                                       label=label, events=events if ctx.is_main else None)
    out = {k: gather_to_main_by_index(v, indices, n, ctx) for k, v in sorted(local.items())}  # same order on all ranks
    return out if ctx.is_main else None


def reference_feature_file(name: str) -> Path:
    """Where the torch-fidelity backend caches a reference set's features: ``.npz`` (loaded with
    ``allow_pickle=False``) holding ``"2048": float32 "n 2048"`` (and ``"logits_unbiased"`` when asked)."""
    return cache_dir() / "features" / f"{name}.npz"


def _load_features(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from dlbench.safeload import np_load

    # no pickle: a planted object array is refused with an error naming the file (dlbench.safeload)
    return {k: torch.from_numpy(v.copy()) for k, v in np_load(path, what="cached reference features").items()}


def _save_features(path: Path, feats: dict[str, torch.Tensor]) -> None:
    from dlbench.fsutil import atomic_write

    with atomic_write(path) as fh:
        np.savez(fh, **{k: v.numpy() for k, v in feats.items()})


def feature_mode(protocol: EvalProtocol) -> str:
    """``"bf16"`` (fast mode) when the protocol's precision is bf16, else ``"exact"``."""
    return "bf16" if protocol.precision == "bf16" else "exact"


#: real images the fast mode's FID deviation is measured on (first half vs second half of the reference)
DEVIATION_IMAGES = 500


def bf16_fid_deviation(
    reference: torch.Tensor | Dataset,
    weights: InceptionWeights,
    *,
    n: int = DEVIATION_IMAGES,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    cache_name: str | None = None,
    events: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """How far the fast (bf16) mode's FID is from exact mode's on real images, on this machine.

    The first ``n`` reference images (``n`` even, at most the set) are split in halves and
    ``FID(first half, second half)`` is computed from exact and from bf16 features with torch-fidelity's
    functions. Returns ``{"fid_exact", "fid_bf16", "abs", "rel", "n", "max_abs_feature_diff", "machine"}``;
    cached as JSON under ``<cache>/features/`` keyed by ``cache_name``, the weights, the CPU/GPU and torch
    (bf16 kernels differ between machines).
    """
    import hashlib
    import json
    import platform

    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    ref = _as_dataset(reference)
    n = min(n, len(ref)) // 2 * 2
    if n < 4:
        raise ProtocolError(f"measuring the bf16 FID deviation needs at least 4 reference images, got {len(ref)}")
    from dlbench.train.dist import cpu_name

    device = torch.device(device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    key_src = {"cache_name": cache_name, "weights": weights.sha256, "machine": machine, "torch": torch.__version__,
               "n": n, "python": platform.python_version()}
    path = None
    if cache_name is not None:
        key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / "features" / f"bf16-deviation-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
    subset = Uint8ImageDataset(ref, n)
    feats = {}
    for mode in ("exact", "bf16"):
        feats[mode] = extract_inception_features(subset, build_fid_inception(weights, mode), batch_size=batch_size,
                                                 device=device, label=f"bf16-deviation-check/{mode}", events=events)["2048"]
    half = n // 2
    fid = {m: fid_statistics_to_metric(fid_features_to_statistics(f[:half]), fid_features_to_statistics(f[half:]),
                                       False)["frechet_inception_distance"] for m, f in feats.items()}
    out = {"fid_exact": fid["exact"], "fid_bf16": fid["bf16"], "abs": abs(fid["bf16"] - fid["exact"]),
           "rel": abs(fid["bf16"] - fid["exact"]) / max(abs(fid["exact"]), 1e-12), "n": n,
           "max_abs_feature_diff": float((feats["bf16"] - feats["exact"]).abs().max()), "machine": machine,
           "torch": torch.__version__}
    if path is not None:
        from dlbench.fsutil import atomic_write

        with atomic_write(path) as fh:
            fh.write(json.dumps(out, indent=2).encode())
    return out


def torch_fidelity_metrics(
    generated: torch.Tensor | Dataset,
    reference: torch.Tensor | Dataset,
    protocol: EvalProtocol,
    weights: InceptionWeights,
    *,
    reference_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    events: Callable[..., None] | None = None,
    generated_features: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """torch-fidelity's metric functions (FID statistics and distance, KID, precision/recall, IS) on
    features of dlbench's :class:`FidInception` (torch-fidelity's network, folded and fused; within 1e-4
    of its own extractor in exact mode). Returns ``(metrics, unavailable)``.

    ``generated_features`` (``{"2048": "n 2048"[, "logits_unbiased": "n 1008"]}``, e.g. gathered from
    all ranks by :func:`extract_inception_features_sharded` under torchrun) replaces the extraction of
    the generated images' features; it must come from this protocol's feature mode.

    Reference features are cached as ``.npz`` (no pickle) under ``<cache>/features/<reference_cache_name>``
    (+ ``-bf16`` in fast mode: the reference of a fast-mode protocol is extracted in the same mode).
    """
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    gen, ref = _as_dataset(generated), _as_dataset(reference, protocol.num_reference)
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
    mode = feature_mode(protocol)
    net = build_fid_inception(weights, mode, float64=protocol.precision == "fp64")
    opts = dict(batch_size=batch_size, device=device, events=events)
    if generated_features is None:
        f_gen = extract_inception_features(gen, net, logits="isc" in wanted, label="generated", **opts)
    else:
        need = {"2048", *(("logits_unbiased",) if "isc" in wanted else ())}
        if not need <= set(generated_features) or any(len(generated_features[k]) != len(gen) for k in need):
            raise ProtocolError(
                f"generated_features must hold {sorted(need)} for the {len(gen)} generated images, got "
                f"{ {k: tuple(v.shape) for k, v in generated_features.items()} }")
        f_gen = generated_features
    f_ref = None
    path = None
    if reference_cache_name is not None and {"fid", "kid", "prc"} & wanted:
        path = reference_feature_file(reference_cache_name + ("-bf16" if mode == "bf16" else ""))
        f_ref = _load_features(path)
    if f_ref is None and {"fid", "kid", "prc"} & wanted:
        f_ref = extract_inception_features(ref, net, label="reference", **opts)
        if path is not None:
            _save_features(path, f_ref)
    kwargs: dict[str, Any] = dict(
        kid_subsets=protocol.kid_subsets, kid_subset_size=protocol.kid_subset_size,
        prc_neighborhood=protocol.prc_neighborhood, rng_seed=protocol.kid_seed, verbose=False, save_cpu_ram=True,
    )
    raw: dict[str, Any] = {}
    if "fid" in wanted:
        stats = [fid_featuresdict_to_statistics(f, "2048") for f in (f_gen, f_ref)]
        raw.update(fid_statistics_to_metric(stats[0], stats[1], False))
    if "kid" in wanted:
        raw.update(kid_featuresdict_to_metric(f_gen, f_ref, "2048", **kwargs))
    if "prc" in wanted:
        raw.update(prc_featuresdict_to_metric(f_gen, f_ref, "2048", **kwargs))
    if "isc" in wanted:
        raw.update(isc_featuresdict_to_metric(f_gen, "logits_unbiased", **kwargs))
    out = {_TF_KEYS.get(k, k): float(v) for k, v in raw.items()}
    if mode == "bf16" and "fid" in out:
        # fast mode: every FID it produces carries its measured deviation from exact mode on real images
        dev = bf16_fid_deviation(ref, weights, device=device, batch_size=batch_size, events=events,
                                 cache_name=reference_cache_name)
        out["fid_bf16_deviation_abs"] = dev["abs"]
        out["fid_bf16_deviation_rel"] = dev["rel"]
    return out, unavailable


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
    if protocol.backend == "clean-fid":
        from dlbench.eval.cleanfid_backend import clean_fid_metrics

        kwargs.pop("events", None)  # clean-fid extracts inside its own loop
        if kwargs.pop("generated_features", None) is not None:
            raise ProtocolError("precomputed (sharded) generated features exist for backend 'torch-fidelity' only")
        return clean_fid_metrics(generated, reference, protocol, weights, **kwargs)
    fn = {"torch-fidelity": torch_fidelity_metrics}[protocol.backend]
    return fn(generated, reference, protocol, weights, **kwargs)


def __getattr__(name: str):
    # the clean-fid backend moved to dlbench.eval.cleanfid_backend; older imports from here keep working
    if name in {"clean_fid_extractor", "clean_fid_metrics", "write_png_folder"}:
        from dlbench.eval import cleanfid_backend

        return getattr(cleanfid_backend, name)
    raise AttributeError(f"module 'dlbench.eval.backends' has no attribute {name!r}")
