"""``dlbench plan``: what a run will cost before it runs (parameters, FLOPs, memory, disk, wall clock).

Every model is built on PyTorch's ``meta`` device (no memory, no weights) and its forward pass is run
under :class:`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add, convolutions,
matmuls and attention counted exactly) and ``saved_tensors_hooks`` (the bytes autograd keeps for
backward = activation memory). From those per-image / per-sample numbers:

- tokenizer training per image: ``3 F_G`` (encoder + decoder, forward + backward ~ 2x forward) + LPIPS
  ``4 F_VGG`` (two VGG16 forwards, backward through the reconstruction branch) + discriminator
  ``9 F_D`` (three forwards, their backward passes) once it has started;
- token extraction: ``F_enc`` per training image; tokens on disk ``N h w`` x the cache's bytes per token;
- generator training per sample: ``3 F_den x forwards_per_step`` (the method's own multiplier);
- sampling per sample: ``NFE F_den + F_dec``; evaluation: Inception-v3 forwards over generated and
  reference images;
- memory per device: parameters, gradients and AdamW moments (16 B/param; +4 with an EMA copy) plus
  activations of the per-device micro-batch (halved under bf16 autocast, an estimate);
- wall clock: ``FLOPs / (devices x peak x utilisation)``; the peak comes from :data:`ACCELERATORS`
  (``cpu`` is measured on this machine) and the utilisation is an assumption the output states.

Longer than ~350 lines because the cost model and its table are one job: each row of the rendered table
is one stage of the model (sections: measurement, stages, rendering).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dlbench.registry import DlbenchError

#: dense bf16 tensor-core peak FLOP/s per device (vendor data sheets, SXM parts)
ACCELERATORS: dict[str, tuple[float, str]] = {
    "V100": (125e12, "NVIDIA V100 SXM2, fp16 tensor-core peak"),
    "A100": (312e12, "NVIDIA A100 SXM, dense bf16 peak"),
    "H100": (989e12, "NVIDIA H100 SXM, dense bf16 peak"),
    "H200": (989e12, "NVIDIA H200 SXM, dense bf16 peak (H100 compute, more memory)"),
}
#: model FLOP utilisation assumed when none is given (typical of well-tuned conv/transformer training)
DEFAULT_UTILISATION = {"gpu": 0.4, "cpu": 0.5}
#: training-split sizes of the paper datasets (used when the files are not on this machine)
DATASET_SIZES = {"ffhq": 70_000, "lsun-church": 126_227, "lsun-bedroom": 3_033_042, "imagenet": 1_281_167}


class PlanError(DlbenchError):
    pass


# ---------------------------------------------------------------------------------------------
# measuring on the meta device
# ---------------------------------------------------------------------------------------------


def measure(fn, *args: Any) -> tuple[float, int]:
    """``(forward FLOPs, bytes saved for backward)`` of ``fn(*args)`` (meta tensors welcome)."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return float(counter.get_total_flops()), saved[0]


