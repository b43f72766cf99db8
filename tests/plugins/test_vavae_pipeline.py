"""The run pipeline and continuous tokenizers: refused with discrete methods before training; the optional
``finish_training`` hook stores kl-vae's latent statistics with the cached tokenizer."""

from __future__ import annotations

import pytest
import torch

from vavae_helpers import registry  # noqa: F401 - fixture


def test_continuous_tokenizer_with_discrete_method_fails_preflight(registry):  # noqa: F811
    from dlbench.api import resolve
    from dlbench.preflight import PreflightError, preflight

    cfg = resolve("vq-diffusion", preset="quick", tokenizer="kl-vae")
    with pytest.raises(PreflightError, match="continuous latents .* discrete token ids"):
        preflight(cfg)
    preflight(resolve("vq-diffusion", preset="quick", tokenizer="vqvae-vf"))  # a discrete VF tokenizer is fine


def test_get_tokenizer_runs_finish_training(registry, tmp_path, monkeypatch):  # noqa: F811
    from dlbench.api import resolve
    from dlbench.train.dist import DistContext
    from dlbench.runner.tokenizer_stage import get_tokenizer

    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path))
    cfg = resolve("vq-diffusion", preset="quick", tokenizer="kl-vae", overrides=[
        "tokenizer.training.steps=2", "tokenizer.training.batch_size=8", "tokenizer.params.channels=8",
        "dataset.params.max_images=64",
    ])
    dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    tok, key, info = get_tokenizer(cfg, registry, dataset, DistContext())
    assert tok.has_latent_stats and info["finish_training"]["images"] == int(tok.latent_stats_images) > 0
    again, key2, _ = get_tokenizer(cfg, registry, dataset, DistContext())  # from the cache: statistics came with the weights
    assert key2 == key and torch.equal(again.latent_std, tok.latent_std) and again.has_latent_stats
