"""VA-VAE's optimisation dilemma at toy scale: KL-VAE latent dim d x VF loss off/on -> reconstruction vs generation.

The claim under test (VA-VAE, arXiv 2501.01423, Fig. 1 / Table 2): at fixed generator compute a higher-dimensional
latent reconstructs better (rFID down, PSNR up) but generates worse (gFID up), and aligning the latent with a frozen
vision foundation model (VF loss) narrows that gap, doing little at small d. Here on the embedded Fashion-MNIST
subset (32 px, ``kl-vae`` f4 -> 8x8xd latents), for each ``d`` in ``--dims`` and VF off (``kl-vae``) / on
(``kl-vae-vf``: w_hyper 0.1, margins 0.5 / 0.25, adaptive weight; the offline FID-Inception stem as foundation, see
docs/methods/vavae.md), one complete ``dlbench run lightningdit`` through the real run pipeline, every config with
the **same budgets**: ``--tok-steps`` tokenizer steps and ``--gen-steps`` LightningDiT steps at the same batch size,
learning rates and seed (the generator's parameter count differs between d only by its input/output projections;
the table lists it).

Reported per config:

- tokenizer: ``rFID`` = the run's ``reconstruction`` anchor (Inception FID of the decoded cached latents of
  ``--num-eval`` held-out test images against the protocol's reference set; the cache holds posterior samples), PSNR
  of posterior-mean reconstructions of the first ``--psnr-images`` test images (uint8 round trip);
- generator: the run's FID / KID (Inception) and domain metrics (domain-classifier Frechet distance and class
  accuracy) on ``--num-eval`` samples;
- latent uniformity (VA-VAE Table 6; :mod:`dlbench_vavae.uniformity`): KDE density CV (lower = more uniform), Gini
  (lower) and normalised entropy (higher) of the normalised training latents, per channel, averaged over channels.

The protocol is ``default`` (Inception FID/KID/PR + domain metrics, 2000 reference test images) with
``evaluation.overrides.num_generated = --num-eval`` when that is below its 2000 (the protocol allows the override; it
changes the protocol hash, and FID on fewer samples is biased upward: compare rows with each other, not with other
tables). ``--max-images`` keeps the first N images of each split (the latent cache and statistics cost scales with
the training split). One process, ``torch.set_num_threads(--threads)``.

    PYTHONPATH=.:plugins nice python benchmarks/bench_vf_dilemma.py [--dims 4 16] [--seeds 0] \\
        [--tok-steps 200] [--gen-steps 300] [--num-eval 500] [--record benchmarks/results/vf_dilemma.md]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from _machine import machine_line, print_and_record  # noqa: E402


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _config(d: int, vf: bool, seed: int, args: argparse.Namespace):
    from dlbench.api import resolve

    overrides = [
        f"dataset.params.max_images={args.max_images}",
        f"tokenizer.params.latent_dim={d}", f"tokenizer.params.channels={args.tok_channels}",
        f"tokenizer.training.steps={args.tok_steps}", "tokenizer.training.batch_size=64",
        f"tokenizer.training.lr={args.tok_lr}", f"tokenizer.training.warmup_steps={max(1, args.tok_steps // 10)}",
        "tokenizer.training.ema_decay=0.0", f"tokenizer.training.checkpoint_every={10**6}",
        f"training.steps={args.gen_steps}", "training.batch_size=64", f"training.lr={args.gen_lr}",
        f"training.warmup_steps={max(1, args.gen_steps // 10)}", f"training.ema_decay={args.gen_ema}",
        f"training.checkpoint_every={10**6}",
        f"sampling.num_samples={args.num_eval}", "sampling.batch_size=250", f"sampling.steps={args.sample_steps}",
        "evaluation.protocol=default", "evaluation.curve_points=0", "evaluation.anchors=true",
        f"tokenizer.seed={seed}", f"seed={seed}", "device=cpu",
    ]
    if args.num_eval < 2000:  # the protocol's override (a different hash); KID subsets cannot exceed the samples
        overrides += [f"evaluation.overrides.num_generated={args.num_eval}",
                      f"evaluation.overrides.kid_subset_size={min(1000, args.num_eval)}"]
    return resolve("lightningdit", preset="default", tokenizer="kl-vae-vf" if vf else "kl-vae", overrides=overrides)


@torch.no_grad()
def _tokenizer_figures(cfg, args: argparse.Namespace) -> dict[str, float]:
    """PSNR of posterior-mean reconstructions of test images and the uniformity of the cached training latents."""
    from dlbench.data import load_split_tensors
    from dlbench.eval.quantize import quantize_uint8
    from dlbench.eval.tokenizer_metrics import psnr
    from dlbench.plugins import get_registry
    from dlbench.runner.common import to_float_images
    from dlbench.runner.tokenizer_stage import get_tokenizer
    from dlbench.runner.tokens import tokenize_split
    from dlbench.train.dist import DistContext
    from dlbench_vavae.uniformity import latent_uniformity

    registry = get_registry()
    ds = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    ctx = DistContext()
    tok, key, _ = get_tokenizer(cfg, registry, ds, ctx, train_if_missing=False)
    images, _ = load_split_tensors(ds, "test", limit=args.psnr_images)
    recon = torch.cat([quantize_uint8(tok.decode(tok.encode(to_float_images(images[i:i + 250]))))
                       for i in range(0, len(images), 250)])
    p = float(psnr(to_float_images(recon), to_float_images(images)).mean())
    latents, _ = tokenize_split(tok, ds, "train", key, ctx)
    return {"psnr": p, **latent_uniformity(latents.to_tensor(), max_points=args.uniformity_points, seed=0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tok-steps", type=int, default=200)
    ap.add_argument("--tok-channels", type=int, default=16, help="kl-vae base width (the preset's 32 halves)")
    ap.add_argument("--tok-lr", type=float, default=1e-3)
    ap.add_argument("--gen-steps", type=int, default=300)
    ap.add_argument("--gen-lr", type=float, default=1e-3)
    ap.add_argument("--gen-ema", type=float, default=0.99)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--num-eval", type=int, default=500, help="generated samples (and anchor images) per evaluation")
    ap.add_argument("--max-images", type=int, default=2500, help="first N images of each split")
    ap.add_argument("--psnr-images", type=int, default=1000)
    ap.add_argument("--uniformity-points", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="run directories (default: a folder under the system temp dir)")
    ap.add_argument("--record", default=None, help="write the markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dlbench.api import run

    out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"), "dlbench-vf-dilemma")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.time()
    rows, raw = [], []
    for seed in args.seeds:
        for d in args.dims:
            for vf in (False, True):
                cfg = _config(d, vf, seed, args)
                t = time.time()
                res = run(config=cfg, out=out)
                m = res.metrics or {}
                if m.get("status") != "ok":
                    raise SystemExit(f"run d={d} vf={vf} seed={seed} failed: {m.get('reason')}")
                met = m["metrics"]
                anchors = (m.get("anchors") or {}).get("rows") or {}
                rec = (anchors.get("reconstruction") or {}).get("metrics") or {}
                real = (anchors.get("real") or {}).get("metrics") or {}
                tf = _tokenizer_figures(cfg, args)
                r = {"d": d, "vf": vf, "seed": seed, "rfid": rec.get("fid"), "real_fid": real.get("fid"),
                     "psnr": tf["psnr"], "gfid": met.get("fid"), "kid": met.get("kid_mean", met.get("kid")),
                     "domain_fd": met.get("domain_fd"), "domain_acc": met.get("domain_class_acc"),
                     "cv": tf["density_cv"], "gini": tf["gini"], "entropy": tf["norm_entropy"],
                     "params": m["compute"]["params"], "s": time.time() - t}
                raw.append(r)
                rows.append(f"| {d} | {'on' if vf else 'off'} | {seed} | {_fmt(r['rfid'])} | {_fmt(r['psnr'])} | "
                            f"{_fmt(r['gfid'])} | {_fmt(r['kid'], 4)} | {_fmt(r['domain_fd'], 1)} | "
                            f"{_fmt(r['domain_acc'], 3)} | {_fmt(r['cv'], 3)} | {_fmt(r['gini'], 3)} | "
                            f"{_fmt(r['entropy'], 4)} | {r['params']} | {r['s']:.0f} |")
                print(rows[-1], flush=True)
    total = time.time() - t0

    def mean(key: str, d: int, vf: bool) -> float:
        vals = [r[key] for r in raw if r["d"] == d and r["vf"] == vf and r[key] is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    lo, hi = min(args.dims), max(args.dims)
    findings = []
    recon_better = mean("rfid", hi, False) < mean("rfid", lo, False) and mean("psnr", hi, False) > mean("psnr", lo, False)
    gen_worse = mean("gfid", hi, False) > mean("gfid", lo, False)
    findings.append(
        f"- Dilemma (VF off): d={hi} vs d={lo}: rFID {_fmt(mean('rfid', hi, False))} vs {_fmt(mean('rfid', lo, False))}, "
        f"PSNR {_fmt(mean('psnr', hi, False))} vs {_fmt(mean('psnr', lo, False))}, gFID "
        f"{_fmt(mean('gfid', hi, False))} vs {_fmt(mean('gfid', lo, False))} -> "
        + ("the dilemma appears (larger d reconstructs better on both and generates worse)." if recon_better and gen_worse
           else "the dilemma does NOT appear in full at this scale ("
           + ("larger d reconstructs better on rFID and PSNR" if recon_better else
              "larger d does not reconstruct better on both rFID and PSNR") + "; "
           + ("it generates worse" if gen_worse else "it does not generate worse") + ")."))
    for d in args.dims:
        g_off, g_on = mean("gfid", d, False), mean("gfid", d, True)
        findings.append(
            f"- VF effect at d={d}: gFID {_fmt(g_off)} (off) -> {_fmt(g_on)} (on), rFID {_fmt(mean('rfid', d, False))} -> "
            f"{_fmt(mean('rfid', d, True))}, PSNR {_fmt(mean('psnr', d, False))} -> {_fmt(mean('psnr', d, True))}, "
            f"density CV {_fmt(mean('cv', d, False), 3)} -> {_fmt(mean('cv', d, True), 3)}: VF "
            + ("lowers" if g_on < g_off else "does not lower") + " gFID here.")
    gap_off = mean("gfid", hi, False) - mean("gfid", lo, False)
    gap_on = mean("gfid", hi, True) - mean("gfid", lo, True)
    findings.append(f"- Generation gap gFID(d={hi}) - gFID(d={lo}): {_fmt(gap_off)} without VF, {_fmt(gap_on)} with VF "
                    f"-> VF {'narrows' if abs(gap_on) < abs(gap_off) else 'does not narrow'} it here.")
    n_seeds = len(args.seeds)
    findings.append(f"- {n_seeds} seed{'s' if n_seeds > 1 else ''}: "
                    + ("no interval; differences of a few FID points at this sample size are within the noise of one "
                       "run, so none of the above is a significant effect." if n_seeds == 1 else
                       "means over seeds above; see the per-seed rows for the spread."))

    cmd = (f"python benchmarks/bench_vf_dilemma.py --dims {' '.join(map(str, args.dims))} --seeds "
           f"{' '.join(map(str, args.seeds))} --tok-steps {args.tok_steps} --tok-channels {args.tok_channels} "
           f"--tok-lr {args.tok_lr:g} --gen-steps {args.gen_steps} --gen-lr {args.gen_lr:g} --gen-ema {args.gen_ema:g} "
           f"--sample-steps {args.sample_steps} --num-eval {args.num_eval} --max-images {args.max_images} "
           f"--psnr-images {args.psnr_images} --uniformity-points {args.uniformity_points} --threads {args.threads}"
           f"{f' --record {args.record}' if args.record else ''}")
    lines = [
        "# VA-VAE optimisation dilemma at toy scale (embedded Fashion-MNIST, 32 px, kl-vae f4 -> 8x8xd)", "",
        machine_line(), "",
        f"command: `{cmd}` (run with `nice`, `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}`)", "",
        f"Each row is one `dlbench run lightningdit` (preset `default`, tiny backbone) on `kl-vae` (VF off) or "
        f"`kl-vae-vf` (VF on, foundation `inception-early`), all with the same budgets: tokenizer {args.tok_steps} steps "
        f"x batch 64 (base width {args.tok_channels}, lr {args.tok_lr:g}, no EMA), LightningDiT {args.gen_steps} steps "
        f"x batch 64 (lr {args.gen_lr:g}, EMA {args.gen_ema:g}), Euler {args.sample_steps} steps, no guidance; "
        f"first {args.max_images} images of each split. Protocol `default` with num_generated = {args.num_eval} "
        f"and kid_subset_size = {min(1000, args.num_eval)} (overrides: FID on fewer samples is biased upward; compare rows with each other only). "
        f"rFID: the run's reconstruction anchor (held-out test images, cached posterior-sample latents decoded, vs the "
        f"reference set; the real held-out images score FID {_fmt(raw[0]['real_fid'])} on the same n); PSNR: "
        f"posterior-mean round trip of the first {args.psnr_images} test images. Uniformity: per-channel KDE of the "
        f"normalised training latents ({args.uniformity_points} values per channel), averaged over channels "
        "(density CV and Gini: lower = more uniform; normalised entropy: higher).",
        f"Total wall clock {total / 60:.1f} min; load average {load_start} -> "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
        "| d | VF | seed | rFID | PSNR | gFID | KID | domain FD | domain acc | density CV | Gini | norm. entropy | "
        "gen params | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "What this shows (computed from the rows above):", "", *findings, "",
    ]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
