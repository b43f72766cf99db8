"""After the run: rebuild a finished run's method (EMA weights) and tokenizer from its directory, and draw
more samples from it (``dlbench sample``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dlbench.interfaces import ImageDataset, Method, Tokenizer
from dlbench.runner.common import PipelineError, console
from dlbench.runner.generator_stage import build_method, method_labels
from dlbench.runner.sampling import decode_tokens, sample_labels, sample_tokens, write_samples
from dlbench.runner.tokenizer_stage import get_tokenizer
from dlbench.runs import RunDir
from dlbench.train.dist import DistContext, init_distributed

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.registry import Registry


def load_run(run_dir: RunDir, registry: Registry) -> tuple[RunConfig, ImageDataset, DistContext]:
    """The run's saved config (validated against ``registry``), its dataset and this process's device context."""
    from dlbench.config import load_run_config

    cfg = load_run_config(run_dir.file("config.json"), registry)
    ctx = init_distributed(cfg.device)
    dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    return cfg, dataset, ctx


def load_trained_method(run_dir: RunDir, registry: Registry
                        ) -> tuple[Method, Tokenizer, RunConfig, ImageDataset, DistContext]:
    """The run's method with its EMA weights (model weights when it kept no EMA), and its tokenizer."""
    from dlbench.train.checkpoint import load_latest_intact

    cfg, dataset, ctx = load_run(run_dir, registry)
    tokenizer, _, _ = get_tokenizer(cfg, registry, dataset, ctx, run_dir=None, train_if_missing=False)
    grid = tokenizer.token_grid(dataset.resolution, dataset.resolution)
    method = build_method(cfg, registry, tokenizer, dataset, grid)
    found = load_latest_intact(run_dir.checkpoints, warn=lambda m: console().print(f"[yellow]warning:[/] {m}"))
    if found is None:
        raise PipelineError(f"{run_dir.path} has no checkpoint; it never trained (see its events.jsonl)")
    _, ck = found
    if ck["ema"] is not None:
        method.load_state_dict({k.removeprefix("shadow."): v for k, v in ck["ema"].items()})
    else:
        method.load_state_dict(ck["model"])
    return method.to(ctx.device).eval(), tokenizer, cfg, dataset, ctx


def sample_run(run_dir: RunDir, registry: Registry, *, n: int = 64, steps: int | None = None,
               guidance: float | None = None, seed: int = 0, output: str | Path | None = None) -> Path:
    """Draw ``n`` samples from a trained run (per-index seeds from ``seed``); writes ``<output>.png`` and
    ``.npz`` (default ``sample-seed<seed>`` in the run directory). Returns the PNG path."""
    from dlbench.train.dist import resolve_precision

    method, tokenizer, cfg, dataset, ctx = load_trained_method(run_dir, registry)
    num_classes = dataset.num_classes if method_labels(method, torch.zeros(1, dtype=torch.long)) is not None else None
    labels = sample_labels(n, num_classes)
    tokens = sample_tokens(method, n, seed=seed, labels=labels, batch_size=cfg.sampling.batch_size,
                           steps=steps if steps is not None else cfg.sampling.steps,
                           guidance=guidance if guidance is not None else cfg.sampling.guidance,
                           options=cfg.sampling.options, ctx=ctx,
                           precision=resolve_precision(cfg.training.precision, ctx.device))
    images = decode_tokens(tokenizer, tokens, ctx.device)
    out = Path(output) if output is not None else run_dir.file(f"sample-seed{seed}")
    out = out.with_suffix("")
    target = RunDir(out.parent)
    if ctx.is_main:
        write_samples(target, tokens, images, labels, stem=out.name)
    return out.with_suffix(".png")
