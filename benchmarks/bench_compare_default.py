"""The README's comparison, recorded: ``dlbench compare vqlcmd vq-diffusion --seeds 3`` (preset ``default``).

The table carries the four anchor rows (real held-out images, tokenizer reconstructions, class-conditional and
unconditional per-position token marginals), the token-level columns (``token_kl_pair``, ``token_kl_unigram``,
``nll_bound`` +- ``nll_bound_se``) and, in its notes, where each method sits on the anchor ladder and which
compute measure the methods were matched on (equal training FLOPs unless ``--budget`` says otherwise).

Runs that already exist under ``--out`` with the same resolved config are reused (as ``dlbench compare``
does), so the wall-clock of this invocation may be seconds; the cost of each run is read from its own
``meta.json`` (``started`` / ``finished``: training, sampling and evaluation) and ``metrics.json``
(``compute.wall_clock_s``: generator training alone). The tokenizer is trained once per cache and is not
part of either figure; its own training time is in the cache's ``info.json`` and printed here.

With ``--jobs N`` the runs that are missing are first trained in N worker processes at once from the same
plan ``compare`` makes (``benchmarks/_parallel.py``), then the comparison reuses them.

Usage::

    DLBENCH_CACHE=... python benchmarks/bench_compare_default.py --out RUNS \
        --record benchmarks/results/compare_default.md [--html REPORT_DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _machine import machine_line, print_and_record  # noqa: E402
from _parallel import train_missing  # noqa: E402
from dlbench.api import compare  # noqa: E402
from dlbench.report.compare import load_records  # noqa: E402


def _tokenizer_events(run: Path) -> list[dict]:
    out = []
    for line in (run / "events.jsonl").read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "tokenizer":
            out.append(ev)
    return out


#: the issue-15 target: a generator "beats the class-marginals anchor" on these metrics (lower is better)
TARGET_METRICS = ("token_kl_pair", "domain_fd")
#: metrics on which the methods' ordering is stated (lower is better)
ORDER_METRICS = ("fid", "domain_fd", "token_kl_pair", "nll_bound")


def claims(data: dict) -> list[str]:
    """Plain statements computed from the comparison: does each method beat the class-marginals anchor (its 95 %
    interval entirely below the anchor's value) on TARGET_METRICS, and the pairwise ordering of vqlcmd and
    vq-diffusion (Welch 95 % interval of the difference) on ORDER_METRICS."""
    from dlbench.report.stats import diff_ci

    methods = {r["method"]: r for r in data["rows"] if r.get("kind") == "method"}
    anchor = next((r for r in data["rows"] if r.get("kind") == "anchor" and "class marginals" in r["method"]), None)
    out = ["## Claims at this budget (computed from the table)", ""]
    if anchor is not None:
        for name, row in methods.items():
            parts = []
            for m in TARGET_METRICS:
                if m not in row or m not in anchor:
                    continue
                hi = row.get(f"{m}_ci_high", row[m])
                verdict = "beats" if hi < anchor[m] else ("worse than" if row.get(f"{m}_ci_low", row[m]) > anchor[m]
                                                          else "not distinguishable from")
                parts.append(f"{m} {row[m]:.3g} [{row.get(f'{m}_ci_low', float('nan')):.3g}, {hi:.3g}] {verdict} "
                             f"class marginals ({anchor[m]:.3g})")
            ok = all(" beats " in p for p in parts) and parts
            out.append(f"- **{name}: {'beats' if ok else 'does not beat'} the class-marginals anchor** on "
                       f"{' and '.join(TARGET_METRICS)}: " + "; ".join(parts))
    a, b = methods.get("vqlcmd"), methods.get("vq-diffusion")
    if a and b:
        out.append("")
        for m in ORDER_METRICS:
            if f"{m}_per_seed" not in a or f"{m}_per_seed" not in b:
                continue
            d = diff_ci(a[f"{m}_per_seed"], b[f"{m}_per_seed"])
            if d.high < 0:
                text = "VQ-LCMD lower (better), the interval excludes 0"
            elif d.low > 0:
                text = "VQ-Diffusion lower (better), the interval excludes 0"
            else:
                text = "not distinguishable at this number of seeds (the interval includes 0)"
            out.append(f"- {m}: vqlcmd {a[m]:.3g}, vq-diffusion {b[m]:.3g}; difference vqlcmd − vq-diffusion "
                       f"{d.format(3)} (Welch 95 %): {text}.")
        if "fid_per_seed" in a and "fid_per_seed" in b:
            d = diff_ci(a["fid_per_seed"], b["fid_per_seed"])
            verdict = ("holds" if d.high < 0 else "does not hold" if d.low > 0 else
                       "is not shown (neither ordering is significant)")
            out.append(f"- **The paper's claim \"VQ-LCMD FID ≤ VQ-Diffusion FID\" {verdict} at this scale and "
                       "budget** (equal training FLOPs).")
    return out + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["vqlcmd", "vq-diffusion"])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs", help="runs root (shared with `dlbench compare` to reuse runs)")
    ap.add_argument("--html", default=None, help="also write the HTML report here")
    ap.add_argument("--record", default=None, help="write the markdown report here")
    ap.add_argument("--budget", default=None, help="as `dlbench compare --budget` (default: equal training FLOPs)")
    ap.add_argument("--tune-sampling", action="store_true", help="add tuned-sampler rows (validation split)")
    ap.add_argument("--tune-samples", type=int, default=256, help="samples per grid point when tuning")
    ap.add_argument("--jobs", type=int, default=1, help="train missing runs in this many processes first")
    args = ap.parse_args(argv)

    start = time.time()
    common = dict(preset=args.preset, seeds=args.seeds, out=args.out, budget=args.budget,
                  tune_sampling=args.tune_sampling, tune_samples=args.tune_samples)
    if args.jobs > 1:
        train_missing(args.methods, jobs=args.jobs, out=args.out, log=lambda m: print(m, file=sys.stderr),
                      preset=args.preset, seeds=args.seeds, budget=args.budget)
    data = json.loads(compare(args.methods, format="json", log=lambda m: print(m, file=sys.stderr), **common))
    table = compare(args.methods, format="md", html=args.html, log=lambda m: None, **common)
    wall = time.time() - start
    lines = [
        f"# `dlbench compare {' '.join(args.methods)} --seeds {args.seeds}"
        f"{' --budget ' + args.budget if args.budget else ''}{' --tune-sampling' if args.tune_sampling else ''}` "
        f"(preset `{args.preset}`)",
        "",
        f"{machine_line()}; command: `python benchmarks/bench_compare_default.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`; wall-clock of this invocation "
        f"(reused runs count 0 s): {wall:.0f} s.",
        "",
        table.rstrip(),
        "",
        *claims(data),
        "## Cost of each run (from the run directory)",
        "",
        "| method | seed | whole run s (train + sample + evaluate) | generator training s | tokenizer |",
        "|---|---|---|---|---|",
    ]
    tokenizers: dict[str, str] = {}
    for row in data["rows"]:
        if row.get("kind") != "method" or str(row["method"]).endswith("(tuned)"):
            continue
        for run in map(Path, row["runs"]):
            meta = json.loads((run / "meta.json").read_text())
            whole = None
            if meta.get("started") and meta.get("finished"):
                whole = (datetime.fromisoformat(meta["finished"])
                         - datetime.fromisoformat(meta["started"])).total_seconds()
            metrics = json.loads((run / "metrics.json").read_text())
            train = (metrics.get("compute") or {}).get("wall_clock_s")
            evs = _tokenizer_events(run)
            tok = ", ".join(f"{e.get('action')} {e.get('key')}" for e in evs) or "?"
            for e in evs:
                tokenizers[e.get("key")] = e.get("path")
            lines.append(f"| {row['method']} | {metrics.get('seeds', {}).get('train', '?')} | "
                         f"{whole:.0f} | {train:.0f} | {tok} |" if whole is not None and train is not None else
                         f"| {row['method']} | ? | ? | ? | {tok} |")
    for key, path in tokenizers.items():
        info_path = Path(path or "") / "info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            tr = info.get("training") or {}
            lines += ["", f"Tokenizer `{key}`: {tr.get('step', '?')} steps in "
                      f"{tr.get('elapsed_s', float('nan')):.0f} s (trained once, shared by every run above)."]
    print_and_record(lines, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
