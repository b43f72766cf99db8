"""dlbench VQGAN vs the default conv VQ-VAE on the embedded Fashion-MNIST subset, at equal training time.

Both tokenizers keep the embedded preset's token grid and codebook (32x32 -> 8x8 tokens, K = 256,
d = 32). They train through the real loop (``dlbench.train.loop.train``), with the same batches and seed:

- the VQ-VAE runs the default preset's budget (``--steps``, 1500 at batch 64, lr 1e-3), and its wall clock is
  measured;
- the VQGAN (f4, ``ch_mult=[1,2,2]``, L1 + LPIPS + PatchGAN with the adaptive weight) gets the **same
  wall-clock budget** (``budget_minutes``), whatever number of steps that buys.

Both are then scored on ``--eval-images`` test images with :func:`dlbench.eval.api.evaluate_tokenizer`:
PSNR, SSIM, codebook usage, reconstruction FID (``rfid``, Inception, under ``--protocol``) and the
domain classifier's reconstruction distance. LPIPS needs torchvision's VGG16 weights: pass ``--vgg PATH``
(or have them in torch hub's cache). Without them the VQGAN row trains with ``perceptual_weight=0``, and
the report says so.

    PYTHONPATH=.:plugins python benchmarks/bench_tokenizers.py [--steps 1500] [--eval-images 1000] \\
        [--vgg vgg16-397923af.pth] [--record benchmarks/results/tokenizers.md]
"""

from __future__ import annotations

import argparse
import time

import torch

from _machine import machine_line, print_and_record  # noqa: E402

from dlbench.config import TrainingConfig
from dlbench.data.embedded import EmbeddedConfig, FashionMNISTSmall
from dlbench.data.base import load_split_tensors
from dlbench.eval.api import evaluate_tokenizer
from dlbench.eval.protocol import resolve_protocol
from dlbench.nn.vqgan import VQGAN, VQGANConfig
from dlbench.nn.vqvae import VQVAE, VQVAEConfig
from dlbench.train.loop import TensorBatches, train

VQGAN_EMBEDDED = dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=32, codebook_size=256, code_dim=32,
                      disc_channels=32, disc_layers=2, disc_start=500, restart_every=250)


def _train(tok, images, cfg: TrainingConfig, seed: int):
    start = time.perf_counter()
    prepare = getattr(tok, "prepare_training", None)
    if callable(prepare):
        prepare()
    result = train(tok, lambda m, b: m.training_loss(b[0].float() / 127.5 - 1.0),
                   TensorBatches(images, batch_size=cfg.batch_size, seed=seed), cfg, seed=seed, show_progress=False)
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500, help="VQ-VAE steps (the default preset's budget)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--protocol", default="default", help="evaluation protocol of the rFID")
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
    rows = []

    torch.manual_seed(args.seed)
    vqvae = VQVAE(VQVAEConfig(), channels=1, resolution=32)
    base = dict(batch_size=args.batch_size, lr=1e-3, warmup_steps=100, ema_decay=0.0, grad_clip=None,
                log_every=100, checkpoint_every=10**9)
    res_a, secs_a = _train(vqvae, images, TrainingConfig(steps=args.steps, **base), args.seed)

    perceptual = 1.0
    try:
        from dlbench.nn.lpips import build_lpips

        build_lpips(args.vgg)
    except Exception as exc:  # noqa: BLE001 - reported in the table, never silent
        perceptual, why = 0.0, str(exc).split(";")[0]
    torch.manual_seed(args.seed)
    vqgan = VQGAN(VQGANConfig(**VQGAN_EMBEDDED, perceptual_weight=perceptual, lpips_vgg_weights=args.vgg),
                  channels=1, resolution=32)
    gan_cfg = TrainingConfig(steps=10**9, budget_minutes=secs_a / 60, betas=(0.5, 0.9), **{**base, "lr": 2.88e-4})
    res_b, secs_b = _train(vqgan, images, gan_cfg, args.seed)

    if protocol.domain_metrics:  # evaluate_tokenizer runs under no_grad: train (and cache) the classifier first
        from dlbench.eval.domain import train_domain_classifier

        train_domain_classifier(ds.split("train"), ds.split("test"), fingerprint=ds.fingerprint("train"),
                                channels=ds.channels, num_classes=ds.num_classes)
    for name, tok, res, secs in (("vqvae (default preset)", vqvae, res_a, secs_a), ("vqgan", vqgan, res_b, secs_b)):
        ev = evaluate_tokenizer(tok, ds, "test", protocol, num_images=args.eval_images)
        m = ev["metrics"]
        rows.append(f"| {name} | {res.step} | {secs:.0f} | {m.get('rfid', float('nan')):.2f} | {m['psnr']:.2f} | "
                    f"{m['ssim']:.3f} | {m.get('codebook_usage', float('nan')):.1f} | {m.get('domain_rfd', float('nan')):.2f} |")
    lines = ["# Tokenizers at equal training time (embedded Fashion-MNIST, 8x8 tokens, K = 256)", "",
             machine_line(), "",
             f"command: `python benchmarks/bench_tokenizers.py --steps {args.steps} --eval-images {args.eval_images} "
             f"--protocol {args.protocol}{' --vgg VGG16' if args.vgg else ''}`", "",
             "| tokenizer | steps | train s | rFID | PSNR | SSIM | codes used % | domain rFD |",
             "|---|---|---|---|---|---|---|---|", *rows, ""]
    if perceptual == 0.0:
        lines.append(f"The VQGAN trained WITHOUT its LPIPS term (perceptual_weight=0): {why}.")
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
