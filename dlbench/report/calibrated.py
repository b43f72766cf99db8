"""The comparison's scale: anchor rows, where each method sits on them, tuned sampler settings, figures.

Reads only what the runs recorded (``metrics.json``: ``anchors``, ``compute``); the anchors themselves are
computed by :mod:`dlbench.runner.calibration` from :mod:`dlbench.eval.anchors`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from dlbench.eval.anchors import ANCHOR_LABELS, ANCHORS, anchor_values, placement

#: metrics whose placement ``compare`` states in words, in this order, when a run has them
HEADLINE = ("fid", "domain_fd", "domain_class_acc", "token_kl_pair", "token_kl_unigram", "nll_bound")


def attach_anchors(cmp: Any, records: Sequence[Any]) -> None:
    """Set ``cmp.anchors`` from the runs' records (one shared record) and note when they disagree."""
    found = [(r, (r.metrics.get("anchors") or {})) for r in records]
    usable = [(r, a) for r, a in found if a.get("rows")]
    if not usable:
        reasons = {a.get("unavailable") for _, a in found if a.get("unavailable")}
        why = "; ".join(sorted(reasons)) if reasons else "the runs predate anchor rows (re-evaluate: dlbench eval RUN)"
        cmp.notes.append(f"anchor rows unavailable: {why}")
        return
    keys = {a.get("key") for _, a in usable}
    cmp.anchors = usable[0][1]
    if len(keys) > 1:
        cmp.notes.append(f"runs carry {len(keys)} different anchor records (tokenizer or data differ); "
                         f"showing {usable[0][0].path.name}'s")


