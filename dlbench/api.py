"""The importable operations behind the CLI: ``from dlbench import run, compare, evaluate, sample``.

The CLI only parses arguments and calls these; a notebook user gets the same behaviour.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dlbench.config import ConfigError, RunConfig, build_config, config_diff, load_config_file, resolve_config
from dlbench.plugins import get_registry
from dlbench.runs import RunDir, collect_meta, utcnow


@dataclass
class RunResult:
    run_dir: RunDir
    config: RunConfig
    metrics: dict[str, Any] | None
    rank: int = 0  # torchrun rank of this process; only rank 0 holds the metrics and reports them


def resolve(
    method: str,
    *,
    dataset: str | None = None,
    preset: str = "default",
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    device: str | None = None,
) -> RunConfig:
    """The fully resolved run config for these arguments (nothing is trained)."""
    return build_config(
        method, registry=get_registry(), preset=preset, dataset=dataset, tokenizer=tokenizer,
        config_file=config_file, overrides=list(overrides), seed=seed, device=device,
    )


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _shared_run_dir(make) -> RunDir:
    """Rank 0 creates the run directory; under torchrun every rank gets rank 0's path."""
    rank, world = _dist_info()
    if world == 1:
        return make()
    from dlbench.train import dist

    dist.init_distributed()
    import torch.distributed as tdist

    box = [str(make().path) if rank == 0 else None]
    tdist.broadcast_object_list(box, src=0)
    return RunDir(box[0])


def run(
    method: str,
    *,
    dataset: str | None = None,
    preset: str = "default",
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    out: str | Path = "runs",
    seed: int | None = None,
    device: str | None = None,
    resume: str | Path | None = None,
    config: RunConfig | None = None,
) -> RunResult:
    """Train ``method`` and evaluate it; returns the run directory, resolved config and metrics.

    With ``resume`` the given run directory is continued from its latest checkpoint; the config
    built from these arguments must equal the saved one (device aside), else the differing fields
    are named and nothing is touched.
    """
    registry = get_registry()
    if config is None:
        config = resolve(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config_file,
                         overrides=overrides, seed=seed, device=device)
    else:
        config = resolve_config(config, registry)
    rank, world = _dist_info()

    if resume is not None:
        run_dir = RunDir.open(resume)
        saved = load_config_file(run_dir.file("config.json"))
        from dlbench.train.loop import RESUMABLE_FIELDS

        # budgets and logging cadence may change (train longer); anything else would mix two experiments
        diff = {k: v for k, v in config_diff(saved, config.to_dict()).items() if k not in RESUMABLE_FIELDS}
        if diff:
            fields = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"cannot resume {run_dir.path} with a different config: {fields}")
    else:
        run_dir = _shared_run_dir(
            lambda: RunDir.create(out, config.method.name, config.dataset.name, config.hash())
        )

    from dlbench.train import pipeline

    if rank != 0:
        metrics = pipeline.execute(config, run_dir, resume=resume is not None)
        return RunResult(run_dir, config, metrics, rank=rank)

    with run_dir.locked():
        run_dir.write_json("config.json", config.to_dict())
        from dlbench.train.dist import resolve_device, resolve_precision

        # "auto" is resolved here from what this machine reports (the training loop decides the same way)
        meta = collect_meta(device=config.device, seeds={"train": config.seed, "sample": config.seed},
                            precision=resolve_precision(config.training.precision, resolve_device(config.device)))
        meta["precision_requested"] = config.training.precision
        meta["world_size"] = world
        if resume is not None:
            previous = run_dir.read_json("meta.json", {}) or {}
            meta["resumed_from"] = previous
        run_dir.write_json("meta.json", meta)
        run_dir.event("run_start", resume=resume is not None, argv=sys.argv)
        try:
            metrics = pipeline.execute(config, run_dir, resume=resume is not None)
        finally:
            run_dir.update_json("meta.json", finished=utcnow())
        run_dir.event("run_end", status=(metrics or {}).get("status", "ok"))
    return RunResult(run_dir, config, metrics)


def evaluate(run_dir: str | Path, *, protocol: str | None = None) -> dict[str, Any]:
    """(Re)evaluate a finished run under ``protocol`` (default: the run's own)."""
    from dlbench.train import pipeline

    rd = RunDir.open(run_dir)
    with rd.locked():
        return pipeline.evaluate_run(rd, protocol=protocol)


def sample(run_dir: str | Path, *, n: int = 64, steps: int | None = None, guidance: float | None = None,
           seed: int = 0, output: str | Path | None = None) -> Path:
    """Draw ``n`` samples from a trained run; writes a PNG grid and an npz next to it."""
    from dlbench.train import pipeline

    rd = RunDir.open(run_dir)
    return pipeline.sample_run(rd, n=n, steps=steps, guidance=guidance, seed=seed, output=output)


def compare(methods: Sequence[str], **kwargs: Any) -> str:
    """Compare methods (or ``runs=[...]``) under one protocol; returns the rendered table."""
    try:
        from dlbench.report import compare as _compare
    except ImportError:
        raise ConfigError("`dlbench compare` is not available yet in this version") from None
    return _compare.compare(list(methods), **kwargs)
