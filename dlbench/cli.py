"""The ``dlbench`` command line (Typer). Thin: it parses, resolves and calls :mod:`dlbench.api`.

Errors that are the user's to fix (:class:`~dlbench.registry.DlbenchError`) print as one line on
stderr and exit with code 2; ``DLBENCH_TRACEBACK=1`` shows the traceback instead.

Longer than ~350 lines because it holds one Typer function per subcommand (their options and help text
are the CLI's documentation) plus the one exit-code policy they share; each command only parses and calls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from dlbench.registry import DlbenchError

app = typer.Typer(
    name="dlbench",
    help="Train, evaluate and compare discrete latent diffusion image generators under one protocol.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

KIND_ALIASES = {
    "tokenizers": "tokenizer", "embeddings": "embedding", "schedules": "schedule", "regularizers": "regularizer",
    "methods": "method", "datasets": "dataset", "feature-extractors": "feature_extractor",
    "feature_extractors": "feature_extractor", "feature-extractor": "feature_extractor", "extractors": "feature_extractor",
    "loggers": "logger",
}


def _registry():
    from dlbench.plugins import get_manager

    manager = get_manager()
    for info in manager.errors:
        console.print(
            f"[yellow]warning:[/] plugin {info.name!r} ({info.distribution or '?'}) skipped: {info.error}",
            highlight=False,
        )
    return manager.registry


@app.command("list")
def list_components(
    kind: Optional[str] = typer.Argument(None, help="tokenizer, embedding, schedule, regularizer, method, dataset, feature_extractor, logger"),
    format: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """List registered components: name, origin plugin, one-line description."""
    registry = _registry()
    if kind is not None:
        kind = KIND_ALIASES.get(kind, kind)
        registry.check_kind(kind)
    specs = registry.specs(kind)
    if format == "json":
        out.print_json(json.dumps([
            {"kind": s.kind, "name": s.name, "canonical": s.canonical, "plugin": s.plugin, "description": s.description}
            for s in specs
        ]))
        return
    table = Table(title="dlbench components", show_lines=False)
    for col in ("component", "plugin", "description"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.canonical, s.plugin, s.description)
    out.print(table)


@app.command()
def plugins(format: str = typer.Option("table", "--format", help="table | json")) -> None:
    """Loaded plugins: name, distribution, version, hooks, load errors."""
    from dlbench.plugins import get_manager

    manager = get_manager()
    rows = list(manager.plugins.values())
    if format == "json":
        out.print_json(json.dumps([p.__dict__ for p in rows], default=str))
        return
    table = Table(title="dlbench plugins")
    for col in ("plugin", "distribution", "version", "hooks", "components", "status"):
        table.add_column(col)
    for p in rows:
        status = "[green]ok[/]" if p.ok else f"[red]error:[/] {p.error}"
        table.add_row(p.name, p.distribution or "-", p.version or "-", ", ".join(h.replace("register_", "") for h in p.hooks),
                      str(len(p.components)), status)
    out.print(table)


def _parse_kv(values: list[str] | None) -> list[str]:
    return list(values or [])


@app.command()
def run(
    method: Optional[str] = typer.Argument(None, help="method name (see `dlbench list method`); optional with --resume"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="dataset name (default: the embedded Fashion-MNIST subset)"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="quick | default | benchmark | collapse | paper (default: default)"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer name"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override: section.field=value (repeatable)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (JSON/TOML/YAML)"),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o", help="root directory of run directories"),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**63 - 1),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (training)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset's files are"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) unreadable images instead of failing"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this run directory (its own "
                                          "saved config; options given here are checked overrides)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="run every pre-flight check, print the resolved config and exit"),
    logger: Optional[List[str]] = typer.Option(None, "--logger", help="also send the run's events to this logger, "
                                               "e.g. tensorboard (repeatable; see `dlbench list logger`)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or progress lines"),
    progress_interval: Optional[float] = typer.Option(
        None, "--progress-interval", help="seconds between progress lines when stderr is not a terminal "
        "(default 30, or DLBENCH_PROGRESS_INTERVAL)"),
) -> None:
    """Train a method on a dataset, sample and evaluate; writes a self-describing run directory."""
    from dlbench import api
    from dlbench.observe import progress

    progress.configure(quiet=quiet, interval=progress_interval)
    progress.mode(), progress.interval()  # a bad DLBENCH_PROGRESS* fails here, before any work

    overrides = _parse_kv(set_)
    if precision:
        overrides.append(f"training.precision={precision}")
    if data_dir:
        overrides.append(f"dataset.data_dir={data_dir}")
    if skip_bad:
        overrides.append("dataset.skip_bad=true")
    if method is None and resume is None:
        raise typer.BadParameter("name a METHOD (see `dlbench list method`), or pass --resume RUN_DIR",
                                 param_hint="'METHOD'")
    _registry()  # surface plugin warnings once
    if dry_run:  # the same resolution and pre-flight as `run`: --dry-run refuses what run would refuse
        from dlbench.preflight import preflight
        from dlbench.runs import RunDir

        if resume is not None:
            cfg = api.resume_config(RunDir.open(resume), method=method, dataset=dataset, preset=preset,
                                    tokenizer=tokenizer, config_file=config, overrides=overrides, seed=seed,
                                    device=device)
        else:
            cfg = api.resolve(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config,
                              overrides=overrides, seed=seed, device=device, loggers=logger or ())
        preflight(cfg, out=None if resume is not None else out_dir)
        out.print_json(json.dumps(cfg.to_dict()))
        from dlbench.plan import describe

        console.print(describe(cfg), highlight=False, soft_wrap=True)
        return
    result = api.run(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config,
                     overrides=overrides, out=out_dir, seed=seed, device=device, resume=resume,
                     loggers=logger or ())
    if result is not None and result.rank == 0:  # under torchrun the other ranks stay quiet
        _print_result(result)
    status = (result.metrics or {}).get("status", "ok") if result is not None else "ok"
    if status != "ok":  # the reason was printed by the pipeline; the exit code must say it too
        raise api.RunFailed(f"run failed ({(result.metrics or {}).get('reason', status)}); "
                            f"see {result.run_dir.path}/metrics.json")


@app.command()
def plan(
    method: str = typer.Argument(..., help="method name (see `dlbench list method`)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    preset: str = typer.Option("default", "--preset", "-p", help="quick | default | paper"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override: section.field=value (repeatable)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    accelerator: str = typer.Option("H100", "--accelerator", help="V100 | A100 | H100 | H200 | cpu (measured)"),
    devices: int = typer.Option(1, "--devices", help="number of accelerators (torchrun world size)"),
    utilisation: Optional[float] = typer.Option(None, "--utilisation", help="assumed fraction of peak FLOP/s"),
) -> None:
    """Cost of a run before it runs: parameters, FLOPs, memory per device, tokens on disk, wall clock."""
    from dlbench import api
    from dlbench.plan import build_plan, render

    _registry()
    cfg = api.resolve(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config,
                      overrides=_parse_kv(set_))
    print(render(build_plan(cfg, accelerator=accelerator, devices=devices, utilisation=utilisation)))


def _print_result(result) -> None:
    from dlbench.report.calibrated import run_anchor_columns

    metrics = result.metrics or {}
    table = Table(title=f"{result.config.method.name} on {result.config.dataset.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    values = metrics.get("metrics") or {}
    anchors = run_anchor_columns(metrics, sorted(values))  # the scale: anchor rows as extra columns
    short = {"real (held-out)": "real", "reconstruction": "recon", "class marginals": "cls-marg", "marginals": "marg"}
    for name, _ in anchors:
        table.add_column(short.get(name, name), justify="right", style="dim italic")
    if anchors:
        table.caption = ("anchors (dim): real held-out images, tokenizer reconstructions, i.i.d. tokens from the "
                         "class-conditional / unconditional per-position marginals; same protocol and n")
    for i, (k, v) in enumerate(sorted(values.items())):
        table.add_row(k, f"{v:.4g}" if isinstance(v, (int, float)) else str(v), *[col[i] for _, col in anchors])
    for k, why in sorted((metrics.get("unavailable") or {}).items()):
        table.add_row(k, f"unavailable: {why}", *["" for _ in anchors])
    out.print(table)
    why = (metrics.get("anchors") or {}).get("unavailable")
    if why:
        out.print(f"anchor rows unavailable: {why}")
    out.print(f"run directory: {result.run_dir.path}")


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="protocol preset (default: the run's)"),
) -> None:
    """(Re)evaluate a finished run under a protocol; results land in its metrics.json."""
    from dlbench import api

    result = api.evaluate(run_dir, protocol=protocol)
    out.print_json(json.dumps(result, default=str))


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    n: int = typer.Option(64, "--n", min=1, help="number of samples"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
    output: Optional[Path] = typer.Option(None, "--output", help="PNG path (default RUN/samples-<n>-<seed>.png)"),
) -> None:
    """Draw samples from a trained run and write a PNG grid (+ npz)."""
    from dlbench import api

    path = api.sample(run_dir, n=n, steps=steps, guidance=guidance, seed=seed, output=output)
    out.print(f"wrote {path}")


@app.command()
def compare(
    methods: Optional[List[str]] = typer.Argument(None, help="methods to compare (first = baseline)"),
    runs: Optional[List[Path]] = typer.Option(None, "--runs", help="compare existing run directories instead"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    preset: str = typer.Option("default", "--preset", "-p"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="training seeds per method"),
    budget: Optional[str] = typer.Option(
        None, "--budget", help="flops=F | seconds=S | steps=N | images=N | minutes=M (default: equal training FLOPs)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s"),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o"),
    format: str = typer.Option("table", "--format", help="table | md | csv | json | latex"),
    html: Optional[Path] = typer.Option(None, "--html", help="write a static HTML report into this directory"),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="allow different budgets/tokenizers (marked)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or progress lines"),
    progress_interval: Optional[float] = typer.Option(None, "--progress-interval",
                                                      help="seconds between progress lines in a log file"),
    tune_sampling: bool = typer.Option(False, "--tune-sampling",
                                       help="also pick each method's sampler settings on a validation split (same NFE)"),
    tune_samples: int = typer.Option(256, "--tune-samples", help="samples per sampler setting when tuning"),
) -> None:
    """Compare methods under one protocol and one budget (trains what is missing, reuses the rest)."""
    from dlbench import api
    from dlbench.observe import progress

    progress.configure(quiet=quiet, interval=progress_interval)

    if runs and methods and all(Path(m).is_dir() for m in methods):
        # `--runs A B C` (e.g. a shell glob): click binds only A to the option, the rest arrive as METHODS
        runs, methods = [*runs, *map(Path, methods)], []
    text = api.compare(methods or [], runs=runs, dataset=dataset, preset=preset, seeds=seeds, budget=budget,
                       overrides=_parse_kv(set_), out=out_dir, format=format, html=html,
                       allow_mismatch=allow_mismatch, tune_sampling=tune_sampling,
                       tune_samples=tune_samples)
    if text:
        print(text)


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="run directories"),
    html_dir: Path = typer.Option(Path("report"), "--html", help="output directory of the HTML report"),
    format: str = typer.Option("table", "--format", help="table | md | csv | json | latex"),
) -> None:
    """Rebuild a comparison table and HTML report from existing runs (differences are marked)."""
    from dlbench.report.compare import check_matched, load_records, summarise
    from dlbench.report.html import write_report
    from dlbench.report.render import render

    records = load_records(runs)
    cmp = summarise(records, None, check_matched(records, allow_mismatch=True))
    print(render(cmp, format))
    print(f"HTML report: {write_report(cmp, html_dir)}")


@app.command("runs")
def runs_cmd(
    root: Path = typer.Argument(Path("runs"), metavar="DIR", help="output root to scan (the --out of `dlbench run`)"),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m", help="only this method (repeatable)"),
    status: Optional[List[str]] = typer.Option(None, "--status", help="running | finished | failed | interrupted (repeatable)"),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", "-d", help="only this dataset (repeatable)"),
    format: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """List runs under an output root: status, steps, headline metrics, age."""
    from dlbench.runs_view import COLUMNS, RunsViewError, list_runs, rows

    if format not in ("table", "json"):
        raise RunsViewError(f"--format {format!r}: choose table or json")
    found = list_runs(root, methods=method or (), statuses=status or (), datasets=dataset or ())
    if format == "json":
        print(json.dumps([s.to_dict() for s in found], indent=2))
        return
    if not found:
        console.print(f"no runs under {root}" + (" match the filters" if (method or status or dataset) else ""))
        return
    table = Table(title=f"runs under {root}", caption=f"run directory: {root}/<method>/<dataset>/<run>")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("seed", "steps", "age") else "left",
                         no_wrap=col in ("run", "steps"))
    for row in rows(found, root):
        table.add_row(*row)
    out.print(table)


def _install_plugin_commands() -> None:
    try:
        from dlbench.plugins import get_manager

        get_manager().add_commands(app)
    except DlbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken plugin never takes the CLI down
        console.print(f"[yellow]warning:[/] plugin commands unavailable: {exc}")


INTERRUPTED = "interrupted; finished checkpoints are kept (resume with `dlbench run --resume RUN_DIR`)"


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """ClickException of typer's vendored click *and* of an installed click (plugins may use either)."""
    types: list[type[BaseException]] = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(__import__(mod, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _abort_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(types)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app with honest exit codes and no traceback for a user mistake.

    0 success; 1 a failed run; 2 a user error (bad option, bad config, damaged file: one line naming
    it; usage errors also print the usage); 130 interrupted (Ctrl-C / SIGINT), with the resume hint.
    ``DLBENCH_TRACEBACK=1`` re-raises instead, for debugging.
    """
    click_errors = _click_exception_types()
    try:
        _install_plugin_commands()
        rc = app(args=argv, standalone_mode=False)
    except DlbenchError as exc:
        if os.environ.get("DLBENCH_TRACEBACK"):
            raise
        code = getattr(exc, "exit_code", 2)
        prefix = "" if code == 130 else "[red]error:[/] "
        from rich.markup import escape  # a message may contain "[...]" (paths, errno): never markup

        console.print(f"{prefix}{escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(code)
    except click_errors as exc:  # usage errors: usage + one "Error:" line, exit 2
        exc.show()  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _abort_types():
        console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:
        console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    # standalone_mode=False: typer turns Ctrl-C into Exit(130) and *returns* the code
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        if rc == 130:
            console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        sys.exit(rc)


if __name__ == "__main__":
    main()
