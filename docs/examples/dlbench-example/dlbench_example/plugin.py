"""A complete third-party plugin: one noise schedule and one method, registered through hooks.

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
    Method,
    MethodContext,
    MethodRequirements,
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
    register("power-logsnr", PowerLogSNR)


@hookimpl
def register_methods(register):
    register("unigram", Unigram)
