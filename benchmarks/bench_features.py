"""Feature-extraction throughput: dlbench exact and fast (bf16) modes vs a direct torch-fidelity call.

All three paths run the FID Inception on the same uint8 images in one process, alternating rounds
(the cores are shared; each path keeps the median of its rounds):

- **torch-fidelity**: its ``FeatureExtractorInceptionV3`` called directly, under ``torch.no_grad``;
- **dlbench exact**: :class:`dlbench.eval.fid_inception.FidInception` in fp32 (BN folded, ReLU fused,
  channels-last, inference mode, gray images resized once) -- features checked against torch-fidelity's;
- **dlbench fast**: the same network with bf16 convolutions (fast on CPUs with avx512_bf16/AMX).

It then measures fast mode's FID deviation from exact mode on real images (Fashion-MNIST-small test
images when available: FID between the first and second half, from exact and from bf16 features).

    PYTHONPATH=.:plugins python benchmarks/bench_features.py [--n 64] [--record benchmarks/results/features.md]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _machine import machine_line, print_and_record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images per path and round (28x28 gray, like Fashion-MNIST)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per path (median is kept)")
    ap.add_argument("--deviation-images", type=int, default=400, help="real images for fast mode's FID deviation")
    ap.add_argument("--dataset", default="fashion-mnist-small")
    ap.add_argument("--record", default=None, help="also write the report (markdown) to this path")
    args = ap.parse_args()

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from dlbench.data import load_split_tensors
    from dlbench.eval.backends import bf16_fid_deviation
    from dlbench.eval.fid_inception import build_fid_inception
    from dlbench.eval.inception import resolve_inception_weights
    from dlbench.plugins import get_registry
    from dlbench.train.dist import cpu_has_native_bf16

    weights = resolve_inception_weights()
    dataset = get_registry().get("dataset", args.dataset).build({})
    images, _ = load_split_tensors(dataset, "test", limit=max(args.n, args.deviation_images))
    x = images[: args.n].expand(-1, 3, -1, -1).contiguous()  # uint8 "n 3 28 28", gray -> RGB as the protocol does

    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights.path))
    exact = build_fid_inception(weights, "exact")
    fast = build_fid_inception(weights, "bf16")
    paths = {
        "torch-fidelity (direct)": lambda b: direct(b)[0],
        "dlbench exact": lambda b: exact(b)[0],
        "dlbench fast (bf16)": lambda b: fast(b)[0],
    }

    def run(fn):
        with torch.no_grad():
            fn(x[:2])  # warm-up (oneDNN primitive creation)
            t = time.perf_counter()
            out = torch.cat([fn(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
            return out, len(x) / (time.perf_counter() - t)

    rates: dict[str, list[float]] = {k: [] for k in paths}
    feats: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            feats[name], r = run(fn)
            rates[name].append(r)
    ips = {k: statistics.median(v) for k, v in rates.items()}
    ref = feats["torch-fidelity (direct)"]
    diff_exact = (feats["dlbench exact"] - ref).abs().max().item()
    diff_fast = (feats["dlbench fast (bf16)"] - ref).abs().max().item()
    dev = bf16_fid_deviation(images[: args.deviation_images], weights, n=args.deviation_images,
                             batch_size=args.batch_size)
    base = ips["torch-fidelity (direct)"]
    lines = [
        "# Feature extraction throughput (Inception-v3 FID, 28x28 gray -> 299 px)", "",
        f"- {machine_line()}",
        f"- native bf16 (avx512_bf16/amx_bf16): {cpu_has_native_bf16()}; weights: {weights.source} ({weights.sha256[:12]})",
        f"- {args.n} {args.dataset} test images per path and round, batch size {args.batch_size}, median of "
        f"{args.rounds} alternating rounds",
        "- other processes were running on the same cores (shared machine): absolute images/s are contended; "
        "the ratios are measured in one process with the paths interleaved",
        "",
        "| path | images/s (median) | all rounds | vs torch-fidelity | max abs feature diff vs torch-fidelity |",
        "|---|---|---|---|---|",
    ]
    for name in paths:
        d = {"torch-fidelity (direct)": 0.0, "dlbench exact": diff_exact, "dlbench fast (bf16)": diff_fast}[name]
        lines.append(f"| {name} | {ips[name]:.2f} | {', '.join(f'{r:.2f}' for r in rates[name])} | "
                     f"**{ips[name] / base:.2f}x** | {d:.2e} |")
    lines += [
        "",
        f"Fast mode's FID deviation on real images ({dev['n']} {args.dataset} test images, FID of the first half vs "
        f"the second): exact {dev['fid_exact']:.4f}, bf16 {dev['fid_bf16']:.4f}; |difference| "
        f"**{dev['abs']:.4f}** (relative **{dev['rel']:.2e}**); max abs pool3 feature difference {dev['max_abs_feature_diff']:.3f}.",
        "",
    ]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
