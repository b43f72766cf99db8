"""Rendering of a :class:`~dlbench.report.compare.Comparison`: rich table, Markdown, CSV, JSON, LaTeX.

Pure formatting: it reads the comparison object and returns text.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from dlbench.config import ConfigError
from dlbench.report.compare import Comparison, lower_is_better
from dlbench.report.stats import Interval

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

