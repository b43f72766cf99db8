"""``fashion-mnist-small``: a stratified Fashion-MNIST subset shipped inside the package.

The default dataset, so that every command works offline with no setup. Built by
``scripts/build_embedded_dataset.py`` from the IDX files of the Debian package
``dataset-fashion-mnist``; ``embedded/fashion_mnist_small.json`` records the source files' sha256,
the seed and the selected indices. Data: Fashion-MNIST, (c) Zalando SE / Zalando Research, MIT licence
(Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747).

Storage: an xz (LZMA2, preset 9e) compressed, uncompressed ``.npz`` of 28x28 uint8 arrays; images are
zero-padded to 32x32 at load time (storing 28x28 is smaller than storing padded 32x32).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import lzma
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from dlbench.data.base import ImageConfig, LocalImageDataset, TensorSplit
from dlbench.data.errors import DatasetFormatError, DatasetNotFoundError
from dlbench.data.transforms import Crop

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
DATA_FILE = "fashion_mnist_small.npz.xz"
META_FILE = "fashion_mnist_small.json"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_meta(directory: Path = EMBEDDED_DIR) -> dict[str, Any]:
    """The provenance JSON next to the embedded data (cached)."""
    return _read_meta(Path(directory))


def read_arrays(directory: Path = EMBEDDED_DIR) -> dict[str, np.ndarray]:
    """The embedded arrays (``{train,test}_{images,labels}``), checked against the JSON's sha256 (cached)."""
    return _read_arrays(Path(directory))


@functools.lru_cache(maxsize=2)
def _read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((directory / META_FILE).read_text())


@functools.lru_cache(maxsize=2)
def _read_arrays(directory: Path) -> dict[str, np.ndarray]:
    blob = (directory / DATA_FILE).read_bytes()
    want = read_meta(directory)["data_sha256"]
    got = hashlib.sha256(blob).hexdigest()
    if got != want:
        raise DatasetFormatError(
            f"{directory / DATA_FILE} has sha256 {got}, but {META_FILE} records {want}: the embedded data is "
            "corrupt or was rebuilt without its JSON; reinstall dlbench or rerun scripts/build_embedded_dataset.py"
        )
    with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class EmbeddedConfig(ImageConfig):
    resolution: int = Field(32, ge=4, le=4096, description="output side; stored 28x28 images are zero-padded to 32")
    channels: Literal[1, 3] = 1
    crop: Crop = "pad"


class FashionMNISTSmall(LocalImageDataset):
    """Fashion-MNIST subset shipped with dlbench (20k train / 5k test, class-balanced; Zalando, MIT)."""

    name = "fashion-mnist-small"
    Config: ClassVar[type[EmbeddedConfig]] = EmbeddedConfig
    num_classes: int | None = 10
    splits: tuple[str, ...] = ("train", "test")
    layout = f"{DATA_FILE} and {META_FILE} inside the installed package (dlbench/data/embedded/)"
    class_names = CLASS_NAMES

    def candidate_roots(self) -> list[Path]:
        return [EMBEDDED_DIR]

    def _unset_sources(self) -> list[tuple[str, str]]:
        return []  # data_dir / DLBENCH_DATA do not apply to the embedded data

    def _find(self, split: str, root: Path) -> tuple[Any | None, str]:
        missing = [f for f in (DATA_FILE, META_FILE) if not (root / f).is_file()]
        if missing:
            return None, f"missing {', '.join(missing)}; the package was installed without its data files"
        return root, ""

    def _locate(self, split: str) -> Any:
        try:
            return super()._locate(split)
        except DatasetNotFoundError as exc:
            # data_dir / DLBENCH_DATA do not apply here: say what does
            raise DatasetNotFoundError(self.name, exc.looked, self.layout, how="Reinstall dlbench") from None

    def _load(self, split: str, found: Path) -> TensorSplit:
        arrays = read_arrays(found)
        images = torch.from_numpy(arrays[f"{split}_images"].copy())[:, None]
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        return self._tensor_split(images, labels)

    def _source_identity(self, split: str, found: Path) -> Any:
        # cheap: the digest recorded in the JSON (verified against the bytes whenever they are loaded)
        return [read_meta(found)["data_sha256"], split]
