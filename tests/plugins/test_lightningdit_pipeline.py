"""LightningDiT through the run pipeline (dlbench.runner.stages) at tiny size: the float latent cache, latent
samples in samples.npz, and the token metrics marked unavailable with a reason."""

from __future__ import annotations

import numpy as np
import torch

from lightningdit_helpers import registry  # noqa: F401 - fixture


def _config(over=()):
    from dlbench.api import resolve

    return resolve("lightningdit", preset="quick", overrides=[
        "tokenizer.training.steps=3", "tokenizer.training.batch_size=8", "tokenizer.params.channels=8",
        "training.steps=3", "training.batch_size=8", "training.log_every=1",
        "training.checkpoint_every=3", "sampling.num_samples=16", "sampling.batch_size=8", "sampling.steps=2",
        "evaluation.protocol=quick", "evaluation.curve_points=2", "evaluation.curve_samples=8", "device=cpu", *over,
    ])


def test_lightningdit_runs_end_to_end_on_float_latents(registry, tmp_path):  # noqa: F811
    from dlbench.data.token_cache import LatentArray
    from dlbench.runner import stages
    from dlbench.runner.tokens import tokenize_split, training_inputs
    from dlbench.runs import RunDir
    from dlbench.train.dist import DistContext

    # the session's cache (tests/conftest.py): the domain classifier and reference features are shared with the
    # other evaluated runs; this config's tokenizer and latent cache are its own
    cfg = _config()
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir(parents=True)
    rd.write_json("config.json", cfg.to_dict())
    metrics = stages.execute(cfg, registry, rd, resume=False)
    assert metrics["status"] == "ok" and metrics["training"]["step"] == 3

    data = np.load(rd.file("samples.npz"), allow_pickle=False)
    assert "tokens" not in data and data["latents"].dtype == np.float32
    assert data["latents"].shape == (16, 8, 8, cfg.tokenizer.params.get("latent_dim", 4))
    assert np.isfinite(data["latents"]).all() and data["images"].shape == (16, 1, 32, 32)

    for name in ("token_kl_unigram", "token_kl_pair", "nll_bound"):
        assert name not in metrics["metrics"] and "continuous latents" in metrics["unavailable"][name]
    assert {"domain_fd", "domain_class_acc"} <= set(metrics["metrics"])
    rows = metrics["anchors"]["rows"]
    assert "domain_fd" in rows["reconstruction"]["metrics"] and "token_kl_unigram" in rows["real"]["unavailable"]
    assert "continuous latents" in rows["marginals"]["unavailable"]["*"]
    assert metrics["tokenizer"]["metadata"]["latent_kind"] == "continuous"
    assert set(metrics["end_of_training"]) >= {"loss_curve"}
    curves = rd.events("curve")  # learning-curve points: sampled latents, decoded, domain metrics only
    assert [c["step"] for c in curves] == [2, 3] and all("domain_fd" in c and "token_kl_pair" not in c for c in curves)

    # the latent cache: float rows of normalised posterior samples, plus the flipped images for training
    ds = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    tok, key = stages.get_tokenizer(cfg, registry, ds, DistContext())[:2]
    lat, labels = tokenize_split(tok, ds, "train", key, DistContext())
    train, train_labels = training_inputs(tok, ds, key, DistContext())
    assert isinstance(lat, LatentArray) and lat[torch.tensor([0, 1])].dtype == torch.float32
    assert len(train) == 2 * len(lat) and torch.equal(train_labels, torch.cat([labels, labels]))
    # rows are posterior samples from one generator per block of LATENT_BLOCK images seeded by (seed, block):
    # independent of batch size and world size; the flipped images continue the block's generator
    from dlbench.data.token_cache import LATENT_BLOCK
    from dlbench.runner.tokens import LATENT_ENCODE_SEED

    split = ds.split("train")
    m = min(LATENT_BLOCK, len(split))
    x = torch.stack([split[i][0] for i in range(m)]).float() / 127.5 - 1
    g = torch.Generator().manual_seed(LATENT_ENCODE_SEED * 1_000_003)
    assert torch.allclose(lat[torch.arange(m)], tok.encode(x, sample=True, generator=g), atol=1e-5)
    assert torch.allclose(train[torch.arange(len(lat), len(lat) + m)], tok.encode(x.flip(-1), sample=True, generator=g),
                          atol=1e-5)
    assert not torch.allclose(lat[torch.arange(m)], tok.encode(x), atol=1e-3)  # a sample, not the posterior mean
