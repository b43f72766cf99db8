"""The importable operations behind the CLI: ``from dlbench import run, compare, evaluate, sample``.

The CLI only parses arguments and calls these; a notebook user gets the same behaviour. This module
resolves: it turns arguments into a typed :class:`~dlbench.config.RunConfig` against the installed plugins'
registry (looked up once here) and hands both to :mod:`dlbench.runner`, which does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dlbench import runner
from dlbench.config import ConfigError, RunConfig, build_config, config_diff, load_config_file, resolve_config
from dlbench.plugins import get_registry
from dlbench.runner.session import RunFailed, RunInterrupted, RunResult
from dlbench.runs import RunDir

__all__ = ["RunFailed", "RunInterrupted", "RunResult", "compare", "evaluate", "plan_compare", "resolve",
           "resume_config", "run", "sample"]


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
    registry = get_registry()
    run_dir: RunDir | None = None
    if resume is not None:
        run_dir = RunDir.open(resume)
        if config is None:
            config = resume_config(run_dir, method=method, dataset=dataset, preset=preset, tokenizer=tokenizer,
                                   config_file=config_file, overrides=overrides, seed=seed, device=device)
        else:
            config = resolve_config(config, registry)
        config = _add_loggers(config, loggers)  # the saved config already carries the run's own loggers
    elif config is None:
        if method is None:
            raise ConfigError("name a method (see `dlbench list method`), or pass --resume RUN_DIR")
        config = resolve(method, dataset=dataset, preset=preset or "default", tokenizer=tokenizer,
                         config_file=config_file, overrides=overrides, seed=seed, device=device, loggers=loggers)
    else:
        config = _add_loggers(resolve_config(config, registry), loggers)
    return runner.run(config, registry, out=out, resume=run_dir)


def evaluate(run_dir: str | Path, *, protocol: str | None = None) -> dict[str, Any]:
    """(Re)evaluate a finished run under ``protocol`` (default: the run's own)."""
    return runner.reevaluate(RunDir.open(run_dir), get_registry(), protocol=protocol)


def sample(run_dir: str | Path, *, n: int = 64, steps: int | None = None, guidance: float | None = None,
           seed: int = 0, output: str | Path | None = None) -> Path:
    """Draw ``n`` samples from a trained run; writes a PNG grid and an npz next to it."""
    return runner.sample_run(RunDir.open(run_dir), get_registry(), n=n, steps=steps, guidance=guidance, seed=seed,
                             output=output)


def compare(methods: Sequence[str], **kwargs: Any) -> str:
    """Compare methods (or ``runs=[...]``) under one protocol, training what is missing; returns the
    rendered table (:mod:`dlbench.runner.compare_runs`)."""
    return runner.compare(list(methods), get_registry(), **kwargs)


def plan_compare(methods: Sequence[str], **kwargs: Any) -> list[RunConfig]:
    """The resolved config of every run ``compare(methods, **kwargs)`` would train or reuse (same ``preset``,
    ``seeds``, ``budget``, ``overrides``, ``dataset``). Train them anywhere with ``run(config=cfg, out=...)`` and
    a later ``compare`` with the same arguments and ``out`` reuses them."""
    plans, _note = runner.plan_runs(list(methods), get_registry(), **kwargs)
    return plans
