"""End to end through dlbench.runner.stages with a placeholder method (test-only plugin)."""

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from dlbench import hookimpl, plugins
from dlbench.config import resolve_config
from dlbench.interfaces import ComponentConfig, Method, MethodRequirements
from dlbench.runs import RunDir
from dlbench.seeding import PerSampleRNG
from dlbench.runner import evaluation, restore, sampling, stages, tokenizer_stage
from dlbench.train.dist import DistContext


class PlaceholderConfig(ComponentConfig):
    nan_at_step: int | None = None


class Placeholder(Method):
    """Test-only: independent per-position categorical (plus a class bias); never for users."""

    Config = PlaceholderConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements(inputs="token_ids", conditioning="optional")

    def __init__(self, config, *, context):
        super().__init__()
        self.config, self.grid, self.k = config, tuple(context.token_grid), context.codebook_size
        self.logits = nn.Parameter(torch.zeros(*self.grid, self.k))
        self.class_bias = nn.Parameter(torch.zeros((context.num_classes or 0) + 1, self.k))
        self.calls = 0

    def loss(self, tokens, labels):
        self.calls += 1
        lab = labels if labels is not None else torch.zeros(len(tokens), dtype=torch.long)
        logits = self.logits[None] + self.class_bias[lab][:, None, None]
        ce = nn.functional.cross_entropy(logits.reshape(-1, self.k), tokens.reshape(-1))
        if self.config.nan_at_step is not None and self.calls > self.config.nan_at_step:
            ce = ce * float("nan")
        return ce, {"ce": ce.detach()}

    def sample(self, labels, seeds, *, num_samples=None, steps=None, guidance=1.0, callback=None, **options):
        b = len(seeds)
        lab = labels if labels is not None else torch.zeros(b, dtype=torch.long)
        logits = self.logits[None] + self.class_bias[lab][:, None, None]
        return PerSampleRNG(seeds).categorical(logits.expand(b, *logits.shape[1:]))


class _TestPlugin:
    def __init__(self, missing):
        self.missing = missing

    @hookimpl
    def register_methods(self, register):
        register("placeholder-test", Placeholder)

    @hookimpl
    def register_datasets(self, register):
        if "dataset" in self.missing:
            from dlbench.data import FashionMNISTSmall

            register("fashion-mnist-small", FashionMNISTSmall)

    @hookimpl
    def register_tokenizers(self, register):
        if "tokenizer" in self.missing:
            from dlbench.nn import VQVAE

            register("vqvae", VQVAE)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("DLBENCH_DISABLE_PLUGINS", "vqdiffusion,vqlcmd,regvq")
    plugins.reset_manager()
    manager = plugins.get_manager()
    reg = manager.registry
    missing = {k for k, n in (("dataset", "fashion-mnist-small"), ("tokenizer", "vqvae")) if n not in reg.names(k)}
    info = manager.register_plugin(_TestPlugin(missing), "engine-test")
    assert info.ok, info.error
    yield reg
    plugins.reset_manager()


def _config(registry, **over):
    data = {
        "method": {"name": "placeholder-test", "params": over.pop("method_params", {})},
        "tokenizer": {"name": "vqvae", "params": {"channels": 8, "code_dim": 4, "codebook_size": 16},
                      "training": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "ema_decay": 0.0,
                                   "grad_clip": None, "log_every": 2, "checkpoint_every": 4}},
        "dataset": {"name": "fashion-mnist-small", "params": {"max_images": 40}},
        "training": {"steps": 6, "batch_size": 8, "lr": 0.05, "warmup_steps": 1, "log_every": 2,
                     "checkpoint_every": 3, "ema_decay": 0.9},
        "sampling": {"num_samples": 10, "batch_size": 4},
        "evaluation": {"enabled": False},
        "seed": 1, "device": "cpu",
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    return resolve_config(data, registry)


def _new_run(tmp_path, cfg, name="run"):
    rd = RunDir(tmp_path / name)
    rd.path.mkdir(parents=True)
    rd.write_json("config.json", cfg.to_dict())
    return rd


def test_end_to_end_and_tokenizer_cache(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "cache"))  # a cold tokenizer cache
    cfg = _config(registry)
    rd = _new_run(tmp_path, cfg)
    metrics = stages.execute(cfg, registry, rd, resume=False)
    assert metrics["status"] == "ok" and metrics["training"]["step"] == 6
    assert json.loads(rd.file("metrics.json").read_text())["status"] == "ok"
    for name in ("recon.png", "samples.png", "samples.npz", "checkpoints/latest.json"):
        assert rd.file(name).is_file(), name
    data = np.load(rd.file("samples.npz"))
    assert data["tokens"].shape == (10, 8, 8) and data["images"].shape == (10, 1, 32, 32)
    assert data["images"].dtype == np.uint8 and data["labels"].tolist() == [i % 10 for i in range(10)]
    tok_events = [e for e in rd.events("tokenizer")]
    assert tok_events[0]["action"] == "trained"
    key = tok_events[0]["key"]
    assert f"trained tokenizer {key}" in capsys.readouterr().err
    assert [e["step"] for e in rd.events("train")] == [2, 4, 6]
    assert {"loss", "ce"} <= set(rd.events("train")[0])

    # same tokenizer config -> reused from the cache, even with a different method training config
    cfg2 = _config(registry, training={"steps": 2})
    rd2 = _new_run(tmp_path, cfg2, "run2")
    stages.execute(cfg2, registry, rd2, resume=False)
    assert rd2.events("tokenizer")[0] == {**rd2.events("tokenizer")[0], "action": "reused", "key": key}
    assert f"reused cached tokenizer {key}" in capsys.readouterr().err
    # the generator's seed does not change the tokenizer (shared harness); the tokenizer's own seed does
    ds = registry.get("dataset", "fashion-mnist-small").build(cfg.dataset.params)
    assert tokenizer_stage.tokenizer_key(_config(registry, seed=2), ds) == key
    other = _config(registry)
    other.tokenizer.seed = 2
    assert tokenizer_stage.tokenizer_key(other, ds) != key

    # samples from a finished run: same seed -> the same tokens as the run's own samples
    png = restore.sample_run(rd, registry, n=10, seed=cfg.sampling.seed)
    assert png.is_file()
    again = np.load(png.with_suffix(".npz"))
    assert np.array_equal(again["tokens"], data["tokens"])


