"""VQ-LCMD: latent consistency-matching diffusion over learnable token embeddings (METHODS.md §A), + ablations.

One class, :class:`VQLCMD`, composes a continuous schedule and an embedding strategy (component slots: any
registered ``schedule`` of the continuous family and any ``embedding``, built through ``MethodContext.build``;
defaults ``shifted-cosine`` and ``learnable``), the shared denoiser (input = embeddings, output = token logits), the pure
losses of :mod:`.losses` and the regularizers of :mod:`.regularizers`. The ablations are the same class with
other config defaults (``csdm``, ``vqlcmd-nodrop``, ``vqlcmd-noshift``, ``fixed-embedding``).

Every reconstructed choice (METHODS.md §A is partly [recon]) is a config field; docs/methods/vqlcmd.md says
which default dlbench uses and why.

Longer than ~350 lines on purpose: it is the one class of the method (config, training step, sampling,
likelihood bound, diagnostics) over the pure modules (losses, targets, weighting, sampler, likelihood), and
splitting the class itself would scatter its state; the ablation configs at the end are a few lines each.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

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
from dlbench.nn.ema import ema_update
from dlbench.registry import DlbenchError
from dlbench.schedules.continuous import diffuse

from .legacy import legacy_slot_fields
from .losses import denoising_ce, diffusion_loss, expected_embedding, prior_kl, reconstruction_ce
from .presets import forwards_per_step, method_presets
from .regularizers import ConsistencyMatching, RandomDropping
from .sampler import sample_ddim, sampling_times
from .targets import cm_point, cm_time
from .weighting import diffusion_weight

__all__ = ["CSDM", "FixedEmbedding", "VQLCMD", "VQLCMDConfig", "VQLCMDNoDrop", "VQLCMDNoShift", "VQLCMDError"]


class VQLCMDError(DlbenchError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


class VQLCMDConfig(ComponentConfig):
    """VQ-LCMD options; ``[recon]`` marks choices the paper body did not pin down (METHODS.md §A.4)."""

    # embedding strategy and schedule (§A.1): slots for any registered component of the kind
    embedding: Annotated[ComponentRef, Slot("embedding")] = ref("learnable", dim=16, normalize=True, init_std=1.0)
    embed_lr_scale: float = Field(
        10.0, gt=0.0, description="learning rate of the table / the model's (Plaid, CDCD: ~10x) [recon]"
    )
    schedule: Annotated[ComponentRef, Slot("schedule", family="continuous")] = ref("shifted-cosine", shift=-2.0)
    t_min: float = Field(1e-3, gt=0.0, lt=1.0, description="training/sampling times are drawn from [t_min, t_max]")
    t_max: float = Field(1.0 - 1e-3, gt=0.0, lt=1.0)
    # loss weights (§A.2) [recon: "re-weighting", values unknown]
    w_rec: float = Field(1.0, ge=0.0)
    w_dm: float = Field(1.0, ge=0.0)
    w_prior: float = Field(1.0, ge=0.0)
    w_cm: float = Field(1.0, ge=0.0)
    dm_objective: Literal["mse", "ce"] = Field(
        "ce", description="L_DM: w(t) ||z0 - P E||^2 in embedding space, or CDCD's w(t) CE(P(x|z_t), x)"
    )
    dm_weighting: Literal["elbo", "sigmoid", "constant"] = Field(
        "constant", description="time weight w(t): VDM ELBO, sigmoid x ELBO (Kingma & Gao 2023), or 1"
    )
    sigmoid_bias: float = Field(0.0, description="b of the sigmoid weighting")
    max_weight: float | None = Field(None, gt=0.0, description="clamp of the L_DM time weight (None = none)")
    # consistency matching (§A.2.4) [recon]
    cm_divergence: Literal["kl", "ce"] = "kl"
    cm_zs: Literal["ddim", "same-noise"] = Field(
        "same-noise", description="z_s: CT-style alpha_s z0 + sigma_s eps, or one stop-grad DDIM step from z_t"
    )
    cm_step_model: Literal["student", "teacher"] = Field(
        "student", description="'ddim' z_s: x0_hat from the detached student logits at t (free) or a teacher pass"
    )
    cm_s_sampling: Literal["uniform", "delta"] = Field("uniform", description="s ~ U[t_min, t) or s = t - delta")
    cm_delta: float = Field(0.1, gt=0.0, lt=1.0)
    teacher: Literal["ema", "stopgrad"] = Field("ema", description="EMA copy of denoiser+embedding, or sg(live)")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0, description="teacher EMA decay per on_step_end()")
    # cost and self-conditioning
    rec_fraction: float = Field(
        0.125, gt=0.0, le=1.0, description="share of the batch that also gets the t_min reconstruction pass"
    )
    self_condition: bool = Field(False, description="CDCD/Plaid self-conditioning on a detached first x0_hat")
    self_condition_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of samples trained with it")
    # random dropping (§A.2.5) and CFG (§A.2.6)
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0, description="m_RD [recon: 0.1-0.3]")
    drop_mode: Literal["learned", "noise"] = "learned"
    label_dropout: float = Field(0.1, ge=0.0, le=1.0, description="p(null label) for classifier-free guidance")
    # sampling (§A.3)
    sample_steps: int = Field(50, ge=1, description="default DDIM steps (ImageNet: 50; FFHQ/LSUN: 200)")
    sample_temperature: float = Field(1.0, gt=0.0, description="softmax temperature of z0_hat (<1 sharpens)")
    # diagnostics (§A.5)
    diag_t: float = Field(0.5, gt=0.0, lt=1.0, description="reference t whose sigma scales collapse distances")
    ce_curve_points: int = Field(11, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, data: Any) -> Any:
        return legacy_slot_fields(cls, data)

    @model_validator(mode="after")
    def _check(self):
        if not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be < t_max ({self.t_max})")
        if self.w_cm > 0 and self.cm_step_model == "teacher" and self.cm_zs != "ddim":
            raise ValueError("cm_step_model='teacher' only applies to cm_zs='ddim'; set cm_step_model='student'")
        return self


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


class VQLCMD(Method):
    """VQ-LCMD: continuous diffusion on a jointly learned token embedding with consistency matching."""

    Config = VQLCMDConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements(inputs="embeddings", conditioning="optional")
    #: `compare --tune-sampling` grid (METHODS.md §A.3): z0_hat softmax temperature, guidance scale
    sampler_grid: ClassVar[dict[str, list[Any]]] = {"options.temperature": [0.7, 0.85, 1.0], "guidance": [1.0, 1.5]}
    presets: ClassVar[dict[str, dict[str, Any]]] = method_presets(VQLCMDConfig())

    def __init__(self, config: VQLCMDConfig | None = None, *, context: MethodContext):
        super().__init__()
        self.config = c = config if config is not None else self.Config()
        self.context = context
        self.codebook_size, self.grid = int(context.codebook_size), tuple(context.token_grid)
        self.num_classes = context.num_classes
        self.schedule = context.build(c, "schedule")
        self.embedding = context.build(c, "embedding", codebook_size=self.codebook_size, tokenizer=context.tokenizer)
        d = self.embedding.dim
        self.denoiser = build_denoiser(
            dict(context.backbone or {"preset": "tiny"}),
            grid=self.grid,
            out_dim=self.codebook_size,
            input="embeddings",
            # self-conditioning feeds [z_t, x0_hat_prev] ("b h w 2d"; CDCD Sec. 3.5, Plaid)
            in_dim=2 * d if c.self_condition else d,
            num_classes=self.num_classes,
        )
        self.dropping = RandomDropping(RandomDropping.Config(rate=c.drop_rate, mode=c.drop_mode, dim=d))
        self.cm = ConsistencyMatching(ConsistencyMatching.Config(weight=c.w_cm, divergence=c.cm_divergence))
        self.teacher: nn.ModuleDict | None = None
        if c.w_cm > 0 and c.teacher == "ema":
            self.teacher = nn.ModuleDict({"denoiser": copy.deepcopy(self.denoiser), "embedding": copy.deepcopy(self.embedding)})
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    # -- training ------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the target network never uses dropout
        return self

    @torch.no_grad()
    def on_step_end(self) -> None:
        """EMA update of the teacher (denoiser + embedding) from the live model; call after each optimizer step."""
        if self.teacher is None:
            return
        live = nn.ModuleDict({"denoiser": self.denoiser, "embedding": self.embedding})
        ema_update(self.teacher, live, self.config.ema_decay)  # same rule as the run's EMA (dlbench.nn.ema)

    def _teacher_parts(self) -> tuple[nn.Module, nn.Module]:
        if self.teacher is not None:
            return self.teacher["denoiser"], self.teacher["embedding"]
        return self.denoiser, self.embedding  # "stopgrad": the live model under no_grad

    def _labels_in(self, labels: torch.Tensor | None, b: int, device) -> torch.Tensor | None:
        if self.num_classes is None:
            if labels is not None and bool((labels >= 0).any()):
                raise VQLCMDError("this VQ-LCMD model is unconditional (num_classes=None) but got class labels")
            return None
        if labels is None:
            return torch.full((b,), self.num_classes, dtype=torch.long, device=device)
        return drop_labels(labels, self.config.label_dropout if self.training else 0.0, num_classes=self.num_classes)

    def _sample_s(self, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        return cm_time(t, c.t_min, c.cm_s_sampling, c.cm_delta)

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter-name prefix, read by ``dlbench.train.loop.make_optimizer``
        (one param group per multiplier): the table trains ``embed_lr_scale`` times faster than the network."""
        return {"embedding": self.config.embed_lr_scale}

    def denoise(
        self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, x0_prev: torch.Tensor | None = None,
        *, net: nn.Module | None = None,
    ) -> torch.Tensor:
        """Logits ``"b h w k"`` of ``net`` (default: the live denoiser) at ``z "b h w d"``, ``t "b"``.

        With ``self_condition`` the input is ``[z, x0_prev]`` on the last axis (``x0_prev`` = zeros when None,
        i.e. "no previous estimate"); without it ``x0_prev`` is ignored. Every network call goes through here.
        """
        net = self.denoiser if net is None else net
        if self.config.self_condition:
            z = torch.cat([z, torch.zeros_like(z) if x0_prev is None else x0_prev.to(z.dtype)], dim=-1)
        return net(z, t, y)

    def _self_condition_input(self, z_t_in, t, y, table) -> torch.Tensor | None:
        """Detached ``x0_hat`` from a no-grad first pass for a random ``self_condition_rate`` share of the batch
        (zeros elsewhere), ``"b h w d"``; None when self-conditioning is off."""
        c = self.config
        if not c.self_condition:
            return None
        x0_prev = torch.zeros_like(z_t_in)
        use = torch.rand(z_t_in.shape[0], device=z_t_in.device) < c.self_condition_rate
        if bool(use.any()):
            with torch.no_grad():
                first = self.denoise(z_t_in[use], t[use], None if y is None else y[use])
                x0_prev[use] = expected_embedding(first.float(), table.detach()).to(x0_prev.dtype)
        return x0_prev

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L = w_rec L_rec + w_dm L_DM + w_prior L_prior + w_cm L_CM`` (METHODS.md §A.2, training step)."""
        c, sch = self.config, self.schedule
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != self.grid:
            raise VQLCMDError(f"tokens must be 'b h w' with (h, w)={self.grid}, got {tuple(tokens.shape)}")
        b, dev = tokens.shape[0], tokens.device
        y = self._labels_in(labels, b, dev)
        table = self.embedding.weight()
        z0 = F.embedding(tokens, table)  # "b h w d"

        t = c.t_min + (c.t_max - c.t_min) * torch.rand(b, device=dev)
        eps = torch.randn_like(z0)
        a_t, s_t = sch.alpha_sigma(t)
        z_t = diffuse(z0, eps, a_t, s_t)
        z_t_in, mask = self.dropping.drop(z_t)

        # the t_min reconstruction term is near-trivial (~1e-3 nats): a rec_fraction share of the batch suffices
        n_rec = max(1, round(b * c.rec_fraction))
        rec = torch.randperm(b, device=dev)[:n_rec]  # a random subset: batches need not be shuffled
        t0 = torch.full((n_rec,), c.t_min, device=dev, dtype=t.dtype)
        a_0, s_0 = sch.alpha_sigma(t0)
        z_min = diffuse(z0[rec], torch.randn_like(z0[rec]), a_0, s_0)
        x0_prev = self._self_condition_input(z_t_in, t, y, table)
        x0_prev_all = None if x0_prev is None else torch.cat([x0_prev, torch.zeros_like(z_min)])

        # one batched pass for the diffusion time t and the reconstruction time t_min
        logits = self.denoise(
            torch.cat([z_t_in, z_min]), torch.cat([t, t0]), None if y is None else torch.cat([y, y[rec]]),
            x0_prev_all,
        )
        logits_t, logits_0 = logits[:b], logits[b:]

        l_rec = reconstruction_ce(logits_0, tokens[rec])
        w = diffusion_weight(
            sch.logsnr(t), sch.dlogsnr(t), c.dm_weighting, sigmoid_bias=c.sigmoid_bias, max_weight=c.max_weight
        )
        if c.dm_objective == "ce":
            l_dm = denoising_ce(logits_t, tokens, w)
        else:
            l_dm = diffusion_loss(z0, expected_embedding(logits_t.float(), table), w)
        a_1, s_1 = sch.alpha_sigma(torch.tensor(c.t_max, device=dev))
        l_prior = prior_kl(z0, a_1, s_1)
        total = c.w_rec * l_rec + c.w_dm * l_dm + c.w_prior * l_prior
        terms = {"rec": l_rec.detach(), "dm": l_dm.detach(), "prior": l_prior.detach()}
        if c.w_cm > 0:
            l_cm = self._consistency(tokens, z0, z_t, eps, t, y, logits_t, table)
            total = total + c.w_cm * l_cm
            terms["cm"] = l_cm.detach()
        if c.drop_rate > 0:
            terms["drop_frac"] = self.dropping(mask=mask)
        terms["loss"] = total.detach()
        return total, terms

    def _consistency(self, tokens, z0, z_t, eps, t, y, logits_t, table) -> torch.Tensor:
        """L_CM between the student at ``t`` and the stop-grad teacher at ``s < t`` (METHODS.md §A.2.4)."""
        c, sch = self.config, self.schedule
        s = self._sample_s(t)
        t_den, t_emb = self._teacher_parts()
        with torch.no_grad():
            a_s, s_s = sch.alpha_sigma(s)
            a_t, s_t = sch.alpha_sigma(t)
            x0_hat = None
            if c.cm_zs == "ddim":
                if c.cm_step_model == "teacher":
                    x0_hat = expected_embedding(self.denoise(z_t.detach(), t, y, net=t_den).float(), t_emb.weight())
                else:
                    x0_hat = expected_embedding(logits_t.detach().float(), table.detach())
            z_s = cm_point(c.cm_zs, z0=z0.detach(), eps=eps, z_t=z_t, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s,
                           sigma_s=s_s, x0_hat=x0_hat)
            # the teacher sees no self-conditioning input: its target is the plain posterior at s
            teacher_logits = self.denoise(z_s, s, y, net=t_den)
        return self.cm(student_logits=logits_t, teacher_logits=teacher_logits)

    @property
    def forwards_per_step(self) -> float:
        """Forward+backward equivalents per training step of this config (:func:`forwards_per_step`)."""
        return forwards_per_step(self.config)

    # -- sampling --------------------------------------------------------------------------------
    def nfe(self, steps: int | None = None, guidance: float = 1.0, **options: Any) -> int:
        """One network call per DDIM step, two with guidance on a conditional model (``temperature`` costs nothing)."""
        steps = steps or self.config.sample_steps
        return steps * (2 if (guidance != 1.0 and self.num_classes is not None) else 1)

    def _posterior(self, labels: torch.Tensor | None, guidance: float):
        """``(z, t) -> logits`` with classifier-free guidance on logits ``l_null + w (l_y - l_null)`` (§A.3).

        With self-conditioning the closure keeps the previous call's ``x0_hat = softmax(l) E`` and feeds it to
        the next one (the sampler evaluates decreasing times in order), as CDCD/Plaid sample."""
        state: dict[str, torch.Tensor | None] = {"x0": None}

        def guided(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            b, prev = z.shape[0], state["x0"]
            if labels is None or self.num_classes is None:
                return self.denoise(z, t, None, prev)
            null = torch.full_like(labels, self.num_classes)
            if guidance == 1.0:
                return self.denoise(z, t, labels, prev)
            prev2 = None if prev is None else torch.cat([prev, prev])
            both = self.denoise(torch.cat([z, z]), torch.cat([t, t]), torch.cat([labels, null]), prev2)
            l_y, l_null = both[:b], both[b:]
            return l_null + guidance * (l_y - l_null)

        def posterior(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = guided(z, t)
            if self.config.self_condition:
                state["x0"] = expected_embedding(logits.float(), self.embedding.weight().float())
            return logits

        return posterior

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
        """DDIM in embedding space from ``z_{t_max} ~ N(0, I)`` (per-sample seeds), argmax tokens (§A.3).

        Options: ``temperature`` (softmax temperature of ``z0_hat``, default ``config.sample_temperature``).
        """
        from dlbench.seeding import PerSampleRNG

        unknown = set(options) - {"temperature"}
        if unknown:
            raise VQLCMDError(f"unknown VQ-LCMD sampling options {sorted(unknown)}; known: ['temperature']")
        n = len(labels) if labels is not None else num_samples
        if n is None:
            raise VQLCMDError("sample() needs labels or num_samples")
        if len(seeds) != n:
            raise VQLCMDError(f"got {len(seeds)} seeds for {n} samples; pass one seed per sample")
        if labels is not None and self.num_classes is None:
            raise VQLCMDError("this VQ-LCMD model is unconditional; call sample(labels=None, num_samples=...)")
        dev = next(self.denoiser.parameters()).device
        was_training = self.training
        self.eval()
        try:
            h, w = self.grid
            z = PerSampleRNG(seeds, dev).randn(h, w, self.embedding.dim)
            times = sampling_times(steps or self.config.sample_steps, self.config.t_min, self.config.t_max, device=dev)
            tokens, _ = sample_ddim(
                self._posterior(None if labels is None else labels.to(dev), guidance),
                z,
                times,
                self.schedule,
                self.embedding.weight().float(),
                temperature=float(options.get("temperature", self.config.sample_temperature)),
                callback=callback,
            )
        finally:
            self.train(was_training)
        return tokens

    def nll_bound(self, tokens: torch.Tensor, labels: torch.Tensor | None, *, mc: int = 1, seed: int = 0) -> NLLBound:
        """Continuous-time ELBO in nats/token; one draw = 8 log-SNR strata per grid (:mod:`.likelihood`)."""
        from .likelihood import elbo_per_grid

        was_training = self.training
        self.eval()
        try:
            y = None if labels is None or self.num_classes is None else labels.to(tokens.device)
            terms = elbo_per_grid(self._posterior(y, 1.0), self.embedding.weight(), self.schedule, tokens,
                                  t_min=self.config.t_min, t_max=self.config.t_max, num_t=8 * mc,
                                  generator=torch.Generator().manual_seed(seed))
        finally:
            self.train(was_training)
        return NLLBound.from_per_grid(terms["total"], f"vq-lcmd continuous-time ELBO, {8 * mc} log-SNR strata/grid")

    # -- diagnostics ------------------------------------------------------------------------------
    def reference_sigma(self) -> float:
        _, sigma = self.schedule.alpha_sigma(torch.tensor(self.config.diag_t, dtype=torch.float64))
        return float(sigma)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Collapse diagnostics of the table relative to sigma(diag_t) (METHODS.md §A.5), keys ``embed/...``."""
        out = {f"embed/{k}": v for k, v in self.embedding.diagnostics(self.reference_sigma()).items()}
        out["embed/sigma_ref"] = self.reference_sigma()
        return out

    @torch.no_grad()
    def ce_curve(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, *, points: int | None = None, seed: int = 0
    ) -> dict[str, list[float]]:
        """``CE(t) = -mean log P(x | z_t; t)`` over a grid of ``t`` on held-out tokens (METHODS.md §A.5)."""
        c = self.config
        was_training = self.training
        self.eval()
        try:
            dev = tokens.device
            gen = torch.Generator(device="cpu").manual_seed(seed)
            y = None if self.num_classes is None or labels is None else labels.to(dev)
            table = self.embedding.weight()
            z0 = F.embedding(tokens, table)
            eps = torch.randn(z0.shape, generator=gen).to(dev, z0.dtype)
            ts = torch.linspace(c.t_min, c.t_max, points or c.ce_curve_points).tolist()
            ces, accs = [], []
            for tv in ts:
                t = torch.full((tokens.shape[0],), tv, device=dev)
                a, s = self.schedule.alpha_sigma(t)
                logits = self.denoise(diffuse(z0, eps, a, s), t, y)
                ces.append(reconstruction_ce(logits, tokens).item())
                accs.append((logits.argmax(-1) == tokens).float().mean().item())
        finally:
            self.train(was_training)
        return {"t": ts, "ce": ces, "accuracy": accs}

    def end_of_training_report(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        curve = self.ce_curve(tokens, labels)
        return {
            "ce_curve": curve,
            "reconstruction_accuracy": curve["accuracy"][0],
            "uniform_ce": math.log(self.codebook_size),
            **self.diagnostics(),
        }


# ---------------------------------------------------------------------------------------------
# Ablations: same class, other defaults (METHODS.md "Minimal CPU-scale versions / A")
# ---------------------------------------------------------------------------------------------


class CSDMConfig(VQLCMDConfig):
    """Reconstruction + diffusion only, unshifted cosine, no dropping: the collapse-prone baseline.

    Keeps the L2 score-matching objective on an unnormalised table (the setting in which the paper reports
    collapse), whatever VQ-LCMD's own defaults are."""

    embedding: Annotated[ComponentRef, Slot("embedding")] = ref("learnable", dim=16, normalize=False, init_std=1.0)
    dm_objective: Literal["mse", "ce"] = "mse"
    schedule: Annotated[ComponentRef, Slot("schedule", family="continuous")] = ref("cosine")
    w_prior: float = Field(0.0, ge=0.0)
    w_cm: float = Field(0.0, ge=0.0)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)


