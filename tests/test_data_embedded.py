"""The shipped fashion-mnist-small subset: format, balance, provenance against the Debian source."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbench.data import DATASET_CLASSES, DEFAULT_DATASET, load_split_tensors
from dlbench.data.embedded import DATA_FILE, EMBEDDED_DIR, read_arrays, read_meta
from dlbench.data.formats import read_idx

DATASETS = {cls.name: cls for cls in DATASET_CLASSES}  # the built-in classes by registry name

SOURCE = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def embedded():
    return DATASETS[DEFAULT_DATASET]()


def test_shapes_dtypes_and_exact_class_balance(embedded):
    for split, n in (("train", 20000), ("test", 5000)):
        x, y = load_split_tensors(embedded, split)
        assert x.shape == (n, 1, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.long and torch.equal(torch.bincount(y, minlength=10), torch.full((10,), n // 10))
        border = x.clone()
        border[:, :, 2:30, 2:30] = 0
        assert border.sum() == 0  # 28x28 stored, zero-padded to 32
        assert x.float().mean() > 50  # real pixels, not zeros
    assert embedded.num_classes == 10 and embedded.channels == 1 and embedded.resolution == 32


def test_file_is_small_and_checksum_recorded():
    blob = (EMBEDDED_DIR / DATA_FILE).read_bytes()
    assert len(blob) <= 10 * 1024 * 1024
    meta = read_meta()
    assert hashlib.sha256(blob).hexdigest() == meta["data_sha256"]
    arrays = read_arrays()
    for name, info in meta["arrays"].items():
        assert list(arrays[name].shape) == info["shape"]
        assert hashlib.sha256(arrays[name].tobytes()).hexdigest() == info["sha256"]
    assert "Zalando" in meta["credit"] and "MIT" in meta["licence"]


def test_fingerprint_is_cheap_and_config_dependent(embedded):
    t = time.perf_counter()
    fp = embedded.fingerprint("train")
    assert time.perf_counter() - t < 0.5  # no decompression, no hashing of the data
    assert fp != embedded.fingerprint("test")
    other = DATASETS[DEFAULT_DATASET](DATASETS[DEFAULT_DATASET].Config(channels=3))
    assert fp != other.fingerprint("train")
    assert fp == DATASETS[DEFAULT_DATASET]().fingerprint("train")


def test_rgb_variant_and_max_images():
    ds = DATASETS[DEFAULT_DATASET](DATASETS[DEFAULT_DATASET].Config(channels=3, max_images=7))
    x, y = load_split_tensors(ds, "test")
    assert x.shape == (7, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1])


@pytest.mark.skipif(not (SOURCE / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_provenance_matches_the_debian_source():
    meta = read_meta()
    for name, digest in meta["source"]["sha256"].items():
        assert hashlib.sha256((SOURCE / name).read_bytes()).hexdigest() == digest, name
    arrays = read_arrays()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        idx = np.asarray(meta["selection"][f"{split}_indices"])
        assert len(np.unique(idx)) == len(idx)
        np.testing.assert_array_equal(read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")[idx], arrays[f"{split}_images"])
        np.testing.assert_array_equal(read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")[idx], arrays[f"{split}_labels"])


def test_tampered_data_is_detected(tmp_path):
    import shutil

    from dlbench.data.errors import DatasetFormatError

    for f in EMBEDDED_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    blob = bytearray((tmp_path / DATA_FILE).read_bytes())
    blob[1000] ^= 0xFF
    (tmp_path / DATA_FILE).write_bytes(bytes(blob))
    with pytest.raises(DatasetFormatError, match="sha256"):
        read_arrays(tmp_path)
