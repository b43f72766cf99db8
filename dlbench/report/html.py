"""Static, self-contained HTML report of a comparison (PNGs embedded as data URIs, also saved).

Shows: the comparison table with its anchor rows set apart, the anchor ladder (where each method sits),
the differences to the baseline, sample grids per method, learning curves with the anchor levels as
horizontal lines, training-loss curves, diagnostic curves (e.g. embedding collapse) and metric-vs-step
plots, all read from the runs' own ``events.jsonl`` / ``metrics.json`` / ``samples.png``.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dlbench.report.compare import Comparison  # noqa: E402
from dlbench.report.render import _diff_cells, _footer, _table_cells  # noqa: E402
from dlbench.runs import EVENT_EVALUATION, EVENT_GENERATOR_TRAIN, RunDir  # noqa: E402

SKIP_KEYS = {"time", "event", "step", "stage", "rank", "lr", "images_seen", "elapsed_s", "it_per_s", "eta_s"}

Series = dict[str, list[tuple[int, float]]]


def _add_points(out: Series, step: int, fields: dict[str, Any]) -> None:
    for k, v in fields.items():
        if k in SKIP_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out.setdefault(k, []).append((step, float(v)))


def run_series(run_path: Path, protocol_hash: str | None = None) -> dict[str, Series]:
    """The curves of one run from its events.jsonl, under the names the runner writes them
    (:data:`dlbench.runs.EVENT_GENERATOR_TRAIN`, ``diagnostics`` of that stage,
    :data:`dlbench.runs.EVENT_EVALUATION` with a step, under ``protocol_hash`` when given):
    ``{"loss": {term: [(step, value)]}, "diagnostics": {...}, "metrics": {...}}``."""
    out: dict[str, Series] = {"loss": {}, "diagnostics": {}, "metrics": {}}
    for ev in RunDir(run_path).events():
        kind, step = ev.get("event"), ev.get("step")
        if not isinstance(step, int):
            continue
        if kind == EVENT_GENERATOR_TRAIN:
            _add_points(out["loss"], step, ev)
        elif kind == "diagnostics" and ev.get("stage") == EVENT_GENERATOR_TRAIN:
            _add_points(out["diagnostics"], step, ev)
        elif kind == EVENT_EVALUATION and (protocol_hash is None or ev.get("protocol_hash") == protocol_hash):
            _add_points(out["metrics"], step, ev.get("metrics") or {})
    return out


def _plot(series_by_method: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str], title: str,
          path: Path, logy: bool = False) -> Path | None:
    keys = [k for k in keys if any(k in s for s in series_by_method.values())]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for method, series in series_by_method.items():
            pts = series.get(key)
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, label=method, marker="o" if len(xs) < 8 else None, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if logy and all(y > 0 for s in series_by_method.values() for _, y in s.get(key, [])):
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _merge_seeds(paths: list[Path], which: str, protocol_hash: str | None = None) -> Series:
    """Mean over seeds at each step of the ``which`` curves of :func:`run_series` (the curves of one method)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for p in paths:
        for k, pts in run_series(p, protocol_hash)[which].items():
            for step, v in pts:
                acc.setdefault(k, {}).setdefault(step, []).append(v)
    return {k: [(s, sum(v) / len(v)) for s, v in sorted(d.items())] for k, d in acc.items()}


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table_html(header: list[str], body: list[list[str]], anchors: list[list[str]] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    trs += "".join("<tr class='anchor'>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in anchors or [])
    return f"<div class='scroll'><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"


def write_report(cmp: Comparison, out_dir: Path, title: str = "dlbench comparison") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_method_paths = {s.label: [r.path for r in s.runs] for s in cmp.summaries}

    losses = {m: _merge_seeds(p, "loss") for m, p in by_method_paths.items()}
    diags = {m: _merge_seeds(p, "diagnostics") for m, p in by_method_paths.items()}
    evals = {m: _merge_seeds(p, "metrics", cmp.protocol_hash) for m, p in by_method_paths.items()}
    # final metrics as the last point of the metric-vs-step curves
    for s in cmp.summaries:
        steps = [int((r.metrics.get("compute") or {}).get("train_steps") or 0) for r in s.runs]
        for m, iv in s.metrics.items():
            pts = evals[s.label].setdefault(m, [])
            if steps and steps[0] and not any(st == steps[0] for st, _ in pts):
                pts.append((steps[0], iv.mean))

    figures: list[tuple[str, Path]] = []
    loss_keys = sorted({k for s in losses.values() for k in s})
    f = _plot(losses, loss_keys, "training loss terms (mean over seeds)", out_dir / "training_loss.png", logy=True)
    if f:
        figures.append(("Training loss", f))
    diag_keys = sorted({k for s in diags.values() for k in s})
    f = _plot(diags, diag_keys, "training diagnostics", out_dir / "diagnostics.png")
    if f:
        figures.append(("Diagnostics", f))
    from dlbench.report.calibrated import anchor_cells, curve_figure, ladder_figure

    f = curve_figure(cmp, out_dir / "learning_curves.png")
    if f:
        figures.append(("Learning curves (with anchor levels)", f))
    f = _plot(evals, cmp.metric_names, "metrics vs training step", out_dir / "metrics_vs_step.png")
    if f:
        figures.append(("Metrics vs step", f))
    ladder = ladder_figure(cmp, out_dir / "anchor_ladder.png") if cmp.anchors else None

    grids: list[tuple[str, Path]] = []
    for s in cmp.summaries:
        for r in s.runs:
            png = r.path / "samples.png"
            if png.exists():
                grids.append((f"{s.label} (seed {r.train_seed})", png))
                break

    header, body = _table_cells(cmp)
    dheader, dbody = _diff_cells(cmp)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Protocol <code>{html.escape(cmp.protocol_hash)}</code>. Every number below was produced under this "
        "one evaluation protocol; runs under other protocols are refused, not mixed.</p>",
        "<h2>Results</h2>", _table_html(header, body, anchor_cells(cmp)),
    ]
    if ladder:
        parts += ["<h2>Where each method sits: the anchor ladder</h2>",
                  "<p>Vertical lines: real held-out images, the tokenizer's reconstructions, i.i.d. tokens from the "
                  "class-conditional and the unconditional per-position marginals (same protocol, same n). Points: "
                  "methods, mean and 95% interval over training seeds.</p>",
                  f"<img class='plot' src='{_img(ladder)}' alt='anchor ladder'>"]
    if dbody:
        parts += [f"<h2>Difference vs baseline ({html.escape(cmp.baseline.label)})</h2>", _table_html(dheader, dbody)]
    parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _footer(cmp)) + "</ul>")
    if grids:
        parts.append("<h2>Samples</h2><div class='grids'>" + "".join(
            f"<figure><img src='{_img(p)}' alt='samples of {html.escape(lab)}'><figcaption>{html.escape(lab)}"
            f"</figcaption></figure>" for lab, p in grids) + "</div>")
    for lab, p in figures:
        parts.append(f"<h2>{html.escape(lab)}</h2><img class='plot' src='{_img(p)}' alt='{html.escape(lab)}'>")
    parts.append("<h2>Runs</h2><ul>" + "".join(
        f"<li>{html.escape(s.label)}: " + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in s.runs) + "</li>"
        for s in cmp.summaries) + "</ul>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px}"
             "td:first-child,th:first-child{text-align:left}.grids{display:flex;flex-wrap:wrap;gap:1em}"
             "tr.anchor td{font-style:italic;color:#555;background:#f4f4f4}tr:not(.anchor)+tr.anchor td{border-top:3px double #888}"
             ".scroll{overflow-x:auto}figure img{image-rendering:pixelated;width:256px}img.plot{max-width:100%}code{font-size:12px}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out_dir / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path


def report_from_runs(paths: list[str | Path], out_dir: Path, allow_mismatch: bool = True) -> Path:
    """``dlbench report RUN…``: rebuild a report from existing run directories."""
    from dlbench.report.compare import check_matched, load_records, summarise

    records = load_records(paths)
    mismatch = check_matched(records, allow_mismatch)
    return write_report(summarise(records, None, mismatch), out_dir)