class CSDM(VQLCMD):
    """CSDM: continuous diffusion on learned embeddings, L_rec + L_DM only (collapse-prone baseline)."""

    Config = CSDMConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = method_presets(CSDMConfig())  # no teacher: more benchmark steps


class NoDropConfig(VQLCMDConfig):
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)


class VQLCMDNoDrop(VQLCMD):
    """VQ-LCMD without random dropping (m_RD = 0)."""

    Config = NoDropConfig


class NoShiftConfig(VQLCMDConfig):
    schedule: Annotated[ComponentRef, Slot("schedule", family="continuous")] = ref("shifted-cosine", shift=0.0)


class VQLCMDNoShift(VQLCMD):
    """VQ-LCMD with the unshifted cosine schedule (s = 0)."""

    Config = NoShiftConfig


class FixedEmbeddingConfig(VQLCMDConfig):
    embedding: Annotated[ComponentRef, Slot("embedding")] = ref("codebook", standardize=True)


class FixedEmbedding(VQLCMD):
    """VQ-LCMD losses on the tokenizer's frozen (standardised) codebook vectors instead of a learned table."""

    Config = FixedEmbeddingConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = method_presets(FixedEmbeddingConfig())  # no table size to set
    requires: ClassVar[MethodRequirements] = MethodRequirements(
        inputs="embeddings", conditioning="optional", needs_codebook=True
    )