def measured_cpu_flops(seconds: float = 0.3, n: int = 512) -> float:
    """Achieved fp32 matmul FLOP/s of this CPU (``torch.mm`` of ``n x n``, all intra-op threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / elapsed


@dataclass
class Stage:
    name: str
    flops: float
    detail: str
    params: int | None = None
    flops_per_step: float | None = None
    flops_per_unit: float | None = None
    unit: str = ""
    memory_bytes: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


@dataclass
class Plan:
    config_summary: str
    token_grid: tuple[int, int]
    accelerator: str
    peak_flops: float
    peak_source: str
    utilisation: float
    devices: int
    stages: list[Stage]
    tokens_on_disk_bytes: float | None
    dataset_images: int | None

    def seconds(self, stage: Stage) -> float:
        return stage.flops / (self.devices * self.peak_flops * self.utilisation)


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


def _dataset_images(cfg: Any) -> int | None:
    n = DATASET_SIZES.get(cfg.dataset.name)
    if n is None:
        try:
            from dlbench.plugins import get_registry

            n = len(get_registry().get("dataset", cfg.dataset.name).build(cfg.dataset.params).split("train"))
        except Exception:  # noqa: BLE001 - files absent: the plan says "unknown"
            return None
    cap = cfg.dataset.params.get("max_images")
    return min(n, cap) if cap else n


def tokenizer_and_grid(cfg: Any, channels: int, resolution: int):
    from dlbench.plugins import get_registry

    spec = get_registry().get("tokenizer", cfg.tokenizer.name)
    params = {k: v for k, v in cfg.tokenizer.params.items() if k not in ("checkpoint", "pretrained")}
    with torch.device("meta"):
        tok = spec.build(params, channels=channels, resolution=resolution)
    return tok, tok.token_grid(resolution, resolution)


def _encoder_decoder(tok: Any):
    """``(encode_fn, decode_fn)`` differentiable image -> latent -> image paths of a tokenizer."""
    if hasattr(tok, "_z_e") and hasattr(tok, "_decode_z"):  # VQGAN
        return tok._z_e, tok._decode_z
    if hasattr(tok, "encoder") and hasattr(tok, "decoder"):  # conv VQ-VAE and its plugins
        from einops import rearrange

        return (lambda x: rearrange(tok.encoder(x), "b d h w -> b h w d"),
                lambda z: tok.decoder(rearrange(z, "b h w d -> b d h w")))
    raise PlanError(f"cannot measure tokenizer {type(tok).__name__}: it has no encoder/decoder networks")


def _bytes_per_token(k: int) -> int:
    try:
        from dlbench.data.token_cache import token_dtype

        return int(token_dtype(k)().itemsize)
    except ImportError:
        return 8


def build_plan(cfg: Any, *, accelerator: str = "H100", devices: int = 1, utilisation: float | None = None) -> Plan:
    """The cost of running ``cfg`` (a resolved :class:`dlbench.config.RunConfig`) on ``devices`` x ``accelerator``."""
    from dlbench.interfaces import MethodContext
    from dlbench.plugins import get_registry

    acc = accelerator if accelerator.lower() != "cpu" else "cpu"
    if acc == "cpu":
        peak, source = measured_cpu_flops(), f"this machine's fp32 matmul rate, measured now ({torch.get_num_threads()} threads)"
    else:
        key = next((k for k in ACCELERATORS if k.lower() == accelerator.lower()), None)
        if key is None:
            raise PlanError(f"unknown accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}, cpu")
        acc, (peak, source) = key, ACCELERATORS[key]
    if devices < 1:
        raise PlanError(f"--devices must be >= 1, got {devices}")
    util = utilisation if utilisation is not None else DEFAULT_UTILISATION["cpu" if acc == "cpu" else "gpu"]
    if not 0 < util <= 1:
        raise PlanError(f"--utilisation must be in (0, 1], got {util}")

    registry = get_registry()
    ds_cls = registry.get("dataset", cfg.dataset.name).factory
    channels = int(cfg.dataset.params.get("channels", getattr(ds_cls, "channels", 3)) or 3)
    resolution = int(cfg.dataset.params.get("resolution", getattr(ds_cls, "resolution", 32)))
    tok, grid = tokenizer_and_grid(cfg, channels, resolution)
    enc, dec = _encoder_decoder(tok)
    n_images = _dataset_images(cfg)
    bf16 = 0.5 if cfg.training.precision == "bf16" else 1.0

    with torch.device("meta"):
        x = torch.empty(1, channels, resolution, resolution)
        f_enc, a_enc = measure(enc, x)
        z = enc(x)
        f_dec, a_dec = measure(dec, z)
    tok_params = sum(p.numel() for n, p in tok.named_parameters() if not n.startswith("discriminator."))
    stages: list[Stage] = []

    # -- tokenizer ---------------------------------------------------------------------------
    t = cfg.tokenizer.training
    tp = cfg.tokenizer.params
    per_image, acts, detail = 3 * (f_enc + f_dec), a_enc + a_dec, "3 x (encoder + decoder)"
    if tp.get("perceptual_weight", 0) > 0:
        import torchvision

        with torch.device("meta"):
            vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])[:30]
            f_vgg, a_vgg = measure(vgg, torch.empty(1, 3, resolution, resolution))
        per_image += 4 * f_vgg
        acts += 2 * a_vgg
        detail += " + 4 x LPIPS VGG16"
    disc = getattr(tok, "discriminator", None)
    if disc is not None and tp.get("disc_weight", 0) > 0:
        with torch.device("meta"):
            f_d, a_d = measure(disc, x)
        frac = max(0.0, 1 - tp.get("disc_start", 0) / t.steps)
        per_image += 9 * f_d * frac
        acts += 3 * a_d
        detail += f" + 9 x PatchGAN on {frac:.0%} of the steps"
    tok_train = Stage("tokenizer training", per_image * t.batch_size * t.steps, detail, tok_params,
                      per_image * t.batch_size, per_image, "image",
                      _memory(tok_params, acts, t.batch_size, devices, ema=t.ema_decay > 0,
                              act_scale=0.5 if t.precision == "bf16" else 1.0, grad_accum=t.grad_accum))
    if tp.get("checkpoint") or tp.get("pretrained"):
        tok_train.flops, tok_train.skipped = 0.0, "imported checkpoint: no tokenizer training"
    stages.append(tok_train)
    n_tok = n_images or 0
    stages.append(Stage("token extraction", f_enc * n_tok, "encoder forward over the train split",
                        flops_per_unit=f_enc, unit="image",
                        skipped=None if n_images else "dataset size unknown (files not found)"))

    # -- generator ---------------------------------------------------------------------------
    spec = registry.get("method", cfg.method.name)
    needs_classes = getattr(getattr(spec.factory, "requires", None), "conditioning", "optional") != "none"
    num_classes = None
    if needs_classes:
        nc = getattr(ds_cls, "num_classes", None)
        num_classes = 1000 if cfg.dataset.name == "imagenet" else (nc if isinstance(nc, int) else None)
    context = MethodContext(codebook_size=tok.codebook_size, token_grid=grid, num_classes=num_classes, tokenizer=tok,
                            backbone={"preset": cfg.backbone.preset, **cfg.backbone.params}, registry=registry)
    try:
        with torch.device("meta"):
            method = spec.build(cfg.method.params, context=context)
    except (RuntimeError, NotImplementedError):  # data-dependent checks at build time: build on CPU, then measure on meta
        tok_spec = registry.get("tokenizer", cfg.tokenizer.name)
        context.tokenizer = tok_spec.build({k: v for k, v in cfg.tokenizer.params.items()
                                            if k not in ("checkpoint", "pretrained")}, channels=channels, resolution=resolution)
        method = spec.build(cfg.method.params, context=context).to("meta")
    gen_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    den = getattr(method, "denoiser", None)
    if den is None:
        raise PlanError(f"method {cfg.method.name!r} has no .denoiser to measure")
    with torch.device("meta"):
        if den.input == "tokens":
            inp = torch.zeros(1, *grid, dtype=torch.long)
        else:
            inp = torch.empty(1, *grid, den.in_dim)
        f_den, a_den = measure(den, inp, torch.full((1,), 0.5))
    fps = float(method.forwards_per_step)
    g = cfg.training
    per_sample = 3 * f_den * fps
    stages.append(Stage("generator training", per_sample * g.batch_size * g.steps,
                        f"3 x denoiser forward x forwards_per_step {fps:.3g}", gen_params, per_sample * g.batch_size,
                        per_sample, "sample",
                        _memory(gen_params, a_den * max(1, int(fps)), g.batch_size, devices, ema=g.ema_decay > 0,
                                act_scale=bf16, grad_accum=g.grad_accum)))
    s = cfg.sampling
    from dlbench.runner.generator_stage import nfe as _nfe

    nfe = _nfe(method, s)
    per = nfe * f_den + f_dec
    stages.append(Stage("sampling", per * s.num_samples, f"{nfe} NFE x denoiser + decoder", flops_per_unit=per,
                        unit="sample"))
    if cfg.evaluation.enabled:
        stages.append(_evaluation_stage(cfg, n_images))
    tokens_disk = n_images * grid[0] * grid[1] * _bytes_per_token(tok.codebook_size) if n_images else None
    summary = (f"{cfg.method.name} on {cfg.dataset.name} {resolution}px, preset {cfg.preset}: tokenizer "
               f"{cfg.tokenizer.name} ({_tok_desc(cfg, tok)}) -> {grid[0]}x{grid[1]} tokens; backbone "
               f"{cfg.backbone.preset} (width {cfg.backbone.params.get('width')}, depth {cfg.backbone.params.get('depth')})")
    return Plan(summary, grid, acc, peak, source, util, devices, stages, tokens_disk, n_images)


def _tok_desc(cfg: Any, tok: Any) -> str:
    p = cfg.tokenizer.params
    f = getattr(getattr(tok, "config", None), "downsample", None)
    return f"f{f}, K={tok.codebook_size}, d={p.get('code_dim', '?')}" if f else f"K={tok.codebook_size}"


def _memory(params: int, act_bytes_per_item: float, global_batch: int, devices: int, *, ema: bool,
            act_scale: float, grad_accum: int = 1) -> dict[str, float]:
    """Bytes per device: fp32 weights + grads + AdamW moments (+ EMA) and the micro-batch's activations."""
    per_device = math.ceil(global_batch / devices / grad_accum)
    return {"weights+grads+adam": params * 16.0, "ema": params * 4.0 if ema else 0.0,
            "activations": act_bytes_per_item * per_device * act_scale, "micro_batch": per_device}


