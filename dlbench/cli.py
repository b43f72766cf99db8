"""The ``dlbench`` command line (Typer). Thin: it parses, resolves and calls :mod:`dlbench.api`.

Errors that are the user's to fix (:class:`~dlbench.registry.DlbenchError`) print as one line on
stderr and exit with code 2; ``DLBENCH_TRACEBACK=1`` shows the traceback instead.
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
    kind: Optional[str] = typer.Argument(None, help="tokenizer, embedding, schedule, regularizer, method, dataset, feature_extractor"),
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
    method: str = typer.Argument(..., help="method name (see `dlbench list method`)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="dataset name (default: the embedded Fashion-MNIST subset)"),
    preset: str = typer.Option("default", "--preset", "-p", help="quick | default | paper"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer name"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override: section.field=value (repeatable)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config file (JSON/TOML/YAML)"),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o", help="root directory of run directories"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (training)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset's files are"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) unreadable images instead of failing"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this run directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved config and exit"),
) -> None:
    """Train a method on a dataset, sample and evaluate; writes a self-describing run directory."""
    from dlbench import api

    overrides = _parse_kv(set_)
    if precision:
        overrides.append(f"training.precision={precision}")
    if data_dir:
        overrides.append(f"dataset.data_dir={data_dir}")
    if skip_bad:
        overrides.append("dataset.skip_bad=true")
    _registry()  # surface plugin warnings once
    if dry_run:
        cfg = api.resolve(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config,
                          overrides=overrides, seed=seed, device=device)
        out.print_json(json.dumps(cfg.to_dict()))
        return
    result = api.run(method, dataset=dataset, preset=preset, tokenizer=tokenizer, config_file=config,
                     overrides=overrides, out=out_dir, seed=seed, device=device, resume=resume)
    if result is not None and result.rank == 0:  # under torchrun the other ranks stay quiet
        _print_result(result)


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
    n: int = typer.Option(64, "--n", help="number of samples"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    guidance: Optional[float] = typer.Option(None, "--guidance"),
    seed: int = typer.Option(0, "--seed"),
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
    seeds: int = typer.Option(1, "--seeds", help="training seeds per method"),
    budget: Optional[str] = typer.Option(
        None, "--budget", help="flops=F | seconds=S | steps=N | images=N | minutes=M (default: equal training FLOPs)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s"),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o"),
    format: str = typer.Option("table", "--format", help="table | md | csv | json | latex"),
    html: Optional[Path] = typer.Option(None, "--html", help="write a static HTML report into this directory"),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="allow different budgets/tokenizers (marked)"),
    tune_sampling: bool = typer.Option(False, "--tune-sampling",
                                       help="also pick each method's sampler settings on a validation split (same NFE)"),
    tune_samples: int = typer.Option(256, "--tune-samples", help="samples per sampler setting when tuning"),
) -> None:
    """Compare methods under one protocol and one budget (trains what is missing, reuses the rest)."""
    from dlbench import api

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
    from dlbench.report.compare import check_matched, load_records, render, summarise
    from dlbench.report.html import write_report

    records = load_records(runs)
    cmp = summarise(records, None, check_matched(records, allow_mismatch=True))
    print(render(cmp, format))
    print(f"HTML report: {write_report(cmp, html_dir)}")


def _install_plugin_commands() -> None:
    try:
        from dlbench.plugins import get_manager

        get_manager().add_commands(app)
    except DlbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken plugin never takes the CLI down
        console.print(f"[yellow]warning:[/] plugin commands unavailable: {exc}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, turning user errors into one line + exit 2."""
    try:
        _install_plugin_commands()
        app(args=argv, standalone_mode=False)
    except DlbenchError as exc:
        if os.environ.get("DLBENCH_TRACEBACK"):
            raise
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted; finished checkpoints are kept (resume with --resume RUN_DIR)")
        sys.exit(130)
    except __import__("click").ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
