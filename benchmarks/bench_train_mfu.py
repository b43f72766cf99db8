"""Achieved FLOP/s of a full method train step and of a sampling call, vs this process's matmul rate.

For the default backbone (``tiny``: width 128, depth 4, 4 heads) and a width-256 depth-8 model (8 heads),
at batch 64 over 8x8 tokens (codebook 256, 10 classes), for VQ-Diffusion and VQ-LCMD (their default
configs), in fp32 and bf16 autocast:

- **train step**: the real training loop (``dlbench.train.loop.train``: forward, backward, grad clip,
  AdamW, EMA, the method's own per-step hook), timed per step as the difference between a run of
  ``warmup + --steps`` steps and one of ``warmup`` steps (the loop's one-off setup cancels);
- **sampling**: ``method.sample`` of 64 samples with ``--sample-steps`` steps, under autocast in bf16.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, linear layers and
``scaled_dot_product_attention``, forward and backward; elementwise ops are not counted) on one step /
one sampling call. Its table lacks the CPU flash-attention kernel
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward); they are registered here with
torch's own SDPA formulas. The reference rate is a 2048x2048 matmul in the same process and dtype. Each figure
is the median over ``--rounds`` interleaved rounds (fp32 and bf16 alternate), since the cores are shared.

**Shape-matched GEMM ceiling.** A 2048x2048 matmul is not what a width-128 model at 64 x 64 positions
multiplies. Every matmul-family call of one train step (``mm``, ``addmm``, ``bmm``, ``baddbmm``, the CPU SDPA
kernels, forward and backward, with autocast's dtypes) is recorded with a dispatch mode and replayed alone, on
fresh tensors of the same shapes, strides and dtypes: the rate of that replay is the most any implementation of
this step could reach with these kernels and no elementwise work at all. The table gives it as a share of the
2048x2048 rate, and the step's own rate as a share of it (what the elementwise work, the optimizer, the EMA and
Python overhead cost).

    PYTHONPATH=.:plugins python benchmarks/bench_train_mfu.py [--record benchmarks/results/train_mfu.md]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _machine import machine_line, print_and_record  # noqa: E402

from dlbench.config import TrainingConfig
from dlbench.interfaces import MethodContext
from dlbench.plugins import get_registry
from dlbench.train.dist import cpu_has_native_bf16, resolve_precision
from dlbench.train.loop import TensorBatches, train

MODELS = {
    "default (tiny w128 d4 h4)": {"preset": "tiny"},
    "w256 d8 h8": {"preset": "tiny", "width": 256, "depth": 8, "heads": 8},
}
METHODS = ("vq-diffusion", "vqlcmd")
GRID, K, CLASSES = (8, 8), 256, 10


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """GFLOP/s of an ``n x n`` matmul (best of ``reps``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def build(method: str, backbone: dict):
    torch.manual_seed(0)
    spec = get_registry().get("method", method)
    ctx = MethodContext(codebook_size=K, token_grid=GRID, num_classes=CLASSES, backbone=backbone)
    return spec.build({}, context=ctx)


def _loss(model, batch):
    return model.loss(batch[0], batch[1])


def _data(batch: int):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, K, (batch * 8, *GRID), generator=g), torch.randint(0, CLASSES, (batch * 8,), generator=g)