def _evaluation_stage(cfg: Any, n_images: int | None) -> Stage:
    import torchvision

    from dlbench.eval.protocol import resolve_protocol

    try:
        proto = resolve_protocol(cfg.evaluation.protocol, resolve_weights=False, **cfg.evaluation.overrides)
    except DlbenchError as exc:
        return Stage("evaluation", 0.0, "", skipped=str(exc))
    if not proto.inception_metrics:
        return Stage("evaluation", 0.0, "domain classifier only (negligible)", skipped="no Inception features")
    with torch.device("meta"):
        inc = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
        f_inc, _ = measure(inc, torch.empty(1, 3, 299, 299))
    ref = proto.num_reference or n_images or 0
    return Stage("evaluation", f_inc * (proto.num_generated + ref),
                 f"Inception-v3 on {proto.num_generated} generated + {ref or 'unknown'} reference images",
                 flops_per_unit=f_inc, unit="image")


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def _duration(sec: float) -> str:
    if sec < 1:
        return "< 1 s"
    if sec < 120:
        return f"{sec:.0f} s"
    if sec < 7200:
        return f"{sec / 60:.0f} min"
    if sec < 172800:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} d"


def render(plan: Plan) -> str:
    """Markdown: the summary, the assumptions, and one row per stage."""
    lines = [plan.config_summary, "",
             f"accelerator: {plan.devices} x {plan.accelerator} at {_si(plan.peak_flops, 'FLOP/s')} peak "
             f"({plan.peak_source}); assumed utilisation {plan.utilisation:.0%} -> "
             f"{_si(plan.devices * plan.peak_flops * plan.utilisation, 'FLOP/s')} sustained", ""]
    lines += ["| stage | params | FLOPs / unit | FLOPs / step | total FLOPs | memory / device | wall clock |",
              "|---|---|---|---|---|---|---|"]
    total = 0.0
    for st in plan.stages:
        mem = ""
        if st.memory_bytes:
            m = st.memory_bytes
            mem = (f"{_gib(m['weights+grads+adam'] + m['ema'] + m['activations'])} (states {_gib(m['weights+grads+adam'] + m['ema'])}"
                   f" + activations {_gib(m['activations'])} at micro-batch {m['micro_batch']})")
        if st.skipped:
            lines.append(f"| {st.name} | {_si(st.params) if st.params else ''} | | | | | skipped: {st.skipped} |")
            continue
        sec = plan.seconds(st)
        total += sec
        lines.append(
            f"| {st.name} | {_si(st.params) if st.params else ''} | "
            f"{_si(st.flops_per_unit) + ' / ' + st.unit if st.flops_per_unit else ''} | "
            f"{_si(st.flops_per_step) if st.flops_per_step else ''} | {_si(st.flops)} | {mem} | {_duration(sec)} |")
    lines.append(f"| **total** | | | | | | **{_duration(total)}** |")
    lines.append("")
    if plan.tokens_on_disk_bytes is not None:
        lines.append(f"tokens on disk: {plan.dataset_images} images x {plan.token_grid[0]}x{plan.token_grid[1]} = "
                     f"{_si(plan.tokens_on_disk_bytes, 'B')}")
    lines.append("FLOPs: 2 per multiply-add, counted on the meta device (torch.utils.flop_counter); training = 3 x "
                 "forward; memory: fp32 weights, grads and AdamW moments plus activations saved for backward "
                 "(halved under bf16 autocast), an estimate.")
    for st in plan.stages:
        if st.detail and not st.skipped:
            lines.append(f"- {st.name}: {st.detail}")
    return "\n".join(lines)


def describe(cfg: Any) -> str:
    """One line: what the resolved config trains (tokenizer, grid, generator) -- for ``run --dry-run``."""
    from dlbench.plugins import get_registry

    ds_cls = get_registry().get("dataset", cfg.dataset.name).factory
    channels = int(cfg.dataset.params.get("channels", getattr(ds_cls, "channels", 3)) or 3)
    resolution = int(cfg.dataset.params.get("resolution", getattr(ds_cls, "resolution", 32)))
    try:
        tok, grid = tokenizer_and_grid(cfg, channels, resolution)
        tok_text = f"({_tok_desc(cfg, tok)}) -> {grid[0]}x{grid[1]} token grid"
    except Exception as exc:  # noqa: BLE001 - a plugin tokenizer that cannot be built on the meta device
        tok_text = f"(token grid unknown before building it: {type(exc).__name__})"
    return (f"{cfg.method.name} on {cfg.dataset.name} at {resolution}px: tokenizer {cfg.tokenizer.name} "
            f"{tok_text}; backbone {cfg.backbone.preset}; "
            f"{cfg.training.steps} steps at batch {cfg.training.batch_size}; {cfg.sampling.steps or 'default'} sampling steps; "
            f"protocol {cfg.evaluation.protocol}")
