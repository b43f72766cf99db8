"""Domain metrics: a small CNN classifier trained by dlbench on the dataset's own train split.

Inception features are a poor fit for 28 px grayscale data and slow on CPU; a classifier trained on
the domain gives cheap, meaningful numbers (in the spirit of the "MNIST FID" of GAN papers). They are
always labelled ``domain_*`` so nobody mistakes them for Inception FID/IS:

- ``domain_fd``: Frechet distance between classifier features of samples and reference
  (torch-fidelity's ``fid_statistics_to_metric``; no hand-rolled sqrtm);
- ``domain_is``: ``exp E_x KL(p(y|x) || p(y))`` over all samples in one split (torch-fidelity's
  ``isc_features_to_metric`` with ``splits=1``);
- ``domain_class_acc``: accuracy of the classifier on class-conditional samples w.r.t. their labels.

The classifier is cached by hash of (train-split fingerprint, classifier config); its test accuracy
is recorded next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from dlbench.eval.inception import cache_dir, sha256_file
from dlbench.interfaces import ComponentConfig, FeatureExtractor
from dlbench.registry import DlbenchError

__all__ = [
    "DomainClassifierConfig",
    "DomainCNN",
    "train_domain_classifier",
    "load_domain_classifier",
    "domain_metrics",
    "DomainClassifierExtractor",
    "stack_split",
]


class DomainClassifierConfig(ComponentConfig):
    """Architecture and training budget of the domain classifier (part of its cache key)."""

    version: str = "v1"
    width: int = Field(default=32, gt=0)
    feature_dim: int = Field(default=128, gt=0)
    steps: int = Field(default=400, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    seed: int = 0
    max_train_images: int = Field(default=12_000, gt=0)
    max_test_images: int = Field(default=2_000, gt=0)


class DomainCNN(nn.Module):
    """uint8 ``"b c H W"`` -> (features ``"b f"``, logits ``"b classes"``); any resolution."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.head.weight.dtype) / 127.5 - 1.0
        f = self.body(x)
        return f, self.head(f)


