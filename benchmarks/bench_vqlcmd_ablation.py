"""VQ-LCMD option ablation at equal compute on the embedded Fashion-MNIST tokens (picks the method's defaults).

Every variant is the candidate default (``BASE``) with one group of options changed, trained by dlbench's own
training loop (``dlbench.train.loop.train``, so the embedding learning-rate groups are the real ones) on the
tokens of a cached tokenizer, for the same compute: ``steps = round(--steps * fwd(BASE) / fwd(variant))`` where
``fwd`` is the method's ``forwards_per_step`` (forward+backward equivalents per step). Metrics, all computable
without Inception weights:

- ``class acc``: domain-classifier accuracy of class-conditional samples w.r.t. their labels (dlbench.eval.domain),
  next to the same number for decoded *real* test tokens (the ceiling this tokenizer allows);
- ``domain FD``: Frechet distance of domain-classifier features, samples vs test images;
- ``CE(t_max) - H``: cross-entropy of held-out tokens at t_max minus the predictive entropy (> 0: over-confident);
  ``noise KL``: mean KL between the t_max predictions of two noise draws (0 for a calibrated model, whose t_max
  input carries no signal); ``label MI``: mutual information between the class label and the t_max prediction
  (nats/token; how much the label changes the prediction where class, not tokens, must decide);
- ``CE(t)`` on held-out tokens at a few times;
- the embedding table: relative movement ``||E_end - E_0|| / ||E_0||``, min pairwise distance / sigma(diag_t) and
  effective rank (dlbench.eval.collapse via ``method.diagnostics()``).

One seed per variant: differences smaller than the seed-to-seed spread are not resolved (the report says so).

Usage (runs the tokenizer of ``--tokenizer-preset`` from the cache, training it if missing)::

    PYTHONPATH=.:plugins DLBENCH_CACHE=... python benchmarks/bench_vqlcmd_ablation.py --steps 300 \\
        --record benchmarks/results/vqlcmd_ablation.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _machine import machine_line, print_and_record  # noqa: E402

#: the candidate defaults every variant starts from (explicit, so the table does not move with the config)
BASE: dict = {
    "cm_zs": "same-noise", "cm_s_sampling": "uniform", "cm_step_model": "student", "dm_objective": "mse",
    "dm_weighting": "constant", "embed_lr_scale": 10.0, "normalize_embeddings": False, "rec_fraction": 0.125,
    "self_condition": False,
}
#: one group of options changed per variant (item of issue 15 in brackets)
VARIANTS: dict[str, dict] = {
    "base": {},
    "old-default": {"cm_zs": "ddim", "dm_weighting": "sigmoid", "embed_lr_scale": 1.0, "rec_fraction": 1.0},
    "cm-ddim-uniform-student": {"cm_zs": "ddim"},  # [1] the old target alone
    "cm-ddim-delta-teacher": {"cm_zs": "ddim", "cm_step_model": "teacher", "cm_s_sampling": "delta",
                              "cm_delta": 0.05},  # [1] s = t - small delta with a teacher step
    "w-sigmoid": {"dm_weighting": "sigmoid"},  # [2]
    "obj-ce": {"dm_objective": "ce"},  # [2] CDCD-style CE at all t
    "embed-lr-1": {"embed_lr_scale": 1.0},  # [3]
    "embed-normalized": {"normalize_embeddings": True},  # [3]
    "rec-full-batch": {"rec_fraction": 1.0},  # [4]
    "self-cond": {"self_condition": True},  # [4]
    "no-cm": {"w_cm": 0.0},
    # combinations of the single-factor winners (second round)
    "combo-ce-normalized": {"dm_objective": "ce", "normalize_embeddings": True},  # the CDCD/Plaid recipe
    "combo-ce-delta-teacher": {"dm_objective": "ce", "cm_zs": "ddim", "cm_step_model": "teacher",
                               "cm_s_sampling": "delta", "cm_delta": 0.05},
    "combo-lr1-delta-teacher": {"embed_lr_scale": 1.0, "cm_zs": "ddim", "cm_step_model": "teacher",
                                "cm_s_sampling": "delta", "cm_delta": 0.05},
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "no-cm" and not v.startswith("combo-")]


def setup(args):
    """Tokenizer (cached), full train/test tokens, domain classifier, reference images."""
    from dlbench.config import build_config
    from dlbench.data import load_split_tensors
    from dlbench.eval.domain import train_domain_classifier
    from dlbench.plugins import get_registry
    from dlbench.train.dist import DistContext
    from dlbench.runner.tokenizer_stage import get_tokenizer
    from dlbench.runner.tokens import tokenize_split

    reg = get_registry()
    cfg = build_config("vqlcmd", registry=reg, preset=args.tokenizer_preset, overrides=args.overrides)
    ds_tok = reg.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    ctx = DistContext()
    tokenizer, key, info = get_tokenizer(cfg, reg, ds_tok, ctx)
    full = reg.get("dataset", cfg.dataset.name).build({**cfg.dataset.params, "max_images": None})
    train_tokens, train_labels = tokenize_split(tokenizer, full, "train", key, ctx)
    test_tokens, test_labels = tokenize_split(tokenizer, full, "test", key, ctx)
    test_images, _ = load_split_tensors(full, "test", limit=args.reference)
    clf, clf_info = train_domain_classifier(full.split("train"), full.split("test"), fingerprint=full.fingerprint("train"),
                                            channels=full.channels, num_classes=full.num_classes)
    return dict(tokenizer=tokenizer, key=key, tok_info=info, train=(train_tokens, train_labels),
                test=(test_tokens, test_labels), test_images=test_images, clf=clf, clf_info=clf_info, ctx=ctx,
                num_classes=full.num_classes)


def build(params: dict, args, env):
    from dlbench.interfaces import MethodContext
    from dlbench_vqlcmd.method import VQLCMD

    ctx = MethodContext(codebook_size=env["tokenizer"].codebook_size, token_grid=tuple(env["train"][0].shape[1:]),
                        num_classes=env["num_classes"],
                        backbone={"preset": "tiny", "width": args.width, "depth": args.depth, "heads": args.heads})
    torch.manual_seed(args.seed)
    return VQLCMD(VQLCMD.Config(embed_dim=args.embed_dim, **params), context=ctx)


@torch.no_grad()
def t_max_calibration(m, tokens, labels, num_classes) -> dict:
    t = torch.full((len(tokens),), m.config.t_max)
    a, s = m.schedule.alpha_sigma(t)
    z0 = m.embedding.weight()[tokens]

    def logp(seed, y):
        eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
        return torch.log_softmax(m.denoise(a[:, None, None, None] * z0 + s[:, None, None, None] * eps, t, y), -1)

    l1, l2 = logp(11, labels), logp(12, labels)
    ce = float(-l1.gather(-1, tokens[..., None]).mean())
    ent = float(-(l1.exp() * l1).sum(-1).mean())
    noise_kl = float((l1.exp() * (l1 - l2)).sum(-1).mean())
    per_class = torch.stack([logp(11, torch.full_like(labels, c)).exp() for c in range(num_classes)])  # "c b h w k"
    mean = per_class.mean(0, keepdim=True)
    mi = float((per_class * (per_class.clamp_min(1e-12).log() - mean.clamp_min(1e-12).log())).sum(-1).mean())
    return {"ce_tmax": ce, "entropy_tmax": ent, "ce_minus_entropy": ce - ent, "noise_kl": noise_kl, "label_mi": mi}


def run_variant(name: str, args, env, base_fwd: float) -> dict:
    from dlbench.config import TrainingConfig
    from dlbench.eval.domain import domain_metrics
    from dlbench.seeding import sample_seeds
    from dlbench.train.loop import TensorBatches, train
    from dlbench.runner.sampling import decode_tokens

    params = {**BASE, **VARIANTS[name]}
    m = build(params, args, env)
    steps = max(1, round(args.steps * base_fwd / m.forwards_per_step))
    e0 = m.embedding.weight().detach().clone()
    d0 = m.diagnostics()
    cfg = TrainingConfig(steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=20, grad_clip=1.0,
                         ema_decay=0.0, log_every=10**9, checkpoint_every=10**9, diagnostics_every=10**9)
    tokens, labels = env["train"]
    t0 = time.perf_counter()
    res = train(m, lambda mod, b: mod.loss(b[0], b[1]), TensorBatches(tokens, labels, batch_size=args.batch,
                seed=args.seed), cfg, show_progress=False, seed=args.seed)
    train_s = time.perf_counter() - t0
    m.eval()
    e1 = m.embedding.weight().detach()
    d1 = m.diagnostics()
    te_tok, te_lab = env["test"][0][: args.heldout], env["test"][1][: args.heldout]
    out = {"variant": name, "params": VARIANTS[name], "steps": steps, "fwd_per_step": m.forwards_per_step,
           "train_s": train_s, "last_terms": res.last_terms,
           "embed_move": float((e1 - e0).norm() / e0.norm()),
           "min_dist_over_sigma": (d0["embed/min_pairwise_dist_over_sigma"], d1["embed/min_pairwise_dist_over_sigma"]),
           "effective_rank": (d0["embed/effective_rank"], d1["embed/effective_rank"]),
           "mean_norm": (d0["embed/mean_norm"], d1["embed/mean_norm"])}
    out.update(t_max_calibration(m, te_tok, te_lab, env["num_classes"]))
    curve = m.ce_curve(te_tok, te_lab, points=6)
    out["ce_curve"] = dict(zip([round(t, 3) for t in curve["t"]], curve["ce"]))
    t0 = time.perf_counter()
    n = args.samples
    s_lab = torch.arange(n) % env["num_classes"]
    toks = torch.cat([m.sample(s_lab[i : i + 200], sample_seeds(args.seed, range(i, min(n, i + 200))),
                               steps=args.sample_steps) for i in range(0, n, 200)])
    images = decode_tokens(env["tokenizer"], toks, torch.device("cpu"))
    out.update(domain_metrics(env["clf"], images, env["test_images"], s_lab))
    out["sample_s"] = time.perf_counter() - t0
    out["unique_tokens"] = int(toks.unique().numel())
    return out


def reference_row(args, env) -> dict:
    from dlbench.eval.domain import domain_metrics
    from dlbench.runner.sampling import decode_tokens

    toks, labs = env["test"][0][: args.samples], env["test"][1][: args.samples]
    images = decode_tokens(env["tokenizer"], toks, torch.device("cpu"))
    ref = domain_metrics(env["clf"], images, env["test_images"], labs)
    counts = torch.bincount(env["train"][0].flatten(), minlength=env["tokenizer"].codebook_size).double()
    p = counts / counts.sum()
    ref["marginal_entropy"] = float(-(p[p > 0] * p[p > 0].log()).sum())
    return ref


def collapse_study(args, env, argv, start: float) -> list[str]:
    """``csdm`` vs ``vqlcmd`` under the method params of their ``collapse`` preset (backbone and budget from the
    command line): the embedding diagnostics every ``--log-every`` steps (issue 15 item 6: does the table move?)."""
    from dlbench.config import TrainingConfig
    from dlbench.interfaces import MethodContext
    from dlbench.plugins import get_registry
    from dlbench.train.loop import TensorBatches, train

    reg = get_registry()
    lines = [
        "# Collapse-study configuration: does the embedding move? (`collapse` preset method params)",
        "",
        f"{machine_line()}; command: `python benchmarks/bench_vqlcmd_ablation.py {' '.join(argv)}`. "
        "**Contended CPU (load average above).**",
        "",
        f"Tokenizer `{env['key']}`; backbone width {args.width}, depth {args.depth}; batch {args.batch}, lr {args.lr}, "
        f"{args.steps} steps, seed {args.seed}; sigma at diag_t = 0.5 scales the distances.",
        "",
        "| method | method params (collapse preset) | step | E moved ‖E−E0‖/‖E0‖ | mean norm | min dist/σ | "
        "mean dist/σ | eff. rank | mean cos |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("csdm", "vqlcmd"):
        spec = reg.get("method", name)
        params = dict(spec.factory.presets["collapse"]["method"]["params"])
        ctx = MethodContext(codebook_size=env["tokenizer"].codebook_size,
                            token_grid=tuple(env["train"][0].shape[1:]), num_classes=env["num_classes"],
                            backbone={"preset": "tiny", "width": args.width, "depth": args.depth, "heads": args.heads})
        torch.manual_seed(args.seed)
        m = spec.build(params, context=ctx)
        e0 = m.embedding.weight().detach().clone()
        rows: list[tuple[int, dict, float]] = [(0, m.diagnostics(), 0.0)]

        def events(kind, **fields):
            if kind == "diagnostics":
                e = m.embedding.weight().detach()
                rows.append((fields["step"], fields, float((e - e0).norm() / e0.norm())))

        cfg = TrainingConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=20, grad_clip=1.0,
                             ema_decay=0.0, log_every=10**9, checkpoint_every=10**9, diagnostics_every=args.log_every)
        tokens, labels = env["train"]
        train(m, lambda mod, b: mod.loss(b[0], b[1]), TensorBatches(tokens, labels, batch_size=args.batch,
              seed=args.seed), cfg, show_progress=False, seed=args.seed, events=events, diagnostics=m.diagnostics)
        shown = {k: params[k] for k in ("embed_lr_scale", "dm_objective", "dm_weighting", "normalize_embeddings")}
        for step, d, moved in rows:
            lines.append(
                f"| {name} | {json.dumps(shown) if step == 0 else ''} | {step} | {moved:.3f} | "
                f"{d['embed/mean_norm']:.3f} | {d['embed/min_pairwise_dist_over_sigma']:.3f} | "
                f"{d['embed/mean_pairwise_dist_over_sigma']:.3f} | {d['embed/effective_rank']:.2f} | "
                f"{d['embed/mean_cosine']:.3f} |")
        print("\n".join(lines[-len(rows):]), file=sys.stderr, flush=True)
    lines += ["", f"wall-clock {time.time() - start:.0f} s (contended)."]
    return lines


def weight_mass_rows(shift: float) -> list[str]:
    from dlbench.schedules.continuous import ShiftedCosineSchedule
    from dlbench_vqlcmd.weighting import weight_mass

    sch = ShiftedCosineSchedule(ShiftedCosineSchedule.Config(shift=shift, t_min=1e-3, t_max=0.999))
    edges = [1e-3, 0.05, 0.34, 0.999]
    rows = []
    for w in ("sigmoid", "elbo", "constant"):
        f = weight_mass(sch, w, edges)
        rows.append(f"| {w} | " + " | ".join(f"{100 * x:.1f} %" for x in f) + " |")
    return rows


def report(results: list[dict], ref: dict, args, env, wall: float, argv) -> list[str]:
    lines = [
        "# VQ-LCMD options at equal compute (embedded Fashion-MNIST tokens)",
        "",
        f"{machine_line()}; command: `python benchmarks/bench_vqlcmd_ablation.py {' '.join(argv)}`; "
        f"wall-clock {wall:.0f} s. **The CPU was shared with other jobs (load average above): times are "
        "contended and only comparable within this table.**",
        "",
        f"Tokenizer `{env['key']}` (preset `{args.tokenizer_preset}` {' '.join(args.overrides)}, K = {env['tokenizer'].codebook_size}, "
        f"{tuple(env['train'][0].shape[1:])} grids, {len(env['train'][0])} train grids); domain classifier test "
        f"accuracy {env['clf_info'].get('test_accuracy')}. Backbone width {args.width}, depth {args.depth}, "
        f"d = {args.embed_dim}, batch {args.batch}, lr {args.lr} (embedding x `embed_lr_scale`), seed {args.seed}, "
        f"live weights (no EMA); budget {args.steps} steps of `base`, other variants the same forward+backward "
        f"equivalents. Samples: {args.samples} class-balanced, {args.sample_steps} DDIM steps, guidance 1; "
        f"held-out: {args.heldout} test grids.",
        "",
        f"`base` = {json.dumps(BASE)}; each other row changes only the listed options.",
        "",
        f"Reference (decoded *real* test tokens, the tokenizer's ceiling): class acc {ref['domain_class_acc']:.3f}, "
        f"domain FD {ref['domain_fd']:.1f}; token marginal entropy (train) {ref['marginal_entropy']:.3f} nats, "
        f"log K = {math.log(env['tokenizer'].codebook_size):.3f}.",
        "",
        "| variant | changed | steps | fwd/step | class acc ↑ | domain FD ↓ | CE(t_max) | CE − H at t_max | "
        "noise KL | label MI | E moved | min dist/σ (0 → end) | eff. rank (0 → end) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {json.dumps(r['params']) if r['params'] else '—'} | {r['steps']} | "
            f"{r['fwd_per_step']:.3f} | {r['domain_class_acc']:.3f} | {r['domain_fd']:.1f} | {r['ce_tmax']:.3f} | "
            f"{r['ce_minus_entropy']:+.3f} | {r['noise_kl']:.3f} | {r['label_mi']:.4f} | {r['embed_move']:.3f} | "
            f"{r['min_dist_over_sigma'][0]:.2f} → {r['min_dist_over_sigma'][1]:.2f} | "
            f"{r['effective_rank'][0]:.1f} → {r['effective_rank'][1]:.1f} | {r['train_s']:.0f} |")
    if results:
        ts = list(results[0]["ce_curve"])
        lines += ["", "CE(t) on held-out tokens (nats/token):", "",
                  "| variant | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for r in results:
            lines.append(f"| {r['variant']} | " + " | ".join(f"{r['ce_curve'][t]:.3f}" for t in ts) + " |")
    lines += ["", f"Share of the L_DM time-weight mass by t range (shifted cosine s = {args.shift:g}, t ~ U, "
              "computed by `weighting.weight_mass`):", "",
              "| weighting | t < 0.05 | 0.05 ≤ t < 0.34 | t ≥ 0.34 |", "|---|---|---|---|",
              *weight_mass_rows(args.shift)]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=300, help="training steps of `base`; others get equal compute")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--shift", type=float, default=-2.0, help="only for the weight-mass table (the method's default)")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--reference", type=int, default=1000, help="test images for domain FD")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: far faster on a shared CPU)")
    ap.add_argument("--tokenizer-preset", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="run-config override for the tokenizer, e.g. tokenizer.training.steps=300")
    ap.add_argument("--collapse-study", action="store_true",
                    help="instead of the ablation: csdm vs vqlcmd under their `collapse` preset's method params")
    ap.add_argument("--log-every", type=int, default=100, help="--collapse-study: diagnostics interval (steps)")
    ap.add_argument("--json", default=None, help="append each variant's result here as it finishes")
    ap.add_argument("--record", default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--json" in argv:  # a side log of this machine: not part of the recorded command
        i = argv.index("--json")
        argv = argv[:i] + argv[i + 2:]
    torch.set_num_threads(args.threads)
    start = time.time()
    env = setup(args)
    if args.collapse_study:
        print_and_record(collapse_study(args, env, argv, start), args.record)
        return 0
    ref = reference_row(args, env)
    base_fwd = build(BASE, args, env).forwards_per_step
    results = []
    for name in args.variants:
        r = run_variant(name, args, env, base_fwd)
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(r) + "\n")
    print_and_record(report(results, ref, args, env, time.time() - start, argv), args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
