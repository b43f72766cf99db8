"""Stage 1: the run's trained tokenizer -- from the cache, a shipped copy, imported weights, or trained now.

Tokenizers are trained once per ``hash(dataset train fingerprint, tokenizer name + params, tokenizer
training config, seed)`` and stored under ``$DLBENCH_CACHE/tokenizers/<hash>/`` together with the
tokenized splits (DESIGN.md § Component kinds, Tokenizer). On a cache miss, a tokenizer shipped with the
package under the same key (:mod:`dlbench.shipped`, sha256-checked) is installed there instead of training.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlbench.eval.quantize import quantize_uint8
from dlbench.interfaces import ImageDataset, Tokenizer
from dlbench.runner.common import PipelineError, cache_root, console, digest, events_for, save_grid
from dlbench.runner.common import to_float_images
from dlbench.runs import EVENT_TOKENIZER_TRAIN, RunDir, atomic_write_bytes, atomic_write_json, read_json
from dlbench.train.dist import DistContext
from dlbench.train.loop import TensorBatches, train

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.registry import Registry

TOKENIZER_CACHE_VERSION = "tok-v1"


def tokenizer_key(cfg: RunConfig, dataset: ImageDataset) -> str:
    """Cache key of a trained tokenizer (see module docstring)."""
    return digest(tokenizer_key_inputs(cfg, dataset))


def tokenizer_key_inputs(cfg: RunConfig, dataset: ImageDataset) -> dict[str, Any]:
    """What :func:`tokenizer_key` hashes (recorded next to shipped tokenizers)."""
    inputs = {
        "version": TOKENIZER_CACHE_VERSION,
        "dataset": cfg.dataset.name,
        "train_fingerprint": dataset.fingerprint("train"),
        "channels": dataset.channels,
        "resolution": dataset.resolution,
        "tokenizer": cfg.tokenizer.name,
        "params": cfg.tokenizer.params,
        "training": cfg.tokenizer.training.model_dump(mode="json"),
        "seed": cfg.tokenizer.seed,
    }
    regularizers = [r.model_dump(mode="json") for r in cfg.tokenizer.regularizers]
    if regularizers:  # only when set: keys of tokenizers without regularizers (and shipped copies) stay valid
        inputs["regularizers"] = regularizers
    return inputs


def build_tokenizer(cfg: RunConfig, registry: Registry, dataset: ImageDataset) -> Tokenizer:
    """The config's tokenizer, untrained, shaped for ``dataset``, with the config's tokenizer-stage regularizers
    (``tokenizer.regularizers``) attached."""
    from dlbench.registry import attach_regularizers

    spec = registry.get("tokenizer", cfg.tokenizer.name)
    tokenizer = spec.build(cfg.tokenizer.params, channels=dataset.channels, resolution=dataset.resolution)
    attach_regularizers(registry, tokenizer, list(cfg.tokenizer.regularizers))
    return tokenizer


def _store(tokenizer: Tokenizer, folder: Path, info: dict[str, Any], ctx: DistContext) -> None:
    """Write ``info.json`` then the weights (last: their presence marks a complete entry); rank 0 only."""
    if ctx.is_main:
        buf = io.BytesIO()
        torch.save(tokenizer.state_dict(), buf)
        atomic_write_json(folder / "info.json", info)
        atomic_write_bytes(folder / "tokenizer.pt", buf.getvalue())
    ctx.barrier()


def get_tokenizer(
    cfg: RunConfig, registry: Registry, dataset: ImageDataset, ctx: DistContext, *, run_dir: RunDir | None = None,
    train_if_missing: bool = True,
) -> tuple[Tokenizer, str, dict[str, Any]]:
    """The trained tokenizer for this config: loaded from the cache, or trained and stored there.
    Returns ``(tokenizer in eval mode, key, info)``. Raises :class:`TrainingDiverged` if its training fails."""
    from dlbench.data import load_split_tensors
    from dlbench.safeload import torch_load

    key = tokenizer_key(cfg, dataset)
    folder = cache_root() / "tokenizers" / key
    weights = folder / "tokenizer.pt"
    emit = events_for(run_dir, ctx)
    torch.manual_seed(cfg.tokenizer.seed)
    tokenizer = build_tokenizer(cfg, registry, dataset)

    action = "reused cached"
    if not weights.is_file():
        from dlbench.shipped import install_tokenizer

        if install_tokenizer(key, folder) is not None:  # a sha256-checked shipped copy of this exact key
            action = "installed shipped"
    if weights.is_file():
        tokenizer.load_state_dict(torch_load(weights, what="cached tokenizer weights"))
        info = read_json(folder / "info.json", {}) or {}
    elif tokenizer.pretrained:  # imported weights (e.g. tokenizer/vqgan checkpoint=...)
        info = {"key": key, "name": cfg.tokenizer.name, "params": cfg.tokenizer.params,
                "imported": tokenizer.imported, "training": None}
        _store(tokenizer, folder, info, ctx)
        action = "imported"
    else:
        if not train_if_missing:
            raise PipelineError(f"tokenizer {key} is not in the cache ({folder}); re-run `dlbench run` to train it")
        tokenizer.prepare_training()  # fail before loading data, e.g. VQGAN's LPIPS weights are missing
        images, _ = load_split_tensors(dataset, "train")
        tcfg = cfg.tokenizer.training
        result = train(
            tokenizer, lambda m, batch: m.training_loss(to_float_images(batch[0])),
            TensorBatches(images, batch_size=tcfg.batch_size, seed=cfg.tokenizer.seed, rank=ctx.rank,
                          world=ctx.world_size),
            tcfg, ctx=ctx, checkpoint_dir=folder / "checkpoints", resume=True,
            config_record={"tokenizer_key": key}, events=emit, stage=EVENT_TOKENIZER_TRAIN,
            seed=cfg.tokenizer.seed,
        )
        final = result.ema.shadow if result.ema is not None else tokenizer
        if final is not tokenizer:
            tokenizer.load_state_dict(final.state_dict())
        finished = tokenizer.finish_training(images)  # e.g. kl-vae's latent statistics
        info = {"key": key, "name": cfg.tokenizer.name, "params": cfg.tokenizer.params,
                "regularizers": [r.model_dump(mode="json") for r in cfg.tokenizer.regularizers],
                "training": result.record(), "dataset": cfg.dataset.name,
                "train_fingerprint": dataset.fingerprint("train"),
                **({"finish_training": finished} if finished is not None else {})}
        _store(tokenizer, folder, info, ctx)
        action = "trained"
    if ctx.is_main:
        console().print(f"{action} tokenizer {key}")
        if action != "trained":
            from dlbench.observe.progress import note

            note("tokenizer_train", f"skipped: {action} tokenizer {key}")
    emit("tokenizer", action=action.split()[0], key=key, path=str(folder))
    tokenizer.to(ctx.device).eval()
    return tokenizer, key, info


@torch.no_grad()
def write_recon_grid(tokenizer: Tokenizer, dataset: ImageDataset, path: Path, ctx: DistContext) -> None:
    """8x8 grid: rows alternate 8 originals / their reconstructions (32 pairs, test split)."""
    from dlbench.data import load_split_tensors
    from dlbench.preflight import split_available

    split = "test" if split_available(dataset, "test") else "train"
    images, _ = load_split_tensors(dataset, split, limit=32)
    recon = quantize_uint8(tokenizer.decode(tokenizer.encode(to_float_images(images).to(ctx.device))))
    rows = []
    for i in range(0, len(images), 8):
        rows += [images[i : i + 8], recon[i : i + 8]]
    save_grid(torch.cat(rows), path)
