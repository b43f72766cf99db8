"""Feature-extraction throughput: dlbench's Inception path vs a direct torch-fidelity call.

Both paths run torch-fidelity's ``FeatureExtractorInceptionV3`` on the same uint8 images in one
process; the ratio shows dlbench's overhead (uint8 round trip, gray -> RGB, weight resolution).
Run: ``PYTHONPATH=. python benchmarks/bench_features.py [--n 96] [--out benchmarks/results/features.md]``
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from _machine import cpu_name as _cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=96, help="images per path (28x28 gray, like Fashion-MNIST)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per path (best is kept)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "features.md")
    args = ap.parse_args()

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from dlbench.eval.extractors import InceptionFIDExtractor

    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (args.n, 1, 28, 28), generator=g, dtype=torch.uint8)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()

    ours = InceptionFIDExtractor()
    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(ours.weights.path))

    def run(fn, x):
        with torch.no_grad():
            fn(x[:2])  # warm-up
            t = time.perf_counter()
            out = torch.cat([fn(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
            return out, len(x) / (time.perf_counter() - t)

    # alternate the paths and keep each one's best round: the CPU is shared, load drifts over a run
    ips_direct = ips_ours = 0.0
    for _ in range(args.rounds):
        f_direct, r = run(lambda x: direct(x)[0], rgb)
        ips_direct = max(ips_direct, r)
        f_ours, r = run(ours.features, gray)
        ips_ours = max(ips_ours, r)
    max_diff = (f_direct - f_ours).abs().max().item()
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    lines = [
        "# Feature extraction throughput (Inception-v3 FID, 28x28 gray -> 299 px, fp32)",
        "",
        f"- machine: {_cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"load average {load}",
        f"- weights: {ours.weights.source} ({ours.weights.sha256[:12]})",
        f"- images per path and round: {args.n}, batch size {args.batch_size}, best of {args.rounds} alternating rounds",
        "",
        "| path | images/s |",
        "|---|---|",
        f"| direct torch-fidelity `FeatureExtractorInceptionV3` | {ips_direct:.2f} |",
        f"| dlbench `InceptionFIDExtractor.features` | {ips_ours:.2f} |",
        "",
        f"ratio dlbench / direct: **{ips_ours / ips_direct:.3f}**; max abs feature difference: {max_diff:.2e}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
