"""The ``vq-diffusion`` method: VQ-Diffusion (Gu et al. 2022) with Improved VQ-Diffusion sampling.

Composes a discrete schedule (a component slot: any registered ``schedule`` of the discrete family, built
through ``MethodContext.build``; default ``vqdiffusion-alpha1``), the transition kernel
(:mod:`.kernel`), the loss (:mod:`.losses`), the samplers (:mod:`.sampling`) and the shared
backbone (``dlbench.nn.denoiser``) with a [MASK] input id (vocabulary K+1) and K output logits.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from einops import rearrange
from pydantic import Field, model_validator

from dlbench.interfaces import (
    ComponentConfig,
    ComponentRef,
    Method,
    MethodContext,
    MethodRequirements,
    NLLBound,
    SampleCallback,
    Slot,
    ref,
)
from dlbench.nn.denoiser import build_denoiser, drop_labels
from dlbench.registry import DlbenchError
from dlbench.seeding import PerSampleRNG
from dlbench_vqdiffusion.kernel import LOG_FLOOR, TransitionKernel, log_onehot
from dlbench_vqdiffusion.losses import ImportanceTimeSampler, aux_weight, vlb_terms
from dlbench_vqdiffusion.sampling import SAMPLERS, SamplingOptions, guide, time_grid, truncate


class VQDiffusionError(DlbenchError, ValueError):
    pass


class VQDiffusionConfig(ComponentConfig):
    """``method.params`` of ``vq-diffusion`` (METHODS.md B.3, B.5)."""

    schedule: Annotated[ComponentRef, Slot("schedule", family="discrete")] = ref("vqdiffusion-alpha1")
    num_steps: int = Field(100, ge=2, description="T, diffusion steps")
    aux_weight: float = Field(1e-3, ge=0, description="lambda of the auxiliary x0 cross-entropy")
    adaptive_aux: bool = Field(True, description="weight the auxiliary loss by w(t) = 2 - (t-1)/T")
    importance_sampling: bool = Field(True, description="p(t) ∝ sqrt(E[L_t^2]) after a uniform warm-up")
    importance_warmup: int = Field(10, ge=0, description="uniform t until every t was seen more than this")
    mask_weight: tuple[float, float] = Field((1.0, 1.0), description="loss weight of (masked, unmasked) positions")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="label -> null class rate (classifier-free guidance); "
                                 "the same name as VQ-LCMD's (label_drop, the old name, is read as this)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_schedule_params(cls, data: Any) -> Any:
        # run configs saved before the schedule slot: schedule = "<name>", schedule_params = {...};
        # and before the CFG rate took VQ-LCMD's name: label_drop
        if isinstance(data, dict) and "label_drop" in data:
            data = dict(data)
            old = data.pop("label_drop")
            if "label_dropout" in data and data["label_dropout"] != old:
                raise ValueError(f"label_drop={old} and label_dropout={data['label_dropout']}: give label_dropout only")
            data["label_dropout"] = old
        if isinstance(data, dict) and "schedule_params" in data:
            data = dict(data)
            params = data.pop("schedule_params") or {}
            name = data.get("schedule", "vqdiffusion-alpha1")
            if isinstance(name, str):
                data["schedule"] = {"name": name, "params": params}
            elif params:
                raise ValueError("give the schedule's params as schedule.params, not schedule_params")
        return data


class VQDiffusion(Method):
    """VQ-Diffusion: mask-and-replace discrete diffusion over VQ tokens (+ Improved VQ-Diffusion samplers)."""

    Config: ClassVar[type[ComponentConfig]] = VQDiffusionConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements(inputs="token_ids", conditioning="optional")
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below the class
    #: `compare --tune-sampling` grid (METHODS.md B.6): truncation r, the purity sampler, guidance scale
    sampler_grid: ClassVar[dict[str, list[Any]]] = {
        "options.truncation": [0.86, 1.0],
        "options.sampler": ["ancestral", "purity"],
        "guidance": [1.0, 1.5],
    }

    def __init__(self, config: VQDiffusionConfig, *, context: MethodContext):
        super().__init__()
        self.config, self.context = config, context
        self.num_classes = context.num_classes
        self.grid = tuple(context.token_grid)
        k = self.codebook_size = int(context.codebook_size)
        schedule = context.build(config, "schedule")
        self.kernel = TransitionKernel(schedule.coefficients(config.num_steps, k), k)
        self.time_sampler = ImportanceTimeSampler(
            config.num_steps, warmup=config.importance_warmup, enabled=config.importance_sampling
        )
        self.denoiser = build_denoiser(
            context.backbone or {"preset": "tiny"},
            grid=self.grid,
            out_dim=k,
            input="tokens",
            vocab_size=k + 1,
            num_classes=context.num_classes,
        )

    # -- network -----------------------------------------------------------------------------------

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``log p(x~0 | x_t, y)``: ``x_t "b n"``, ``t "b"`` (1..T) -> ``"b n K"`` clamped to [-70, 0].
        The network sees ``t / T``."""
        h, w = self.grid
        logits = self.denoiser(rearrange(x_t, "b (h w) -> b h w", h=h, w=w), t.float() / self.config.num_steps, labels)
        log_p = torch.log_softmax(rearrange(logits, "b h w k -> b (h w) k").float(), dim=-1)
        return log_p.clamp(LOG_FLOOR, 0.0)

    # -- training ----------------------------------------------------------------------------------

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """VLB + lambda w(t) x0-CE, both divided by p(t) (METHODS.md B.3); terms logged per token."""
        self._check_tokens(tokens)
        labels = self._check_labels(labels, tokens.shape[0])
        x0 = rearrange(tokens, "b h w -> b (h w)")
        b, n = x0.shape
        t, pt = self.time_sampler.sample(b, x0.device)
        u = torch.rand(b, n, self.codebook_size + 1, device=x0.device).clamp(1e-20, 1 - 1e-7)
        x_t = self.kernel.q_sample(x0, t, -torch.log(-torch.log(u)))  # training noise: the runner's global RNG
        if labels is not None and self.training:
            labels = drop_labels(labels, self.config.label_dropout, num_classes=self.num_classes)
        log_p_x0 = self.predict_x0(x_t, t, labels)
        log_model = self.kernel.posterior(log_p_x0, x_t, t)
        log_true = self.kernel.posterior(log_onehot(x0, self.codebook_size).float(), x_t, t)
        terms = vlb_terms(log_true, log_model, log_p_x0, x0, x_t, t, self.kernel.mask_id, self.config.mask_weight)
        if self.training:
            self.time_sampler.update(t, terms["vlb"])
        w = aux_weight(t, self.config.num_steps, self.config.adaptive_aux)
        per_sample = (terms["vlb"] + self.config.aux_weight * w * terms["aux"]) / pt
        loss = per_sample.sum() / (b * n)
        logs = {
            "loss": loss.detach(),
            "vlb": terms["vlb"].detach().mean() / n,
            "aux_ce": terms["aux"].detach().mean() / n,
            "mask_frac": (x_t == self.kernel.mask_id).float().mean(),
            "t_mean": t.float().mean(),
        }
        if bool((t == 1).any()):
            logs["decoder_nll"] = terms["decoder_nll"].detach()[t == 1].mean() / n
        return loss, logs

    # -- sampling ----------------------------------------------------------------------------------

    def sample(
        self,
        labels: torch.Tensor | None,
        seeds: torch.Tensor,
        *,
        num_samples: int | None = None,
        steps: int | None = None,
        guidance: float = 1.0,
        callback: SampleCallback | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Tokens ``"b h w"`` from all-[MASK]; ``options`` = :class:`SamplingOptions` (``sampler``,
        ``truncation``, ``stride``, ``purity_weight``). Row i depends only on ``seeds[i]``."""
        try:
            opts = SamplingOptions.model_validate(options)
        except ValueError as exc:
            raise VQDiffusionError(f"sampling.options for vq-diffusion: {exc}") from None
        b = len(seeds) if labels is None else len(labels)
        if num_samples is not None and num_samples != b:
            raise VQDiffusionError(
                f"num_samples={num_samples} but {b} seeds/labels were given; pass one seed per sample"
            )
        if len(seeds) != b:
            raise VQDiffusionError(f"got {len(seeds)} seeds for {b} samples; pass one seed per sample")
        labels = self._check_labels(labels, b)
        use_cfg = abs(guidance - 1.0) > 1e-12
        if use_cfg and labels is None:
            raise VQDiffusionError(
                f"sampling.guidance={guidance} needs class labels (classifier-free guidance mixes p(.|y) and "
                "p(.|null)); set guidance to 1.0 for unconditional sampling"
            )
        times = self._times(opts, steps)
        device = self.kernel.alpha_bar.device
        rng = PerSampleRNG(seeds, device)
        null = torch.full((b,), self.num_classes or 0, dtype=torch.long, device=device)

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            if use_cfg:
                both = self.predict_x0(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))
                log_p = guide(*both.chunk(2), guidance)
            else:
                log_p = self.predict_x0(x, tt, labels)
            return truncate(log_p, opts.truncation)

        x = torch.full((b, self.grid[0] * self.grid[1]), self.kernel.mask_id, dtype=torch.long, device=device)
        extra = {"purity_weight": opts.purity_weight} if opts.sampler == "purity" else {}
        with torch.no_grad():
            x = SAMPLERS[opts.sampler](denoise, x, times, self.kernel, rng, callback=callback, **extra)
        if bool((x >= self.codebook_size).any()):  # never hand [MASK] to a tokenizer
            raise AssertionError("vq-diffusion sampler emitted [MASK] tokens")
        return rearrange(x, "b (h w) -> b h w", h=self.grid[0], w=self.grid[1])

    def _times(self, opts: SamplingOptions, steps: int | None) -> list[int]:
        T = self.config.num_steps
        if opts.stride is not None and steps is not None:
            raise VQDiffusionError(
                f"sampling.steps={steps} and sampling.options.stride={opts.stride} both set: give one of them"
            )
        if opts.sampler == "fast" and opts.stride is None and steps is None:
            raise VQDiffusionError("sampler 'fast' needs sampling.options.stride (Delta) or sampling.steps")
        if steps is not None and not 1 <= steps <= T:
            raise VQDiffusionError(f"sampling.steps={steps}: must be in [1, T={T}] (method.params.num_steps)")
        return time_grid(T, steps=steps, stride=opts.stride)

    def nfe(self, steps: int | None = None, guidance: float = 1.0, **options: Any) -> int:
        """Network evaluations per sample: one per grid time, two with classifier-free guidance."""
        opts = SamplingOptions.model_validate(options)
        return len(self._times(opts, steps)) * (2 if abs(guidance - 1.0) > 1e-12 else 1)

    def nll_bound(
        self, tokens: torch.Tensor, labels: torch.Tensor | None, *, mc: int = 1, seed: int = 0
    ) -> NLLBound:
        """The VLB with every t (:mod:`dlbench_vqdiffusion.likelihood`), ``mc`` draws per grid, nats/token."""
        from dlbench_vqdiffusion.likelihood import vlb_per_grid

        self._check_tokens(tokens)
        labels = self._check_labels(labels, tokens.shape[0])
        was_training = self.training
        self.eval()
        try:
            gen = torch.Generator().manual_seed(seed)
            x0 = rearrange(tokens, "b h w -> b (h w)")
            est = sum(vlb_per_grid(self.predict_x0, self.kernel, x0, labels, generator=gen) for _ in range(mc)) / mc
        finally:
            self.train(was_training)
        return NLLBound.from_per_grid(est, f"vq-diffusion VLB, all {self.config.num_steps} t, {mc} draw(s)/grid")

    def diagnostics(self) -> dict[str, float]:
        p = self.time_sampler.probabilities()
        return {
            "t_sampler_warm": float(self.time_sampler.warmed_up),
            "t_sampler_min_count": float(self.time_sampler.count.min()),
            "t_sampler_entropy": float(-(p * p.log()).sum()),
        }

    # -- validation ----------------------------------------------------------------------------------

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dtype != torch.long or tuple(tokens.shape[1:]) != self.grid:
            raise VQDiffusionError(
                f"vq-diffusion expects long token ids 'b h w' with (h, w)={self.grid}, got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        if bool(((tokens < 0) | (tokens >= self.codebook_size)).any()):
            raise VQDiffusionError(
                f"token ids must lie in [0, {self.codebook_size}) (the codebook); got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]. Is codebook_size right for this tokenizer?"
            )

    def _check_labels(self, labels: torch.Tensor | None, b: int) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.num_classes is None:
            raise VQDiffusionError(
                "this vq-diffusion model is unconditional (num_classes=None) but got labels; pass labels=None"
            )
        if labels.shape != (b,) or bool(((labels < 0) | (labels > self.num_classes)).any()):
            raise VQDiffusionError(
                f"labels must be 'b' ids in [0, {self.num_classes}] ({self.num_classes} = null class), got shape "
                f"{tuple(labels.shape)}"
            )
        return labels


# Presets: nested run-config overrides. Never change a committed preset in place (STYLE.md lesson 2).
VQDiffusion.presets = {
    "quick": {
        "method": {"params": {"num_steps": 8, "importance_warmup": 1}},
        "backbone": {"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}},
        "training": {"lr": 1e-3},
        "sampling": {"steps": 4, "options": {"sampler": "ancestral", "truncation": 0.86}},
    },
    "default": {
        # Fashion-MNIST 32x32 -> 8x8 tokens on CPU; METHODS.md "Minimal CPU-scale versions" B
        "method": {"params": {"num_steps": 50}},
        "backbone": {"preset": "tiny"},
        # the budget (steps, batch) and sampling NFE come from the shared base preset (dlbench.config)
        "training": {"lr": 5e-4, "weight_decay": 4.5e-2, "betas": (0.9, 0.96),
                     "warmup_steps": 100, "grad_clip": 1.0, "ema_decay": 0.999},
        "sampling": {"guidance": 1.0, "options": {"sampler": "ancestral", "truncation": 0.86}},
        "evaluation": {"protocol": "default"},
    },
    "benchmark": {
        # the default recipe under the base `benchmark` budget (3000 steps x batch 64, 50 sampling steps); one
        # forward+backward per step, so VQ-LCMD's benchmark preset takes fewer steps for the same compute
        "method": {"params": {"num_steps": 50}},
        "backbone": {"preset": "tiny"},
        "training": {"lr": 5e-4, "weight_decay": 4.5e-2, "betas": (0.9, 0.96),
                     "warmup_steps": 200, "grad_clip": 1.0, "ema_decay": 0.999},
        "sampling": {"guidance": 1.0, "options": {"sampler": "ancestral", "truncation": 0.86}},
        "evaluation": {"protocol": "default"},
    },
    "paper": {
        # METHODS.md B.5, FFHQ (configs/ffhq.yaml): T=100, lambda=1e-3, AdamW (0.9, 0.96), wd 4.5e-2,
        # lr 4.5e-4 after warm-up, released alpha1 schedule; truncation r = 0.86 (B.6). The schedule, lambda,
        # adaptive aux weight and importance sampling are VQDiffusionConfig's defaults (set there, not restated)
        "method": {"params": {"num_steps": 100}},
        "backbone": {"preset": "vqdiffusion-ffhq"},
        "training": {"lr": 4.5e-4, "weight_decay": 4.5e-2, "betas": (0.9, 0.96), "warmup_steps": 2000,
                     "grad_clip": 0.5, "ema_decay": 0.999, "batch_size": 256},
        "sampling": {"steps": 100, "guidance": 1.0, "options": {"sampler": "ancestral", "truncation": 0.86}},
        "evaluation": {"protocol": "paper"},
    },
}
