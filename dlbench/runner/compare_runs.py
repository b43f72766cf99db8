"""``dlbench compare`` orchestration: plan one run per (method, seed), reuse or train each, then compare.

Flow: build one run config per (method, seed) under a shared preset/budget (equal training FLOPs by
default) -> the same pre-flight as ``dlbench run`` for every planned run, before any training -> reuse a
finished run whose resolved config hash matches, else train it (:func:`dlbench.runner.session.run`) ->
optionally tune sampler settings (:mod:`dlbench.runner.sampler_tuning`) -> hand the run directories to
:mod:`dlbench.report` (which only reads and renders them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dlbench.config import ConfigError
from dlbench.registry import DlbenchError
from dlbench.report.compare import RunRecord, check_matched, summarise
from dlbench.report.render import render
from dlbench.runs import find_runs

if TYPE_CHECKING:
    from dlbench.registry import Registry

FORMATS = ("table", "md", "csv", "json", "latex")


def budget_overrides(budget: str | None) -> list[str]:
    """``steps=N`` | ``images=N`` | ``minutes=M`` | ``seconds=S`` | ``flops=F`` -> ``--set`` overrides of the
    training section (a FLOPs budget is turned into images per method by the pipeline)."""
    if not budget:
        return []
    key, _, value = budget.partition("=")
    try:
        num = float(value)
    except ValueError:
        raise ConfigError(f"--budget {budget!r}: expected steps=N, images=N, minutes=M, seconds=S or flops=F") from None
    if not math.isfinite(num) or num <= 0 or (key in ("steps", "images") and num != int(num)):
        raise ConfigError(f"--budget {budget!r}: the budget must be a finite positive number"
                          + (" (a whole number of steps/images)" if key in ("steps", "images") else ""))
    if key == "flops":
        return [f"training.budget_flops={num}", "training.steps=100000000"]
    if key == "seconds":
        return [f"training.budget_minutes={num / 60}", "training.steps=100000000"]
    if key == "steps":
        return [f"training.steps={int(num)}"]
    if key == "images":
        return [f"training.budget_images={int(num)}", "training.steps=100000000"]
    if key == "minutes":
        return [f"training.budget_minutes={num}", "training.steps=100000000"]
    raise ConfigError(f"--budget {budget!r}: the budget kind must be steps, images, minutes, seconds or flops")


def find_reusable(out: Path, config_hash: str, method: str, dataset: str) -> Path | None:
    """A finished run (metrics.json status ok) whose resolved config hash equals ``config_hash``."""
    base = Path(out) / method / dataset
    for rd in sorted(find_runs(base), key=lambda r: r.path.name, reverse=True):
        try:
            cfg = rd.read_json("config.json")
            metrics = rd.read_json("metrics.json")
        except DlbenchError:  # a damaged run is not reusable (and is never modified here)
            continue
        if not cfg or not metrics or metrics.get("status", "ok") != "ok":
            continue
        from dlbench.config import RunConfig

        try:
            if RunConfig.model_validate(cfg).hash() == config_hash:
                return rd.path
        except Exception:  # noqa: BLE001 - an old/foreign config is simply not reusable
            continue
    return None


def plan_runs(
    methods: Sequence[str],
    registry: Registry,
    *,
    dataset: str | None = None,
    preset: str = "default",
    seeds: int = 1,
    budget: str | None = None,
    overrides: Sequence[str] = (),
    equal_compute: bool = True,
) -> tuple[list[Any], str | None]:
    """The resolved run config of every (method, seed) ``compare`` would train or reuse, and its budget note.

    Public so that a driver can train the missing runs elsewhere (other processes or machines) and a later
    ``compare`` with the same arguments reuses them: a run is reused when its config hash equals its plan's."""
    from dlbench.config import build_config

    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    extra = list(overrides) + budget_overrides(budget)

    def resolve_all(extra: list[str]) -> list[Any]:
        return [build_config(m, registry=registry, preset=preset, dataset=dataset, overrides=extra, seed=seed)
                for m in methods for seed in range(seeds)]

    plans = resolve_all(extra)  # resolve everything first: a typo fails before any training
    if budget is None and equal_compute and len(set(methods)) > 1:
        from dlbench.runner.calibration import equal_flops_budget

        flops, per = equal_flops_budget(plans, registry)
        plans = resolve_all(extra + [f"training.budget_flops={flops}"])
        budget_note = (f"budget: equal training FLOPs, {flops:.3g} per run (the smallest of the methods' preset "
                       "budgets: " + ", ".join(f"{m} {f:.3g}" for m, f in per.items()) + "); pass --budget "
                       "steps=N for equal steps instead")
    elif budget is not None:
        kind = budget.partition("=")[0]
        budget_note = f"budget: {budget} per run" + (" (equal steps, not equal compute)" if kind == "steps" else "")
    else:
        budget_note = None
    return plans, budget_note


