"""A complete third-party plugin: two noise schedules, a tokenizer regularizer and a method, registered through hooks.

The schedules and the regularizer are used *inside the built-in methods* by name, selected on the command
line (docs/plugins.md): ``dlbench run vqlcmd --set method.schedule=power-logsnr``, ``dlbench run vq-diffusion
--set method.schedule=cosine-mask``, ``dlbench run vq-diffusion --set tokenizer.regularizers='["code-balance"]'``.

The method, ``unigram``, is the simplest honest generator over token grids: it learns the marginal
distribution of tokens at each grid position (optionally per class) and samples positions
independently. It is a useful floor for any comparison: a diffusion model that does not beat it has
not learned spatial structure.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from dlbench import hookimpl
from dlbench.interfaces import (
    ComponentConfig,
    ContinuousSchedule,
    DiscreteSchedule,
    Method,
    MethodContext,
    MethodRequirements,
    Regularizer,
)


class PowerLogSNRConfig(ComponentConfig):
    power: float = Field(2.0, gt=0, description="exponent of the noise level")
    logsnr_max: float = Field(10.0, gt=0, description="log-SNR at t = 0 (and -logsnr_max at t = 1)")


class PowerLogSNR(ContinuousSchedule):
    """Power-law schedule: sigma^2 = t^power, clipped to a finite log-SNR range."""

    Config = PowerLogSNRConfig

    def __init__(self, config: PowerLogSNRConfig):
        self.config = config

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        # sigma^2 = t^p, alpha^2 = 1 - t^p  ->  lambda = log((1 - t^p) / t^p)
        eps = math.exp(-self.config.logsnr_max)
        s2 = t.clamp(0, 1).pow(self.config.power).clamp(eps / (1 + eps), 1 / (1 + eps))
        return torch.log1p(-s2) - torch.log(s2)


class CosineMaskConfig(ComponentConfig):
    gamma_bar_end: float = Field(0.9, gt=0, lt=1, description="share of [MASK] at t = T")
    alpha_bar_end: float = Field(1e-5, gt=0, lt=0.1, description="share of tokens kept at t = T")


class CosineMask(DiscreteSchedule):
    """Mask-and-replace with cosine-warped cumulative curves: few tokens change at small t.

    ``w(t) = 1 - cos(pi/2 (t-1)/(T-1))``; ``alpha_bar = 1 - w (1 - alpha_bar_end)``, ``gamma_bar = w gamma_bar_end``
    (nearly 0 at t = 1), ``K beta_bar = 1 - alpha_bar - gamma_bar``; one-step values from consecutive ratios
    (``alpha_t = alpha_bar_t / alpha_bar_{t-1}``, ``1 - gamma_t = (1 - gamma_bar_t) / (1 - gamma_bar_{t-1})``).
    """

    Config = CosineMaskConfig

    def __init__(self, config: CosineMaskConfig | None = None):
        self.config = config or CosineMaskConfig()

    def coefficients(self, num_steps: int, num_classes: int) -> dict[str, torch.Tensor]:
        c = self.config
        frac = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
        w = (1 - torch.cos(0.5 * math.pi * frac)).clamp_min(1e-6)  # > 0 at t = 1: beta_bar must be positive
        alpha_bar = 1 - w * (1 - c.alpha_bar_end)
        gamma_bar = w * c.gamma_bar_end
        beta_bar = (1 - alpha_bar - gamma_bar) / num_classes
        alpha = alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        gamma = 1 - (1 - gamma_bar) / (1 - torch.cat([torch.zeros(1, dtype=torch.float64), gamma_bar[:-1]]))
        beta = (1 - alpha - gamma) / num_classes
        return dict(alpha=alpha, beta=beta, gamma=gamma, alpha_bar=alpha_bar, beta_bar=beta_bar, gamma_bar=gamma_bar)


class CodeBalanceConfig(ComponentConfig):
    weight: float = Field(0.05, ge=0, description="weight of the term in the tokenizer loss")
    temperature: float = Field(1.0, gt=0, description="temperature of the learned logit scale's start")


class CodeBalance(Regularizer):
    """Tokenizer regularizer: KL(mean soft code distribution || uniform), with a learned logit scale.

    The scale is the regularizer's own parameter: it trains with the tokenizer and is saved in its checkpoint."""

    Config = CodeBalanceConfig
    stage: ClassVar = "tokenizer"

    def __init__(self, config: CodeBalanceConfig | None = None):
        super().__init__()
        self.config = config or CodeBalanceConfig()
        self.log_scale = nn.Parameter(torch.tensor(-math.log(self.config.temperature)))

    def forward(self, logits: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        # logits "b h w k": the tokenizer's per-position code logits (dlbench.interfaces.Regularizer)
        p = torch.softmax(logits.float() * self.log_scale.exp(), dim=-1).reshape(-1, logits.shape[-1]).mean(0)
        return (p * (p.clamp_min(1e-12).log() + math.log(p.numel()))).sum()


class UnigramConfig(ComponentConfig):
    smoothing: float = Field(1.0, ge=0, description="weight of an L2 pull of the logits toward uniform "
                             "(plays the role of add-alpha smoothing of the counts)")
    temperature: float = Field(1.0, gt=0)


class Unigram(Method):
    """Per-position token marginals (optionally per class); positions sampled independently."""

    Config = UnigramConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements(inputs="token_ids", conditioning="optional")
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"training": {"steps": 5}},
        "default": {"training": {"steps": 200}},
    }

    def __init__(self, config: UnigramConfig, *, context: MethodContext):
        super().__init__()
        self.config = config
        self.k = context.codebook_size
        self.grid = context.token_grid
        rows = (context.num_classes or 0) + 1  # last row: unconditional
        n = self.grid[0] * self.grid[1]
        # learned logits trained by maximum likelihood, so the generic training loop applies
        self.logits = nn.Parameter(torch.zeros(rows, n, self.k))

    def _rows(self, labels: torch.Tensor | None, b: int) -> torch.Tensor:
        """Row of ``self.logits`` per sample: the label, or the unconditional row for ``None``/``-1``."""
        null = self.logits.shape[0] - 1
        if labels is None:
            return torch.full((b,), null, dtype=torch.long, device=self.logits.device)
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.logits.device)
        # an out-of-range label would silently become another class (or the unconditional row)
        if len(labels) != b or ((labels < -1) | (labels >= null)).any():
            allowed = f"class ids in [0, {null}) or -1 (unlabelled)" if null else "-1 (built without classes)"
            raise ValueError(f"unigram: labels must be {b} {allowed}, or None; got {labels.tolist()}")
        return torch.where(labels < 0, torch.full_like(labels, null), labels)

    def loss(self, tokens, labels):
        b = tokens.shape[0]
        flat = tokens.reshape(b, -1)
        cond = self.logits[self._rows(labels, b)]  # "b n k"
        uncond = self.logits[-1].expand_as(cond)
        nll_c = nn.functional.cross_entropy(cond.reshape(-1, self.k), flat.reshape(-1))
        nll_u = nn.functional.cross_entropy(uncond.reshape(-1, self.k), flat.reshape(-1))
        reg = self.config.smoothing * 1e-4 * self.logits.pow(2).mean()
        return nll_c + nll_u + reg, {"nll_cond": nll_c.detach(), "nll_uncond": nll_u.detach()}

    @torch.no_grad()
    def sample(self, labels, seeds, *, num_samples=None, steps=None, guidance=1.0, callback=None, **options):
        from dlbench.seeding import PerSampleRNG

        if options:  # never ignore a sampler option silently
            raise ValueError(f"unigram: unknown sampling options {sorted(options)}; it takes only guidance")
        b = len(seeds)
        rows = self._rows(labels, b)
        logp = torch.log_softmax(self.logits[rows] / self.config.temperature, -1)  # "b n k"
        if labels is not None and guidance != 1.0:
            un = torch.log_softmax(self.logits[-1] / self.config.temperature, -1)
            logp = torch.log_softmax(un + guidance * (logp - un), -1)
        g = PerSampleRNG(seeds, device=logp.device).gumbel(*logp.shape[1:])
        tokens = (logp + g).argmax(-1)
        return tokens.reshape(b, *self.grid)

    def nfe(self, steps=None, guidance=1.0, **options):
        return 0  # no network: one table lookup per sample


@hookimpl
def register_schedules(register):
    register("power-logsnr", PowerLogSNR)  # continuous: fits VQ-LCMD's schedule slot
    register("cosine-mask", CosineMask)  # discrete: fits VQ-Diffusion's schedule slot


@hookimpl
def register_regularizers(register):
    register("code-balance", CodeBalance)  # tokenizer stage: fits tokenizer.regularizers


@hookimpl
def register_methods(register):
    register("unigram", Unigram)
