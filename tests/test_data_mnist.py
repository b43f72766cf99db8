"""MNIST / Fashion-MNIST loaders on synthetic files in the real IDX (and mnist.pkl.gz) formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbench.data import DATASET_CLASSES, DatasetNotFoundError, load_split_tensors
from dlbench.data.errors import DatasetConfigError, DatasetFormatError
from dlbench.data.formats import read_idx, write_idx

DATASETS = {cls.name: cls for cls in DATASET_CLASSES}  # the built-in classes by registry name


def _idx_bytes(array: np.ndarray) -> bytes:
    # written by hand with struct (not write_idx), so the reader is checked against the spec
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_idx_dir(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr, nd in (("images", x, 3), ("labels", y, 1)):
            name = root / f"{prefix}-{kind}-idx{nd}-ubyte"
            payload = _idx_bytes(arr)
            if gz:
                with gzip.open(str(name) + ".gz", "wb") as f:
                    f.write(payload)
            else:
                name.write_bytes(payload)
        data[prefix] = (x, y)
    return data


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("DLBENCH_DATA", raising=False)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_real_format_and_pads(tmp_path, gz):
    data = make_idx_dir(tmp_path / "fm", gz=gz)
    ds = DATASETS["fashion-mnist"](DATASETS["fashion-mnist"].Config(data_dir=str(tmp_path / "fm")))
    x, y = load_split_tensors(ds, "train")
    assert x.shape == (12, 1, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.long
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30].numpy(), data["train"][0])
    assert x[:, :, :2].sum() == 0 and x[:, :, :, 30:].sum() == 0
    assert y.tolist() == data["train"][1].tolist()
    img, label = ds.split("test")[3]
    assert img.shape == (1, 32, 32) and label == 3
    assert ds.num_classes == 10 and ds.channels == 1 and ds.resolution == 32


def test_write_idx_roundtrip_and_bad_magic(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetFormatError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(a)[:-3])
    with pytest.raises(DatasetFormatError, match="truncated"):
        read_idx(tmp_path / "short")


def test_env_var_and_subdir_and_channels_resize(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "root" / "mnist" / "raw", gz=False)
    monkeypatch.setenv("DLBENCH_DATA", str(tmp_path / "root"))
    cfg = DATASETS["mnist"].Config(channels=3, crop="resize", resolution=14)
    x, _ = load_split_tensors(DATASETS["mnist"](cfg), "test", limit=2)
    assert x.shape == (2, 3, 14, 14) and torch.equal(x[:, 0], x[:, 2])


def test_pad_to_smaller_resolution_is_a_config_error(tmp_path):
    make_idx_dir(tmp_path)
    ds = DATASETS["mnist"](DATASETS["mnist"].Config(data_dir=str(tmp_path), resolution=16))
    with pytest.raises(DatasetConfigError, match="crop='center' or crop='resize'"):
        ds.split("train")


def test_mnist_pickle_format(tmp_path):
    # deeplearning.net layout: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), x = k/256 float32
    rng = np.random.default_rng(1)
    parts = []
    for n in (6, 4, 3):
        k = rng.integers(0, 256, size=(n, 784))
        parts.append(((k / 256.0).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(parts), f, protocol=2)
    ds = DATASETS["mnist"](DATASETS["mnist"].Config(data_dir=str(tmp_path), resolution=28))
    x, y = load_split_tensors(ds, "train")
    assert x.shape == (10, 1, 28, 28)  # train + valid
    want = np.rint(np.concatenate([parts[0][0], parts[1][0]]) * 256).astype(np.uint8).reshape(-1, 28, 28)
    np.testing.assert_array_equal(x[:, 0].numpy(), want)
    assert y.tolist() == parts[0][1].tolist() + parts[1][1].tolist()
    assert len(ds.split("test")) == 3


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump((os.getcwd, 1, 2), f)  # a callable: unpickling it would import os
    ds = DATASETS["mnist"](DATASETS["mnist"].Config(data_dir=str(tmp_path)))
    with pytest.raises(DatasetFormatError, match="refusing"):
        ds.split("test")


def test_missing_dataset_lists_every_path_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBENCH_DATA", str(tmp_path / "envroot"))
    ds = DATASETS["fashion-mnist"]()
    if (Path("/usr/share/datasets/fashion-mnist") / "train-images-idx3-ubyte.gz").exists():
        ds.default_dirs = (str(tmp_path / "nowhere"),)  # instance override: hide the system copy
    with pytest.raises(DatasetNotFoundError) as err:
        ds.split("train")
    msg = str(err.value)
    for text in (str(tmp_path / "envroot" / "fashion-mnist"), str(ds.default_dirs[0]), "dataset.data_dir",
                 "--set dataset.data_dir=", "DLBENCH_DATA", "train-images-idx3-ubyte"):
        assert text in msg, text
    # explicit data_dir: only it (and data_dir/<name>) are searched, a wrong one is not papered over
    ds2 = DATASETS["fashion-mnist"](DATASETS["fashion-mnist"].Config(data_dir=str(tmp_path / "given")))
    with pytest.raises(DatasetNotFoundError) as err2:
        ds2.fingerprint("test")
    assert str(tmp_path / "given") in str(err2.value) and str(tmp_path / "given" / "fashion-mnist") in str(err2.value)
    assert err2.value.looked[0][1] == "does not exist"


def test_fingerprint_tracks_content_and_preprocessing_not_location(tmp_path):
    make_idx_dir(tmp_path / "a")
    make_idx_dir(tmp_path / "b")  # same seed: same bytes in another place
    Cfg = DATASETS["fashion-mnist"].Config
    fa = DATASETS["fashion-mnist"](Cfg(data_dir=str(tmp_path / "a"))).fingerprint("train")
    assert fa == DATASETS["fashion-mnist"](Cfg(data_dir=str(tmp_path / "b"))).fingerprint("train")
    assert fa != DATASETS["fashion-mnist"](Cfg(data_dir=str(tmp_path / "a"))).fingerprint("test")
    assert fa != DATASETS["fashion-mnist"](Cfg(data_dir=str(tmp_path / "a"), resolution=36)).fingerprint("train")
    assert fa != DATASETS["mnist"](Cfg(data_dir=str(tmp_path / "a"))).fingerprint("train")
    make_idx_dir(tmp_path / "a", seed=5)  # new pixels
    assert fa != DATASETS["fashion-mnist"](Cfg(data_dir=str(tmp_path / "a"))).fingerprint("train")


def test_constructor_touches_no_data_and_unknown_split_is_clear(tmp_path):
    ds = DATASETS["mnist"](DATASETS["mnist"].Config(data_dir=str(tmp_path / "nothing")))  # no error here
    with pytest.raises(Exception, match="splits are: train, test"):
        ds.split("validation")