def compare(
    methods: list[str],
    registry: Registry,
    *,
    runs: Sequence[str | Path] | None = None,
    dataset: str | None = None,
    preset: str = "default",
    seeds: int = 1,
    budget: str | None = None,
    overrides: Sequence[str] = (),
    out: str | Path = "runs",
    format: str = "table",
    html: str | Path | None = None,
    allow_mismatch: bool = False,
    log=print,
    equal_compute: bool = True,
    tune_sampling: bool = False,
    tune_samples: int = 256,
) -> str:
    """Run what is missing, reuse what matches, then compare (see module docstring)."""
    from dlbench.runner.session import run

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose table, md, csv, json or latex")
    if tune_sampling and tune_samples < 2:
        raise ConfigError(f"--tune-samples {tune_samples}: need at least 2 samples per sampler setting")
    records: list[RunRecord] = []
    order: list[str] = []
    budget_note: str | None = None
    if runs:
        if methods:
            raise ConfigError("give either METHOD… or --runs DIR…, not both")
        for p in runs:
            records.append(RunRecord.load(p))
        from dlbench.report.integrity import check_distinct_runs

        check_distinct_runs(records)
        order = list(dict.fromkeys(r.label for r in records))
    else:
        if not methods:
            raise ConfigError("name at least one method (the first is the baseline), or pass --runs DIR…")
        plans, budget_note = plan_runs(methods, registry, dataset=dataset, preset=preset, seeds=seeds,
                                       budget=budget, overrides=overrides, equal_compute=equal_compute)
        from dlbench.preflight import preflight

        for cfg in plans:  # the same pre-flight as `dlbench run`, for every planned run, before any training
            preflight(cfg, out=out, registry=registry)
        order = list(dict.fromkeys(c.method.name for c in plans))
        for cfg in plans:
            found = find_reusable(Path(out), cfg.hash(), cfg.method.name, cfg.dataset.name)
            if found is not None:
                log(f"reusing {found} ({cfg.method.name}, seed {cfg.seed})")
                records.append(RunRecord.load(found, reused=True))
                continue
            log(f"training {cfg.method.name} seed {cfg.seed} ({preset} preset) ...")
            result = run(cfg, registry, out=out)
            records.append(RunRecord.load(result.run_dir.path))
    if tune_sampling:
        from dlbench.runner.sampler_tuning import tuned_records

        records, order = tuned_records(records, order, registry, samples=tune_samples, log=log)
    mismatch = check_matched(records, allow_mismatch)
    cmp = summarise(records, order, mismatch)
    if not runs and budget_note:
        cmp.notes.append(budget_note)
    text = render(cmp, format)
    if html is not None:
        from dlbench.report.html import write_report

        path = write_report(cmp, Path(html))
        if format == "table":
            text += f"\nHTML report: {path}\n"
        else:
            log(f"HTML report: {path}")
    return text


