"""The importable operations behind the CLI: ``from dlbench import run, compare, evaluate, sample``.

The CLI only parses arguments and calls these; a notebook user gets the same behaviour.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dlbench.config import ConfigError, RunConfig, build_config, config_diff, load_config_file, resolve_config
from dlbench.plugins import get_registry
from dlbench.registry import DlbenchError
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
    preset: str | None = "default",
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    device: str | None = None,
    loggers: Sequence[str] = (),
) -> RunConfig:
    """The fully resolved run config for these arguments (nothing is trained). ``loggers`` are added
    to the config's own (``dlbench run --logger NAME``)."""
    cfg = build_config(
        method, registry=get_registry(), preset=preset or "default", dataset=dataset, tokenizer=tokenizer,
        config_file=config_file, overrides=list(overrides), seed=seed, device=device,
    )
    return _add_loggers(cfg, loggers)


def _add_loggers(cfg: RunConfig, loggers: Sequence[str]) -> RunConfig:
    have = {ref.name for ref in cfg.loggers}
    extra = [name for name in dict.fromkeys(loggers) if name not in have]
    if not extra:
        return cfg
    data = cfg.to_dict()
    data["loggers"] = [*data["loggers"], *({"name": n} for n in extra)]
    return resolve_config(data, get_registry())


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


class RunInterrupted(DlbenchError):
    """Ctrl-C / SIGINT during a run: exit code 130, checkpoints kept, the message says how to resume."""

    exit_code = 130


class RunFailed(DlbenchError):
    """The run ended without a result (e.g. diverged training); exit code 1, metrics.json says why."""

    exit_code = 1


def resume_config(
    run_dir: RunDir,
    *,
    method: str | None = None,
    dataset: str | None = None,
    preset: str | None = None,
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    device: str | None = None,
) -> RunConfig:
    """The config a resumed run continues with: the run's own saved ``config.json``, with the options
    given alongside ``--resume`` applied as overrides. Only budgets and logging cadence
    (:data:`~dlbench.train.loop.RESUMABLE_FIELDS`) and the device may differ from the saved config;
    any other difference is refused, naming the fields."""
    from dlbench.config import apply_set, check_section_shapes, deep_merge
    from dlbench.safeload import read_json_file
    from dlbench.train.loop import RESUMABLE_FIELDS

    path = run_dir.file("config.json")
    saved = read_json_file(path, what="run config")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: run config is not a JSON object; the run directory is damaged")
    check_section_shapes(saved, str(path))
    data = dict(saved)
    asked: dict[str, Any] = {}
    if method is not None:
        asked["method.name"] = get_registry().get("method", method).name
    if dataset is not None:
        asked["dataset.name"] = dataset
    if tokenizer is not None:
        asked["tokenizer.name"] = tokenizer
    if preset is not None:
        asked["preset"] = preset
    for key, value in asked.items():
        sec, _, leaf = key.rpartition(".")
        have = (data.get(sec) or {}).get(leaf) if sec else data.get(leaf)
        if have != value:
            raise ConfigError(
                f"cannot resume {run_dir.path}: it was run with {key} = {have!r}, not {value!r}; drop that option "
                "(--resume continues the run's own config) or start a new run"
            )
    if config_file is not None:
        data = deep_merge(data, load_config_file(config_file))
    if seed is not None:
        data["seed"] = seed
    if device is not None:
        data["device"] = device
    for assignment in overrides:
        data = apply_set(data, assignment)
    config = resolve_config(data, get_registry())
    try:
        reference = resolve_config(saved, get_registry()).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"{path}: the saved run config no longer validates ({exc})") from None
    diff = {k: v for k, v in config_diff(reference, config.to_dict()).items()
            if k != "device" and not any(k == f or k.startswith(f + ".") for f in RESUMABLE_FIELDS)}
    if diff:
        fields = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"cannot resume {run_dir.path} with a different config: {fields}")
    return config


