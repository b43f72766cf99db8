"""Embedding collapse with and without consistency matching: ``csdm`` vs ``vqlcmd`` (METHODS.md §A.5).

Trains the two methods with the same budget, seed, data, backbone and optimizer on token grids, logs the
collapse diagnostics of the embedding table over training, and reports final metrics:

- collapse diagnostics (min / mean pairwise distance of E, raw and over sigma at ``diag_t``; effective rank;
  mean cosine; mean row norm) every ``--log-every`` steps;
- CE(t) = -log P(x | z_t; t) on held-out grids (the collapse signature: low near t=0, rising fast);
- generation quality on token statistics of class-conditional DDIM samples: KL of the unigram distribution and
  of the horizontal/vertical neighbour-difference distributions, and the fraction of positions that follow the
  class rule of the synthetic data.

Data (``--data``): ``synthetic`` (default) are structured class-conditional grids with
``x[i, j] = (o + a_c i + b_c j) mod K`` (random offset ``o`` per grid, class rule ``(a_c, b_c)``, 10% of
positions resampled uniformly). ``--tokens FILE.npz`` (arrays ``tokens "n h w"``, optional ``labels "n"``)
uses a cached tokenizer's tokens instead. ``--via-api`` runs both methods through ``dlbench.api.run`` (the
full pipeline: tokenizer, dataset, training loop, evaluation) instead of the in-script loop.

Usage::

    PYTHONPATH=.:plugins python benchmarks/bench_collapse.py --steps 600 --out benchmarks/results/collapse.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from dlbench.interfaces import MethodContext  # noqa: E402
from dlbench_vqlcmd.method import CSDM, VQLCMD, VQLCMDNoDrop, VQLCMDNoShift  # noqa: E402

METHODS = {"csdm": CSDM, "vqlcmd": VQLCMD, "vqlcmd-noshift": VQLCMDNoShift, "vqlcmd-nodrop": VQLCMDNoDrop}
DIAG_KEYS = [
    "min_pairwise_dist",
    "mean_pairwise_dist",
    "min_pairwise_dist_over_sigma",
    "mean_pairwise_dist_over_sigma",
    "effective_rank",
    "mean_cosine",
    "mean_norm",
]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def class_rules(num_classes: int, k: int, seed: int) -> torch.Tensor:
    """``"c 2"`` per-class steps ``(a_c, b_c)`` in ``[1, k)`` (distinct pairs)."""
    g = torch.Generator().manual_seed(seed + 1000)
    rules: list[tuple[int, int]] = []
    while len(rules) < num_classes:
        a, b = torch.randint(1, k, (2,), generator=g).tolist()
        if (a, b) not in rules:
            rules.append((a, b))
    return torch.tensor(rules)


def synthetic_tokens(n: int, grid: tuple[int, int], k: int, rules: torch.Tensor, *, noise: float, seed: int):
    """Structured grids ``x[i, j] = (o + a_c i + b_c j) mod k`` with a fraction ``noise`` resampled."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    labels = torch.randint(0, len(rules), (n,), generator=g)
    offset = torch.randint(0, k, (n, 1, 1), generator=g)
    i = torch.arange(h)[None, :, None]
    j = torch.arange(w)[None, None, :]
    a, b = rules[labels, 0][:, None, None], rules[labels, 1][:, None, None]
    tokens = (offset + a * i + b * j) % k
    flip = torch.rand(tokens.shape, generator=g) < noise
    tokens = torch.where(flip, torch.randint(0, k, tokens.shape, generator=g), tokens)
    return tokens.long(), labels.long()


# ---------------------------------------------------------------------------------------------
# Token-statistic metrics
# ---------------------------------------------------------------------------------------------


