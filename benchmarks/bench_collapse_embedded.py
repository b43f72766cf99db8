"""Embedding collapse on the embedded dataset through the full pipeline: ``csdm`` vs ``vqlcmd``.

Both methods are trained by ``dlbench compare`` with the same preset, budget, seed, tokenizer and
backbone (runs that already exist with the same resolved config are reused), then this script reads
what the runs recorded:

- the collapse diagnostics of the embedding table logged during training (``diagnostics`` events:
  min / mean pairwise distance of E relative to sigma at the reference t, effective rank, mean cosine,
  mean row norm), METHODS.md §A.5;
- the CE(t) curve on held-out tokens (``metrics.json`` ``end_of_training``);
- the final FID / domain metrics under the shared protocol.

Usage (same runs root and cache as the comparison you want to reuse)::

    DLBENCH_CACHE=... python benchmarks/bench_collapse_embedded.py --out RUNS --seeds 1 \
        --record benchmarks/results/collapse_embedded.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from dlbench.report.compare import compare, load_records  # noqa: E402
from dlbench.runs import RunDir  # noqa: E402

KEYS = ["min_pairwise_dist_over_sigma", "mean_pairwise_dist_over_sigma", "effective_rank", "mean_cosine", "mean_norm"]


def diagnostics_table(label: str, run: Path) -> list[str]:
    rows = []
    for ev in RunDir(run).events("diagnostics"):
        vals = [ev.get(f"embed/{k}") for k in KEYS]
        if any(v is None for v in vals):
            continue
        rows.append(f"| {label} | {ev['step']} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["csdm", "vqlcmd"])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="runs", help="runs root (shared with `dlbench compare` to reuse runs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--record", default=None, help="write the markdown report here")
    args = ap.parse_args(argv)

    start = time.time()
    table = compare(args.methods, preset=args.preset, seeds=args.seeds, out=args.out, overrides=args.overrides,
                    format="json", log=lambda m: print(m, file=sys.stderr))
    data = json.loads(table)
    lines = [
        "# Embedding collapse on the embedded dataset (full pipeline)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}; command: `python benchmarks/bench_collapse_embedded.py "
        f"{' '.join(argv or sys.argv[1:])}`; wall-clock of this invocation (runs reused count 0 s): "
        f"{time.time() - start:.0f} s.",
        "",
        f"Preset `{args.preset}`, {args.seeds} seed(s), protocol `{data['protocol_hash'][:12]}`.",
        "",
        "## Collapse diagnostics over training (mean over nothing: seed 0 run of each method)",
        "",
        "| method | step | min dist / sigma | mean dist / sigma | effective rank | mean cosine | mean norm |",
        "|---|---|---|---|---|---|---|",
    ]
    ce_rows = []
    for row in data["rows"]:
        run = Path(row["runs"][0])
        lines += diagnostics_table(row["method"], run)
        rec = load_records([run])[0]
        report = rec.metrics.get("end_of_training") or {}
        curve = report.get("ce_curve")
        if curve:
            ce_rows.append((row["method"], curve, report.get("uniform_ce")))
    if ce_rows:
        ts = ce_rows[0][1]["t"]
        lines += ["", "## CE(t) = -log p(x | z_t) on 512 held-out token grids (nats/token; "
                  f"uniform = {math.log(256):.3f})", "",
                  "| method | " + " | ".join(f"t={t:.2f}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for method, curve, _ in ce_rows:
            lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in curve["ce"]) + " |")
    lines += ["", "## Final metrics (same protocol)", "", compare(
        args.methods, preset=args.preset, seeds=args.seeds, out=args.out, overrides=args.overrides, format="md",
        log=lambda m: None)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        Path(args.record).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