def _metric_value(row: dict[str, Any], metric: str) -> float | None:
    v = (row.get("metrics") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _anchor_entries(cmp: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(name, row)`` of the comparison's anchors that carry metrics, ladder order (best first)."""
    rows = (cmp.anchors or {}).get("rows") or {}
    return [(name, rows[name]) for name in ANCHORS if rows.get(name) and rows[name].get("metrics")]


def anchor_cells(cmp: Any) -> list[list[str]]:
    """Table rows of the anchors in the comparison table's column layout (single draws: no interval)."""
    from dlbench.report.render import COMPUTE_COLS

    out = []
    for name, row in _anchor_entries(cmp):
        cells = [f"anchor: {ANCHOR_LABELS[name]}", "–"]
        for m in cmp.metric_names:
            v = _metric_value(row, m)
            cells.append("–" if v is None else f"{v:.3g}")
        cells += ["–" for _ in COMPUTE_COLS]
        out.append(cells)
    return out


def anchor_rows(cmp: Any) -> list[dict[str, Any]]:
    """The anchors as flat json/csv records (``kind: anchor``)."""
    out = []
    for name, row in _anchor_entries(cmp):
        rec: dict[str, Any] = {"method": f"anchor: {ANCHOR_LABELS[name]}", "kind": "anchor", "anchor": name,
                               "protocol_hash": cmp.protocol_hash, "anchor_key": cmp.anchors.get("key"),
                               "n": cmp.anchors.get("n")}
        for m in cmp.metric_names:
            rec[m] = _metric_value(row, m)
        out.append(rec)
    return out


def placement_lines(cmp: Any) -> list[str]:
    """One line per method: where it sits on the anchor ladder for each headline metric it has."""
    from dlbench.report.compare import lower_is_better

    lines = tuned_lines(cmp)
    if not cmp.anchors:
        return lines
    for s in cmp.summaries:
        parts = []
        for m in HEADLINE:
            iv = s.metrics.get(m)
            anchors = anchor_values(cmp.anchors, m)
            if iv is None or not anchors:
                continue
            low, high = (iv.low, iv.high) if iv.n > 1 else (None, None)
            parts.append(f"{m} {placement(iv.mean, low, high, anchors, lower_is_better(m))}")
        if parts:
            lines.append(f"where {s.label} sits: " + "; ".join(parts))
    if lines:
        n = cmp.anchors.get("n")
        lines.append(f"anchors: single draws of n = {n} under the same protocol (real: held-out images outside the "
                     "reference set; class marginals / marginals: i.i.d. tokens per position from the training "
                     "split's marginals); a method is 'not distinguishable' from an anchor inside its 95 % interval")
    return lines


def run_anchor_columns(metrics: dict[str, Any], names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``dlbench run``'s result table: one column per anchor, the anchor's value of each metric in ``names``."""
    rows = (metrics.get("anchors") or {}).get("rows") or {}
    out = []
    for name in ANCHORS:
        row = rows.get(name)
        if not row or not row.get("metrics"):
            continue
        vals = [_metric_value(row, m) for m in names]
        out.append((ANCHOR_LABELS[name], ["–" if v is None else f"{v:.4g}" for v in vals]))
    return out


def settings_text(chosen: dict[str, Any]) -> str:
    """``steps=.., guidance=.., <option>=..`` of one sampler setting (``compare --tune-sampling``)."""
    parts = [f"steps={chosen['steps']}", f"guidance={chosen['guidance']:g}"]
    parts += [f"{k}={v}" for k, v in sorted(chosen["options"].items())]
    return ", ".join(parts)


def tuned_lines(cmp: Any) -> list[str]:
    """The sampler settings each tuned row chose (per training seed), against the untuned ones."""
    lines = []
    for s in cmp.summaries:
        tuned = [(r.train_seed, r.metrics.get("tuned")) for r in s.runs if r.metrics.get("tuned")]
        if tuned:
            nfe = tuned[0][1].get("nfe")
            chosen = "; ".join(f"seed {seed}: {settings_text(t['chosen'])}" for seed, t in tuned)
            lines.append(f"{s.label}: sampler settings chosen on the validation split at NFE {nfe} "
                         f"(neighbour-pair KL): {chosen}")
    return lines


# ---------------------------------------------------------------------------------------------
# figures for the HTML report
# ---------------------------------------------------------------------------------------------

ANCHOR_STYLE = {"real": ("#2a7", "-"), "reconstruction": ("#27a", "--"), "class_marginals": ("#a72", "-."),
                "marginals": ("#a22", ":")}


def ladder_figure(cmp: Any, path: Any) -> Any:
    """One panel per headline metric: the anchors as vertical lines (the ladder) and each method's mean with
    its 95 % interval, so the reader sees at a glance which rung a method reached. Returns the path or None."""
    import matplotlib.pyplot as plt

    from dlbench.report.compare import lower_is_better

    metrics = [m for m in HEADLINE if anchor_values(cmp.anchors, m) and any(m in s.metrics for s in cmp.summaries)]
    metrics += [m for m in cmp.metric_names if m not in metrics and anchor_values(cmp.anchors, m)
                and m in ("kid_mean", "domain_is")]
    if not metrics:
        return None
    height = (0.9 + 0.32 * len(cmp.summaries)) * len(metrics) + 0.6
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, height), squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        for name, v in anchor_values(cmp.anchors, m).items():
            color, ls = ANCHOR_STYLE[name]
            ax.axvline(v, color=color, ls=ls, lw=1.4, label=ANCHOR_LABELS[name])
        for i, s in enumerate(cmp.summaries):
            iv = s.metrics.get(m)
            if iv is None:
                continue
            err = None if iv.n < 2 or not math.isfinite(iv.half_width) else [[iv.half_width], [iv.half_width]]
            ax.errorbar([iv.mean], [i], xerr=err, fmt="o", color="k", capsize=3)
        ax.set_yticks(range(len(cmp.summaries)), [s.label for s in cmp.summaries], fontsize=8)
        ax.set_ylim(-0.7, len(cmp.summaries) - 0.3)
        ax.set_title(f"{m} ({'lower' if lower_is_better(m) else 'higher'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.9), ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_figure(cmp: Any, path: Any) -> Any:
    """Learning curves (``curve`` events, mean over seeds) with the anchor levels at the same n as horizontal
    lines (the runs' ``curve_anchors``). Returns the path or None."""
    import matplotlib.pyplot as plt

    from dlbench.runs import RunDir

    series: dict[str, dict[str, dict[int, list[float]]]] = {}
    for s in cmp.summaries:
        if s.label.endswith("(tuned)"):
            continue
        for r in s.runs:
            for ev in RunDir(r.path).events("curve"):
                for k, v in ev.items():
                    if k in {"time", "event", "step", "n"} or not isinstance(v, (int, float)) or isinstance(v, bool):
                        continue
                    series.setdefault(k, {}).setdefault(s.label, {}).setdefault(int(ev["step"]), []).append(float(v))
    keys = [k for k in (*HEADLINE, "domain_is") if k in series] + sorted(k for k in series if k not in HEADLINE
                                                                         and k != "domain_is")
    if not keys:
        return None
    anchors = next((r.metrics.get("curve_anchors") for s in cmp.summaries for r in s.runs
                    if (r.metrics.get("curve_anchors") or {}).get("rows")), None)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, pts in series[key].items():
            xs = sorted(pts)
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", lw=1.3, label=label)
        for name, v in anchor_values(anchors, key).items():
            color, ls = ANCHOR_STYLE[name]
            ax.axhline(v, color=color, ls=ls, lw=1.0, label=f"anchor: {ANCHOR_LABELS[name]}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    n = anchors.get("n") if anchors else None
    fig.suptitle(f"learning curves (n = {n} samples per point; anchors at the same n)" if n else "learning curves",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
