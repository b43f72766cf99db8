"""CIFAR-10 loader on synthetic batches in the official python-pickle format (and its tarball)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlbench.data import DATASET_CLASSES, DatasetNotFoundError, load_split_tensors
from dlbench.data.errors import DatasetFormatError

DATASETS = {cls.name: cls for cls in DATASET_CLASSES}  # the built-in classes by registry name


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("DLBENCH_DATA", raising=False)


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # the real keys: b"batch_label", b"labels" (list), b"data" (uint8 n x 3072, R plane, G plane, B plane), b"filenames"
    return {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def make_cifar_dir(root: Path) -> dict[str, dict]:
    root.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": _batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _batch(4, 9)
    for name, b in batches.items():
        with open(root / name, "wb") as f:
            pickle.dump(b, f, protocol=2)  # the release was written by Python 2's cPickle, protocol 2
    return batches


def test_reads_pickle_batches_in_order_with_rgb_layout(tmp_path):
    batches = make_cifar_dir(tmp_path / "cifar-10-batches-py")
    ds = DATASETS["cifar10"](DATASETS["cifar10"].Config(data_dir=str(tmp_path)))
    x, y = load_split_tensors(ds, "train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    row = batches["data_batch_1"][b"data"][0]
    # channel-major rows: first 1024 bytes are the red plane, row by row
    assert torch.equal(x[0, 0].flatten(), torch.from_numpy(row[:1024].copy()))
    assert torch.equal(x[0, 2].flatten(), torch.from_numpy(row[2048:].copy()))
    assert len(ds.split("test")) == 4 and ds.num_classes == 10


def test_grey_conversion_matches_pil(tmp_path):
    batches = make_cifar_dir(tmp_path)
    ds = DATASETS["cifar10"](DATASETS["cifar10"].Config(data_dir=str(tmp_path), channels=1))
    img, _ = ds.split("test")[0]
    rgb = batches["test_batch"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.shape == (1, 32, 32)
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))


def test_reads_the_unextracted_tarball(tmp_path):
    src = tmp_path / "src"
    batches = make_cifar_dir(src / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = DATASETS["cifar10"](DATASETS["cifar10"].Config(data_dir=str(tmp_path), resolution=16))
    x, y = load_split_tensors(ds, "test")
    assert x.shape == (4, 3, 16, 16) and y.tolist() == batches["test_batch"][b"labels"]


def test_missing_batch_and_bad_keys(tmp_path):
    make_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    ds = DATASETS["cifar10"](DATASETS["cifar10"].Config(data_dir=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        ds.split("train")
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"pixels": np.zeros((1, 3072), np.uint8)}, f)
    with pytest.raises(DatasetFormatError, match="b'data'"):
        ds.split("test")


def test_fingerprint_changes_with_a_batch(tmp_path):
    make_cifar_dir(tmp_path)
    Cfg = DATASETS["cifar10"].Config
    fp = DATASETS["cifar10"](Cfg(data_dir=str(tmp_path))).fingerprint("test")
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(_batch(4, 10), f, protocol=2)
    assert fp != DATASETS["cifar10"](Cfg(data_dir=str(tmp_path))).fingerprint("test")
