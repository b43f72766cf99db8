"""dlbench VQGAN vs the default conv VQ-VAE on the embedded Fashion-MNIST subset, at equal training time.

Both tokenizers keep the embedded preset's token grid and codebook (32x32 -> 8x8 tokens, K = 256,
d = 32). They train in one process through the real loop (``dlbench.train.loop.train``) with the
pipeline's image scaling, the same batches and seed, and the default preset's tokenizer optimisation
(``TokenizerRef().training``: batch 64, lr 1e-3, 100 warm-up steps, fp32, no EMA, no clipping):

- the VQ-VAE (``VQVAEConfig()``, the embedded default) runs ``--steps`` steps (default 1500, the default
  preset's budget); its training-loop wall clock is measured;
- the VQGAN (f4, ``ch_mult=[1,2,2]``, one attention block at 8x8, L1 + LPIPS + PatchGAN with the
  adaptive weight) then gets **that measured wall clock as its budget**
  (``budget_minutes``), whatever number of steps it buys; ``--disc-start`` sets the discriminator's start
  step so that a shortened budget still trains with the adversarial term. Its optimiser is taming-transformers'
  (Adam betas (0.5, 0.9), lr 4.5e-6 x batch 64 = 2.88e-4).

Time is matched by wall clock measured in this process. So that both see the same machine load (a
shared machine's load drifts), they train interleaved in ``--slice-minutes`` slices, each resumed from
the previous slice's checkpoint (the loop's exact resume: same batches, RNG, optimizer state): the
VQ-VAE trains one slice, then the VQGAN trains until its own training clock reaches the VQ-VAE's, and
so on until the VQ-VAE's budget is spent. Checkpoint I/O between slices is not counted as training time.
The load average before and after is recorded next to the numbers.

Both are then scored on the first ``--eval-images`` test images with
:func:`dlbench.eval.api.evaluate_tokenizer`: PSNR, SSIM, codebook usage, reconstruction FID (``rfid``:
Inception FID of the reconstructions against their own originals, under ``--protocol``) and the domain
classifier's reconstruction distance. LPIPS needs torchvision's VGG16 weights (``--vgg PATH`` or torch
hub's cache); without them the VQGAN is refused unless ``--perceptual-weight 0`` is passed, and then the
report says that it trained without the perceptual term.

    PYTHONPATH=.:plugins python benchmarks/bench_tokenizers.py [--steps 1500] [--eval-images 1000] \\
        [--perceptual-weight 0 | --vgg vgg16-397923af.pth] [--record benchmarks/results/tokenizers.md]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch

from _machine import machine_line, print_and_record  # noqa: E402

from dlbench.config import TokenizerRef
from dlbench.data.base import load_split_tensors
from dlbench.data.embedded import EmbeddedConfig, FashionMNISTSmall
from dlbench.eval.api import evaluate_tokenizer
from dlbench.eval.protocol import resolve_protocol
from dlbench.nn.vqgan import VQGAN, VQGANConfig
from dlbench.nn.vqvae import VQVAE, VQVAEConfig
from dlbench.train.loop import TensorBatches, train
from dlbench.runner.common import to_float_images

VQGAN_EMBEDDED = dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=32, codebook_size=256, code_dim=32,
                      disc_channels=32, disc_layers=2, disc_start=500, restart_every=250)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _train_slice(tok, images, cfg, seed: int, folder: Path):
    """Continue ``tok``'s training from its last checkpoint in ``folder`` up to ``cfg``'s budget."""
    return train(tok, lambda m, b: m.training_loss(to_float_images(b[0])),
                 TensorBatches(images, batch_size=cfg.batch_size, seed=seed), cfg, seed=seed, show_progress=False,
                 checkpoint_dir=folder, resume=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500, help="VQ-VAE steps (the default preset's budget)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="cap on the VQ-VAE's training clock (the VQGAN gets what the VQ-VAE used)")
    ap.add_argument("--slice-minutes", type=float, default=1.0, help="interleaving period of the two trainings")
    ap.add_argument("--disc-start", type=int, default=VQGAN_EMBEDDED["disc_start"],
                    help="VQGAN step at which the discriminator switches on")
    ap.add_argument("--restart-every", type=int, default=VQGAN_EMBEDDED["restart_every"],
                    help="VQGAN dead-code restart period in steps (the VQ-VAE keeps its default, 250)")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--protocol", default="default", help="evaluation protocol of the rFID")
    ap.add_argument("--perceptual-weight", type=float, default=1.0,
                    help="VQGAN LPIPS weight; 0 trains without VGG16 weights (else they must be present)")
    ap.add_argument("--vgg", default=None, help="torchvision VGG16 weights for the VQGAN's LPIPS term")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--record", default=None, help="write the markdown report here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = FashionMNISTSmall(EmbeddedConfig())
    images, _ = load_split_tensors(ds, "train")
    protocol = resolve_protocol(args.protocol)
    default_training = TokenizerRef().training  # the embedded default tokenizer's optimisation
    vqgan_cfg = VQGANConfig(**{**VQGAN_EMBEDDED, "disc_start": args.disc_start, "restart_every": args.restart_every},
                            perceptual_weight=args.perceptual_weight, lpips_vgg_weights=args.vgg)

    torch.manual_seed(args.seed)
    vqvae = VQVAE(VQVAEConfig(), channels=ds.channels, resolution=ds.resolution)
    torch.manual_seed(args.seed)
    vqgan = VQGAN(vqgan_cfg, channels=ds.channels, resolution=ds.resolution)
    vqgan.prepare_training()  # refuse a missing LPIPS before spending the VQ-VAE's budget

    cfg_a = default_training.model_copy(update={"steps": args.steps, "log_every": 100, "checkpoint_every": 10**9})
    cfg_b = default_training.model_copy(update={"steps": 10**9, "betas": (0.5, 0.9), "lr": 2.88e-4,
                                                "log_every": 100, "checkpoint_every": 10**9})
    cap = args.budget_minutes if args.budget_minutes is not None else math.inf
    load_start, slices = _load(), 0
    with tempfile.TemporaryDirectory(prefix="bench-tokenizers-") as tmp:
        res_a = res_b = None
        while res_a is None or (res_a.stopped_by == "minutes" and res_a.elapsed_s / 60 < cap):
            spent = res_a.elapsed_s / 60 if res_a is not None else 0.0
            res_a = _train_slice(vqvae, images, cfg_a.model_copy(update={
                "budget_minutes": min(cap, spent + args.slice_minutes)}), args.seed, Path(tmp, "vqvae"))
            res_b = _train_slice(vqgan, images, cfg_b.model_copy(update={"budget_minutes": res_a.elapsed_s / 60}),
                                 args.seed, Path(tmp, "vqgan"))
            slices += 1
            print(f"slice {slices}: vqvae step {res_a.step} ({res_a.elapsed_s:.0f} s), "
                  f"vqgan step {res_b.step} ({res_b.elapsed_s:.0f} s)", flush=True)
    load = f"{load_start} -> {_load()}"

    rows = []
    for name, tok, res in (("vqvae (embedded default)", vqvae, res_a), ("vqgan", vqgan, res_b)):
        ev = evaluate_tokenizer(tok, ds, "test", protocol, num_images=args.eval_images)
        m = ev["metrics"]
        params = sum(p.numel() for n, p in tok.named_parameters() if not n.startswith("discriminator."))
        rows.append(f"| {name} | {params / 1e6:.2f} M | {res.step} | {res.elapsed_s:.0f} | {res.stopped_by} | "
                    f"{m.get('rfid', float('nan')):.2f} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                    f"{m.get('codebook_usage', float('nan')):.1f} | {m.get('codebook_perplexity', float('nan')):.1f} | "
                    f"{m.get('domain_rfd', float('nan')):.2f} |")
        print(rows[-1], flush=True)
    budget = f" --budget-minutes {args.budget_minutes:g}" if args.budget_minutes is not None else ""
    cmd = (f"python benchmarks/bench_tokenizers.py --steps {args.steps}{budget} --slice-minutes {args.slice_minutes:g} "
           f"--disc-start {args.disc_start} --restart-every {args.restart_every} --eval-images {args.eval_images} "
           f"--protocol {args.protocol} --perceptual-weight {args.perceptual_weight:g}"
           f"{' --vgg VGG16' if args.vgg else ''}{f' --threads {args.threads}' if args.threads else ''}"
           f"{f' --record {args.record}' if args.record else ''}")
    lines = ["# Tokenizers at equal training time (embedded Fashion-MNIST, 32 px, 8x8 tokens, K = 256)", "",
             machine_line(), "",
             f"command: `{cmd}`", "",
             "Time matching: the VQ-VAE trains the given steps (or budget); the VQGAN gets the VQ-VAE's measured "
             f"training-loop wall clock as `budget_minutes`; both in this process, interleaved in {slices} slices of "
             f"<= {args.slice_minutes:g} min so that both see the same machine load (load average {load} over the "
             "training).",
             f"Metrics on the first {args.eval_images} test images, protocol `{args.protocol}` "
             f"(rFID: Inception FID of reconstructions vs their originals, {protocol.precision}).", "",
             "| tokenizer | params (no disc) | steps | train s | stopped by | rFID | PSNR | SSIM | codes used % | "
             "perplexity | domain rFD |",
             "|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if args.perceptual_weight == 0:
        lines.append("The VQGAN trained WITHOUT its perceptual (LPIPS) term: `--perceptual-weight 0` was set "
                     "explicitly (no VGG16 weights on this machine); its loss is L1 + codebook/commitment + "
                     "PatchGAN hinge with the adaptive weight.")
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
