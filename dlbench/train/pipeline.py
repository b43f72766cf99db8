"""The run pipeline: dataset -> cached tokenizer -> cached tokens -> method training -> samples -> metrics.

``execute(run_config, run_dir, resume=...)`` is what ``dlbench run`` calls (through
:func:`dlbench.api.run`). Every stage is rank-aware: under torchrun all ranks train (DDP) and sample
their shard of the sample indices; rank 0 alone writes files and logs.

Tokenizers are trained once per ``hash(dataset train fingerprint, tokenizer name + params, tokenizer
training config, seed)`` and stored under ``$DLBENCH_CACHE/tokenizers/<hash>/`` together with the
tokenized splits (DESIGN.md § Component kinds, Tokenizer). On a cache miss, a tokenizer shipped with the
package under the same key (:mod:`dlbench.shipped`, sha256-checked) is installed there instead of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlbench.interfaces import ImageDataset, Method, MethodContext, Tokenizer
from dlbench.registry import DlbenchError
from dlbench.runs import RunDir, atomic_write_bytes, atomic_write_json, read_json
from dlbench.seeding import sample_seeds, shard_indices
from dlbench.train.dist import DistContext, gather_by_index, init_distributed, rank_local
from dlbench.train.loop import TensorBatches, TrainingDiverged, train

TOKENIZER_CACHE_VERSION = "tok-v1"
TRAIN_RECORD_EXCLUDE = ("device", "loggers")


class PipelineError(DlbenchError):
    pass


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def cache_root() -> Path:
    from dlbench.eval.inception import cache_dir

    return cache_dir()


def to_float_images(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``"b c H W"`` -> float in [-1, 1]."""
    return u8.float() / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """float ``"b c H W"`` in [-1, 1] -> uint8 (the evaluation protocol's rounding)."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_grid(images_u8: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """PNG grid of uint8 ``"n c H W"`` images, ``nrow`` per row, written atomically."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images_u8.float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if images_u8.shape[1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _events(run_dir: RunDir | None, ctx: DistContext):
    if run_dir is None or not ctx.is_main:
        return lambda *a, **k: None
    return run_dir.event


# ---------------------------------------------------------------------------------------------
# tokenizer cache
# ---------------------------------------------------------------------------------------------


def tokenizer_key(cfg: Any, dataset: ImageDataset) -> str:
    """Cache key of a trained tokenizer (see module docstring)."""
    return _digest(tokenizer_key_inputs(cfg, dataset))