def _hist(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(x.flatten(), minlength=k).double() + 0.5  # add-1/2 smoothing: KL stays finite


def kl(p_counts: torch.Tensor, q_counts: torch.Tensor) -> float:
    p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
    return float((p * (p / q).log()).sum())


def token_metrics(gen: torch.Tensor, real: torch.Tensor, k: int, labels=None, rules=None) -> dict[str, float]:
    """KL(real || generated) of unigram and neighbour-difference histograms; rule-following fraction."""
    out = {
        "unigram_kl": kl(_hist(real, k), _hist(gen, k)),
        "hdiff_kl": kl(_hist((real[:, :, 1:] - real[:, :, :-1]) % k, k), _hist((gen[:, :, 1:] - gen[:, :, :-1]) % k, k)),
        "vdiff_kl": kl(_hist((real[:, 1:] - real[:, :-1]) % k, k), _hist((gen[:, 1:] - gen[:, :-1]) % k, k)),
        "distinct_frac": len({tuple(g.flatten().tolist()) for g in gen}) / len(gen),
    }
    if labels is not None and rules is not None:
        a, b = rules[labels, 0][:, None, None], rules[labels, 1][:, None, None]
        ok_h = ((gen[:, :, 1:] - gen[:, :, :-1]) % k) == b
        ok_v = ((gen[:, 1:] - gen[:, :-1]) % k) == a
        out["rule_frac"] = float(torch.cat([ok_h.flatten(1), ok_v.flatten(1)], 1).float().mean())
    return out


# ---------------------------------------------------------------------------------------------
# Training (in-script loop; the pipeline path is --via-api)
# ---------------------------------------------------------------------------------------------


def train_one(name: str, args, train, held, rules) -> dict:
    tokens, labels = train
    cls = METHODS[name]
    torch.manual_seed(args.seed)
    ctx = MethodContext(
        codebook_size=args.k,
        token_grid=tuple(args.grid),
        num_classes=args.num_classes,
        backbone={"preset": "tiny", "params": {"width": args.width, "depth": args.depth, "heads": args.heads}},
    )
    method = cls(cls.Config(embed_dim=args.dim), context=ctx)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    gen = torch.Generator().manual_seed(args.seed)
    history = [{"step": 0, **{k: method.diagnostics()[f"embed/{k}"] for k in DIAG_KEYS}}]
    t0 = time.time()
    method.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(tokens), (args.batch_size,), generator=gen)
        loss, terms = method.loss(tokens[idx], labels[idx] if args.num_classes else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        method.on_step_end()
        if step % args.log_every == 0 or step == args.steps:
            diag = method.diagnostics()
            row = {"step": step, **{k: diag[f"embed/{k}"] for k in DIAG_KEYS}}
            row.update({f"loss/{k}": float(v) for k, v in terms.items()})
            history.append(row)
            print(f"[{name}] step {step} " + " ".join(f"{k}={v:.3g}" for k, v in row.items() if k != "step"), flush=True)
    train_s = time.time() - t0
    h_tokens, h_labels = held
    curve = method.ce_curve(h_tokens, h_labels, points=args.ce_points)
    n = args.num_samples
    s_labels = h_labels[:n] if args.num_classes else None
    seeds = torch.arange(n) + 10_000
    t1 = time.time()
    samples = method.sample(s_labels, seeds, num_samples=n, steps=args.sample_steps, guidance=args.guidance)
    sample_s = time.time() - t1
    metrics = token_metrics(samples, h_tokens[:n], args.k, s_labels if rules is not None else None, rules)
    real_ref = token_metrics(
        h_tokens[n : 2 * n], h_tokens[:n], args.k, h_labels[n : 2 * n] if rules is not None else None, rules
    )
    return {
        "method": name,
        "sigma_ref": method.reference_sigma(),
        "history": history,
        "ce_curve": curve,
        "samples": metrics,
        "held_out_vs_held_out": real_ref,
        "train_seconds": train_s,
        "sample_seconds": sample_s,
        "nfe": method.nfe(args.sample_steps, args.guidance),
    }


def run_via_api(name: str, args) -> dict:
    """The same comparison through the full pipeline (``dlbench.api.run``), once it exists."""
    from dlbench import api

    result = api.run(
        name,
        preset=args.api_preset,
        seed=args.seed,
        overrides=[f"training.steps={args.steps}", f"method.params.embed_dim={args.dim}"],
        out=args.api_out,
    )
    return {"method": name, "run_dir": str(result.run_dir.path), "metrics": result.metrics}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def markdown(results: list[dict], args) -> str:
    lines = [
        f"Setup: data={args.data if not args.tokens else args.tokens}, K={args.k}, grid={args.grid[0]}x{args.grid[1]}, "
        f"d={args.dim}, backbone width={args.width} depth={args.depth}, steps={args.steps}, batch={args.batch_size}, "
        f"lr={args.lr}, seed={args.seed}, torch threads={torch.get_num_threads()}.",
        "",
        "### Collapse diagnostics over training",
        "",
        "| method | step | min dist | mean dist | min/sigma | mean/sigma | eff. rank | mean cos | mean norm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["history"]:
            lines.append(
                f"| {r['method']} | {row['step']} | {row['min_pairwise_dist']:.3f} | {row['mean_pairwise_dist']:.3f} | "
                f"{row['min_pairwise_dist_over_sigma']:.3f} | {row['mean_pairwise_dist_over_sigma']:.3f} | "
                f"{row['effective_rank']:.2f} | {row['mean_cosine']:.3f} | {row['mean_norm']:.3f} |"
            )
    lines += ["", "sigma_ref (sigma at diag_t=0.5): " + ", ".join(f"{r['method']}={r['sigma_ref']:.3f}" for r in results)]
    lines += ["", "### CE(t) on held-out grids (nats/token; uniform = %.3f)" % math.log(args.k), ""]
    ts = results[0]["ce_curve"]["t"]
    lines.append("| method | " + " | ".join(f"t={t:.2f}" for t in ts) + " |")
    lines.append("|---|" + "---|" * len(ts))
    for r in results:
        lines.append(f"| {r['method']} CE | " + " | ".join(f"{v:.3f}" for v in r["ce_curve"]["ce"]) + " |")
        lines.append(f"| {r['method']} acc | " + " | ".join(f"{v:.3f}" for v in r["ce_curve"]["accuracy"]) + " |")
    lines += ["", f"### Samples ({args.num_samples} class-conditional, {args.sample_steps} DDIM steps, guidance {args.guidance})", ""]
    keys = list(results[0]["samples"])
    lines.append("| method | " + " | ".join(keys) + " | train s | sample s |")
    lines.append("|---|" + "---|" * (len(keys) + 2))
    for r in results:
        lines.append(
            f"| {r['method']} | " + " | ".join(f"{r['samples'][k]:.4f}" for k in keys)
            + f" | {r['train_seconds']:.0f} | {r['sample_seconds']:.0f} |"
        )
    ref = results[0]["held_out_vs_held_out"]
    lines.append("| held-out data (reference) | " + " | ".join(f"{ref[k]:.4f}" for k in keys) + " | - | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["csdm", "vqlcmd"], choices=sorted(METHODS))
    ap.add_argument("--data", default="synthetic", choices=["synthetic"])
    ap.add_argument("--tokens", default=None, help="npz with tokens 'n h w' (and labels 'n') from a token cache")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--grid", type=int, nargs=2, default=[8, 8])
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=4096)
    ap.add_argument("--n-held", type=int, default=512)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--ce-points", type=int, default=6)
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 is polite on a shared 2-core machine")
    ap.add_argument("--out", default=None, help="write the JSON results here (markdown goes to stdout)")
    ap.add_argument("--via-api", action="store_true", help="run through dlbench.api.run (full pipeline)")
    ap.add_argument("--api-preset", default="default")
    ap.add_argument("--api-out", default="runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.via_api:
        results = [run_via_api(m, args) for m in args.methods]
        print(json.dumps(results, indent=2, default=str))
        return 0

    rules = None
    if args.tokens:
        data = np.load(args.tokens)
        tokens = torch.from_numpy(data["tokens"]).long()
        labels = torch.from_numpy(data["labels"]).long() if "labels" in data else torch.zeros(len(tokens), dtype=torch.long)
        args.k, args.grid = int(tokens.max()) + 1, list(tokens.shape[1:])
        args.num_classes = int(labels.max()) + 1 if "labels" in data else None
        perm = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(args.seed))
        tokens, labels = tokens[perm], labels[perm]
        held = (tokens[: args.n_held], labels[: args.n_held] if args.num_classes else None)
        train = (tokens[args.n_held :], labels[args.n_held :])
    else:
        rules = class_rules(args.num_classes, args.k, args.seed)
        train = synthetic_tokens(args.n_train, tuple(args.grid), args.k, rules, noise=args.noise, seed=args.seed)
        held = synthetic_tokens(args.n_held, tuple(args.grid), args.k, rules, noise=args.noise, seed=args.seed + 1)

    results = [train_one(m, args, train, held, rules) for m in args.methods]
    print(markdown(results, args))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
