"""What the runner calls: evaluate generated samples or a tokenizer under one :class:`EvalProtocol`.

Both functions are independent of batch size: features are per image, domain features are computed
in float64, and tokenizer metrics are sums over images.
"""

from __future__ import annotations

from typing import Any

import torch

from dlbench.eval.backends import Uint8ImageDataset, compute_backend_metrics
from dlbench.eval.domain import DomainClassifierConfig, domain_metrics, stack_split, train_domain_classifier
from dlbench.eval.inception import cache_dir, resolve_inception_weights
from dlbench.eval.protocol import EvalProtocol, ProtocolError
from dlbench.eval.quantize import quantize_uint8, to_uint8_rgb
from dlbench.eval.tokenizer_metrics import TokenizerMetricsAccumulator
from dlbench.interfaces import ImageDataset, Tokenizer
from dlbench.shipped import install_reference_features

__all__ = ["evaluate_samples", "evaluate_tokenizer", "bind_reference", "quantize_uint8", "sharded_generated_features"]


def _dataset_name(dataset: ImageDataset) -> str:
    return str(getattr(dataset, "name", None) or type(dataset).__name__)


def bind_reference(protocol: EvalProtocol, reference: ImageDataset) -> EvalProtocol:
    """Fill the protocol's reference dataset name and fingerprint from ``reference``.

    A protocol already bound to a different fingerprint is refused (its numbers would not compare).
    """
    if protocol.reference_split not in reference.splits:
        raise ProtocolError(
            f"protocol reference_split={protocol.reference_split!r} but {_dataset_name(reference)} has splits "
            f"{list(reference.splits)}"
        )
    fp = reference.fingerprint(protocol.reference_split)
    name = _dataset_name(reference)
    if protocol.reference_fingerprint not in (None, fp):
        raise ProtocolError(
            f"protocol is bound to reference fingerprint {protocol.reference_fingerprint[:12]}... but "
            f"{name}/{protocol.reference_split} has {fp[:12]}...; the reference data changed"
        )
    return protocol.model_copy(update={"reference_fingerprint": fp, "reference_dataset": protocol.reference_dataset or name})


def _domain(
    images: torch.Tensor, labels: torch.Tensor | None, protocol: EvalProtocol, reference: ImageDataset,
    train_split: str, config: DomainClassifierConfig | None,
) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    if not reference.num_classes:
        return {}, {"domain_*": f"{_dataset_name(reference)} has no class labels to train a domain classifier"}, {}
    test = reference.split("test") if "test" in reference.splits and train_split != "test" else None
    model, info = train_domain_classifier(
        reference.split(train_split), test, fingerprint=reference.fingerprint(train_split),
        channels=reference.channels, num_classes=reference.num_classes, config=config,
    )
    ref_imgs, _ = stack_split(reference.split(protocol.reference_split), protocol.num_reference)
    metrics = domain_metrics(model, images, ref_imgs, labels)
    unavailable = {} if labels is not None else {"domain_class_acc": "unconditional samples (no labels)"}
    details = {"domain_classifier_key": info["key"], "domain_classifier_test_accuracy": info["test_accuracy"],
               "domain_classifier_source": info.get("source", "trained")}
    return metrics, unavailable, details


