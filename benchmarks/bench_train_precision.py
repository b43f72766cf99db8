"""Time per 1k training steps of the tiny denoiser at fp32 vs bf16 (autocast) on this machine.

Runs the real training loop (``dlbench.train.loop.train``) on random 8x8 token grids (K=256 + mask,
10 classes, batch 64 -- inputs and targets in [0, 256), tiny preset: width 128, depth 4, 4 heads), ``--steps`` timed steps per
precision after ``--warmup`` untimed ones, and extrapolates to 1000 steps.

    PYTHONPATH=.:plugins python benchmarks/bench_train_precision.py [--steps 50] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from _machine import cpu_name  # noqa: E402

from dlbench.config import TrainingConfig
from dlbench.nn.denoiser import build_denoiser, resolve_backbone
from dlbench.train.loop import TensorBatches, train


def _loss(model, batch):
    tokens, labels = batch
    t = torch.rand(tokens.shape[0])
    logits = model(tokens, t, labels)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
    return loss, {}


def time_precision(precision: str, steps: int, warmup: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_denoiser(resolve_backbone("tiny"), grid=(8, 8), out_dim=256, input="tokens", vocab_size=257,
                           num_classes=10)
    data = (torch.randint(0, 256, (4096, 8, 8)), torch.randint(0, 11, (4096,)))
    cfg = dict(batch_size=batch, lr=1e-4, warmup_steps=0, ema_decay=0.999, precision=precision,
               log_every=10**6, checkpoint_every=10**6)
    train(model, _loss, TensorBatches(*data, batch_size=batch, seed=0), TrainingConfig(steps=warmup, **cfg),
          show_progress=False)
    start = time.perf_counter()
    train(model, _loss, TensorBatches(*data, batch_size=batch, seed=1), TrainingConfig(steps=steps, **cfg),
          show_progress=False)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"machine: {cpu_name()}; {os.cpu_count()} cores; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; avx512_bf16={'avx512_bf16' in flags}; amx_bf16={'amx_bf16' in flags}")
    print(f"model: tiny denoiser (w128 d4 h4), 8x8 tokens, vocab 257, batch {args.batch}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} alternating rounds, extrapolated to 1k steps")
    # alternate the two precisions over --rounds and keep each one's best: the cores are shared, so
    # the minimum is the least-disturbed measurement
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for p in times:
            times[p].append(time_precision(p, args.steps, args.warmup, args.batch))
    print("load average (1/5/15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("all rounds (s per 1k steps):", {p: [round(x, 1) for x in v] for p, v in times.items()})
    results = {p: min(v) for p, v in times.items()}
    for p, s in results.items():
        print(f"{p}: {s:8.1f} s per 1k steps ({s:.1f} ms per step)")
    print(f"speed-up bf16 vs fp32: {results['fp32'] / results['bf16']:.2f}x")


if __name__ == "__main__":
    main()
