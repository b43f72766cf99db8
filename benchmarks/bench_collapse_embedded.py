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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _machine import machine_line, print_and_record  # noqa: E402
from dlbench.api import compare  # noqa: E402
from dlbench.report.compare import load_records  # noqa: E402
from dlbench.runs import RunDir  # noqa: E402

KEYS = ["min_pairwise_dist_over_sigma", "mean_pairwise_dist_over_sigma", "effective_rank", "mean_cosine", "mean_norm"]


def _row(label: str, step: str, diag: dict) -> str | None:
    vals = [diag.get(f"embed/{k}") for k in KEYS]
    if any(v is None for v in vals):
        return None
    return f"| {label} | {step} | " + " | ".join(f"{v:.3f}" for v in vals) + " |"


def initial_diagnostics(run: Path) -> dict:
    """Diagnostics of the method as built at step 0 (its init is a function of the run seed, as in
    the pipeline), so the table starts where training started."""
    import torch

    from dlbench.config import load_run_config
    from dlbench.interfaces import MethodContext
    from dlbench.plugins import get_registry

    cfg = load_run_config(Path(run) / "config.json", get_registry())
    k = int(cfg.tokenizer.params.get("codebook_size", 256))
    ctx = MethodContext(codebook_size=k, token_grid=(8, 8), num_classes=10,
                        backbone={"preset": cfg.backbone.preset, **cfg.backbone.params})
    torch.manual_seed(cfg.seed)
    method = get_registry().get("method", cfg.method.name).build(cfg.method.params, context=ctx)
    return method.diagnostics()


def diagnostics_table(label: str, run: Path) -> list[str]:
    rows = [_row(label, "0 (init)", initial_diagnostics(run))]
    for ev in RunDir(run).events("diagnostics"):
        rows.append(_row(label, str(ev["step"]), ev))
    final = (load_records([run])[0].metrics.get("method_diagnostics") or {})
    rows.append(_row(label, "end (EMA weights)", final))
    return [r for r in rows if r]


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
        f"{machine_line()}; command: `python benchmarks/bench_collapse_embedded.py "
        f"{' '.join(argv or sys.argv[1:])}`; wall-clock of this invocation (runs reused count 0 s): "
        f"{time.time() - start:.0f} s.",
        "",
        f"Preset `{args.preset}`, {args.seeds} seed(s), protocol `{data['protocol_hash'][:12]}`.",
        "",
        "## Collapse diagnostics over training (the seed-0 run of each method; sigma at the reference t)",
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
    print_and_record(lines, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
