"""Layered configs: presets, --set coercion and errors, files, round trip, compatibility checks."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from pydantic import Field

from dlbench.config import ConfigError, RunConfig, apply_set, build_config, load_run_config, parse_value
from dlbench.interfaces import ComponentConfig, ImageDataset, Method, MethodRequirements, Tokenizer
from dlbench.registry import Registry, UnknownComponentError


class MCfg(ComponentConfig):
    w_cm: float = Field(1.0, ge=0)
    mode: str = "kl"


class M(Method):
    """A test method."""

    Config = MCfg
    presets: ClassVar = {"quick": {"method": {"params": {"w_cm": 0.25}}, "training": {"steps": 3}}}

    def loss(self, tokens, labels):
        return torch.zeros(()), {}

    def sample(self, labels, seeds, **kw):
        return torch.zeros(len(seeds), 2, 2, dtype=torch.long)


class NeedsLabels(M):
    requires: ClassVar = MethodRequirements(conditioning="class")


class DCfg(ComponentConfig):
    data_dir: str | None = None
    max_images: int | None = None


class Labelled(ImageDataset):
    Config = DCfg
    num_classes = 10

    def __init__(self, config):
        self.config = config

    def split(self, name):
        return []

    def fingerprint(self, name):
        return "x"


class Unlabelled(Labelled):
    num_classes = None


class TCfg(ComponentConfig):
    codebook_size: int = 16


class T(Tokenizer):
    Config = TCfg

    def encode(self, images): ...
    def decode(self, tokens): ...
    def codebook(self): ...
    def token_grid(self, h, w): return (h // 4, w // 4)
    def training_loss(self, images): ...


@pytest.fixture
def registry():
    r = Registry()
    r.add("method", "m", M)
    r.add("method", "needs-labels", NeedsLabels)
    r.add("dataset", "fashion-mnist-small", Labelled)
    r.add("dataset", "ffhq", Unlabelled)
    r.add("tokenizer", "vqvae", T)
    return r


def test_presets_layer_and_method_presets_win(registry):
    cfg = build_config("m", registry=registry, preset="quick")
    assert cfg.training.steps == 3                      # method preset over base preset
    assert cfg.training.batch_size == 16                # base quick preset
    assert cfg.method.params == {"w_cm": 0.25, "mode": "kl"}  # defaults filled in
    assert cfg.tokenizer.params == {"codebook_size": 16}


def test_set_overrides_with_coercion_and_sugar(registry):
    cfg = build_config("m", registry=registry, preset="quick",
                       overrides=["training.lr=1e-3", "method.w_cm=2", "training.precision=bf16",
                                  "tokenizer.codebook_size=64", "training.grad_clip=null"])
    assert cfg.training.lr == 1e-3 and cfg.method.params["w_cm"] == 2.0
    assert cfg.training.precision == "bf16" and cfg.tokenizer.params["codebook_size"] == 64
    assert cfg.training.grad_clip is None


@pytest.mark.parametrize("assignment, needle", [
    ("training.lr=abc", "training.lr = 'abc': Input should be a valid number"),
    ("training.steps=-5", "training.steps = -5: Input should be greater than 0"),
    ("method.w_cm=-1", "method.params.w_cm = -1: Input should be greater than or equal to 0"),
    ("method.nope=1", "method.params.nope = 1: Extra inputs are not permitted"),
    ("training.precision=fp8", "training.precision = 'fp8': Input should be 'fp32', 'bf16' or 'auto'"),
    ("trainin.lr=1", "unknown section 'trainin'"),
    ("training.lr", "expected KEY=VALUE"),
])
def test_bad_values_name_field_value_and_reason(registry, assignment, needle):
    with pytest.raises(ConfigError) as e:
        build_config("m", registry=registry, preset="quick", overrides=[assignment])
    assert needle in str(e.value)


def test_unknown_method_is_did_you_mean(registry):
    with pytest.raises(UnknownComponentError, match="Did you mean 'm'"):
        build_config("mm", registry=registry)


def test_round_trip_reproduces_config_exactly(registry, tmp_path):
    cfg = build_config("m", registry=registry, preset="quick", overrides=["method.mode=ce", "seed=7"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = load_run_config(path, registry)
    assert again == cfg and again.hash() == cfg.hash()
    # and as a --config file for a fresh build
    rebuilt = build_config("m", registry=registry, preset="quick", config_file=path)
    assert rebuilt.to_dict() == cfg.to_dict()


def test_config_files_toml_yaml(registry, tmp_path):
    (tmp_path / "c.toml").write_text("[training]\nlr = 0.01\n[method.params]\nw_cm = 3.0\n")
    (tmp_path / "c.yaml").write_text("training:\n  lr: 0.02\n")
    assert build_config("m", registry=registry, config_file=tmp_path / "c.toml").method.params["w_cm"] == 3.0
    assert build_config("m", registry=registry, config_file=tmp_path / "c.yaml").training.lr == 0.02
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        build_config("m", registry=registry, config_file=tmp_path / "bad.json")


def test_impossible_combination_rejected_before_training(registry):
    with pytest.raises(ConfigError, match="needs class labels but dataset 'ffhq' is unlabelled"):
        build_config("needs-labels", registry=registry, dataset="ffhq")


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc" and parse_value("None") is None
    assert apply_set({}, "sampling.options.truncation=0.86") == {"sampling": {"options": {"truncation": 0.86}}}


def test_hash_ignores_device_only(registry):
    a = build_config("m", registry=registry, device="cpu")
    b = build_config("m", registry=registry, device="cuda")
    c = build_config("m", registry=registry, seed=1)
    assert a.hash() == b.hash() != c.hash()
    assert isinstance(a, RunConfig)
