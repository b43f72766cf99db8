"""Stage 3: build the run's method on the tokenizer's token grid and train it on the cached tokens.

Also the compute record of the comparison table (parameters, steps, images, NFE, training FLOPs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from dlbench.interfaces import ImageDataset, Method, MethodContext, Tokenizer
from dlbench.runner.common import PipelineError
from dlbench.runs import EVENT_GENERATOR_TRAIN, RunDir
from dlbench.train.dist import DistContext
from dlbench.train.loop import TensorBatches, TrainResult, train

if TYPE_CHECKING:
    from dlbench.config import RunConfig, SamplingConfig
    from dlbench.registry import Registry

#: run-config fields left out of the checkpoint's config record (they may change on resume)
TRAIN_RECORD_EXCLUDE = ("device", "loggers")


def build_method(cfg: RunConfig, registry: Registry, tokenizer: Tokenizer, dataset: ImageDataset,
                 grid: tuple[int, int]) -> Method:
    """The config's method for ``tokenizer``'s codebook on a ``grid`` token grid (init seeded by the run seed)."""
    spec = registry.get("method", cfg.method.name)
    requires = getattr(spec.factory, "requires", None)
    conditioning = getattr(requires, "conditioning", "optional")
    num_classes = dataset.num_classes if conditioning != "none" else None
    if conditioning == "class" and not num_classes:
        raise PipelineError(f"method {cfg.method.name!r} needs class labels; dataset {cfg.dataset.name!r} has none")
    context = MethodContext(
        codebook_size=tokenizer.codebook_size, token_grid=grid, num_classes=num_classes, tokenizer=tokenizer,
        backbone={"preset": cfg.backbone.preset, **cfg.backbone.params}, registry=registry,
    )
    torch.manual_seed(cfg.seed)  # method init is a function of the run seed
    method = spec.build(cfg.method.params, context=context)
    if getattr(cfg.backbone, "compile", False):
        compile_denoisers(method)
    return method


def compile_denoisers(method: nn.Module) -> int:
    """``torch.compile`` every :class:`TokenDenoiser` inside ``method`` in place (``nn.Module.compile``:
    parameter names, hence checkpoints, are unchanged), and every module whose class sets
    ``dlbench_compile = True`` (a plugin's backbone, e.g. LightningDiT's). Returns how many were compiled."""
    from dlbench.nn.denoiser import TokenDenoiser

    found = [m for m in method.modules()
             if isinstance(m, TokenDenoiser) or getattr(type(m), "dlbench_compile", False) is True]
    for m in found:
        m.compile(dynamic=False)
    return len(found)


def method_labels(method: Method, labels: torch.Tensor) -> torch.Tensor | None:
    """Labels a method trains on: None for unconditional methods/datasets, else the dataset labels."""
    if type(method).requires.conditioning == "none" or labels is None or (labels < 0).all():
        return None
    return labels


def train_generator(cfg: RunConfig, method: Method, tensors: tuple[Any, ...], training: Any, run_dir: RunDir,
                    ctx: DistContext, *, resume: bool, emit: Callable[..., None],
                    on_step: Callable[..., None] | None = None) -> TrainResult:
    """Train ``method`` on ``tensors`` (tokens, and labels when conditional) under ``training`` (the run's
    training section with its budget resolved); checkpoints go to the run directory. Raises
    :class:`~dlbench.train.loop.TrainingDiverged` on a non-finite loss."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]):
        return model.loss(batch[0], batch[1] if len(batch) > 1 else None)

    record = {k: v for k, v in cfg.to_dict().items() if k not in TRAIN_RECORD_EXCLUDE}
    return train(
        method, loss_fn,
        TensorBatches(*tensors, batch_size=cfg.training.batch_size, seed=cfg.seed, rank=ctx.rank,
                      world=ctx.world_size),
        training, ctx=ctx, checkpoint_dir=run_dir.checkpoints, resume=resume, config_record=record,
        events=emit, diagnostics=method.diagnostics, stage=EVENT_GENERATOR_TRAIN, seed=cfg.seed, on_step=on_step,
    )


def nfe(method: Method, sampling: SamplingConfig) -> int:
    """Network evaluations per sample under the run's sampler settings."""
    # the options are part of the signature: some samplers' cost depends on them (e.g. VQ-Diffusion's stride)
    return int(method.nfe(sampling.steps, sampling.guidance, **sampling.options))


def compute_record(method: Method, result: Any, grid: tuple[int, int], sampling: SamplingConfig,
                   ctx: DistContext) -> dict[str, Any]:
    """Compute columns of the comparison table. ``train_flops`` is the usual transformer estimate
    6 * params * tokens processed (forward + backward), times the method's forward passes per step
    (``forwards_per_step``, e.g. 2 when a teacher is evaluated as well); it ignores attention."""
    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    positions = method_positions(method, grid)
    forwards = float(method.forwards_per_step)
    tokens_seen = result.images_seen * positions
    return {
        "params": params,
        "train_steps": result.step,
        "images_seen": result.images_seen,
        "wall_clock_s": round(result.elapsed_s, 2),
        "nfe": nfe(method, sampling),
        "train_flops": 6.0 * params * tokens_seen * forwards,
        "train_flops_rule": "6 * params * images_seen * positions * forwards_per_step",
        "world_size": ctx.world_size,
    }


def method_positions(method: Method, grid: tuple[int, int]) -> int:
    """Positions the FLOPs rule counts: the method's own ``positions`` when it declares one (e.g. a patchified
    latent DiT: ``(h / p) * (w / p)``), else the token grid's ``h * w``."""
    positions = getattr(method, "positions", None)
    return int(positions) if isinstance(positions, int) else grid[0] * grid[1]


def engine_record(precision: str, ctx: DistContext) -> dict[str, Any]:
    """How the run was computed (precision, world size, device, TF32, deterministic algorithms)."""
    return {"precision": precision, "world_size": ctx.world_size, "device": str(ctx.device),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