def stack_split(ds: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``limit`` items of a dataset of ``(uint8 "c H W", label)`` as ``("n c H W", "n")``."""
    n = len(ds) if limit is None else min(limit, len(ds))  # type: ignore[arg-type]
    imgs, labels = zip(*(ds[i] for i in range(n)))
    return torch.stack([torch.as_tensor(x) for x in imgs]), torch.as_tensor(labels, dtype=torch.long)


def _key(fingerprint: str, channels: int, num_classes: int, config: DomainClassifierConfig) -> str:
    payload = json.dumps(
        {"fingerprint": fingerprint, "channels": channels, "classes": num_classes, "config": config.model_dump()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: the classifier's cache key (public name, used by the shipped-artefact manifest)
classifier_key = _key


@torch.no_grad()
def _predict(model: DomainCNN, images: torch.Tensor, batch_size: int = 512,
             stage: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features and logits; float64 so the numbers do not depend on batch size.
    ``stage`` names the progress shown (none when None)."""
    from dlbench.observe.progress import task

    model = model.double().eval()
    feats, logits = [], []
    with task(stage or "features", len(images), "images", display="off" if stage is None else None) as bar:
        for i in range(0, len(images), batch_size):
            f, l = model(images[i : i + batch_size])
            feats.append(f)
            logits.append(l)
            bar.update(min(i + batch_size, len(images)))
    return torch.cat(feats), torch.cat(logits)


def train_domain_classifier(
    train: Dataset,
    test: Dataset | None,
    *,
    fingerprint: str,
    channels: int,
    num_classes: int,
    config: DomainClassifierConfig | None = None,
    cache: bool = True,
) -> tuple[DomainCNN, dict]:
    """Train (or load from the cache) the domain classifier; returns ``(model, info)``.

    ``info`` holds the cache ``key``, ``path``, ``test_accuracy`` (None without a test split) and
    ``train_seconds``.
    """
    config = config or DomainClassifierConfig()
    key = _key(fingerprint, channels, num_classes, config)
    path = cache_dir() / "domain" / f"classifier-{key}.pt"
    from dlbench.observe.progress import note

    if cache and path.is_file():
        note("domain_classifier", f"skipped: reused cached classifier {key}")
        return load_domain_classifier(path)
    if cache:
        from dlbench.shipped import install_domain_classifier

        if install_domain_classifier(key, path):  # a sha256-checked shipped copy of this exact key
            return load_domain_classifier(path)

    # Callers may hold torch.no_grad() or torch.inference_mode() (evaluate_tokenizer runs under no_grad):
    # training needs autograd, and parameters/inputs created under inference mode could never require
    # grad, so the whole training region re-enables both.
    with torch.inference_mode(False), torch.enable_grad():
        model, acc, t0 = _fit_classifier(train, test, channels, num_classes, config, key)
    info = {
        "key": key,
        "fingerprint": fingerprint,
        "config": config.model_dump(),
        "channels": channels,
        "num_classes": num_classes,
        "test_accuracy": acc,
        "train_seconds": time.perf_counter() - t0,
    }
    if cache:
        from dlbench.fsutil import atomic_write

        with atomic_write(path) as fh:
            torch.save({"state_dict": model.state_dict(), "info": info}, fh)
        info["path"] = str(path)
    return model, info


def _fit_classifier(train: Dataset, test: Dataset | None, channels: int, num_classes: int,
                    config: DomainClassifierConfig, key: str) -> tuple[DomainCNN, float | None, float]:
    """The training loop of :func:`train_domain_classifier`: ``(model, test accuracy or None, start time)``."""
    from dlbench.observe.progress import task

    t0 = time.perf_counter()
    x, y = stack_split(train, config.max_train_images)
    if x.shape[1] != channels:
        raise DlbenchError(f"domain classifier: train images have {x.shape[1]} channels, expected {channels}")
    if y.min() < 0:
        raise DlbenchError("domain classifier needs a labelled train split (labels are -1); set domain_metrics=False")
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = DomainCNN(channels, num_classes, config.width, config.feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    model.train()
    with task("domain_classifier", config.steps, "steps", per_unit=config.batch_size, info=f"key {key}") as bar:
        for step in range(config.steps):
            idx = torch.randint(0, len(x), (config.batch_size,), generator=g)
            _, logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(step + 1, loss=float(loss.detach()))
    model.eval()
    acc = None
    if test is not None:
        xt, yt = stack_split(test, config.max_test_images)
        with torch.no_grad():
            acc = (model(xt)[1].argmax(1) == yt).double().mean().item()
    return model, acc, t0


def load_domain_classifier(path: str | os.PathLike) -> tuple[DomainCNN, dict]:
    from dlbench.safeload import CorruptFileError, torch_load

    blob = torch_load(path, what="domain classifier")
    if not isinstance(blob, dict) or not isinstance(blob.get("info"), dict) or "state_dict" not in blob:
        raise CorruptFileError(f"{path}: domain classifier file lacks 'info'/'state_dict'; delete it to retrain")
    info = dict(blob["info"])
    cfg = DomainClassifierConfig(**info["config"])
    model = DomainCNN(info["channels"], info["num_classes"], cfg.width, cfg.feature_dim)
    model.load_state_dict(blob["state_dict"])
    info["path"] = str(path)
    return model.eval(), info


#: FD statistics of reference sets, by (classifier weights, reference images) digest: a run's learning-curve
#: points and its final evaluation score against the same reference with the same classifier, so its
#: features are extracted once per process instead of once per point
_REFERENCE_STATS: dict[str, dict] = {}
_REFERENCE_STATS_MAX = 4


def _digest_tensors(*tensors: torch.Tensor) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes())
    return h.hexdigest()


def _reference_statistics(model: DomainCNN, reference: torch.Tensor) -> dict:
    """``fid_features_to_statistics`` of the classifier features of ``reference``, memoised per process."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    key = _digest_tensors(reference, *model.state_dict().values())
    stats = _REFERENCE_STATS.get(key)
    if stats is None:
        f_ref, _ = _predict(model, reference, stage="domain_features/reference")
        stats = fid_features_to_statistics(f_ref)
        if len(_REFERENCE_STATS) >= _REFERENCE_STATS_MAX:
            _REFERENCE_STATS.pop(next(iter(_REFERENCE_STATS)))
        _REFERENCE_STATS[key] = stats
    return stats


def domain_metrics(
    model: DomainCNN,
    generated: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """``domain_fd``, ``domain_is`` and (with ``labels``) ``domain_class_acc``.

    ``generated`` and ``reference`` are uint8 ``"n c H W"`` with the classifier's channels.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    for name, t in (("generated", generated), ("reference", reference)):
        if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[1] != model.channels:
            raise DlbenchError(
                f"domain metrics: {name} images must be uint8 'n {model.channels} H W', got {t.dtype} {tuple(t.shape)}"
            )
    f_gen, l_gen = _predict(model, generated, stage="domain_features/generated")
    fd = fid_statistics_to_metric(fid_features_to_statistics(f_gen), _reference_statistics(model, reference),
                                  verbose=False)
    out = {
        "domain_fd": float(fd["frechet_inception_distance"]),
        "domain_is": float(isc_features_to_metric(l_gen, splits=1, shuffle=False)["inception_score_mean"]),
    }
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        out["domain_class_acc"] = (l_gen.argmax(1) == labels).double().mean().item()
    return out


class DomainClassifierExtractor(FeatureExtractor):
    """Penultimate features of a dlbench domain classifier (see :func:`train_domain_classifier`)."""

    class Config(ComponentConfig):
        checkpoint: str = Field(description="path to a classifier-<key>.pt written by train_domain_classifier")

    REQUIRED: ClassVar[tuple[str, ...]] = ("features",)

    def __init__(self, config: "DomainClassifierExtractor.Config"):
        super().__init__()
        if not Path(config.checkpoint).is_file():
            raise DlbenchError(
                f"feature_extractor/domain-classifier: checkpoint {config.checkpoint} does not exist; "
                "train one with dlbench.eval.domain.train_domain_classifier"
            )
        self.config = config
        self.model, self.info = load_domain_classifier(config.checkpoint)
        self.dim = self.model.head.in_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return _predict(self.model, images)[0]

    def weights_sha256(self) -> str | None:
        return sha256_file(self.config.checkpoint)
