"""``dlbench compare``: protocol-checked, multi-seed, compute-matched comparisons.

Flow: build one run config per (method, seed) under a shared preset/budget -> reuse a finished run
whose resolved config hash matches, else train it -> load every run's records -> refuse to mix
protocols (naming the differing fields) and, unless allowed, budgets/tokenizers/data/backbones ->
aggregate per method (mean ± 95% t-interval over training seeds; Welch interval of the difference
to the first method, the baseline) -> render (rich / md / csv / json / latex) and optionally a
static HTML report.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dlbench.config import ConfigError, config_diff
from dlbench.registry import DlbenchError
from dlbench.report.stats import Interval, diff_ci, mean_ci
from dlbench.runs import RunDir, find_runs, read_json


class ProtocolMismatchError(DlbenchError):
    pass


class ComparisonMismatchError(DlbenchError):
    pass


#: lower is better for these metric-name prefixes; higher for everything else we know of
LOWER_IS_BETTER = ("fid", "kid", "domain_fd", "fd", "rfid", "token_kl", "nll")

#: config fields that must match across a comparison ("same harness, same budget")
MATCHED_FIELDS = {
    "tokenizer": "tokenizer",
    "dataset": "dataset",
    "backbone": "backbone",
    "training.steps": "budget",
    "training.batch_size": "budget",
    "training.budget_images": "budget",
    "training.budget_minutes": "budget",
    "training.budget_flops": "budget",
    "sampling.num_samples": "sampling",
}


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    protocol: dict[str, Any]
    meta: dict[str, Any]
    reused: bool = False

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def label(self) -> str:
        return self.config.get("label") or self.method

    @property
    def protocol_hash(self) -> str | None:
        return self.metrics.get("protocol_hash") or self.protocol.get("hash")

    @property
    def train_seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def sample_seed(self) -> int:
        return int(self.config.get("sampling", {}).get("seed", 0))

    @classmethod
    def load(cls, path: str | Path, reused: bool = False) -> "RunRecord":
        rd = RunDir.open(path)
        metrics = rd.read_json("metrics.json")
        if not metrics:
            raise ComparisonMismatchError(f"{rd.path} has no metrics.json: the run did not finish; resume it with "
                                          f"`dlbench run <method> --resume {rd.path}` or remove it")
        if metrics.get("status", "ok") != "ok":
            raise ComparisonMismatchError(f"{rd.path} failed ({metrics.get('reason', '?')}); it cannot be compared")
        return cls(rd.path, rd.read_json("config.json"), metrics, rd.read_json("protocol.json", {}) or {},
                   rd.read_json("meta.json", {}) or {}, reused)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_protocols(records: Sequence[RunRecord]) -> str:
    """All records share one protocol hash; otherwise raise naming the fields that differ."""
    by_hash: dict[str | None, RunRecord] = {}
    for r in records:
        by_hash.setdefault(r.protocol_hash, r)
    if None in by_hash:
        r = by_hash[None]
        raise ProtocolMismatchError(f"{r.path} has no protocol hash in metrics.json; re-evaluate it with `dlbench eval`")
    if len(by_hash) > 1:
        (h0, r0), *rest = by_hash.items()
        parts = []
        for h1, r1 in rest:
            diff = config_diff(_protocol_fields(r0), _protocol_fields(r1))
            fields = ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in sorted(diff.items())) or "(hash only)"
            parts.append(f"{r0.path.name} [{h0[:12]}] vs {r1.path.name} [{h1[:12]}]: {fields}")
        raise ProtocolMismatchError(
            "refusing to compare results from different evaluation protocols: " + "; ".join(parts)
            + ". Re-evaluate the runs under one protocol (`dlbench eval RUN --protocol P`)."
        )
    return next(iter(by_hash))  # type: ignore[return-value]


def _protocol_fields(r: RunRecord) -> dict[str, Any]:
    return {k: v for k, v in (r.protocol or {}).items() if k not in {"hash", "short_hash"}}


def check_matched(records: Sequence[RunRecord], allow_mismatch: bool) -> dict[str, list[str]]:
    """Fields of the shared harness that differ between runs; an error unless ``allow_mismatch``."""
    ref = _flat(records[0].config)
    notes: dict[str, list[str]] = {}
    for r in records[1:]:
        flat = _flat(r.config)
        for key in sorted(set(ref) | set(flat)):
            group = next((g for prefix, g in MATCHED_FIELDS.items() if key == prefix or key.startswith(prefix + ".")), None)
            if group is None or ref.get(key) == flat.get(key):
                continue
            notes.setdefault(r.label, []).append(f"{key}: {flat.get(key)!r} (baseline {ref.get(key)!r})")
    if notes and not allow_mismatch:
        detail = "; ".join(f"{m}: {', '.join(v[:4])}{' …' if len(v) > 4 else ''}" for m, v in notes.items())
        raise ComparisonMismatchError(
            f"runs differ in the shared harness ({detail}). Match them, or pass --allow-mismatch to compare "
            "anyway with the differences marked in the table."
        )
    return notes


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------


@dataclass
class MethodSummary:
    label: str
    runs: list[RunRecord]
    metrics: dict[str, Interval] = field(default_factory=dict)
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    diffs: dict[str, Interval] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    mismatch: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    protocol_hash: str
    summaries: list[MethodSummary]
    metric_names: list[str]
    unavailable: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: the anchor record shared by the runs (dlbench.eval.anchors), None when the runs carry none
    anchors: dict[str, Any] | None = None

    @property
    def baseline(self) -> MethodSummary:
        return self.summaries[0]


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER) or metric.endswith("_fd")


def summarise(records: Sequence[RunRecord], order: Sequence[str] | None = None,
              mismatch: dict[str, list[str]] | None = None) -> Comparison:
    protocol_hash = check_protocols(records)
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    order = list(order or [])
    labels = [lab for lab in order if lab in groups] + [lab for lab in groups if lab not in order]
    metric_names = sorted({k for r in records for k, v in (r.metrics.get("metrics") or {}).items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    unavailable: dict[str, str] = {}
    for r in records:
        unavailable.update(r.metrics.get("unavailable") or {})
    summaries = []
    for lab in labels:
        runs = sorted(groups[lab], key=lambda r: r.train_seed)
        s = MethodSummary(lab, runs, mismatch=(mismatch or {}).get(lab, []))
        for m in metric_names:
            vals = [r.metrics["metrics"][m] for r in runs if isinstance(r.metrics.get("metrics", {}).get(m), (int, float))]
            vals = [float(v) for v in vals if math.isfinite(float(v))]
            if vals:
                s.per_seed[m] = vals
                s.metrics[m] = mean_ci(vals)
        s.compute = _compute_columns(runs)
        summaries.append(s)
    base = summaries[0]
    for s in summaries[1:]:
        for m, vals in s.per_seed.items():
            if m in base.per_seed:
                s.diffs[m] = diff_ci(vals, base.per_seed[m])
    from dlbench.report.calibrated import attach_anchors
    from dlbench.report.integrity import integrity_notes

    cmp = Comparison(protocol_hash, summaries, metric_names, unavailable,
                     notes=integrity_notes(summaries, metric_names))
    attach_anchors(cmp, records)
    return cmp


def _compute_columns(runs: Sequence[RunRecord]) -> dict[str, Any]:
    comp = [r.metrics.get("compute") or {} for r in runs]

    def avg(key: str) -> float | None:
        vals = [c[key] for c in comp if isinstance(c.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    return {
        "params": avg("params"),
        "train_steps": avg("train_steps"),
        "images_seen": avg("images_seen"),
        "wall_clock_s": avg("wall_clock_s"),
        "nfe": avg("nfe"),
        "train_flops": avg("train_flops"),
        "seeds": [r.train_seed for r in runs],
        "sample_seeds": sorted({r.sample_seed for r in runs}),
    }


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

COMPUTE_COLS = [("params", "params"), ("train_steps", "steps"), ("images_seen", "images"),
                ("wall_clock_s", "wall-clock s"), ("nfe", "NFE"), ("train_flops", "train FLOPs")]


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and (abs(v) >= 1e5 or (0 < abs(v) < 1e-3)):
        return f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _diff_text(iv: Interval | None) -> str:
    if iv is None:
        return ""
    if iv.n < 2 or math.isnan(iv.low):
        return f"{iv.mean:+.3g} (n<2: no interval)"
    sig = " (not significant)" if iv.covers_zero else ""
    return f"{iv.mean:+.3g} [{iv.low:+.3g}, {iv.high:+.3g}]{sig}"


def rows(cmp: Comparison) -> list[dict[str, Any]]:
    """One flat record per method (the json/csv form)."""
    out = []
    for s in cmp.summaries:
        row: dict[str, Any] = {"method": s.label, "n_seeds": len(s.runs), "protocol_hash": cmp.protocol_hash}
        for m in cmp.metric_names:
            iv = s.metrics.get(m)
            row[m] = iv.mean if iv else None
            row[f"{m}_ci_low"] = iv.low if iv and iv.n > 1 else None
            row[f"{m}_ci_high"] = iv.high if iv and iv.n > 1 else None
            row[f"{m}_per_seed"] = s.per_seed.get(m)
            row[f"{m}_n"] = len(s.per_seed.get(m) or [])  # finite values only: may be < n_seeds
            d = s.diffs.get(m)
            if d is not None:
                row[f"{m}_diff_vs_{cmp.baseline.label}"] = d.mean
                row[f"{m}_diff_ci"] = [d.low, d.high] if d.n > 1 else None
                row[f"{m}_significant"] = (not d.covers_zero) if d.n > 1 else None
        row.update({k: s.compute.get(k) for k, _ in COMPUTE_COLS})
        row["train_seeds"] = s.compute.get("seeds")
        row["sample_seeds"] = s.compute.get("sample_seeds")
        row["mismatch"] = s.mismatch
        row["runs"] = [str(r.path) for r in s.runs]
        row["kind"] = "method"
        out.append(row)
    from dlbench.report.calibrated import anchor_rows

    return out + anchor_rows(cmp)


def _table_cells(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seeds"] + [f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in cmp.metric_names] \
        + [lab for _, lab in COMPUTE_COLS]
    body = []
    for s in cmp.summaries:
        name = s.label + (" †" if s.mismatch else "")
        cells = [name, str(len(s.runs))]
        # a metric finite in fewer runs than the seeds column counts says so: "(n=k)"
        cells += [(s.metrics[m].format() + (f" (n={len(s.per_seed[m])})" if len(s.per_seed[m]) < len(s.runs) else ""))
                  if m in s.metrics else "–" for m in cmp.metric_names]
        cells += [_num(s.compute.get(k)) for k, _ in COMPUTE_COLS]
        body.append(cells)
    return header, body


def _diff_cells(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["method vs " + cmp.baseline.label] + cmp.metric_names
    body = [[s.label] + [_diff_text(s.diffs.get(m)) or "–" for m in cmp.metric_names] for s in cmp.summaries[1:]]
    return header, body


def _footer(cmp: Comparison) -> list[str]:
    lines = [f"protocol {cmp.protocol_hash[:12]}; mean ± 95% t-interval over training seeds; "
             "differences: Welch 95% interval vs the first method"]
    for m, why in sorted(cmp.unavailable.items()):
        lines.append(f"{m}: unavailable ({why})")
    for s in cmp.summaries:
        if s.mismatch:
            lines.append(f"† {s.label} differs from the baseline in: " + "; ".join(s.mismatch))
    from dlbench.report.calibrated import placement_lines

    lines += placement_lines(cmp)
    reused = [str(r.path) for s in cmp.summaries for r in s.runs if r.reused]
    if reused:
        lines.append(f"reused {len(reused)} finished run(s): " + ", ".join(reused))
    lines += cmp.notes
    return lines


def render(cmp: Comparison, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({"protocol_hash": cmp.protocol_hash, "baseline": cmp.baseline.label, "rows": rows(cmp),
                           "unavailable": cmp.unavailable, "notes": _footer(cmp)}, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        rs = rows(cmp)
        keys = list(dict.fromkeys(k for r in rs for k in r))
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rs:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
        return buf.getvalue()
    from dlbench.report.calibrated import anchor_cells

    header, body = _table_cells(cmp)
    abody = anchor_cells(cmp)
    dheader, dbody = _diff_cells(cmp)
    if fmt == "md":
        def md(h, b):
            return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h)] + ["| " + " | ".join(r) + " |" for r in b])
        parts = [md(header, body + [[f"*{c}*" if c not in ("", "–") else c for c in r] for r in abody])]
        if dbody:
            parts.append(md(dheader, dbody))
        parts.append("\n".join(f"- {line}" for line in _footer(cmp)))
        return "\n\n".join(parts) + "\n"
    if fmt == "latex":
        def esc(x: str) -> str:
            return x.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("↓", r"$\downarrow$") \
                .replace("↑", r"$\uparrow$").replace("†", r"$^\dagger$").replace("#", r"\#")
        lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
        if abody:
            lines.append(r"\midrule")
            lines += [" & ".join(r"\textit{" + esc(c) + "}" for c in row) + r" \\" for row in abody]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table

        console = Console(record=True, width=200, file=io.StringIO())
        t = Table(title="dlbench comparison")
        for h in header:
            t.add_column(h, justify="left" if h == "method" else "right")
        for r in body:
            t.add_row(*r)
        if abody:
            t.add_section()
            for r in abody:
                t.add_row(*r, style="dim italic")
        console.print(t)
        if dbody:
            d = Table(title=f"difference vs baseline ({cmp.baseline.label})")
            for h in dheader:
                d.add_column(h)
            for r in dbody:
                d.add_row(*r)
            console.print(d)
        for line in _footer(cmp):
            console.print(line, highlight=False, soft_wrap=True)
        return console.export_text()
    raise ConfigError(f"--format {fmt!r}: choose table, md, csv, json or latex")


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


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


def compare(
    methods: list[str],
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
    from dlbench import api

    if format not in {"table", "md", "csv", "json", "latex"}:
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
        if seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        extra = list(overrides) + budget_overrides(budget)

        def resolve_all(extra: list[str]) -> list[Any]:
            return [api.resolve(m, dataset=dataset, preset=preset, overrides=extra, seed=seed)
                    for m in methods for seed in range(seeds)]

        plans = resolve_all(extra)  # resolve everything first: a typo fails before any training
        if budget is None and equal_compute and len(set(methods)) > 1:
            from dlbench.train.calibration import equal_flops_budget

            flops, per = equal_flops_budget(plans)
            plans = resolve_all(extra + [f"training.budget_flops={flops}"])
            budget_note = (f"budget: equal training FLOPs, {flops:.3g} per run (the smallest of the methods' preset "
                           "budgets: " + ", ".join(f"{m} {f:.3g}" for m, f in per.items()) + "); pass --budget "
                           "steps=N for equal steps instead")
        elif budget is not None:
            kind = budget.partition("=")[0]
            budget_note = f"budget: {budget} per run" + (" (equal steps, not equal compute)" if kind == "steps" else "")
        else:
            budget_note = None
        from dlbench.preflight import preflight

        for cfg in plans:  # the same pre-flight as `dlbench run`, for every planned run, before any training
            preflight(cfg, out=out)
        order = list(dict.fromkeys(c.method.name for c in plans))
        for cfg in plans:
            found = find_reusable(Path(out), cfg.hash(), cfg.method.name, cfg.dataset.name)
            if found is not None:
                log(f"reusing {found} ({cfg.method.name}, seed {cfg.seed})")
                records.append(RunRecord.load(found, reused=True))
                continue
            log(f"training {cfg.method.name} seed {cfg.seed} ({preset} preset) ...")
            result = api.run(cfg.method.name, config=cfg, out=out)
            records.append(RunRecord.load(result.run_dir.path))
    if tune_sampling:
        from dlbench.train.sampler_tuning import tuned_records

        records, order = tuned_records(records, order, samples=tune_samples, log=log)
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


def load_records(paths: Sequence[str | Path]) -> list[RunRecord]:
    from dlbench.report.integrity import check_distinct_runs

    records = [RunRecord.load(p) for p in paths]
    check_distinct_runs(records)
    return records


__all__ = ["compare", "summarise", "render", "rows", "RunRecord", "Comparison", "check_protocols",
           "check_matched", "ProtocolMismatchError", "ComparisonMismatchError", "budget_overrides",
           "read_json", "load_records"]