def _register_cpu_sdpa() -> None:
    """Count the CPU SDPA kernels with torch's own SDPA formulas (absent from FlopCounterMode's table)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    pairs = (("_scaled_dot_product_flash_attention_for_cpu", aten._scaled_dot_product_flash_attention),
             ("_scaled_dot_product_flash_attention_for_cpu_backward", aten._scaled_dot_product_flash_attention_backward))
    for name, like in pairs:
        op = getattr(aten, name, None)
        if op is not None and op not in fc.flop_registry:
            fc.flop_registry[op] = fc.flop_registry[like]


def count_train_flops(method, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    tokens, labels = (t[:batch] for t in _data(batch))
    method.train()
    with FlopCounterMode(display=False) as fc:
        loss, _ = method.loss(tokens, labels)
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def count_sample_flops(method, n: int, steps: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    method.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        method.sample(torch.arange(n) % CLASSES, torch.arange(n), num_samples=n, steps=steps)
    return float(fc.get_total_flops())


_GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention_for_cpu_backward")


def record_gemms(method, precision: str, batch: int) -> list[tuple]:
    """The matmul-family calls of one forward+backward of ``method.loss`` as ``(op, args)`` with tensors
    replaced by ``(shape, stride, dtype)`` (autocast applied, as in training)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {getattr(torch.ops.aten, n).default for n in _GEMM_OPS if hasattr(torch.ops.aten, n)}
    calls: list[tuple] = []

    def meta(x):
        return ("T", tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in ops:
                calls.append((func, tuple(meta(a) for a in args), {k: meta(v) for k, v in kwargs.items()}))
            return func(*args, **kwargs)

    tokens, labels = (t[:batch] for t in _data(batch))
    method.train()
    with Recorder(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, _ = method.loss(tokens, labels)
        loss.backward()
    method.zero_grad(set_to_none=True)
    return calls


def gemm_ceiling(calls: list[tuple], reps: int = 3) -> tuple[float, float]:
    """``(flops, seconds)`` of replaying ``calls`` alone on fresh random tensors (best of ``reps``)."""
    from torch.utils.flop_counter import FlopCounterMode

    def make(m):
        if isinstance(m, tuple) and len(m) == 4 and m[0] == "T":
            _, shape, stride, dtype = m
            t = torch.empty_strided(shape, stride, dtype=dtype)
            return t.normal_() if dtype.is_floating_point else t.zero_()
        return m

    replay = [(f, tuple(make(a) for a in args), {k: make(v) for k, v in kw.items()}) for f, args, kw in calls]
    with FlopCounterMode(display=False) as fc:
        for f, args, kw in replay:
            f(*args, **kw)
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps):
            t = time.perf_counter()
            for f, args, kw in replay:
                f(*args, **kw)
            best = min(best, time.perf_counter() - t)
    return float(fc.get_total_flops()), best


def _best_ms(fn, reps: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def attention_table() -> list[str]:
    """ms per forward+backward of one attention call at the two models' shapes (b=64, n=64, e=32), torch's SDPA
    vs dlbench's explicit CPU form (``dlbench.nn.attention``), fp32 and bf16."""
    import os

    from dlbench.nn.attention import attend

    lines = ["| heads | dtype | SDPA ms | explicit ms | explicit speed-up |", "|---|---|---|---|---|"]
    before = os.environ.get("DLBENCH_ATTENTION")
    try:
        for h in (4, 8):
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = (torch.randn(64, h, 64, 32, dtype=dtype, requires_grad=True) for _ in range(3))
                g = torch.randn(64, h, 64, 32, dtype=dtype)
                ms = {}
                for kernel in ("sdpa", "explicit"):
                    os.environ["DLBENCH_ATTENTION"] = kernel
                    ms[kernel] = _best_ms(lambda: attend(q, k, v).backward(g))
                lines.append(f"| {h} | {str(dtype).replace('torch.', '')} | {ms['sdpa']:.2f} | {ms['explicit']:.2f} | "
                             f"{ms['sdpa'] / ms['explicit']:.2f}x |")
    finally:
        if before is None:
            os.environ.pop("DLBENCH_ATTENTION", None)
        else:
            os.environ["DLBENCH_ATTENTION"] = before
    return lines


def optimizer_table() -> list[str]:
    """ms per AdamW step over each model's parameters: torch's CPU default (per-parameter loop) vs fused (what
    ``dlbench.train.loop.make_optimizer`` uses)."""
    lines = ["| model | params | AdamW default ms | AdamW fused ms | fused speed-up |", "|---|---|---|---|---|"]
    for model_name, backbone in MODELS.items():
        params = [p for p in build("vq-diffusion", backbone).parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        ms = {}
        for name, kw in (("default", {}), ("fused", {"fused": True})):
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            ms[name] = _best_ms(opt.step)
        lines.append(f"| {model_name} | {sum(p.numel() for p in params) / 1e6:.2f}M | {ms['default']:.2f} | "
                     f"{ms['fused']:.2f} | {ms['default'] / ms['fused']:.2f}x |")
    return lines


def time_train_step(method, precision: str, batch: int, steps: int, warmup: int) -> float:
    """Seconds per step of the real training loop: the time of ``warmup + steps`` steps minus the time of
    ``warmup`` steps, so the loop's one-off setup (optimizer, EMA copy, autocast/engine resolution) and the
    first steps' allocator warm-up cancel instead of being charged to the few timed steps."""
    cfg = dict(batch_size=batch, lr=1e-4, warmup_steps=0, ema_decay=0.999, precision=precision,
               log_every=10**6, checkpoint_every=10**6)
    data = _data(batch)

    def run(n: int) -> float:
        t = time.perf_counter()
        train(method, _loss, TensorBatches(*data, batch_size=batch, seed=0), TrainingConfig(steps=n, **cfg),
              show_progress=False)
        return time.perf_counter() - t

    run(max(warmup, 1))  # allocator and kernel warm-up
    short = run(max(warmup, 1))
    long = run(max(warmup, 1) + steps)
    return max(long - short, 1e-9) / steps


def time_sample(method, precision: str, n: int, steps: int) -> float:
    method.eval()
    labels, seeds = torch.arange(n) % CLASSES, torch.arange(n)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        method.sample(labels[:2], seeds[:2], num_samples=2, steps=1)  # warm-up
        t = time.perf_counter()
        method.sample(labels, seeds, num_samples=n, steps=steps)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps per round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--record", default=None, help="also write the report (markdown) to this path")
    args = ap.parse_args()

    _register_cpu_sdpa()
    native = cpu_has_native_bf16()
    lines = [
        "# Train-step and sampling FLOP/s vs the matmul rate (CPU)", "",
        f"- {machine_line()}",
        f"- native bf16 (avx512_bf16/amx_bf16 in /proc/cpuinfo): {native}; precision 'auto' resolves to "
        f"**{resolve_precision('auto', 'cpu')}** here",
        f"- batch {args.batch}, {GRID[0]}x{GRID[1]} tokens, codebook {K}, {CLASSES} classes; {args.steps} timed steps "
        f"after {args.warmup} warm-up per round; sampling {args.batch} samples x {args.sample_steps} steps; "
        f"median of {args.rounds} interleaved rounds (fp32/bf16 alternate)",
        "- FLOPs: torch.utils.flop_counter.FlopCounterMode (matmul/linear/SDPA, forward + backward; "
        "elementwise ops not counted) on one step / one sampling call",
        "- other processes were running on the same cores (shared machine): absolute rates are contended; "
        "compare the fractions and ratios, which are measured in one process, interleaved",
        "",
    ]
    precisions = ("fp32", "bf16")
    peak: dict[str, list[float]] = {p: [] for p in precisions}
    rows = []
    for model_name in args.models:
        backbone = MODELS[model_name]
        for method_name in METHODS:
            method = build(method_name, backbone)
            train_flops = count_train_flops(method, args.batch)
            sample_flops = count_sample_flops(method, args.batch, args.sample_steps)
            step_s: dict[str, list[float]] = {p: [] for p in precisions}
            samp_s: dict[str, list[float]] = {p: [] for p in precisions}
            ceil: dict[str, list[float]] = {p: [] for p in precisions}
            calls = {p: record_gemms(method, p, args.batch) for p in precisions}
            for _ in range(args.rounds):
                for p in precisions:
                    peak[p].append(matmul_rate(torch.float32 if p == "fp32" else torch.bfloat16))
                    step_s[p].append(time_train_step(method, p, args.batch, args.steps, args.warmup))
                    samp_s[p].append(time_sample(method, p, args.batch, args.sample_steps))
                    gf, gs = gemm_ceiling(calls[p])
                    ceil[p].append(gf / gs / 1e9)
            rows.append((model_name, method_name, train_flops, sample_flops,
                         {p: statistics.median(v) for p, v in step_s.items()},
                         {p: statistics.median(v) for p, v in samp_s.items()},
                         sum(q.numel() for q in method.parameters() if q.requires_grad),
                         {p: statistics.median(v) for p, v in ceil.items()}))
            print(f"done: {model_name} {method_name}", flush=True)
    rate = {p: statistics.median(v) for p, v in peak.items()}
    lines += [f"matmul 2048x2048 (median over the run): fp32 **{rate['fp32']:.1f}** GFLOP/s, "
              f"bf16 **{rate['bf16']:.1f}** GFLOP/s (bf16/fp32 {rate['bf16'] / rate['fp32']:.2f}x)", ""]
    lines += ["| model | method | params | what | GFLOP per call | fp32 GFLOP/s (% of fp32 matmul) | "
              "bf16 GFLOP/s (% of bf16 matmul) | bf16 speed-up |", "|---|---|---|---|---|---|---|---|"]
    for model_name, method_name, tf, sf, st, ss, params, _ in rows:
        for what, flops, secs in (("train step", tf, st), ("sampling", sf, ss)):
            g = {p: flops / secs[p] / 1e9 for p in precisions}
            lines.append(
                f"| {model_name} | {method_name} | {params / 1e6:.2f}M | {what} | {flops / 1e9:.1f} | "
                f"{g['fp32']:.1f} ({100 * g['fp32'] / rate['fp32']:.0f} %) | "
                f"{g['bf16']:.1f} ({100 * g['bf16'] / rate['bf16']:.0f} %) | {secs['fp32'] / secs['bf16']:.2f}x |"
            )
    lines += ["", "Shape-matched GEMM ceiling of the train step (its own matmul/SDPA calls replayed alone, see the "
              "module docstring):", "",
              "| model | method | precision | GEMM-only GFLOP/s (% of 2048² matmul) | step GFLOP/s (% of the "
              "GEMM-only ceiling) |", "|---|---|---|---|---|"]
    for model_name, method_name, tf, sf, st, ss, params, ce in rows:
        for p in precisions:
            g = tf / st[p] / 1e9
            lines.append(f"| {model_name} | {method_name} | {p} | {ce[p]:.1f} ({100 * ce[p] / rate[p]:.0f} %) | "
                         f"{g:.1f} ({100 * g / ce[p]:.0f} %) |")
    lines += ["", "Attention kernel (one forward+backward, b=64, n=64, e=32; best of 10):", "", *attention_table(),
              "", "Optimizer step (best of 10):", "", *optimizer_table(), ""]
    print_and_record(lines, args.record)


if __name__ == "__main__":
    main()
