"""Plain VQ vs Reg-VQ tokenizers on the embedded Fashion-MNIST subset (METHODS.md "Minimal C").

Trains each variant with the same budget (steps, batch, optimiser, architecture, K = 512, d = 32,
f4: 32x32 -> 8x8 tokens) and reports, on held-out test images:

- codebook usage (% codes used), perplexity exp(H), dead codes, near-zero-norm codes (collapse);
- PSNR / SSIM (``dlbench.eval.tokenizer_metrics``);
- reconstruction **domain FD** (Frechet distance of reconstructions vs originals in the features of
  dlbench's Fashion-MNIST domain classifier, ``dlbench.eval.domain``) -- not Inception FID, which runs
  at ~10 img/s on this CPU.

Variants, in the paper's ablation order: ``regvq-<row>`` is ``tokenizer/regvq`` with the regularizers of
``dlbench_regvq.tokenizer.ABLATION_ROWS[<row>]`` attached as a run's ``tokenizer.regularizers`` are
(``regvq-vq`` is plain VQ, the same objective and architecture as ``tokenizer/vqvae``, tested; ``regvq`` is
the full row), and ``vq`` (``tokenizer/vqvae`` itself). ``--logits`` sets ``RegVQConfig.logits`` (``adaptive`` default, ``fixed`` = the old
``logit_scale = 1`` behaviour). One variant per process with ``--threads 1`` lets two run side by side::

    PYTHONPATH=.:plugins python benchmarks/bench_regvq_tokenizer.py [--steps 1500] [--variants regvq-vq,regvq] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from dlbench.data.embedded import EmbeddedConfig, FashionMNISTSmall
from dlbench.eval.domain import domain_metrics, stack_split, train_domain_classifier
from dlbench.eval.quantize import quantize_uint8 as to_u8  # the protocol's rounding rule
from dlbench.eval.tokenizer_metrics import TokenizerMetricsAccumulator
from dlbench.nn.vqvae import VQVAE, VQVAEConfig
from dlbench.plugins import get_registry
from dlbench.registry import attach_regularizers
from dlbench_regvq.tokenizer import ABLATION_ROWS, RegVQConfig, RegVQTokenizer

ARCH = dict(codebook_size=512, code_dim=32, channels=32, res_blocks=1, recon_loss="l1")
ORDER = ["vq", "regvq-vq", "regvq-prior", "regvq-prior-mask", "regvq-prior-mask-cl", "regvq", "regvq-gumbel"]


def build(name: str, steps: int, logits: str = "adaptive", entropy_weight: float | None = None) -> torch.nn.Module:
    if name == "vq":
        return VQVAE(VQVAEConfig(**ARCH), channels=1, resolution=32)
    row = "regvq" if name == "regvq" else name.removeprefix("regvq-")
    tweaks = {
        "stochastic-mask": {"tau_anneal_steps": steps},
        "prior-kl": {} if entropy_weight is None else {"entropy_weight": entropy_weight},
        # 32 px stem input (15/13/4 px maps) keeps the frozen-feature pass cheap on a 2-core CPU
        "probabilistic-contrastive": {"num_patches": 32, "extractor_params": {"resize": 32}},
    }
    regs = [{"name": r["name"], "params": {**r.get("params", {}), **tweaks[r["name"]]}} for r in ABLATION_ROWS[row]]
    tok = RegVQTokenizer(RegVQConfig(**ARCH, logits=logits), channels=1, resolution=32)
    attach_regularizers(get_registry(), tok, regs)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--variants", default="regvq-vq,regvq-prior,regvq-prior-mask,regvq-prior-mask-cl,regvq")
    ap.add_argument("--logits", default="adaptive", help="RegVQConfig.logits for the regvq-* variants")
    ap.add_argument("--json", default="", help="also write the JSON summary to this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--prior-entropy-weight", type=float, default=None,
                    help="override prior.entropy_weight; name variants e.g. regvq-prior@ent1 to keep rows apart")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = FashionMNISTSmall(EmbeddedConfig())
    xtr_u8, _ = stack_split(ds.split("train"))
    xte_u8, _ = stack_split(ds.split("test"), args.eval_images)
    xtr = xtr_u8.float() / 127.5 - 1 if xtr_u8.dtype == torch.uint8 else xtr_u8
    xte = xte_u8.float() / 127.5 - 1 if xte_u8.dtype == torch.uint8 else xte_u8
    ref_u8 = xte_u8 if xte_u8.dtype == torch.uint8 else to_u8(xte_u8)

    t0 = time.perf_counter()
    clf, clf_info = train_domain_classifier(
        ds.split("train"), ds.split("test"), fingerprint=ds.fingerprint("train"), channels=1, num_classes=10
    )
    print(f"domain classifier: test acc {clf_info['test_accuracy']:.3f} ({time.perf_counter() - t0:.0f}s incl. cache)")

    results = {}
    names = [n for n in ORDER if n in args.variants.split(",")] + [
        n for n in args.variants.split(",") if n not in ORDER
    ]
    for name in names:
        torch.manual_seed(args.seed)
        tok = build(name.split("@")[0], args.steps, args.logits, args.prior_entropy_weight).train()
        opt = torch.optim.Adam(tok.parameters(), lr=args.lr)
        g = torch.Generator().manual_seed(args.seed)  # same batches for every variant
        t0 = time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(0, len(xtr), (args.batch_size,), generator=g)
            loss, terms = tok.training_loss(xtr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % args.log_every == 0:
                print(f"  {name} step {step + 1}/{args.steps} loss {float(loss.detach()):.4f} "
                      f"ppl {float(terms['perplexity']):.1f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        train_s = time.perf_counter() - t0
        tok.eval()
        acc = TokenizerMetricsAccumulator(tok.codebook_size)
        recons = []
        with torch.no_grad():
            for i in range(0, len(xte), 250):
                x = xte[i : i + 250]
                codes = tok.encode(x)
                rec = tok.decode(codes)
                acc.update(x, rec, codes)
                recons.append(to_u8(rec))
        m = acc.compute()
        m.update(domain_metrics(clf, torch.cat(recons), ref_u8))
        norms = tok.codebook().norm(dim=1)
        m["near_zero_norm_codes"] = float((norms < 0.1 * norms.median().clamp_min(1e-12)).sum())
        m["train_seconds"] = train_s
        m["ms_per_step"] = 1000 * train_s / args.steps
        m["final_loss_terms"] = {k: round(float(v), 4) for k, v in terms.items()}
        src = getattr(getattr(tok, "contrastive_reg", None), "source", None)
        if src:
            m["contrastive_features"] = src
        results[name] = m
        print(
            f"{name:22s} usage {m['codebook_usage']:5.1f}%  ppl {m['codebook_perplexity']:6.1f}  dead {m['dead_codes']:4.0f}"
            f"  psnr {m['psnr']:5.2f}  ssim {m['ssim']:.3f}  domainFD {m['domain_fd']:7.2f}  ({train_s:.0f}s)",
            flush=True,
        )
    summary = {"args": vars(args), "arch": ARCH, "torch": torch.__version__, "machine": platform.machine(),
               "processor": platform.processor(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "domain_classifier_test_acc": clf_info["test_accuracy"], "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
