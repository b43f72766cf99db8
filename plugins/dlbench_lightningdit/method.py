"""``method/lightningdit``: LightningDiT, rectified flow over continuous tokenizer latents (METHODS.md §D.3).

The continuous baseline of the VA-VAE paper (arXiv 2501.01423): a DiT with AdaLN-Zero, RMSNorm, SwiGLU and 2-D
RoPE (:mod:`.backbone`) predicts the velocity of the linear path ``x_t = t x + (1 - t) eps`` (t = 0 noise,
t = 1 data); loss = velocity MSE + velocity-direction (cosine) loss, ``t ~ logit-normal``; sampling = Euler with
the timestep shift and classifier-free guidance inside an interval of t (:mod:`.flow`).

Inputs are the **normalised float latents** of a continuous tokenizer (``tokenizer/kl-vae``: ``encode`` ->
``"b h w d"``), not token ids: ``requires.inputs == "latents"``. ``loss`` takes and ``sample`` returns latents in
the tokenizer's layout ``"b h w d"`` (so ``tokenizer.decode(method.sample(...))`` gives images); the network works
on ``"b d h w"`` internally, as the released code.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator

from dlbench.interfaces import ComponentConfig, Method, MethodContext, MethodRequirements, SampleCallback
from dlbench.nn.denoiser import drop_labels
from dlbench.registry import DlbenchError

from .backbone import LightningDiTNet, LightningDiTNetConfig
from .presets import method_presets
from .flow import (
    cfg_active,
    cfg_velocity,
    euler_sample,
    interpolate,
    logit_normal_sample,
    sampling_times,
    velocity_loss,
    velocity_target,
)

__all__ = ["LightningDiT", "LightningDiTConfig", "LightningDiTError", "UNAVAILABLE_METRICS"]


class LightningDiTError(DlbenchError, ValueError):
    pass


#: metrics of dlbench's discrete methods that do not exist for a flow over continuous latents, keyed by the metric
#: names of a run record (``metrics["unavailable"]``), with the reason it should give when the pipeline skips them
_NO_TOKENS = "continuous latents: no token ids, so no token statistics to compare"
UNAVAILABLE_METRICS: dict[str, str] = {
    "nll_bound": "continuous latents: no discrete-token likelihood (an ODE likelihood in latent space would be "
                 "in different units and needs a divergence estimate per step)",
    "token_kl_unigram": _NO_TOKENS,
    "token_kl_pair": _NO_TOKENS,
}


class LightningDiTConfig(ComponentConfig):
    """LightningDiT options (METHODS.md §D.3). The backbone's size (width, depth, heads, mlp_ratio, dropout,
    absolute position embedding kind, time scale) comes from the run config's shared ``backbone`` section; the
    architecture switches of the LightningDiT ladder are here."""

    latent_dim: int | None = Field(None, ge=1, description="latent channels d (None: the tokenizer's latent_dim)")
    # architecture (backbone.py)
    patch_size: int = Field(1, ge=1, description="p: p x p latent patches per token (released XL/1: 1)")
    norm: Literal["rms", "layer"] = "rms"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    rope: bool = Field(True, description="2-D axial RoPE on q, k")
    abs_pos: bool = Field(True, description="also add the backbone's absolute position embedding (released: sin-cos)")
    qk_norm: bool = Field(False, description="QK-norm (stabilises long runs, costs FID; hustvl/LightningDiT#68)")
    time_scale: float | None = Field(None, gt=0, description="t multiplier before the sinusoidal embedding "
                                     "(None: the backbone section's; the released code uses 1)")
    # training (§D.3 "Flow")
    t_sampling: Literal["logit-normal", "uniform"] = "logit-normal"
    t_mean: float = Field(0.0, description="logit-normal location m: t = sigmoid(m + s n)")
    t_std: float = Field(1.0, gt=0, description="logit-normal scale s")
    mse_weight: float = Field(1.0, ge=0)
    cos_weight: float = Field(1.0, ge=0, description="velocity-direction loss weight (released: 1; 0 = off)")
    label_dropout: float = Field(0.1, ge=0, le=1, description="p(null class) in training, for CFG")
    # sampling (§D.3 "Sampling")
    sample_steps: int = Field(50, ge=1, description="Euler steps (= network evaluations without guidance)")
    timestep_shift: float = Field(0.3, gt=0, description="s of t' = s t / (1 + (s - 1) t); 1 = no shift")
    cfg_interval_start: float = Field(0.125, ge=0, le=1, description="no guidance while t < this (0 = always)")
    cfg_channels: int | None = Field(None, ge=1, description="guide only the first k latent channels (None: all; "
                                     "3 = the released code's quirk)")

    @model_validator(mode="after")
    def _check(self):
        if self.mse_weight == 0 and self.cos_weight == 0:
            raise ValueError("mse_weight and cos_weight are both 0: nothing to train")
        return self


SAMPLING_OPTIONS = ("shift", "cfg_interval_start", "cfg_channels")


class LightningDiT(Method):
    """LightningDiT: rectified-flow velocity model over continuous latents (VA-VAE's generator)."""

    Config = LightningDiTConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements(inputs="latents", conditioning="optional")
    #: layout of ``loss`` inputs and ``sample`` outputs: the continuous tokenizer's ``encode`` / ``decode`` layout
    latent_layout: ClassVar[str] = "b h w d"
    unavailable_metrics: ClassVar[dict[str, str]] = UNAVAILABLE_METRICS
    #: ``compare --tune-sampling``: guidance scale (full-channel CFG works at small scales) and the timestep shift
    sampler_grid: ClassVar[dict[str, list[Any]]] = {"guidance": [1.0, 1.5, 2.0, 3.0], "options.shift": [0.3, 1.0]}
    presets: ClassVar[dict[str, dict[str, Any]]] = method_presets()

    def __init__(self, config: LightningDiTConfig | None = None, *, context: MethodContext):
        super().__init__()
        self.config = c = config if config is not None else self.Config()
        self.context = context
        tok = context.tokenizer
        if tok is not None and getattr(tok, "latent_kind", "discrete") != "continuous":
            raise LightningDiTError(
                f"lightningdit needs a continuous tokenizer (float latents, e.g. kl-vae); got "
                f"{type(tok).__name__} with discrete token ids")
        d = c.latent_dim or getattr(tok, "latent_dim", None)
        if not d:
            raise LightningDiTError("lightningdit: set method.params.latent_dim or build it with a continuous "
                                    "tokenizer in MethodContext(tokenizer=...) that has latent_dim")
        if tok is not None and c.latent_dim is not None and c.latent_dim != getattr(tok, "latent_dim", d):
            raise LightningDiTError(f"method.params.latent_dim = {c.latent_dim} but the tokenizer's latent_dim is "
                                    f"{tok.latent_dim}; drop latent_dim (it is read from the tokenizer)")
        self.latent_dim, self.grid, self.num_classes = int(d), tuple(context.token_grid), context.num_classes
        self.net = LightningDiTNet(net_config(c, context.backbone), channels=self.latent_dim, grid=self.grid,
                                   num_classes=self.num_classes)

    @property
    def positions(self) -> int:
        """Transformer positions per image, ``(h / p) * (w / p)``: what the FLOPs rule ``6 * params * positions``
        should use (the latent grid's ``h * w`` overcounts by ``p^2`` when ``patch_size = p > 1``)."""
        return self.net.tokens[0] * self.net.tokens[1]

    # -- helpers ---------------------------------------------------------------------------------
    def _check_latents(self, latents: torch.Tensor) -> None:
        h, w = self.grid
        if latents.dim() != 4 or tuple(latents.shape[1:]) != (h, w, self.latent_dim) or \
                not latents.is_floating_point():
            raise LightningDiTError(
                f"lightningdit trains on float latents 'b h w d' with (h, w, d)={(h, w, self.latent_dim)} (a "
                f"continuous tokenizer's encode output); got {latents.dtype} {tuple(latents.shape)}")

    def _labels(self, labels: torch.Tensor | None, b: int, device: torch.device) -> torch.Tensor | None:
        if self.num_classes is None:
            if labels is not None and bool((labels >= 0).any()):
                raise LightningDiTError("this lightningdit model is unconditional (num_classes=None) but got labels")
            return None
        if labels is None:
            return torch.full((b,), self.num_classes, dtype=torch.long, device=device)
        labels = labels.to(device)
        return drop_labels(labels, self.config.label_dropout, num_classes=self.num_classes) if self.training else labels

    def sample_t(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``"b"``: logit-normal (``t_mean``, ``t_std``) or uniform on [0, 1)."""
        c = self.config
        if c.t_sampling == "logit-normal":
            return logit_normal_sample(b, c.t_mean, c.t_std, generator=generator).to(device)
        return torch.rand(b, generator=generator).to(device)

    # -- training --------------------------------------------------------------------------------
    def loss(self, latents: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``mse_weight * mean_b mse + cos_weight * mean_b cos`` on ``x_t`` at ``t ~ p(t)`` (:func:`velocity_loss`).

        ``latents "b h w d"`` (normalised), ``labels "b"`` long or None."""
        self._check_latents(latents)
        c = self.config
        x = rearrange(latents.float(), "b h w d -> b d h w")
        b, dev = x.shape[0], x.device
        t = self.sample_t(b, dev)
        eps = torch.randn_like(x)
        v = self.net(interpolate(x, eps, t), t, self._labels(labels, b, dev))
        mse, cos = velocity_loss(v, velocity_target(x, eps))
        total = c.mse_weight * mse.mean() + c.cos_weight * cos.mean()
        return total, {"mse": mse.mean().detach(), "cos": cos.mean().detach(), "loss": total.detach()}

    # -- sampling --------------------------------------------------------------------------------
    def _sampling_options(self, options: dict[str, Any]) -> tuple[float, float, int | None]:
        unknown = set(options) - set(SAMPLING_OPTIONS)
        if unknown:
            raise LightningDiTError(f"unknown lightningdit sampling options {sorted(unknown)}; known: "
                                    f"{list(SAMPLING_OPTIONS)}")
        c = self.config
        shift = float(options.get("shift", c.timestep_shift))
        start = float(options.get("cfg_interval_start", c.cfg_interval_start))
        channels = options.get("cfg_channels", c.cfg_channels)
        if shift <= 0 or not 0 <= start <= 1 or (channels is not None and int(channels) < 1):
            raise LightningDiTError(f"sampling options out of range: shift={shift} (> 0), cfg_interval_start={start} "
                                    f"(in [0, 1]), cfg_channels={channels} (>= 1 or None)")
        return shift, start, None if channels is None else int(channels)

    def guided_velocity(self, labels: torch.Tensor | None, guidance: float, *, interval_start: float,
                        channels: int | None):
        """``(x "b c h w", t "b") -> v``: the conditional velocity, with CFG ``v_u + w (v_c - v_u)`` (first
        ``channels`` channels) where ``t >= interval_start`` (:func:`cfg_velocity`). Unguided (no labels, an
        unconditional model, or ``guidance == 1``): one network evaluation per step."""
        def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x, t, labels)

        if labels is None or self.num_classes is None or guidance == 1.0:
            return cond

        def both(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            null = torch.full_like(labels, self.num_classes)
            v_c, v_u = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            return v_c, v_u

        return cfg_velocity(cond, both, guidance, interval_start=interval_start, channels=channels)

    def nfe(self, steps: int | None = None, guidance: float = 1.0, **options: Any) -> int:
        """Euler steps, plus one unconditional pass for each step inside the CFG interval when guided."""
        steps = steps or self.config.sample_steps
        if guidance == 1.0 or self.num_classes is None:
            return steps
        shift, start, _ = self._sampling_options(options)
        return steps + sum(cfg_active(float(t), start) for t in sampling_times(steps, shift)[:-1])

    @torch.no_grad()
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
        """Euler from ``x_0 = eps ~ N(0, I)`` (per-sample seeds) to ``t = 1`` over the shifted grid, with CFG in the
        interval. Returns normalised latents ``"b h w d"`` (decode with the tokenizer).

        Options: ``shift`` (timestep shift, default ``timestep_shift``), ``cfg_interval_start``, ``cfg_channels``.
        ``callback`` gets ``{i, steps, t, x, x0_logits}`` after each step: ``t`` the flow time reached (1 = data),
        ``x`` the state ``"b h w d"``, ``x0_logits`` None (continuous latents have no token logits).
        """
        from dlbench.seeding import PerSampleRNG

        shift, start, channels = self._sampling_options(options)
        n = len(labels) if labels is not None else num_samples
        if n is None:
            raise LightningDiTError("sample() needs labels or num_samples")
        if len(seeds) != n:
            raise LightningDiTError(f"got {len(seeds)} seeds for {n} samples; pass one seed per sample")
        if labels is not None and self.num_classes is None:
            raise LightningDiTError("this lightningdit model is unconditional; call "
                                    "sample(labels=None, num_samples=...)")
        dev = next(self.net.parameters()).device
        steps = steps or self.config.sample_steps
        h, w = self.grid
        was_training = self.training
        self.eval()
        try:
            x = PerSampleRNG(seeds, dev).randn(self.latent_dim, h, w)
            y = labels.to(dev) if labels is not None else self._labels(None, n, dev)  # None: the null class
            if labels is None:
                guidance = 1.0  # nothing to guide toward
            on_step = None
            if callback is not None:
                def on_step(i, t, x_i, v):
                    callback({"i": i, "steps": steps, "t": t, "x": rearrange(x_i, "b c h w -> b h w c"),
                              "x0_logits": None})
            x = euler_sample(self.guided_velocity(y, guidance, interval_start=start, channels=channels), x,
                             sampling_times(steps, shift), callback=on_step)
        finally:
            self.train(was_training)
        return rearrange(x, "b c h w -> b h w c")

    def nll_bound(self, tokens: torch.Tensor, labels: torch.Tensor | None, *, mc: int = 1, seed: int = 0):
        """None: no bound in dlbench's units (``UNAVAILABLE_METRICS["nll_bound"]``)."""
        return None

    # -- diagnostics -----------------------------------------------------------------------------
    @torch.no_grad()
    def loss_curve(self, latents: torch.Tensor, labels: torch.Tensor | None = None, *, points: int = 9,
                   seed: int = 0) -> dict[str, list[float]]:
        """Velocity MSE and cosine loss of held-out ``latents "b h w d"`` at fixed ``t`` in (0, 1), one noise draw
        from ``seed`` (where along the path the model is weak; the analogue of the discrete methods' CE(t))."""
        self._check_latents(latents)
        was_training = self.training
        self.eval()
        try:
            x = rearrange(latents.float(), "b h w d -> b d h w")
            eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
            y = None if self.num_classes is None or labels is None else labels.to(x.device)
            ts = torch.linspace(0.0, 1.0, points + 2)[1:-1].tolist()
            mses, coss = [], []
            for tv in ts:
                t = torch.full((x.shape[0],), tv, device=x.device)
                mse, cos = velocity_loss(self.net(interpolate(x, eps, t), t, y), velocity_target(x, eps))
                mses.append(mse.mean().item())
                coss.append(cos.mean().item())
        finally:
            self.train(was_training)
        return {"t": ts, "mse": mses, "cos": coss}

    def end_of_training_report(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        return {"loss_curve": self.loss_curve(tokens, labels), "unavailable_metrics": dict(UNAVAILABLE_METRICS)}


def net_config(c: LightningDiTConfig, backbone: dict[str, Any] | None) -> LightningDiTNetConfig:
    """The net's config: sizes from the run config's ``backbone`` section (``{"preset": ..., **params}``, as
    ``MethodContext.backbone``; dlbench's ``tiny`` when empty), LightningDiT switches from ``c``."""
    from dlbench.nn.denoiser import resolve_backbone

    params = dict(backbone or {})
    preset = params.pop("preset", None) or "tiny"
    if isinstance(params.get("params"), dict):  # {"preset": ..., "params": {...}} (a run-config section)
        params = {**{k: v for k, v in params.items() if k != "params"}, **params["params"]}
    bb = resolve_backbone(preset, **params)
    try:
        return LightningDiTNetConfig(
            width=bb.width, depth=bb.depth, heads=bb.heads, mlp_ratio=bb.mlp_ratio, dropout=bb.dropout,
            pos_embedding=bb.pos_embedding if c.abs_pos else "none",
            time_scale=c.time_scale if c.time_scale is not None else bb.time_scale,
            patch_size=c.patch_size, norm=c.norm, mlp=c.mlp, rope=c.rope, qk_norm=c.qk_norm,
        )
    except ValueError as exc:
        raise LightningDiTError(f"lightningdit backbone: {exc}") from None

