"""bf16 autocast vs fp32 training: loss curves of the default VQ-Diffusion model on real data.

Tokens are the embedded Fashion-MNIST-small images average-pooled 4x4 to an 8x8 grid and quantised to 256
levels (a tokenizer-free, deterministic "codebook" with real image structure, so the curve shows learning).
Three runs of the real training loop with the same data order: fp32 seed 0, fp32 seed 1 (the seed-to-seed
noise), bf16 seed 0. bf16 matches fp32 "within noise" when |bf16 - fp32(seed 0)| is of the size of
|fp32(seed 1) - fp32(seed 0)|.

    PYTHONPATH=.:plugins python benchmarks/bench_bf16_loss_curve.py [--steps 200] [--record benchmarks/results/bf16_loss_curve.md]
"""

from __future__ import annotations

import argparse

import torch

from _machine import machine_line, print_and_record  # noqa: E402

from dlbench.config import TrainingConfig
from dlbench.data import load_split_tensors
from dlbench.interfaces import MethodContext
from dlbench.plugins import get_registry
from dlbench.train.loop import TensorBatches, train


def tokens_from_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``"n 1 32 32"`` -> long ``"n 8 8"`` in [0, 256): 4x4 mean, rounded."""
    return torch.nn.functional.avg_pool2d(images.float(), 4).round().clamp(0, 255).long()[:, 0]


def run(tokens, labels, precision: str, seed: int, steps: int, batch: int, every: int) -> list[float]:
    torch.manual_seed(seed)
    method = get_registry().get("method", "vq-diffusion").build(
        {}, context=MethodContext(codebook_size=256, token_grid=(8, 8), num_classes=10, backbone={"preset": "tiny"}))
    curve: list[float] = []

    def events(kind, **fields):
        if kind == "train" and "loss" in fields:
            curve.append(float(fields["loss"]))

    train(method, lambda m, b: m.loss(b[0], b[1]), TensorBatches(tokens, labels, batch_size=batch, seed=0),
          TrainingConfig(steps=steps, batch_size=batch, lr=3e-4, warmup_steps=20, precision=precision, log_every=every,
                         checkpoint_every=10**6), events=events, seed=seed, show_progress=False)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=20, help="steps per logged window (mean loss)")
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    ds = get_registry().get("dataset", "fashion-mnist-small").build({})
    images, labels = load_split_tensors(ds, "train", limit=4096)
    tokens = tokens_from_images(images)
    runs = {
        "fp32 seed 0": run(tokens, labels, "fp32", 0, args.steps, args.batch, args.every),
        "fp32 seed 1": run(tokens, labels, "fp32", 1, args.steps, args.batch, args.every),
        "bf16 seed 0": run(tokens, labels, "bf16", 0, args.steps, args.batch, args.every),
    }
    a, b, c = runs["fp32 seed 0"], runs["fp32 seed 1"], runs["bf16 seed 0"]
    lines = ["# bf16 autocast vs fp32: training loss (VQ-Diffusion, tiny backbone, real data)", "",
             f"- {machine_line()}",
             f"- {args.steps} steps, batch {args.batch}, lr 3e-4 (20 warm-up), fashion-mnist-small train images "
             "4x4-pooled to 8x8 and quantised to 256 levels; mean loss per window of "
             f"{args.every} steps; same data order in all runs", "",
             "| step | " + " | ".join(runs) + " | bf16 - fp32 (seed 0) | fp32 seed 1 - seed 0 |",
             "|---|" + "---|" * (len(runs) + 2)]
    for i in range(len(a)):
        lines.append(f"| {(i + 1) * args.every} | " + " | ".join(f"{r[i]:.4f}" for r in (a, b, c))
                     + f" | {c[i] - a[i]:+.4f} | {b[i] - a[i]:+.4f} |")
    dev = max(abs(x - y) for x, y in zip(c, a))
    noise = max(abs(x - y) for x, y in zip(b, a))
    lines += ["", f"max |bf16 - fp32| over the windows: **{dev:.4f}**; max seed-to-seed |fp32 - fp32|: **{noise:.4f}** "
              f"(ratio {dev / max(noise, 1e-12):.2f}).", ""]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