def evaluate_samples(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    protocol: EvalProtocol,
    reference: ImageDataset,
    *,
    device: torch.device | str = "cpu",
    train_split: str = "train",
    batch_size: int = 64,
    domain_config: DomainClassifierConfig | None = None,
    events: Any = None,
    generated_features: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Metrics of generated ``images`` (uint8 ``"n c H W"``, or float in [-1, 1]) under ``protocol``.

    Returns ``{"protocol_hash", "protocol", "metrics": {name: value}, "n", "unavailable":
    {name: reason}, "details"}``. The domain classifier trains on ``train_split``. ``events(kind, **fields)``
    (e.g. ``RunDir.event``) receives a ``features`` record (images/s) per Inception feature extraction.
    ``generated_features``: the Inception features of ``images`` already extracted (by
    :func:`sharded_generated_features` under torchrun); torch-fidelity backend only.
    """
    images = quantize_uint8(images)
    if images.dim() != 4 or images.shape[1] != reference.channels:
        raise ProtocolError(
            f"samples must be 'n {reference.channels} H W' like {_dataset_name(reference)}, got {tuple(images.shape)}"
        )
    n = images.shape[0]
    if n != protocol.num_generated:
        raise ProtocolError(
            f"protocol {protocol.name!r} evaluates num_generated={protocol.num_generated} samples, got {n}; "
            "generate that many or resolve the protocol with num_generated overridden"
        )
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if labels.shape != (n,):
            raise ProtocolError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    protocol = bind_reference(protocol, reference)
    metrics: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    details: dict[str, Any] = {}
    if protocol.inception_metrics:
        weights = resolve_inception_weights()
        details.update(inception_weights_source=weights.source, inception_weights_path=str(weights.path))
        ref = Uint8ImageDataset(reference.split(protocol.reference_split), protocol.num_reference)
        cache_name = f"dlbench-ref-{protocol.reference_key()}"
        if protocol.backend == "torch-fidelity":  # shipped features of this exact reference key, if any
            install_reference_features(protocol.reference_key(), cache_name)
        m, u = compute_backend_metrics(
            to_uint8_rgb(images), ref, protocol, weights,
            reference_cache_name=cache_name, device=device, batch_size=batch_size, events=events,
            generated_features=generated_features,
        )
        metrics.update(m)
        unavailable.update(u)
    if protocol.domain_metrics:
        m, u, d = _domain(images, labels, protocol, reference, train_split, domain_config)
        metrics.update(m)
        unavailable.update(u)
        details.update(d)
    return {
        "protocol_hash": protocol.hash(),
        "protocol": protocol.model_dump(mode="json"),
        "metrics": metrics,
        "n": n,
        "unavailable": unavailable,
        "details": details,
    }


def sharded_generated_features(
    shard: torch.Tensor,
    indices: torch.Tensor,
    n: int,
    protocol: EvalProtocol,
    ctx: Any,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    events: Any = None,
) -> dict[str, torch.Tensor] | None:
    """Under torchrun: every rank extracts the protocol's Inception features of its ``shard`` of the
    ``n`` generated images (uint8 or float ``"m c H W"``, the samples at ``indices`` ``"m"``) and rank 0
    gets all ``n`` in index order, to pass to :func:`evaluate_samples` as ``generated_features``
    (others get None). Same uint8 round trip, network and feature mode as :func:`evaluate_samples`."""
    if protocol.backend != "torch-fidelity" or not protocol.inception_metrics:
        raise ProtocolError(f"sharded feature extraction needs Inception metrics on backend 'torch-fidelity', "
                            f"got {protocol.backend!r} with {list(protocol.inception_metrics)}")
    from dlbench.eval.backends import extract_inception_features_sharded, feature_mode
    from dlbench.eval.inception import build_fid_inception

    weights = resolve_inception_weights()
    net = build_fid_inception(weights, feature_mode(protocol), float64=protocol.precision == "fp64")
    logits = "isc" in protocol.inception_metrics and weights.has_logits
    return extract_inception_features_sharded(to_uint8_rgb(quantize_uint8(shard)), indices, n, net, ctx,
                                              batch_size=batch_size, device=device, logits=logits, events=events)


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer,
    dataset: ImageDataset,
    split: str,
    protocol: EvalProtocol,
    device: torch.device | str = "cpu",
    *,
    batch_size: int = 64,
    num_images: int | None = None,
    domain_config: DomainClassifierConfig | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of ``tokenizer`` on the first ``num_images`` (default
    ``protocol.num_generated``) images of ``split``: PSNR, SSIM, MSE, codebook usage / perplexity /
    dead codes, and reconstruction FID through the backend (``rfid``; ``domain_rfd`` with the
    domain classifier). Reconstructions go through the same uint8 round trip as samples."""
    ds = dataset.split(split)
    n = min(num_images or protocol.num_generated, len(ds))
    acc = TokenizerMetricsAccumulator(tokenizer.codebook_size)
    originals, recons = [], []
    device = torch.device(device)
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        for start in range(0, n, batch_size):
            u8 = torch.stack([torch.as_tensor(ds[i][0]) for i in range(start, min(start + batch_size, n))])
            x = u8.to(device).float() / 127.5 - 1.0
            tokens = tokenizer.encode(x)
            rec = tokenizer.decode(tokens).clamp(-1, 1)
            acc.update(x, rec, tokens)
            originals.append(u8)
            recons.append(quantize_uint8(rec))
    finally:
        tokenizer.train(was_training)
    metrics: dict[str, float] = acc.compute()
    unavailable: dict[str, str] = {}
    orig, rec_u8 = torch.cat(originals), torch.cat(recons)
    # reconstruction FID compares reconstructions with their own originals
    rproto = protocol.model_copy(
        update={"num_generated": n, "num_reference": n, "reference_split": split,
                "reference_fingerprint": dataset.fingerprint(split), "reference_dataset": _dataset_name(dataset),
                "inception_metrics": tuple(m for m in protocol.inception_metrics if m == "fid")}
    )
    if rproto.inception_metrics:
        weights = resolve_inception_weights()
        m, _ = compute_backend_metrics(to_uint8_rgb(rec_u8), to_uint8_rgb(orig), rproto, weights, device=device,
                                       batch_size=batch_size, reference_cache_name=f"dlbench-ref-{rproto.reference_key()}")
        metrics["rfid"] = m["fid"]
    else:
        unavailable["rfid"] = f"protocol {protocol.name!r} computes no Inception metrics"
    if protocol.domain_metrics and dataset.num_classes:
        model, _ = train_domain_classifier(
            dataset.split("train"), dataset.split("test") if "test" in dataset.splits else None,
            fingerprint=dataset.fingerprint("train"), channels=dataset.channels, num_classes=dataset.num_classes,
            config=domain_config,
        )
        metrics["domain_rfd"] = domain_metrics(model, rec_u8, orig)["domain_fd"]
    return {"protocol_hash": rproto.hash(), "protocol": rproto.model_dump(mode="json"), "metrics": metrics, "n": n,
            "unavailable": unavailable}