def tokenizer_key_inputs(cfg: Any, dataset: ImageDataset) -> dict[str, Any]:
    """What :func:`tokenizer_key` hashes (recorded next to shipped tokenizers)."""
    return {
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


def build_tokenizer(cfg: Any, dataset: ImageDataset) -> Tokenizer:
    from dlbench.plugins import get_registry

    spec = get_registry().get("tokenizer", cfg.tokenizer.name)
    return spec.build(cfg.tokenizer.params, channels=dataset.channels, resolution=dataset.resolution)


def get_tokenizer(
    cfg: Any, dataset: ImageDataset, ctx: DistContext, *, run_dir: RunDir | None = None, train_if_missing: bool = True
) -> tuple[Tokenizer, str, dict[str, Any]]:
    """The trained tokenizer for this config: loaded from the cache, or trained and stored there.
    Returns ``(tokenizer in eval mode, key, info)``. Raises :class:`TrainingDiverged` if its training fails."""
    from dlbench.data import load_split_tensors

    key = tokenizer_key(cfg, dataset)
    folder = cache_root() / "tokenizers" / key
    weights = folder / "tokenizer.pt"
    emit = _events(run_dir, ctx)
    torch.manual_seed(cfg.tokenizer.seed)
    tokenizer = build_tokenizer(cfg, dataset)
    from dlbench.safeload import torch_load

    action = "reused cached"
    if not weights.is_file():
        from dlbench.shipped import install_tokenizer

        if install_tokenizer(key, folder) is not None:  # a sha256-checked shipped copy of this exact key
            action = "installed shipped"
    if weights.is_file():
        tokenizer.load_state_dict(torch_load(weights, what="cached tokenizer weights"))
        info = read_json(folder / "info.json", {}) or {}
    elif getattr(tokenizer, "pretrained", False):  # imported weights (e.g. tokenizer/vqgan checkpoint=...)
        info = {"key": key, "name": cfg.tokenizer.name, "params": cfg.tokenizer.params,
                "imported": getattr(tokenizer, "imported", None), "training": None}
        if ctx.is_main:
            import io

            buf = io.BytesIO()
            torch.save(tokenizer.state_dict(), buf)
            atomic_write_json(folder / "info.json", info)
            atomic_write_bytes(weights, buf.getvalue())
        ctx.barrier()
        action = "imported"
    else:
        if not train_if_missing:
            raise PipelineError(f"tokenizer {key} is not in the cache ({folder}); re-run `dlbench run` to train it")
        prepare = getattr(tokenizer, "prepare_training", None)
        if callable(prepare):  # fail before loading data, e.g. VQGAN's LPIPS weights are missing
            prepare()
        images, _ = load_split_tensors(dataset, "train")
        tcfg = cfg.tokenizer.training
        result = train(
            tokenizer, lambda m, batch: m.training_loss(to_float_images(batch[0])),
            TensorBatches(images, batch_size=tcfg.batch_size, seed=cfg.tokenizer.seed, rank=ctx.rank,
                          world=ctx.world_size),
            tcfg, ctx=ctx, checkpoint_dir=folder / "checkpoints", resume=True,
            config_record={"tokenizer_key": key}, events=emit, stage="tokenizer_train", seed=cfg.tokenizer.seed,
        )
        final = result.ema.shadow if result.ema is not None else tokenizer
        if final is not tokenizer:
            tokenizer.load_state_dict(final.state_dict())
        info = {"key": key, "name": cfg.tokenizer.name, "params": cfg.tokenizer.params,
                "training": result.record(), "dataset": cfg.dataset.name,
                "train_fingerprint": dataset.fingerprint("train")}
        if ctx.is_main:
            import io

            buf = io.BytesIO()
            torch.save(tokenizer.state_dict(), buf)
            atomic_write_json(folder / "info.json", info)
            atomic_write_bytes(weights, buf.getvalue())  # last: its presence marks a complete entry
        ctx.barrier()
        action = "trained"
    if ctx.is_main:
        _console().print(f"{action} tokenizer {key}")
        if action != "trained":
            from dlbench.observe.progress import note

            note("tokenizer_train", f"skipped: {action} tokenizer {key}")
    emit("tokenizer", action=action.split()[0], key=key, path=str(folder))
    tokenizer.to(ctx.device).eval()
    return tokenizer, key, info


def tokenize_split(
    tokenizer: Tokenizer, dataset: ImageDataset, split: str, key: str, ctx: DistContext, batch_size: int = 256
) -> tuple[Any, torch.Tensor]:
    """``(tokens "n h w", labels long "n")`` of a split, extracted once into a memory-mapped cache next to
    the tokenizer (:mod:`dlbench.data.token_cache`; sharded over ranks). ``tokens`` is a
    :class:`~dlbench.data.token_cache.TokenArray`: indexing it returns long tensors, rows are read on demand."""
    from dlbench.data.token_cache import extract_tokens

    split_ds = dataset.split(split)
    tokens, labels = extract_tokens(tokenizer.encode, split_ds, cache_root() / "tokenizers" / key, split,
                                    dataset.fingerprint(split), codebook_size=tokenizer.codebook_size, ctx=ctx,
                                    device=ctx.device, batch_size=batch_size)
    # the cache holds only the readable images: the difference is what --skip-bad skipped (also on reuse)
    note_skipped(dataset, split, max(len(split_ds) - len(labels), 0))
    return tokens, labels


def note_skipped(dataset: ImageDataset, split: str, n: int) -> None:
    """Remember how many unreadable images of ``split`` were skipped (also when its tokens came from the
    cache, where the images are not read again)."""
    counts = dataset.__dict__.setdefault("_dlbench_skipped", {})
    counts[split] = max(n, counts.get(split, 0))


def skipped_report(dataset: ImageDataset) -> dict[str, int]:
    """``{split: unreadable images skipped}`` over the splits this process used (``--skip-bad``)."""
    counts = dict(dataset.__dict__.get("_dlbench_skipped", {}))
    for split, ds in (getattr(dataset, "_cache", None) or {}).items():
        counts[split] = max(counts.get(split, 0), int(getattr(ds, "skipped", 0) or 0))
    return counts


@torch.no_grad()
def write_recon_grid(tokenizer: Tokenizer, dataset: ImageDataset, path: Path, ctx: DistContext) -> None:
    """8x8 grid: rows alternate 8 originals / their reconstructions (32 pairs, test split)."""
    from dlbench.data import load_split_tensors

    from dlbench.preflight import split_available

    split = "test" if split_available(dataset, "test") else "train"
    images, _ = load_split_tensors(dataset, split, limit=32)
    recon = to_uint8_images(tokenizer.decode(tokenizer.encode(to_float_images(images).to(ctx.device))))
    rows = []
    for i in range(0, len(images), 8):
        rows += [images[i : i + 8], recon[i : i + 8]]
    save_grid(torch.cat(rows), path)


# ---------------------------------------------------------------------------------------------
# method
# ---------------------------------------------------------------------------------------------


def build_method(cfg: Any, tokenizer: Tokenizer, dataset: ImageDataset, grid: tuple[int, int]) -> Method:
    from dlbench.plugins import get_registry

    spec = get_registry().get("method", cfg.method.name)
    requires = getattr(spec.factory, "requires", None)
    conditioning = getattr(requires, "conditioning", "optional")
    num_classes = dataset.num_classes if conditioning != "none" else None
    if conditioning == "class" and not num_classes:
        raise PipelineError(f"method {cfg.method.name!r} needs class labels; dataset {cfg.dataset.name!r} has none")
    context = MethodContext(
        codebook_size=tokenizer.codebook_size, token_grid=grid, num_classes=num_classes, tokenizer=tokenizer,
        backbone={"preset": cfg.backbone.preset, **cfg.backbone.params},
    )
    torch.manual_seed(cfg.seed)  # method init is a function of the run seed
    method = spec.build(cfg.method.params, context=context)
    if getattr(cfg.backbone, "compile", False):
        compile_denoisers(method)
    return method


def compile_denoisers(method: nn.Module) -> int:
    """``torch.compile`` every :class:`TokenDenoiser` inside ``method`` in place (``nn.Module.compile``:
    parameter names, hence checkpoints, are unchanged). Returns how many were compiled."""
    from dlbench.nn.denoiser import TokenDenoiser

    found = [m for m in method.modules() if isinstance(m, TokenDenoiser)]
    for m in found:
        m.compile(dynamic=False)
    return len(found)


def method_labels(method: Method, labels: torch.Tensor) -> torch.Tensor | None:
    """Labels a method trains on: None for unconditional methods/datasets, else the dataset labels."""
    requires = getattr(type(method), "requires", None)
    if getattr(requires, "conditioning", "optional") == "none" or labels is None or (labels < 0).all():
        return None
    return labels


def sample_labels(n: int, num_classes: int | None) -> torch.Tensor | None:
    """Balanced class labels ``i mod C`` for sample index ``i`` (None when unconditional)."""
    return None if not num_classes else torch.arange(n) % num_classes


@torch.no_grad()
def sample_tokens(
    method: Method, n: int, *, seed: int, labels: torch.Tensor | None, batch_size: int, steps: int | None,
    guidance: float, options: dict[str, Any], ctx: DistContext, events=None, precision: str = "fp32",
) -> torch.Tensor:
    """``"n h w"`` tokens for sample indices ``0..n-1``, each from its own seed; sharded over ranks and
    batched, with results independent of both (:mod:`dlbench.seeding`). ``precision="bf16"`` runs the
    network under bf16 autocast (the denoiser returns float32 logits, so the sampler's math stays fp32)."""
    from dlbench.observe.progress import task

    method.eval()
    mine = shard_indices(n, ctx.rank, ctx.world_size)
    out = []
    with task("sample", len(mine), "images", info=f"{steps or 'default'} steps, guidance {guidance}") as bar:
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            lab = labels[idx].to(ctx.device) if labels is not None else None
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                toks = method.sample(lab, sample_seeds(seed, idx).to(ctx.device), num_samples=len(idx),
                                     steps=steps, guidance=guidance, **options)
            out.append(toks.cpu())
            bar.update(start + len(idx))
            if events is not None:
                events("sampling", done=int(start + len(idx)), of=len(mine), rank=ctx.rank)
    if out:
        mine_tokens = torch.cat(out)
    else:  # an idle rank still takes part in the gather
        mine_tokens = torch.empty((0,), dtype=torch.long)
    if ctx.world_size == 1:
        return mine_tokens
    return gather_by_index(mine_tokens, mine, n, ctx)


@torch.no_grad()
def _sharded_features(tokenizer: Tokenizer, tokens: torch.Tensor, protocol: Any, ctx: DistContext,
                      events: Any) -> dict[str, torch.Tensor] | None:
    """Under torchrun, the Inception features of the evaluated samples: each rank decodes and extracts its
    share (``shard_indices``), rank 0 gathers them (:func:`dlbench.eval.api.sharded_generated_features`)
    and computes the metrics. None with one process, without Inception metrics, on the clean-fid backend
    (it extracts inside its own loop) or with too few samples (rank 0's evaluation then names the problem)."""
    if (protocol is None or ctx.world_size == 1 or not protocol.inception_metrics
            or protocol.backend != "torch-fidelity" or len(tokens) < protocol.num_generated):
        return None
    from dlbench.eval.api import sharded_generated_features

    n = protocol.num_generated
    mine = shard_indices(n, ctx.rank, ctx.world_size)
    # a rank with no share (n < world size) still takes part in the gather, with an empty RGB batch
    images = decode_tokens(tokenizer, tokens[mine], ctx.device) if len(mine) else torch.empty(0, 3, 1, 1,
                                                                                             dtype=torch.uint8)
    return sharded_generated_features(images, mine, n, protocol, ctx, device=ctx.device,
                                      events=events if ctx.is_main else None)


@torch.no_grad()
def decode_tokens(tokenizer: Tokenizer, tokens: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """uint8 images ``"n c H W"`` from tokens ``"n h w"``."""
    return torch.cat([to_uint8_images(tokenizer.decode(tokens[i : i + batch_size].to(device)))
                      for i in range(0, len(tokens), batch_size)])


def write_samples(run_dir: RunDir, tokens: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None,
                  stem: str = "samples") -> None:
    import io

    buf = io.BytesIO()
    arrays = {"tokens": tokens.numpy(), "images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(run_dir.file(f"{stem}.npz"), buf.getvalue())
    save_grid(images[:64], run_dir.file(f"{stem}.png"))


def _resolve_protocol(cfg: Any):
    from dlbench.config import ConfigError
    from dlbench.eval.protocol import resolve_protocol

    protocol = resolve_protocol(cfg.evaluation.protocol, token_metrics=cfg.evaluation.token_metrics,
                                **cfg.evaluation.overrides)
    if cfg.sampling.num_samples < protocol.num_generated:
        raise ConfigError(
            f"sampling.num_samples = {cfg.sampling.num_samples} but evaluation protocol {protocol.name!r} needs "
            f"num_generated = {protocol.num_generated}; raise sampling.num_samples or set "
            f"evaluation.overrides.num_generated (a different protocol hash)"
        )
    return protocol


def _engine_record(precision: str, ctx: DistContext) -> dict[str, Any]:
    return {"precision": precision, "world_size": ctx.world_size, "device": str(ctx.device),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def execute(run_config: Any, run_dir: RunDir, *, resume: bool) -> dict[str, Any]:
    """Run every stage of one experiment; returns (and on rank 0 writes) the metrics record.

    A diverged training (NaN/Inf) ends the run with ``{"status": "failed", "reason": ...}`` in
    metrics.json instead of raising; the last good checkpoint stays for inspection.
    """
    from dlbench.plugins import get_registry

    cfg = run_config
    ctx = init_distributed(cfg.device)
    emit = _events(run_dir, ctx)
    registry = get_registry()
    dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    protocol = _resolve_protocol(cfg) if cfg.evaluation.enabled else None  # fail before training

    try:
        tokenizer, key, tok_info = get_tokenizer(cfg, dataset, ctx, run_dir=run_dir)
    except TrainingDiverged as exc:
        return _failed(run_dir, ctx, f"tokenizer training: {exc}", exc.step)
    grid = tokenizer.token_grid(dataset.resolution, dataset.resolution)
    train_tokens, train_labels = tokenize_split(tokenizer, dataset, "train", key, ctx)
    if ctx.is_main:
        write_recon_grid(tokenizer, dataset, run_dir.file("recon.png"), ctx)
        emit("recon", path=str(run_dir.file("recon.png")))

    method = build_method(cfg, tokenizer, dataset, grid)
    labels = method_labels(method, train_labels)
    tensors = (train_tokens,) if labels is None else (train_tokens, labels)
    from dlbench.train.calibration import CurveRecorder, effective_training

    training, budget_record = effective_training(cfg.training, method, grid)
    num_classes = dataset.num_classes if labels is not None else None
    curves = None
    if protocol is not None and cfg.evaluation.curve_points and ctx.is_main:
        curves = CurveRecorder(cfg=cfg, protocol=protocol, dataset=dataset, tokenizer=tokenizer, key=key, ctx=ctx,
                               emit=emit, num_classes=num_classes, training=training)

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]):
        return model.loss(batch[0], batch[1] if len(batch) > 1 else None)

    record = {k: v for k, v in cfg.to_dict().items() if k not in TRAIN_RECORD_EXCLUDE}
    try:
        result = train(
            method, loss_fn,
            TensorBatches(*tensors, batch_size=cfg.training.batch_size, seed=cfg.seed, rank=ctx.rank,
                          world=ctx.world_size),
            training, ctx=ctx, checkpoint_dir=run_dir.checkpoints, resume=resume, config_record=record,
            events=emit, diagnostics=method.diagnostics, stage="train", seed=cfg.seed, on_step=curves,
        )
    except TrainingDiverged as exc:
        return _failed(run_dir, ctx, str(exc), exc.step)
    generator = result.ema.shadow if result.ema is not None else method
    if curves is not None:
        curves.finish(result.step, generator)

    s = cfg.sampling
    s_labels = sample_labels(s.num_samples, num_classes)
    tokens = sample_tokens(generator, s.num_samples, seed=s.seed, labels=s_labels, batch_size=s.batch_size,
                           steps=s.steps, guidance=s.guidance, options=s.options, ctx=ctx,
                           events=emit if ctx.is_main else None, precision=result.precision)
    metrics: dict[str, Any] = {
        "status": "ok",
        "training": result.record(),
        "engine": {**_engine_record(result.precision, ctx), "precision_requested": cfg.training.precision},
        "tokenizer": {"key": key, "name": cfg.tokenizer.name, "training": tok_info.get("training"),
                      "source": tok_info.get("source", "trained")},
        "sampling": {"num_samples": s.num_samples, "steps": s.steps, "guidance": s.guidance,
                     "nfe_per_sample": _nfe(method, s), "seed": s.seed},
        "seeds": {"train": cfg.seed, "sample": s.seed, "tokenizer": cfg.tokenizer.seed},
        "compute": {**compute_record(method, result, grid, s, ctx), "budget": budget_record},
        "method_diagnostics": _safe_diagnostics(generator),
    }
    gen_features = _sharded_features(tokenizer, tokens, protocol, ctx, emit)  # every rank takes part
    if not ctx.is_main:
        return metrics
    images = decode_tokens(tokenizer, tokens, ctx.device)
    write_samples(run_dir, tokens, images, s_labels)
    emit("samples", n=len(tokens), path=str(run_dir.file("samples.npz")), grid=str(run_dir.file("samples.png")),
         step=result.step)
    if protocol is not None:
        from dlbench.eval.api import evaluate_samples
        from dlbench.observe.progress import task

        n = protocol.num_generated
        with task("evaluate", None, "", info=f"protocol {protocol.name}, {n} samples"):
            ev = evaluate_samples(images[:n], s_labels[:n] if s_labels is not None else None, protocol, dataset,
                                  device=ctx.device, events=emit, generated_features=gen_features)
        metrics.update(ev)
        # rank 0 alone from here: the token cache it may fill must not wait for the other ranks
        _calibrate(metrics, generator, tokens, tokenizer, dataset, key, protocol, rank_local(ctx), labels is not None,
                   cfg, curves)
        run_dir.write_json("protocol.json", {**protocol.model_dump(mode="json"), "hash": ev["protocol_hash"]})
        emit("evaluation", protocol_hash=ev["protocol_hash"], metrics=ev["metrics"])
        emit("eval", step=result.step, **{k: v for k, v in ev["metrics"].items() if isinstance(v, (int, float))})
    try:
        report = generator.end_of_training_report(*_heldout_tokens(tokenizer, dataset, key, ctx, labels is not None))
        if report:
            metrics["end_of_training"] = report
    except Exception as exc:  # noqa: BLE001 - optional diagnostics never lose a finished run
        metrics["end_of_training"] = {"error": f"{type(exc).__name__}: {exc}"}
    if getattr(getattr(cfg.dataset, "params", None), "get", lambda k: None)("skip_bad"):
        skipped = skipped_report(dataset)
        total = sum(skipped.values())
        metrics["data"] = {"skipped_images": total, "skipped_by_split": skipped}
        emit("data_skipped", skipped_images=total, by_split=skipped)
        _console().print(f"--skip-bad: skipped {total} unreadable image(s)"
                         + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})" if skipped else ""))
    run_dir.write_json("metrics.json", metrics)
    return metrics


def _calibrate(metrics: dict[str, Any], generator: Method, tokens: torch.Tensor, tokenizer: Tokenizer,
               dataset: ImageDataset, key: str, protocol: Any, ctx: DistContext, conditional: bool, cfg: Any,
               curves: Any = None) -> None:
    """Token metrics + NLL bound into ``metrics`` (protocol-hashed like the rest) and the anchor rows
    (:mod:`dlbench.train.calibration`); anchors never lose a finished run."""
    from dlbench.train.calibration import anchors_for, token_evaluation

    if protocol.token_metrics is not None:
        te = token_evaluation(generator, tokens, tokenizer, dataset, key, protocol, ctx, conditional)
        metrics["metrics"].update(te["metrics"])
        metrics.setdefault("unavailable", {}).update(te["unavailable"])
        metrics.setdefault("details", {}).update(te["details"])
    if cfg.evaluation.anchors:
        try:
            metrics["anchors"] = anchors_for(protocol, dataset, tokenizer, key, ctx, log=_console().print)
            if curves is not None:
                metrics["curve_anchors"] = curves.anchors()
        except Exception as exc:  # noqa: BLE001 - anchors are context; the run's own numbers stand
            metrics["anchors"] = {"unavailable": f"{type(exc).__name__}: {exc}"}


def _heldout_tokens(tokenizer, dataset, key, ctx, labelled: bool, limit: int = 512):
    from dlbench.preflight import split_available

    split = "test" if split_available(dataset, "test") else "train"
    tokens, labels = tokenize_split(tokenizer, dataset, split, key, ctx)
    return tokens[:limit].to(ctx.device), (labels[:limit].to(ctx.device) if labelled else None)


def _nfe(method: Method, sampling: Any) -> int:
    try:  # some samplers' cost depends on their options (e.g. VQ-Diffusion's stride)
        return int(method.nfe(sampling.steps, sampling.guidance, **sampling.options))
    except TypeError:
        return int(method.nfe(sampling.steps, sampling.guidance))


def compute_record(method: Method, result: Any, grid: tuple[int, int], sampling: Any, ctx: DistContext) -> dict[str, Any]:
    """Compute columns of the comparison table. ``train_flops`` is the usual transformer estimate
    6 * params * tokens processed (forward + backward), times the method's forward passes per step
    (``forwards_per_step``, e.g. 2 when a teacher is evaluated as well); it ignores attention."""
    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    positions = grid[0] * grid[1]
    forwards = float(getattr(method, "forwards_per_step", 1.0))
    tokens_seen = result.images_seen * positions
    return {
        "params": params,
        "train_steps": result.step,
        "images_seen": result.images_seen,
        "wall_clock_s": round(result.elapsed_s, 2),
        "nfe": _nfe(method, sampling),
        "train_flops": 6.0 * params * tokens_seen * forwards,
        "train_flops_rule": "6 * params * images_seen * positions * forwards_per_step",
        "world_size": ctx.world_size,
    }


def _safe_diagnostics(method: Any) -> dict[str, float]:
    try:
        return dict(method.diagnostics())
    except Exception as exc:  # noqa: BLE001 - diagnostics must never lose a finished run
        return {"error": f"{type(exc).__name__}: {exc}"}  # type: ignore[dict-item]


def _failed(run_dir: RunDir, ctx: DistContext, reason: str, step: int | None) -> dict[str, Any]:
    metrics = {"status": "failed", "reason": reason, "step": step}
    if ctx.is_main:
        run_dir.write_json("metrics.json", metrics)
        _console().print(f"[red]run failed:[/red] {reason}")
    return metrics


# ---------------------------------------------------------------------------------------------
# after the run: re-evaluate, sample more
# ---------------------------------------------------------------------------------------------


def _load_run(run_dir: RunDir) -> tuple[Any, ImageDataset, DistContext]:
    from dlbench.config import load_run_config
    from dlbench.plugins import get_registry

    cfg = load_run_config(run_dir.file("config.json"), get_registry())
    ctx = init_distributed(cfg.device)
    dataset = get_registry().get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    return cfg, dataset, ctx


def load_trained_method(run_dir: RunDir) -> tuple[Method, Tokenizer, Any, ImageDataset, DistContext]:
    """The run's method with its EMA weights (model weights when it kept no EMA), and its tokenizer."""
    cfg, dataset, ctx = _load_run(run_dir)
    tokenizer, _, _ = get_tokenizer(cfg, dataset, ctx, run_dir=None, train_if_missing=False)
    grid = tokenizer.token_grid(dataset.resolution, dataset.resolution)
    method = build_method(cfg, tokenizer, dataset, grid)
    from dlbench.train.checkpoint import load_latest_intact

    found = load_latest_intact(run_dir.checkpoints, warn=lambda m: _console().print(f"[yellow]warning:[/] {m}"))
    if found is None:
        raise PipelineError(f"{run_dir.path} has no checkpoint; it never trained (see its events.jsonl)")
    _, ck = found
    if ck["ema"] is not None:
        method.load_state_dict({k.removeprefix("shadow."): v for k, v in ck["ema"].items()})
    else:
        method.load_state_dict(ck["model"])
    return method.to(ctx.device).eval(), tokenizer, cfg, dataset, ctx


def evaluate_run(run_dir: RunDir, *, protocol: str | None = None) -> dict[str, Any]:
    """Evaluate a finished run's ``samples.npz`` under ``protocol`` (default: the run's own); the run's
    metrics.json is updated only when its own protocol is used."""
    from dlbench.eval.api import evaluate_samples
    from dlbench.eval.protocol import resolve_protocol

    cfg, dataset, ctx = _load_run(run_dir)
    if not run_dir.file("samples.npz").is_file():
        raise PipelineError(f"{run_dir.path} has no samples.npz; the run did not finish (see metrics.json)")
    from dlbench.safeload import CorruptFileError, np_load
    from dlbench.train.calibration import protocol_with_tokens

    data = np_load(run_dir.file("samples.npz"), what="samples")
    if "images" not in data:
        raise CorruptFileError(f"{run_dir.file('samples.npz')}: samples file has no 'images' array")
    own = protocol is None
    proto = _resolve_protocol(cfg) if own else protocol_with_tokens(resolve_protocol(protocol),
                                                                    cfg.evaluation.token_metrics)
    n = proto.num_generated
    if len(data["images"]) < n:
        raise PipelineError(f"protocol {proto.name!r} needs {n} samples but {run_dir.path} has {len(data['images'])}; "
                            f"draw more with `dlbench sample {run_dir.path} --n {n}`")
    labels = torch.from_numpy(data["labels"][:n]) if "labels" in data else None
    ev = evaluate_samples(torch.from_numpy(data["images"][:n]), labels, proto, dataset, device=ctx.device)
    if proto.token_metrics is not None or cfg.evaluation.anchors:  # the same calibration as the run itself
        method, tokenizer, _, _, _ = load_trained_method(run_dir)
        key = tokenizer_key(cfg, dataset)
        conditional = labels is not None and method_labels(method, labels) is not None
        _calibrate(ev, method, torch.from_numpy(data["tokens"]), tokenizer, dataset, key, proto, ctx, conditional, cfg)
    if own:
        from dlbench.safeload import CorruptFileError

        try:
            metrics = run_dir.read_json("metrics.json", {}) or {}
        except CorruptFileError as exc:  # keep what was just computed; keep the damaged file for inspection
            aside = run_dir.file(f"metrics.json.corrupt-{int(time.time())}")
            os.replace(run_dir.file("metrics.json"), aside)
            _console().print(f"[yellow]warning:[/] {exc}; moved it to {aside.name} and wrote fresh metrics")
            run_dir.event("warning", message=f"corrupt metrics.json moved to {aside.name}")
            metrics = {}
        if not isinstance(metrics, dict):
            metrics = {}
        metrics.update(ev)
        run_dir.write_json("metrics.json", metrics)
    run_dir.event("evaluation", protocol_hash=ev["protocol_hash"], metrics=ev["metrics"])
    return ev


def sample_run(run_dir: RunDir, *, n: int = 64, steps: int | None = None, guidance: float | None = None,
               seed: int = 0, output: str | Path | None = None) -> Path:
    """Draw ``n`` samples from a trained run (per-index seeds from ``seed``); writes ``<output>.png`` and
    ``.npz`` (default ``sample-seed<seed>`` in the run directory). Returns the PNG path."""
    method, tokenizer, cfg, dataset, ctx = load_trained_method(run_dir)
    num_classes = dataset.num_classes if method_labels(method, torch.zeros(1, dtype=torch.long)) is not None else None
    labels = sample_labels(n, num_classes)
    from dlbench.train.dist import resolve_precision

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
