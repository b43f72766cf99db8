"""CIFAR-10 from the official "python version" pickle batches.

Layout: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in one directory (the extracted
``cifar-10-batches-py/``), or the unextracted ``cifar-10-python.tar.gz``. Each batch is a pickled dict
with ``b"data"`` (uint8 ``"n (3 32 32)"``, channel-major rows) and ``b"labels"`` (list of ints).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from dlbench.data.base import LocalDataConfig, LocalImageDataset, TensorSplit, file_sha256
from dlbench.data.errors import DatasetFormatError
from dlbench.data.formats import load_array_pickle

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
TARBALL = "cifar-10-python.tar.gz"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSource:
    """Batch files in a directory (``tarball`` None) or members ``*/<batch>`` of the tarball."""

    batches: tuple[Path, ...]
    tarball: Path | None = None


def parse_batch(batch: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One unpickled batch dict -> ``(images uint8 "n 3 32 32", labels int64 "n")``."""
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{what}: expected a pickled dict, got {type(batch).__name__}")
    # Python 2 pickles read with latin1 give str keys, Python 3 pickles bytes keys
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetFormatError(f"{what}: missing keys; expected b'data' and b'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(f"{what}: b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DatasetFormatError(f"{what}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(src: CifarSource) -> tuple[torch.Tensor, torch.Tensor]:
    parts = []
    if src.tarball is None:
        for p in src.batches:
            parts.append(parse_batch(load_array_pickle(p, what=str(p)), str(p)))
    else:
        with tarfile.open(src.tarball, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for p in src.batches:
                f = tar.extractfile(members[p.name])
                what = f"{src.tarball}:{members[p.name].name}"
                parts.append(parse_batch(load_array_pickle(f.read(), what=what), what))  # type: ignore[union-attr]
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


class CifarConfig(LocalDataConfig):
    channels: Literal[1, 3] = 3


class CIFAR10(LocalImageDataset):
    """CIFAR-10: 50k/10k 32x32 RGB images, 10 classes (official python pickle batches)."""

    name = "cifar10"
    Config: ClassVar[type[CifarConfig]] = CifarConfig
    num_classes: int | None = 10
    splits: tuple[str, ...] = ("train", "test")
    layout = f"data_batch_1..data_batch_5 and test_batch (cifar-10-batches-py/), or {TARBALL}"
    class_names = CLASS_NAMES

    def _find(self, split: str, root: Path) -> tuple[Any | None, str]:
        names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
        for d in (root, root / "cifar-10-batches-py"):
            if all((d / n).is_file() for n in names):
                return CifarSource(tuple(d / n for n in names)), ""
        tar = root / TARBALL
        if tar.is_file():
            with tarfile.open(tar, "r:gz") as t:
                have = {Path(m.name).name for m in t.getmembers() if m.isfile()}
            if all(n in have for n in names):
                return CifarSource(tuple(Path(n) for n in names), tarball=tar), ""
            return None, f"{TARBALL} lacks {', '.join(n for n in names if n not in have)}"
        missing = [n for n in names if not (root / n).is_file()]
        return None, f"missing {', '.join(missing)}"

    def _load(self, split: str, found: CifarSource) -> TensorSplit:
        images, labels = read_cifar(found)
        return self._tensor_split(images, labels)

    def _source_identity(self, split: str, found: CifarSource) -> Any:
        if found.tarball is not None:
            return [[TARBALL, file_sha256(found.tarball)], [p.name for p in found.batches]]
        return [[p.name, file_sha256(p)] for p in found.batches]
