"""CPU cost of each stage of the README's main job (``dlbench run vqlcmd``, default preset), from unit costs.

For a machine too loaded to time the whole first run (``bench_first_run.py``) meaningfully: each stage's
unit of work is run a few times through the real components (the default config's tokenizer, method and
sampler, torch-fidelity's Inception, the domain classifier) and its **CPU seconds** are measured in this
process (``time.process_time``; single-threaded by default, where contention costs least), then
multiplied by the default preset's counts: 1500 tokenizer steps, 500 generator steps, 2000 samples,
2000 + 2000 Inception images (samples + reference), 400 domain-classifier steps. The wall time on an
idle machine with T threads is at best CPU / T.

    PYTHONPATH=.:plugins python benchmarks/bench_first_run_costs.py [--threads 1] [--record PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _machine import machine_line, print_and_record  # noqa: E402


def cpu_per_unit(fn, units_per_call: int, calls: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    c0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - c0) / (calls * units_per_call)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from dlbench.config import build_config
    from dlbench.eval.domain import DomainCNN, DomainClassifierConfig
    from dlbench.eval.inception import resolve_inception_weights
    from dlbench.plugins import get_registry
    from dlbench.seeding import sample_seeds
    from dlbench.runner.common import to_float_images
    from dlbench.runner.generator_stage import build_method
    from dlbench.runner.tokenizer_stage import build_tokenizer

    registry = get_registry()
    cfg = build_config("vqlcmd", registry=registry, preset="default", device="cpu")
    ds = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    g = torch.Generator().manual_seed(0)
    rows: list[tuple[str, int, float, str]] = []  # stage, count, CPU s per unit, shipped?

    # tokenizer: one optimiser step of the default VQ-VAE on a batch of the default size
    tok = build_tokenizer(cfg, registry, ds)
    tb = cfg.tokenizer.training.batch_size
    images = torch.randint(0, 256, (tb, ds.channels, ds.resolution, ds.resolution), generator=g, dtype=torch.uint8)
    opt = torch.optim.AdamW(tok.parameters(), lr=cfg.tokenizer.training.lr)

    def tok_step():
        loss, _ = tok.training_loss(to_float_images(images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows.append(("tokenizer training (steps)", cfg.tokenizer.training.steps, cpu_per_unit(tok_step, 1, args.calls),
                 "tokenizer"))

    # tokenizing the train and test splits (re-done at load: the tokens do not ship)
    tok.eval()
    enc_batch = torch.randint(0, 256, (256, ds.channels, ds.resolution, ds.resolution), generator=g, dtype=torch.uint8)

    @torch.no_grad()
    def encode_batch():
        tok.encode(to_float_images(enc_batch))

    n_tok = sum(len(ds.split(name)) for name in ("train", "test") if name in ds.splits)
    rows.append(("tokenizing the train + test splits (images)", n_tok, cpu_per_unit(encode_batch, 256, args.calls), ""))

    # generator: one optimiser step of the default method on token grids of the default batch
    grid = tok.token_grid(ds.resolution, ds.resolution)
    method = build_method(cfg, tok, ds, grid)
    gb = cfg.training.batch_size
    tokens = torch.randint(0, tok.codebook_size, (gb, *grid), generator=g)
    labels = torch.randint(0, ds.num_classes, (gb,), generator=g)
    mopt = torch.optim.AdamW(method.parameters(), lr=cfg.training.lr)

    def gen_step():
        loss, _ = method.loss(tokens, labels)
        mopt.zero_grad(set_to_none=True)
        loss.backward()
        mopt.step()

    rows.append(("generator training (steps)", cfg.training.steps, cpu_per_unit(gen_step, 1, args.calls), ""))

    # sampling: one batch of the default sampler settings (fewer samples per batch, per-sample cost)
    s = cfg.sampling
    nb = 50
    method.eval()

    @torch.no_grad()
    def sample_batch():
        method.sample(torch.arange(nb) % ds.num_classes, sample_seeds(s.seed, torch.arange(nb)), num_samples=nb,
                      steps=s.steps, guidance=s.guidance, **s.options)

    rows.append((f"sampling ({s.steps} steps, samples)", s.num_samples, cpu_per_unit(sample_batch, nb, 1), ""))

    # Inception pool3 features through torch-fidelity (what the default protocol runs on samples and reference)
    from torch_fidelity.utils import create_feature_extractor

    weights = resolve_inception_weights()
    fe = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                  feature_extractor_weights_path=str(weights.path), verbose=False)
    batch = torch.randint(0, 256, (16, 3, ds.resolution, ds.resolution), generator=g, dtype=torch.uint8)

    @torch.no_grad()
    def inception_batch():
        fe(batch)

    per_img = cpu_per_unit(inception_batch, len(batch), max(1, args.calls - 1))
    rows.append(("Inception features of the samples (images)", 2000, per_img, ""))
    rows.append(("Inception features of the reference (images)", 2000, per_img, "reference-features"))

    # domain classifier: one step of its default recipe
    dc = DomainClassifierConfig()
    clf = DomainCNN(ds.channels, ds.num_classes, dc.width, dc.feature_dim)
    copt = torch.optim.Adam(clf.parameters(), lr=dc.lr)
    x = torch.randint(0, 256, (dc.batch_size, ds.channels, ds.resolution, ds.resolution), generator=g, dtype=torch.uint8)
    y = torch.randint(0, ds.num_classes, (dc.batch_size,), generator=g)

    def clf_step():
        _, logits = clf(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        copt.zero_grad(set_to_none=True)
        loss.backward()
        copt.step()

    rows.append(("domain classifier training (steps)", dc.steps, cpu_per_unit(clf_step, 1, args.calls), "domain-classifier"))

    from dlbench.shipped import read_manifest

    in_manifest = {e["kind"] for e in read_manifest()["artifacts"]}
    lines = [
        "# CPU cost of the first `dlbench run vqlcmd` (default preset), stage by stage, from unit costs",
        "",
        machine_line(),
        f"command: `python benchmarks/bench_first_run_costs.py --threads {args.threads}`",
        "",
        "| stage | count | CPU s per unit | CPU s | one-off, shippable as | in this checkout's manifest |",
        "|---|---|---|---|---|---|",
    ]
    total = shippable = shipped_now = 0.0
    for name, count, unit, kind in rows:
        here = ("yes" if kind in in_manifest else "no") if kind else ""
        lines.append(f"| {name} | {count} | {unit:.4f} | {count * unit:.0f} | {kind} | {here} |")
        total += count * unit
        shippable += count * unit if kind else 0.0
        shipped_now += count * unit if kind in in_manifest else 0.0
    lines += [
        f"| **all of the above** | | | **{total:.0f}** | | |",
        "",
        f"Nothing shipped: {total:.0f} CPU s. With this checkout's manifest: {total - shipped_now:.0f} CPU s. "
        f"With all three kinds shipped: {total - shippable:.0f} CPU s, at best "
        f"{(total - shippable) / 2 / 60:.1f} min of wall clock on 2 idle cores with perfect scaling. "
        "Not counted: setup, data loading, decoding, domain metrics, writing files.",
    ]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
