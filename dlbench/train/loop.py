"""The training loop shared by tokenizers and methods.

AdamW with linear warm-up, gradient clipping, parameter EMA, a budget in steps / images / minutes,
periodic atomic checkpoints with exact resume, NaN/Inf guards, bf16 autocast, DDP and rank-0-only
logging. The model is trained through ``loss_fn(model, batch) -> (loss, terms)`` so one loop serves
``tokenizer.training_loss(images)`` and ``method.loss(tokens, labels)``.

Determinism: batches are a pure function of ``(seed, step)`` (:class:`TensorBatches`) and the
global RNG states travel in the checkpoint, so on CPU ``N`` straight steps and ``N/2 + resume +
N/2`` give bit-identical parameters.

Longer than ~350 lines because :func:`train` is one loop whose features (budget, EMA, checkpoints and
exact resume, NaN guards, autocast, DDP, logging) share its per-step state; checkpoint I/O, distributed
helpers and accumulation already live in their own modules.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dlbench.interfaces import Method
from dlbench.nn.ema import EMA, ema_decay_at
from dlbench.registry import DlbenchError
from dlbench.seeding import derive_seed, splitmix64
from dlbench.train.accumulate import accumulate_backward, check_accumulation
from dlbench.train.checkpoint import (
    ResumeConfigMismatch,
    capture_rng,
    latest_checkpoint,
    load_latest_intact,
    restore_rng,
    save_checkpoint,
)
from dlbench.train.dist import DistContext, bf16_warning, resolve_precision, wrap_ddp

LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
EventFn = Callable[..., None]  # like RunDir.event(kind, **fields)

#: config fields that may change between a checkpoint and its resume (budgets and logging cadence)
RESUMABLE_FIELDS: tuple[str, ...] = (
    "training.steps", "training.budget_images", "training.budget_minutes", "training.log_every",
    "training.checkpoint_every", "training.diagnostics_every", "training.grad_accum", "training.budget_flops",
    "device", "loggers",
)


class TrainingDiverged(DlbenchError):
    """Loss or gradients became NaN/Inf; training stopped and the last good checkpoint was kept."""

    def __init__(self, step: int, reason: str, checkpoint: Path | None):
        self.step, self.reason, self.checkpoint = step, reason, checkpoint
        kept = f"; last good checkpoint: {checkpoint}" if checkpoint else "; no checkpoint was written yet"
        super().__init__(f"training diverged at step {step}: {reason}{kept}. Try a lower lr or grad_clip")


@dataclass
class TrainResult:
    status: str  # "ok"
    step: int
    images_seen: int
    elapsed_s: float
    stopped_by: str  # "steps" | "images" | "minutes"
    precision: str
    resumed_from: int | None = None
    last_terms: dict[str, float] = field(default_factory=dict)
    ema: EMA | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "ema"}


# ---------------------------------------------------------------------------------------------
# Data stream
# ---------------------------------------------------------------------------------------------


class TensorBatches:
    """Batches over in-memory tensors (same first dim), a pure function of ``(seed, step)``.

    Epoch ``e`` visits a permutation drawn from a generator seeded by ``splitmix64(seed, e)``; step ``s``
    takes global positions ``[s*B, (s+1)*B)`` of the concatenated epochs. Under DDP rank ``r`` keeps
    positions ``r::world`` of each global batch, so the union over ranks is the single-process batch.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors with the same, non-zero first dimension")
        if batch_size % world:
            raise DlbenchError(
                f"training.batch_size={batch_size} (global) is not divisible by the world size {world}; "
                "pick a multiple of the number of processes"
            )
        self.tensors, self.n = tensors, len(tensors[0])
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            key = int(splitmix64([(self.seed * 1_000_003 + epoch) & ((1 << 64) - 1)])[0] >> 1)
            self._perm_cache = {e: p for e, p in self._perm_cache.items() if e >= epoch - 1}
            self._perm_cache[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(key))
        return self._perm_cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Dataset indices ``"m"`` of this rank's share of global batch ``step``."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)[self.rank :: self.world]
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        idx = self.indices(step)
        return tuple(t[idx] for t in self.tensors)


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """Routes the loss through ``forward`` so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *batch: torch.Tensor):
        return self.loss_fn(self.model, batch)


def make_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not biases, norms, 1-D embeddings of scalars).

    A :class:`~dlbench.interfaces.Method` declares ``lr_scales() -> {parameter-name prefix: multiplier}`` (e.g.
    VQ-LCMD's embedding table at 10x the network's rate): those parameters get their own group whose
    ``lr_scale`` the loop multiplies into the (warmed-up) learning rate. Without scales (any other model, or
    the default ``{}``) the groups are exactly [decay, no decay]."""
    scales = dict(model.lr_scales()) if isinstance(model, Method) else {}

    def scale_of(name: str) -> float:
        return next((float(v) for k, v in scales.items() if name == k or name.startswith(k + ".")), 1.0)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keys = sorted({scale_of(n) for n, _ in named} | {1.0}, key=lambda v: (v != 1.0, v))
    groups = []
    for scale in keys:  # scale 1 first: a model without lr_scales gets the same groups (and state) as before
        mine = [(n, p) for n, p in named if scale_of(n) == scale]
        groups += [{"params": [p for _, p in mine if p.ndim >= 2], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for _, p in mine if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [dict(g, lr=lr * g["lr_scale"]) for g in groups if g["params"]]
    # the fused kernel updates every parameter in one pass: measured 3.2x (default backbone) and 2.9x (width 256,
    # depth 8) faster than the per-parameter loop torch picks by default on CPU (benchmarks/results/train_mfu.md)
    fused = bool(named) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in named)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up ``lr * min(1, (step + 1) / warmup_steps)``, then constant."""
    return base_lr if warmup_steps <= 0 else base_lr * min(1.0, (step + 1) / warmup_steps)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batches: TensorBatches,
    config: Any,
    *,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    config_record: dict[str, Any] | None = None,
    events: EventFn | None = None,
    diagnostics: Callable[[], dict[str, float]] | None = None,
    stage: str = "train",
    seed: int = 0,
    show_progress: bool = True,
    keep_checkpoints: int = 2,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place under ``config`` (a :class:`dlbench.config.TrainingConfig`).

    ``config_record`` (e.g. the run config as a dict) is stored in checkpoints; a resume whose record
    differs outside :data:`RESUMABLE_FIELDS` raises :class:`ResumeConfigMismatch` naming the fields.
    ``events(kind, **fields)`` receives ``"<stage>"`` log lines (loss terms separately) on rank 0.
    Raises :class:`TrainingDiverged` on NaN/Inf loss or gradients (no checkpoint written for it).
    ``on_step({"step", "images_seen", "elapsed_s", "model", "ema"})`` runs on rank 0 after every step
    (learning curves); it must leave the RNG and the model's mode as it found them, and its time is not
    counted as training time.
    """
    ctx = ctx or DistContext()
    device = ctx.device
    model.to(device)
    model.train()
    emit = events if (events is not None and ctx.is_main) else (lambda *a, **k: None)
    record = config_record or {}
    record_hash = _hash(record)
    requested_precision = getattr(config, "precision", "fp32")
    precision = resolve_precision(requested_precision, device)  # "auto" -> what this machine runs natively
    optimizer = make_optimizer(model, config.lr, config.betas, config.weight_decay)
    ema = EMA(model) if config.ema_decay > 0 else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    step, images_seen, elapsed_before, resumed_from = 0, 0, 0.0, None
    torch.manual_seed(derive_seed(seed, ctx.rank))  # rank 0 keeps `seed`: 1 process == rank 0 of N
    found = None
    if resume and ckpt_dir is not None:  # a damaged newest checkpoint falls back to an older intact one
        found = load_latest_intact(ckpt_dir, map_location=device,
                                   warn=lambda m: emit("warning", stage=stage, message=m) if ctx.is_main else None)
    if found is not None:
        path, ck = found
        st = ck["state"]
        from dlbench.config import config_diff

        diff = {k: v for k, v in config_diff(st.get("config", {}), record).items()
                if not any(k == f or k.startswith(f + ".") for f in RESUMABLE_FIELDS)}
        if diff:
            raise ResumeConfigMismatch(path, diff)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ema is not None and ck["ema"] is not None:
            ema.load_state_dict(ck["ema"])
        step, images_seen, elapsed_before = st["step"], st["images_seen"], st["elapsed_s"]
        rngs = st["rng"]
        if len(rngs) == ctx.world_size:
            restore_rng(rngs[ctx.rank])
        else:  # a different world size cannot continue the same streams; say so
            torch.manual_seed(derive_seed(seed + step, ctx.rank))
            emit("warning", stage=stage, message=f"resumed with world size {ctx.world_size} != {len(rngs)}: "
                 "RNG streams reseeded, the run is not bit-identical to an uninterrupted one")
        resumed_from = step
        emit(f"{stage}_resume", step=step, checkpoint=str(path))

    wrapped = wrap_ddp(_LossModule(model, loss_fn), ctx)
    accum = int(getattr(config, "grad_accum", 1))
    check_accumulation(batches.batch_size, ctx.world_size, accum)
    params = [p for p in model.parameters() if p.requires_grad]
    use_bf16 = precision == "bf16"
    if use_bf16 and ctx.is_main and (why := bf16_warning(device)) is not None:
        emit("warning", stage=stage, message=why)
        warnings.warn(why, RuntimeWarning, stacklevel=2)
    start = time.monotonic()
    window: dict[str, list[float]] = {}
    last_terms: dict[str, float] = {}
    last_good = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    saved_step = resumed_from  # step of the newest checkpoint this run wrote or resumed from, alike on every rank
    emit(f"{stage}_start", step=step, precision=precision, precision_requested=requested_precision, world_size=ctx.world_size, device=str(device),
         config_hash=record_hash)

    def stop_reason() -> str | None:
        if step >= config.steps:
            return "steps"
        if config.budget_images is not None and images_seen >= config.budget_images:
            return "images"
        if config.budget_minutes is not None:
            over = (elapsed_before + time.monotonic() - start) / 60 >= config.budget_minutes
            if ctx.broadcast_object(over):  # rank 0's clock decides for everyone
                return "minutes"
        return None

    def checkpoint() -> Path | None:
        rngs = ctx.all_gather_object(capture_rng())
        if ckpt_dir is None or not ctx.is_main:
            return None
        state = {"images_seen": images_seen, "elapsed_s": elapsed_before + time.monotonic() - start,
                 "rng": rngs, "config": record, "config_hash": record_hash, "stage": stage,
                 "precision": precision, "world_size": ctx.world_size}
        out = save_checkpoint(ckpt_dir, step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                              ema=ema.state_dict() if ema is not None else None, state=state,
                              keep=keep_checkpoints)
        emit("checkpoint", stage=stage, step=step, path=str(out))
        return out

    progress = _progress(show_progress and ctx.is_main, stage, config, step, batches.batch_size, elapsed_before)
    try:
        while (reason := stop_reason()) is None:
            batch = tuple(t.to(device, non_blocking=True) for t in batches.batch(step))
            lr = warmup_lr(config.lr, step, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss, terms = accumulate_backward(  # grad_accum micro-batches, one optimizer step
                wrapped, batch, accum,
                lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16))
            clip = config.grad_clip if config.grad_clip is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.tensor(0.0)
            loss_value, grad_value = float(loss.detach()), float(grad_norm)
            finite = math.isfinite(loss_value) and math.isfinite(grad_value)
            if ctx.all_reduce_min(1.0 if finite else 0.0) < 1.0:
                what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                reason_text = f"non-finite {what} (loss={loss_value}, grad_norm={grad_value})"
                if ctx.world_size > 1 and finite:
                    reason_text = "non-finite loss or gradients on another rank"
                emit("failure", stage=stage, step=step, reason=reason_text)
                raise TrainingDiverged(step, reason_text, last_good)
            optimizer.step()
            if isinstance(model, Method):  # method-owned state after each update (e.g. VQ-LCMD's EMA teacher)
                model.on_step_end()
            if ema is not None:
                ema.update(model, ema_decay_at(config.ema_decay, step))
            step += 1
            images_seen += batches.batch_size
            for name, value in {"loss": loss, **terms}.items():
                window.setdefault(name, []).append(float(torch.as_tensor(value).detach().float().mean()))
            if step % config.log_every == 0 or step == config.steps:
                last_terms = {k: sum(v) / len(v) for k, v in window.items()}
                emit(stage, step=step, lr=lr, grad_norm=grad_value, images_seen=images_seen,
                     elapsed_s=round(elapsed_before + time.monotonic() - start, 3), **last_terms)
                window.clear()
            if diagnostics is not None and step % getattr(config, "diagnostics_every", 10**9) == 0 and ctx.is_main:
                emit("diagnostics", stage=stage, step=step, **diagnostics())
            if on_step is not None and ctx.is_main:
                paused = time.monotonic()
                on_step({"step": step, "images_seen": images_seen, "model": model, "ema": ema,
                         "elapsed_s": elapsed_before + paused - start})
                start += time.monotonic() - paused  # evaluation time is not training time (wall-clock budgets)
            if step % config.checkpoint_every == 0:
                last_good = checkpoint() or last_good
                saved_step = step
            progress.update(step, last_terms.get("loss", loss_value))
        # Decided from `saved_step`, which every rank tracks alike: `last_good` is None off rank 0, and a
        # rank-dependent decision here would put rank 0 in the barrier below while the others wait in
        # checkpoint()'s all-gather (a gloo deadlock).
        if ckpt_dir is not None and saved_step != step:
            last_good = checkpoint() or last_good
    except BaseException as exc:
        progress.close(type(exc).__name__)
        raise
    finally:
        progress.close()
    ctx.barrier()
    if window:
        last_terms = {k: sum(v) / len(v) for k, v in window.items()}
    elapsed = elapsed_before + time.monotonic() - start
    emit(f"{stage}_end", step=step, images_seen=images_seen, elapsed_s=round(elapsed, 3), stopped_by=reason)
    return TrainResult("ok", step, images_seen, elapsed, reason, precision, resumed_from, last_terms, ema)


def _hash(record: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


class _progress:
    """Progress of a training stage on rank 0 (:mod:`dlbench.observe.progress`: rich bars on a terminal,
    plain lines with rate, loss and ETA in a log file)."""

    def __init__(self, enabled: bool, stage: str, config: Any, completed: int, batch_size: int,
                 elapsed_before: float = 0.0):
        from dlbench.observe.progress import Task

        total = config.steps
        if config.budget_images is not None:
            total = min(total, -(-config.budget_images // batch_size))
        deadline = None if config.budget_minutes is None else config.budget_minutes * 60 - elapsed_before
        self.task = Task(stage, total, "steps", completed=completed, per_unit=batch_size, deadline_s=deadline,
                         info=f"resumed at step {completed}" if completed else "",
                         display=None if enabled else "off")

    def update(self, step: int, loss: float) -> None:
        self.task.update(step, loss=loss)

    def close(self, error: str | None = None) -> None:
        self.task.close(error)