def run(
    method: str | None = None,
    *,
    dataset: str | None = None,
    preset: str | None = None,
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    out: str | Path = "runs",
    seed: int | None = None,
    device: str | None = None,
    resume: str | Path | None = None,
    config: RunConfig | None = None,
    loggers: Sequence[str] = (),
) -> RunResult:
    """Train ``method`` and evaluate it; returns the run directory, resolved config and metrics.

    With ``resume`` the given run directory is continued from its latest intact checkpoint under its
    own saved config (:func:`resume_config`; the other arguments are overrides). Every check that can
    run before training (:func:`dlbench.preflight.preflight`) runs before a run directory is created.
    ``loggers`` (e.g. ``["tensorboard"]``) receive every event of the run besides events.jsonl
    (:mod:`dlbench.observe.loggers`); a resumed run keeps the loggers it started with.
    """
    from dlbench.preflight import preflight

    registry = get_registry()
    rank, world = _dist_info()
    if resume is not None:
        run_dir = RunDir.open(resume)
        if config is None:
            config = resume_config(run_dir, method=method, dataset=dataset, preset=preset, tokenizer=tokenizer,
                                   config_file=config_file, overrides=overrides, seed=seed, device=device)
        else:
            config = resolve_config(config, registry)
        config = _add_loggers(config, loggers)  # the saved config already carries the run's own loggers
        preflight(config)
    else:
        if config is None:
            if method is None:
                raise ConfigError("name a method (see `dlbench list method`), or pass --resume RUN_DIR")
            config = resolve(method, dataset=dataset, preset=preset or "default", tokenizer=tokenizer,
                             config_file=config_file, overrides=overrides, seed=seed, device=device,
                             loggers=loggers)
        else:
            config = _add_loggers(resolve_config(config, registry), loggers)
        preflight(config, out=out)
        run_dir = _shared_run_dir(
            lambda: RunDir.create(out, config.method.name, config.dataset.name, config.hash())
        )

    from dlbench.train import pipeline

    if rank != 0:
        metrics = pipeline.execute(config, run_dir, resume=resume is not None)
        return RunResult(run_dir, config, metrics, rank=rank)

    from dlbench.observe.loggers import open_loggers

    with run_dir.locked(), run_dir.logging(lambda: open_loggers(config.loggers, run_dir.path, config.to_dict(),
                                                                resume=resume is not None, registry=registry)):
        run_dir.write_json("config.json", config.to_dict())
        from dlbench.train.dist import resolve_device, resolve_precision

        # "auto" is resolved here from what this machine reports (the training loop decides the same way)
        meta = collect_meta(device=config.device, seeds={"train": config.seed, "sample": config.seed},
                            precision=resolve_precision(config.training.precision, resolve_device(config.device)))
        meta["precision_requested"] = config.training.precision
        meta["world_size"] = world
        if resume is not None:
            from dlbench.safeload import CorruptFileError

            try:
                previous = run_dir.read_json("meta.json", {}) or {}
            except CorruptFileError as exc:  # provenance of the first part is lost; say so, keep the bytes
                aside = run_dir.file(f"meta.json.corrupt-{int(time.time())}")
                os.replace(run_dir.file("meta.json"), aside)
                previous = {"error": f"{exc}; moved to {aside.name}"}
            meta["resumed_from"] = previous
        run_dir.write_json("meta.json", meta)
        run_dir.event("run_start", resume=resume is not None, argv=sys.argv)
        registry.used.clear()
        for kind in ("method", "tokenizer", "dataset"):
            registry.get(kind, getattr(config, kind).name)
        try:
            metrics = pipeline.execute(config, run_dir, resume=resume is not None)
        except KeyboardInterrupt:
            run_dir.event("run_end", status="interrupted")
            raise RunInterrupted(
                f"interrupted; finished checkpoints are kept in {run_dir.path}; resume with "
                f"`dlbench run --resume {run_dir.path}`"
            ) from None
        except BaseException as exc:
            run_dir.event("run_end", status="error", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                from dlbench.plugins import component_provenance

                # which distribution (and version) provided every component this run looked up
                run_dir.update_json("meta.json", finished=utcnow(),
                                    components=component_provenance(registry.used.values()))
            except DlbenchError:
                pass  # a damaged meta.json must not hide the run's own outcome
        run_dir.event("run_end", status=(metrics or {}).get("status", "ok"))
    return RunResult(run_dir, config, metrics)


def evaluate(run_dir: str | Path, *, protocol: str | None = None) -> dict[str, Any]:
    """(Re)evaluate a finished run under ``protocol`` (default: the run's own)."""
    from dlbench.train import pipeline

    from dlbench.observe.loggers import open_loggers

    rd = RunDir.open(run_dir)
    saved = rd.read_json("config.json", {}) or {}
    # the run's own loggers see the new evaluation too; one whose plugin is gone is skipped, not fatal
    known = set(get_registry().names("logger"))
    refs = [r for r in saved.get("loggers") or [] if (r.get("name") if isinstance(r, dict) else r) in known]
    with rd.locked(), rd.logging(lambda: open_loggers(refs, rd.path, saved, resume=True)):
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