def test_sampling_is_independent_of_batch_size(registry):
    method = Placeholder(PlaceholderConfig(), context=type("C", (), {"token_grid": (2, 3), "codebook_size": 5,
                                                                       "num_classes": 3})())
    with torch.no_grad():
        method.logits.normal_()
    labels = torch.arange(7) % 3
    kw = dict(seed=4, labels=labels, steps=None, guidance=1.0, options={}, ctx=DistContext())
    a = sampling.sample_tokens(method, 7, batch_size=7, **kw)
    b = sampling.sample_tokens(method, 7, batch_size=2, **kw)
    assert torch.equal(a, b) and a.shape == (7, 2, 3)


def test_nan_writes_failed_status(registry, tmp_path):
    cfg = _config(registry, method_params={"nan_at_step": 4})
    rd = _new_run(tmp_path, cfg)
    metrics = stages.execute(cfg, registry, rd, resume=False)
    assert metrics["status"] == "failed" and "non-finite loss" in metrics["reason"] and metrics["step"] == 4
    saved = json.loads(rd.file("metrics.json").read_text())
    assert saved["status"] == "failed" and saved["reason"] == metrics["reason"]
    assert json.loads(rd.file("checkpoints/latest.json").read_text())["step"] == 3  # last good kept
    assert not rd.file("samples.npz").exists()


def test_resume_pipeline_matches_straight_run(registry, tmp_path):
    straight = _config(registry)
    rd_a = _new_run(tmp_path, straight, "a")
    stages.execute(straight, registry, rd_a, resume=False)
    half = _config(registry, training={"steps": 3})
    rd_b = _new_run(tmp_path, half, "b")
    stages.execute(half, registry, rd_b, resume=False)
    stages.execute(straight, registry, rd_b, resume=True)
    a = np.load(rd_a.file("samples.npz"))["tokens"]
    b = np.load(rd_b.file("samples.npz"))["tokens"]
    assert np.array_equal(a, b)
    ca = torch.load(rd_a.file("checkpoints/step-00000006/model.pt"), weights_only=True)
    cb = torch.load(rd_b.file("checkpoints/step-00000006/model.pt"), weights_only=True)
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    with pytest.raises(Exception, match=r"training\.lr"):
        stages.execute(_config(registry, training={"steps": 9, "lr": 0.01}), registry, rd_b, resume=True)


def test_sample_count_below_protocol_is_refused_before_training(registry, tmp_path):
    cfg = _config(registry, evaluation={"enabled": True, "protocol": "quick", "overrides": {"num_generated": 20}})
    rd = _new_run(tmp_path, cfg)
    with pytest.raises(Exception, match="sampling.num_samples = 10"):
        stages.execute(cfg, registry, rd, resume=False)
    assert not rd.file("checkpoints").exists()


@pytest.mark.slow
def test_pipeline_calls_evaluation(registry, tmp_path):
    cfg = _config(registry, evaluation={"enabled": True, "protocol": "quick", "overrides": {"num_generated": 10}})
    rd = _new_run(tmp_path, cfg)
    metrics = stages.execute(cfg, registry, rd, resume=False)
    assert metrics["status"] == "ok" and metrics["protocol_hash"] and metrics["n"] == 10
    assert metrics["metrics"]
    again = evaluation.evaluate_run(rd, registry)
    assert again["metrics"] == metrics["metrics"]


def test_the_report_reads_the_events_the_run_writes(registry, tmp_path):
    """The HTML report's curves come from the event names the runner and training loop really write
    (no phantom names): loss terms at every log step, the metrics of the run's own protocol at its last step."""
    from dlbench.report.compare import RunRecord, summarise
    from dlbench.report.html import run_series, write_report

    cfg = _config(registry, evaluation={"enabled": True, "protocol": "quick",
                                        "overrides": {"num_generated": 10, "domain_metrics": False}})
    rd = _new_run(tmp_path, cfg)
    metrics = stages.execute(cfg, registry, rd, resume=False)
    kinds = [e["event"] for e in rd.events()]
    assert kinds.count("evaluation") == 1 and "eval" not in kinds
    series = run_series(rd.path, metrics["protocol_hash"])
    assert [s for s, _ in series["loss"]["loss"]] == [2, 4, 6] and "ce" in series["loss"]
    assert series["metrics"]["token_kl_pair"] == [(6, metrics["metrics"]["token_kl_pair"])]
    assert run_series(rd.path, "another-protocol")["metrics"] == {}
    index = write_report(summarise([RunRecord.load(rd.path)]), tmp_path / "html")
    assert "Training loss" in index.read_text() and (tmp_path / "html" / "metrics_vs_step.png").is_file()
