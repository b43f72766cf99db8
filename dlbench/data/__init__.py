"""Image datasets (kind ``dataset``) and the helpers the runner uses to read them.

``DATASET_CLASSES`` lists the built-in classes; :mod:`dlbench.builtin` registers each with
``register(cls.name, cls)`` (lookups by name go through the registry). Every class is built as ``cls(config)`` and reads nothing until
``split()`` / ``fingerprint()`` is called. See docs/datasets.md for the on-disk layouts.
"""

from __future__ import annotations

from dlbench.data.base import (
    ENV_VAR,
    FileSplit,
    ImageConfig,
    LocalDataConfig,
    LocalImageDataset,
    TensorSplit,
    load_split_tensors,
)
from dlbench.data.cifar import CIFAR10
from dlbench.data.embedded import FashionMNISTSmall
from dlbench.data.errors import CorruptImageError, DatasetConfigError, DatasetFormatError, DatasetNotFoundError
from dlbench.data.folder import FFHQ, ImageFolder, ImageNet
from dlbench.data.lsun import LsunBedroom, LsunChurch
from dlbench.data.mnist import MNIST, FashionMNIST

#: the default dataset: shipped inside the package, works offline with no setup
DEFAULT_DATASET = "fashion-mnist-small"

DATASET_CLASSES: tuple[type[LocalImageDataset], ...] = (
    FashionMNISTSmall, FashionMNIST, MNIST, CIFAR10, FFHQ, LsunChurch, LsunBedroom, ImageNet, ImageFolder,
)

__all__ = [
    "DATASET_CLASSES",
    "DEFAULT_DATASET",
    "ENV_VAR",
    "CIFAR10",
    "FFHQ",
    "MNIST",
    "CorruptImageError",
    "DatasetConfigError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FashionMNIST",
    "FashionMNISTSmall",
    "FileSplit",
    "ImageConfig",
    "ImageFolder",
    "ImageNet",
    "LocalDataConfig",
    "LocalImageDataset",
    "LsunBedroom",
    "LsunChurch",
    "TensorSplit",
    "load_split_tensors",
]
