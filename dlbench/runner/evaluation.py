"""Stage 5: evaluate a run's samples under its protocol, add the calibration (token metrics, NLL bound,
anchor rows), and re-evaluate a finished run later (``dlbench eval``)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from dlbench.interfaces import ImageDataset, Method, Tokenizer
from dlbench.runner.common import PipelineError, console
from dlbench.runs import EVENT_EVALUATION, RunDir
from dlbench.train.dist import DistContext

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.eval.protocol import EvalProtocol
    from dlbench.registry import Registry


def resolve_run_protocol(cfg: RunConfig) -> EvalProtocol:
    """The run's evaluation protocol; refuses a sample count below what the protocol needs."""
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


def evaluate_generated(images: torch.Tensor, labels: torch.Tensor | None, protocol: EvalProtocol,
                       dataset: ImageDataset, ctx: DistContext, emit: Callable[..., None],
                       generated_features: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The protocol's metrics of a run's first ``num_generated`` images (rank 0); ``generated_features``: their
    Inception features already extracted across ranks (:func:`sharded_features`)."""
    from dlbench.eval.api import evaluate_samples
    from dlbench.observe.progress import task

    n = protocol.num_generated
    with task("evaluate", None, "", info=f"protocol {protocol.name}, {n} samples"):
        return evaluate_samples(images[:n], labels[:n] if labels is not None else None, protocol, dataset,
                                device=ctx.device, events=emit, generated_features=generated_features)


@torch.no_grad()
def sharded_features(tokenizer: Tokenizer, tokens: torch.Tensor, protocol: EvalProtocol | None, ctx: DistContext,
                     events: Any) -> dict[str, torch.Tensor] | None:
    """Under torchrun, the Inception features of the evaluated samples: each rank decodes and extracts its
    share (``shard_indices``), rank 0 gathers them (:func:`dlbench.eval.api.sharded_generated_features`)
    and computes the metrics. Every rank must call this. None with one process, without Inception metrics,
    on the clean-fid backend (it extracts inside its own loop) or with too few samples (rank 0's evaluation
    then names the problem)."""
    if (protocol is None or ctx.world_size == 1 or not protocol.inception_metrics
            or protocol.backend != "torch-fidelity" or len(tokens) < protocol.num_generated):
        return None
    from dlbench.eval.api import sharded_generated_features
    from dlbench.runner.sampling import decode_tokens
    from dlbench.seeding import shard_indices

    n = protocol.num_generated
    mine = shard_indices(n, ctx.rank, ctx.world_size)
    # a rank with no share (n < world size) still takes part in the gather, with an empty RGB batch
    images = (decode_tokens(tokenizer, tokens[mine], ctx.device) if len(mine)
              else torch.empty(0, 3, 1, 1, dtype=torch.uint8))
    return sharded_generated_features(images, mine, n, protocol, ctx, device=ctx.device,
                                      events=events if ctx.is_main else None)


def calibrate(metrics: dict[str, Any], generator: Method, tokens: torch.Tensor, tokenizer: Tokenizer,
              dataset: ImageDataset, key: str, protocol: EvalProtocol, ctx: DistContext, conditional: bool,
              cfg: RunConfig, curves: Any = None) -> None:
    """Token metrics + NLL bound into ``metrics`` (protocol-hashed like the rest) and the anchor rows
    (:mod:`dlbench.runner.calibration`); anchors never lose a finished run."""
    from dlbench.runner.calibration import anchors_for, continuous_unavailable, token_evaluation
    from dlbench.runner.common import is_continuous

    if is_continuous(tokenizer):  # float latents: no token statistics, no discrete NLL bound
        metrics.setdefault("unavailable", {}).update(continuous_unavailable(generator))
    elif protocol.token_metrics is not None:
        te = token_evaluation(generator, tokens, tokenizer, dataset, key, protocol, ctx, conditional)
        metrics["metrics"].update(te["metrics"])
        metrics.setdefault("unavailable", {}).update(te["unavailable"])
        metrics.setdefault("details", {}).update(te["details"])
    if cfg.evaluation.anchors:
        try:
            metrics["anchors"] = anchors_for(protocol, dataset, tokenizer, key, ctx, log=console().print)
            if curves is not None:
                metrics["curve_anchors"] = curves.anchors()
        except Exception as exc:  # noqa: BLE001 - anchors are context; the run's own numbers stand
            metrics["anchors"] = {"unavailable": f"{type(exc).__name__}: {exc}"}


def evaluate_run(run_dir: RunDir, registry: Registry, *, protocol: str | None = None) -> dict[str, Any]:
    """Evaluate a finished run's ``samples.npz`` under ``protocol`` (default: the run's own); the run's
    metrics.json is updated only when its own protocol is used."""
    from dlbench.eval.api import evaluate_samples
    from dlbench.eval.protocol import resolve_protocol
    from dlbench.runner.calibration import protocol_with_tokens
    from dlbench.runner.generator_stage import method_labels
    from dlbench.runner.restore import load_run, load_trained_method
    from dlbench.runner.tokenizer_stage import tokenizer_key
    from dlbench.safeload import CorruptFileError, np_load

    cfg, dataset, ctx = load_run(run_dir, registry)
    if not run_dir.file("samples.npz").is_file():
        raise PipelineError(f"{run_dir.path} has no samples.npz; the run did not finish (see metrics.json)")
    data = np_load(run_dir.file("samples.npz"), what="samples")
    if "images" not in data:
        raise CorruptFileError(f"{run_dir.file('samples.npz')}: samples file has no 'images' array")
    own = protocol is None
    proto = resolve_run_protocol(cfg) if own else protocol_with_tokens(resolve_protocol(protocol),
                                                                       cfg.evaluation.token_metrics)
    n = proto.num_generated
    if len(data["images"]) < n:
        raise PipelineError(f"protocol {proto.name!r} needs {n} samples but {run_dir.path} has {len(data['images'])}; "
                            f"draw more with `dlbench sample {run_dir.path} --n {n}`")
    labels = torch.from_numpy(data["labels"][:n]) if "labels" in data else None
    ev = evaluate_samples(torch.from_numpy(data["images"][:n]), labels, proto, dataset, device=ctx.device)
    if proto.token_metrics is not None or cfg.evaluation.anchors:  # the same calibration as the run itself
        method, tokenizer, _, _, _ = load_trained_method(run_dir, registry)
        key = tokenizer_key(cfg, dataset)
        conditional = labels is not None and method_labels(method, labels) is not None
        sampled = data["latents"] if "latents" in data else data["tokens"]
        calibrate(ev, method, torch.from_numpy(sampled), tokenizer, dataset, key, proto, ctx, conditional, cfg)
    if own:
        try:
            metrics = run_dir.read_json("metrics.json", {}) or {}
        except CorruptFileError as exc:  # keep what was just computed; keep the damaged file for inspection
            aside = run_dir.file(f"metrics.json.corrupt-{int(time.time())}")
            os.replace(run_dir.file("metrics.json"), aside)
            console().print(f"[yellow]warning:[/] {exc}; moved it to {aside.name} and wrote fresh metrics")
            run_dir.event("warning", message=f"corrupt metrics.json moved to {aside.name}")
            metrics = {}
        if not isinstance(metrics, dict):
            metrics = {}
        metrics.update(ev)
        run_dir.write_json("metrics.json", metrics)
    run_dir.event(EVENT_EVALUATION, protocol_hash=ev["protocol_hash"], metrics=ev["metrics"])
    return ev
