"""Data parallel vs threads on a small CPU: ``torchrun --nproc_per_node 2`` (1 thread each) vs one process
with 2 threads, same global batch, the real training loop on the default VQ-Diffusion model.

    PYTHONPATH=.:plugins python benchmarks/bench_cpu_parallel.py [--steps 20] [--record benchmarks/results/cpu_parallel.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "plugins")]
    from dlbench.config import TrainingConfig
    from dlbench.interfaces import MethodContext
    from dlbench.plugins import get_registry
    from dlbench.train.dist import init_distributed
    from dlbench.train.loop import TensorBatches, train

    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    method = get_registry().get("method", "vq-diffusion").build(
        {}, context=MethodContext(codebook_size=256, token_grid=(7, 7), num_classes=10, backbone={"preset": "tiny"}))
    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (4096, 7, 7), generator=g), torch.randint(0, 10, (4096,), generator=g))
    cfg = dict(batch_size=args.batch, lr=1e-4, warmup_steps=0, precision=args.precision, log_every=10**6,
               checkpoint_every=10**6)

    def run(steps, seed):
        train(method, lambda m, b: m.loss(b[0], b[1]), TensorBatches(*data, batch_size=args.batch, seed=seed,
              rank=ctx.rank, world=ctx.world_size), TrainingConfig(steps=steps, **cfg), ctx=ctx, show_progress=False)

    run(2, 0)
    t = time.perf_counter()
    run(args.steps, 1)
    if ctx.is_main:
        print(f"MS_PER_STEP {(time.perf_counter() - t) / args.steps * 1000:.2f}", flush=True)


def launch(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("MS_PER_STEP")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(HERE))
    from _machine import machine_line, print_and_record

    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), "--batch",
          str(args.batch), "--precision", args.precision]
    runs = {
        "1 process x 2 threads": (me + ["--threads", "2"], 2),
        "torchrun --nproc_per_node 2 (1 thread each, gloo)": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *me[1:], "--threads", "1"], 1),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, (cmd, threads) in runs.items():
            times[name].append(launch(cmd, threads))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["1 process x 2 threads"]
    lines = ["# CPU parallelism: torchrun 2 processes vs 2 threads (default VQ-Diffusion, tiny backbone)", "",
             f"- {machine_line()}",
             f"- global batch {args.batch}, 7x7 tokens, {args.precision}, {args.steps} timed steps after 2 warm-up, "
             f"median of {args.rounds} alternating rounds; other processes were running on the same cores", "",
             "| setup | ms per step (median) | all rounds | speed vs 2 threads |", "|---|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {base / med[k]:.2f}x |")
    lines.append("")
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
