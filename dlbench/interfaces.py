"""The component kinds of dlbench: small, tensor-level interfaces.

Every component is a class registered under a canonical name ``kind/name`` through a plugin hook
(see :mod:`dlbench.hookspecs`). A component class carries a pydantic ``Config`` model
(``extra="forbid"``) and is built as ``cls(config, **context)``; the context keywords per kind are
listed on each ABC below.

Registration checks the interface *structurally* (the methods listed in ``REQUIRED`` exist and are
callable), so a third-party class does not have to inherit from these ABCs -- inheriting is still the
easy way to get the docs and defaults.

Shapes use einops notation: ``b`` batch, ``c`` channels, ``H W`` pixels, ``h w`` token grid,
``n = h*w`` positions, ``k`` codebook size, ``d`` embedding dim.

Longer than ~350 lines on purpose: this one file is the whole contract a plugin author reads (every kind's
interface, component references and slots, the method context and protocol), mostly docstrings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


# ---------------------------------------------------------------------------------------------
# Component references and slots
# ---------------------------------------------------------------------------------------------


class ComponentRef(BaseModel):
    """A registered component by name plus its own parameters, ``{name, params}``.

    A plain string is short for ``{"name": string}`` (``--set method.schedule=cosine``). ``params`` are
    validated by the component's ``Config`` (``extra="forbid"``) when the run config is resolved.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


@dataclass(frozen=True)
class Slot:
    """Marks a component-config field as a slot for a registered component of ``kind``.

    Declared as ``Annotated[ComponentRef, Slot("schedule", family="continuous")]`` (one component) or
    ``Annotated[list[ComponentRef], Slot("regularizer", stage="tokenizer")]`` (several). ``family``
    (schedules: ``continuous``/``discrete``) and ``stage`` (regularizers: ``tokenizer``/``generator``)
    narrow what fits; a component that does not fit is refused when the run config is resolved.
    Slots are built through :meth:`MethodContext.build` (or :func:`dlbench.registry.build_ref`).
    """

    kind: str
    family: str | None = None
    stage: str | None = None


def ref(name: str, **params: Any) -> Any:
    """A slot field's default ``{name, params}`` (``schedule: Annotated[...] = ref("cosine")``)."""
    return Field(default_factory=lambda: ComponentRef(name=name, params=dict(params)))


def config_slots(config_cls: type[BaseModel]) -> dict[str, tuple[Slot, bool]]:
    """``{field name: (Slot, holds a list)}`` of a config model class."""
    out: dict[str, tuple[Slot, bool]] = {}
    for name, info in config_cls.model_fields.items():
        slot = next((m for m in info.metadata if isinstance(m, Slot)), None)
        if slot is not None:
            out[name] = (slot, getattr(info.annotation, "__origin__", None) is list)
    return out


def _partial_ref(value: Any, default: Any) -> Any:
    """A slot value given without a name (``{"params": {...}}``, as presets and ``--set slot.params.x=1``
    write) keeps the default component and updates its params."""
    if isinstance(value, dict) and "name" not in value and isinstance(default, ComponentRef):
        return {"name": default.name, "params": {**default.params, **(value.get("params") or {})},
                **{k: v for k, v in value.items() if k != "params"}}
    return value


class ComponentConfig(BaseModel):
    """Base of every component config: unknown fields are errors, never silently ignored."""

    # NaN/inf are never a meaningful setting (lr=inf "validates" with gt=0, then diverges at step 1)
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _slot_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, (_, many) in config_slots(cls).items():
                if name in data and not many:
                    info = cls.model_fields[name]
                    default = info.default_factory() if info.default_factory is not None else info.default
                    data = {**data, name: _partial_ref(data[name], default)}
        return data


class EmptyConfig(ComponentConfig):
    """Config of a component without options."""


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer(nn.Module, ABC):
    """Maps images to a grid of discrete token ids and back (VQ-VAE style).

    Built as ``cls(config, channels=int, resolution=int)``.
    Images are float in [-1, 1], ``"b c H W"``; tokens are long ``"b h w"`` in ``[0, codebook_size)``.

    ``latent_kind``: ``"discrete"`` (token ids, as above) or ``"continuous"``: ``encode`` gives float latents
    ``"b h w d"`` (``d = latent_dim``), ``codebook_size`` is 0, and only methods with ``requires.inputs ==
    "latents"`` train on them (the runner caches them as float arrays; docs/methods/vavae.md).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("encode", "decode", "codebook", "token_grid", "training_loss")
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    codebook_size: int
    #: where imported weights came from (a released checkpoint), None when dlbench trains the tokenizer
    imported: dict[str, Any] | None = None

    @property
    def pretrained(self) -> bool:
        """True when the weights were imported: the runner then skips tokenizer training."""
        return self.imported is not None

    #: ``"discrete"``: ``encode`` gives token ids (the default); ``"continuous"``: float latents ``"b h w d"``
    #: (e.g. ``kl-vae``), for methods whose ``requires.inputs`` is ``"latents"``
    latent_kind: ClassVar[Literal["discrete", "continuous"]] = "discrete"

    def prepare_training(self) -> None:
        """Called before the tokenizer's training loads any data: build (or fail on) what training needs beyond
        the weights, e.g. VQGAN's LPIPS network. Default: nothing."""

    def finish_training(self, images: torch.Tensor) -> dict[str, Any] | None:
        """Called once after training with (a sample of) the training images ``"n c H W"``: compute what the
        weights alone do not hold (e.g. a KL-VAE's channel-wise latent statistics, stored as buffers so they are
        cached with the weights). Returns a record for the tokenizer's ``info.json`` or None. Default: nothing."""
        return None

    def run_metadata(self) -> dict[str, Any]:
        """Facts about this tokenizer a run's ``metrics.json`` should carry (e.g. which foundation features a
        VF-aligned latent was aligned to). Default: none."""
        return {}

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``"b c H W" -> "b h w"`` (long)."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``"b h w" -> "b c H W"`` in [-1, 1]."""

    @abstractmethod
    def codebook(self) -> torch.Tensor:
        """The code vectors, ``"k d"`` (for fixed-embedding baselines)."""

    @abstractmethod
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an image of ``height x width`` pixels."""

    @abstractmethod
    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one batch of images and named terms for logging (regularizers add to this)."""


# ---------------------------------------------------------------------------------------------
# Embedding strategy
# ---------------------------------------------------------------------------------------------


class EmbeddingStrategy(nn.Module, ABC):
    """How token ids become what a generator diffuses.

    Built as ``cls(config, codebook_size=int, tokenizer=Tokenizer | None)``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("forward", "weight", "diagnostics")
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    dim: int

    @abstractmethod
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``"b n" -> "b n d"``."""

    @abstractmethod
    def weight(self) -> torch.Tensor:
        """The (effective, e.g. normalised) embedding table ``"k d"``."""

    def diagnostics(self, sigma: float = 1.0) -> dict[str, float]:
        """Collapse diagnostics of the table relative to noise scale ``sigma``."""
        return {}


# ---------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------


class NoiseSchedule(ABC):
    """Marker base of noise schedules. Two families below; built as ``cls(config)``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    #: a schedule implements one of these method sets (continuous or discrete family)
    REQUIRED_ANY: ClassVar[tuple[tuple[str, ...], ...]] = (("logsnr", "alpha_sigma", "dlogsnr"), ("coefficients",))
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    family: ClassVar[Literal["continuous", "discrete"]]


class ContinuousSchedule(NoiseSchedule):
    """Variance-preserving continuous schedule given by its log-SNR ``lambda(t)``, t in [0, 1]."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("logsnr", "alpha_sigma", "dlogsnr")
    family: ClassVar[Literal["continuous", "discrete"]] = "continuous"

    @abstractmethod
    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, same shape as ``t``, finite on [0, 1]."""

    def dlogsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``d lambda / dt``, same shape as ``t`` (the VDM ELBO weight ``-lambda'(t) e^lambda / 2`` needs it;
        METHODS.md §A.2.2). Default: autograd through :meth:`logsnr`; override with the closed form."""
        with torch.enable_grad():
            tt = torch.as_tensor(t).detach().to(torch.get_default_dtype() if not torch.is_floating_point(
                torch.as_tensor(t)) else torch.as_tensor(t).dtype).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.logsnr(tt).sum(), tt)
        return grad

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` with ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``."""
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


class DiscreteSchedule(NoiseSchedule):
    """Discrete-state transition schedule with an absorbing [MASK] state at index K.

    ``coefficients(num_steps, num_classes)`` returns float64 tensors of length ``T`` (index 0 is
    step t=1): per-step ``alpha, beta, gamma`` and cumulative ``alpha_bar, beta_bar, gamma_bar``
    (METHODS.md B.1).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("coefficients",)
    family: ClassVar[Literal["continuous", "discrete"]] = "discrete"

    @abstractmethod
    def coefficients(self, num_steps: int, num_classes: int) -> dict[str, torch.Tensor]:
        ...


# ---------------------------------------------------------------------------------------------
# Regularizers
# ---------------------------------------------------------------------------------------------


class Regularizer(nn.Module, ABC):
    """A named loss term attached to a stage (``tokenizer`` or ``generator``).

    Built as ``cls(config)``. ``forward(**tensors)`` returns a scalar loss (unweighted; the owner
    applies ``config.weight`` when the config has one, else weight 1). Which keyword tensors it reads is
    documented per regularizer; unknown keywords are ignored so one call site serves all.

    Tokenizer stage (``tokenizer.regularizers`` of a run config; the tokenizer's ``add_regularizer``):
    a regularizer is an ``nn.Module`` of the tokenizer, so its own parameters (e.g. a projection head)
    train with the tokenizer's optimizer and are saved in its checkpoint. ``forward`` receives

    - ``images``, ``recon`` ``"b c H W"`` (input and reconstruction, [-1, 1]);
    - ``z_e`` ``"b h w d"`` (encoder output before quantization), ``z_q`` (decoder input),
      ``z_best`` (nearest code vectors), ``z_sampled`` (code vectors of the codes fed to the decoder);
    - ``logits``, ``probs``, ``distances`` ``"b h w k"`` (the tokenizer's per-position code logits,
      their softmax, squared code distances), ``codes`` ``"b h w"`` (nearest codes);
    - ``encoder`` (the tokenizer's encoder module) and ``step`` (tokenizer training step, int).
    - ``rec_loss`` (the scalar reconstruction loss, with its graph) and ``encoder_last_layer`` (the weight of
      the conv that outputs ``z_e``: VA-VAE's adaptive weight compares gradient norms there).

    :meth:`perturb` lets a regularizer change the decoder input during training (the stochastic mask).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("forward",)
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    stage: ClassVar[Literal["tokenizer", "generator"]]

    @abstractmethod
    def forward(self, **tensors: Any) -> torch.Tensor:
        ...

    def perturb(self, *, logits: torch.Tensor, z_q: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor,
                step: int) -> dict[str, torch.Tensor] | None:
        """Tokenizer stage, training only: replace the decoder input before decoding. Receives the code
        ``logits "b h w k"``, the deterministic decoder input ``z_q "b h w d"`` and its ``codes "b h w"``, the
        ``codebook "k d"`` and the training ``step``; returns ``{"z_q", "codes", "mask"}`` (``mask "b h w"``
        bool: positions changed) or None (default: no change)."""
        return None

    def bind(self, tokenizer: nn.Module, latent_channels: int) -> None:
        """Tokenizer stage: called once when the regularizer is attached, before the optimizer exists, with the
        tokenizer and the channel count ``d`` of its pre-quantization latent ``z_e "b h w d"``; a regularizer
        whose own parameters are sized by the tokenizer (VA-VAE's projection) builds them here. Default: nothing."""
        return None


# ---------------------------------------------------------------------------------------------
# Methods (generators over token grids)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodRequirements:
    """What a method needs, so the runner rejects impossible combinations before training.

    ``inputs``: ``token_ids`` (discrete methods), ``embeddings`` (continuous over a table) or ``latents``
    (float latents ``"b h w d"`` of a continuous tokenizer, e.g. ``lightningdit`` on ``kl-vae``).
    ``conditioning``: ``none`` (unconditional only), ``class`` (needs labels), ``optional``.
    ``needs_codebook``: needs ``tokenizer.codebook()`` (fixed-embedding baselines).
    """

    inputs: Literal["token_ids", "embeddings", "latents"] = "token_ids"
    conditioning: Literal["none", "class", "optional"] = "optional"
    needs_codebook: bool = False


@dataclass
class MethodContext:
    """Everything a method is built from besides its config.

    ``registry``: where the method's slot components (schedule, embedding, regularizers) are looked up;
    the runner passes its own. Left ``None`` (a method built by hand, e.g. in a test), :meth:`build` uses
    the registry of the installed plugins.
    """

    codebook_size: int
    token_grid: tuple[int, int]
    num_classes: int | None = None
    tokenizer: Tokenizer | None = None
    backbone: dict[str, Any] = field(default_factory=dict)
    registry: Any = None

    def build(self, config: BaseModel, slot: str, **context: Any) -> Any:
        """Build the component in slot ``slot`` of the method config ``config`` (a field declared with
        :class:`Slot`), checked against the slot's kind/family/stage; ``context`` are the kind's build
        keywords (e.g. ``codebook_size=...`` for an embedding). For a list slot, returns a list."""
        from dlbench.registry import build_ref

        slots = config_slots(type(config))
        if slot not in slots:
            raise KeyError(f"{type(config).__name__} has no component slot {slot!r} (slots: {sorted(slots)})")
        spec, many = slots[slot]
        value = getattr(config, slot)
        registry = self.registry
        if registry is None:
            from dlbench.plugins import get_registry

            registry = get_registry()
        where = f"method.params.{slot}"
        if many:
            return [build_ref(registry, r, spec, where=f"{where}.{i}", **context) for i, r in enumerate(value)]
        return build_ref(registry, value, spec, where=where, **context)


SampleCallback = Callable[[dict[str, Any]], None]
#: the keys of the dict every sampler passes to ``callback`` after each step, in both families:
#: ``i`` (step index from 0), ``steps`` (steps in this call), ``t`` (float time of the step in [0, 1]; a discrete
#: method's t / T), ``x`` (the sampler's state after the step: tokens ``"b n"``, or latents ``"b h w d"``),
#: ``x0_logits`` (the network's prediction of the clean tokens at this step, logits or log-probs ``"... k"``).
SAMPLE_CALLBACK_KEYS: tuple[str, ...] = ("i", "steps", "t", "x", "x0_logits")


@dataclass(frozen=True)
class NLLBound:
    """An upper bound on ``-log p(x | y)`` of held-out token grids, in nats per token.

    ``per_grid`` (``"b"`` float64) holds one unbiased Monte Carlo estimate of the bound per grid;
    ``value`` is their mean and ``stderr`` its standard error (``std / sqrt(b)``), which covers both the
    data and the estimator's own randomness. ``estimator`` names the bound (docs/protocol.md).
    """

    value: float
    stderr: float
    n: int
    estimator: str
    per_grid: tuple[float, ...] = ()

    @classmethod
    def from_per_grid(cls, per_grid: torch.Tensor, estimator: str) -> "NLLBound":
        v = per_grid.detach().double().cpu()
        se = float(v.std(unbiased=True) / v.numel() ** 0.5) if v.numel() > 1 else float("nan")
        return cls(float(v.mean()), se, int(v.numel()), estimator, tuple(v.tolist()))


class Method(nn.Module, ABC):
    """A generator over token grids: composes schedule, embedding, denoiser and losses.

    Built as ``cls(config, context=MethodContext)``. Tokens ``"b h w"`` long, labels ``"b"`` long
    or ``None`` (unconditional).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("loss", "sample")
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    requires: ClassVar[MethodRequirements] = MethodRequirements()
    #: run-config overrides per preset name (``quick``/``default``/``paper``), nested dicts.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: training cost of one optimizer step in forward+backward passes over the batch (compute budgets and
    #: the FLOPs column); a method with a second batched pass or a teacher forward declares more (it may be a
    #: property of the config).
    forwards_per_step: float = 1.0
    #: sampler knobs and the small grid ``compare --tune-sampling`` searches, ``{"guidance": [1.0, 1.5],
    #: "options.temperature": [...]}``: a key is ``guidance`` or ``options.<sampling option>``.
    sampler_grid: ClassVar[dict[str, list[Any]]] = {}

    @abstractmethod
    def loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and named terms (each logged separately)."""

    @abstractmethod
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
        """Generate token grids ``"b h w"``.

        ``seeds`` (``"b"`` int64) gives each sample its own random stream, derived by the runner from
        (run seed, sample index), so results do not depend on batch size or world size.
        ``num_samples`` is only needed when ``labels`` is None (otherwise ``len(labels)``).
        """

    def nfe(self, steps: int | None = None, guidance: float = 1.0, **options: Any) -> int:
        """Network evaluations per sample of ``sample(..., steps=steps, guidance=guidance, **options)`` (compute
        accounting; ``options`` are the sampling options, which may change the cost, e.g. a stride)."""
        return 0

    # -- training hooks (the runner calls these; the defaults do nothing) ---------------------------
    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter-name prefix (``{"embedding": 10.0}``): those parameters get
        their own optimizer group at ``multiplier x lr``. Default: none."""
        return {}

    def on_step_end(self) -> None:
        """Called after each optimizer step (method-owned state, e.g. an EMA teacher). Default: nothing."""

    def diagnostics(self) -> dict[str, float]:
        """Scalar diagnostics logged during training (e.g. embedding collapse)."""
        return {}

    def nll_bound(
        self, tokens: torch.Tensor, labels: torch.Tensor | None, *, mc: int = 1, seed: int = 0
    ) -> NLLBound | None:
        """Upper bound on the held-out negative log-likelihood of ``tokens "b h w"`` (given ``labels``), in
        nats per token, averaged over ``mc`` Monte Carlo draws per grid from a generator seeded by ``seed``.

        Optional: the default ``None`` means "this method has no likelihood bound" and the table shows
        ``nll_bound`` as unavailable for it. Implementations must not touch the global RNG.
        """
        return None

    def end_of_training_report(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        """Optional heavier diagnostics on held-out tokens (e.g. a CE(t) curve)."""
        return {}


# ---------------------------------------------------------------------------------------------
# Datasets and feature extractors
# ---------------------------------------------------------------------------------------------


class ImageDataset(ABC):
    """An image dataset with named splits. Built as ``cls(config)``.

    ``split(name)`` returns a ``torch.utils.data.Dataset`` of ``(image uint8 "c H W", label int)``
    (label ``-1`` when unlabelled), all images already at ``resolution`` with ``channels``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("split", "fingerprint")
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    channels: int
    resolution: int
    num_classes: int | None = None
    splits: tuple[str, ...] = ("train", "test")

    @abstractmethod
    def split(self, name: str) -> torch.utils.data.Dataset:
        ...

    @abstractmethod
    def fingerprint(self, name: str) -> str:
        """A stable hex digest identifying the contents of a split (and its preprocessing)."""


class FeatureExtractor(nn.Module, ABC):
    """Maps uint8 images ``"b c H W"`` to features ``"b f"``. Built as ``cls(config)``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("features",)
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig
    dim: int

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        ...

    def weights_sha256(self) -> str | None:
        """sha256 of the weights used (part of the evaluation protocol), or None."""
        return None


# ---------------------------------------------------------------------------------------------
# Run loggers (experiment trackers)
# ---------------------------------------------------------------------------------------------


class RunLogger(ABC):
    """Receives every event a run records in its ``events.jsonl`` (an experiment tracker, a file).

    Built on the main process when a run starts, as
    ``cls(config, run_dir=pathlib.Path, run_config=dict, resume=bool)``: ``run_config`` is the
    resolved run config (``config.json``), to record as hyper-parameters.

    ``log(event)`` is called for each event, in order, with a dict ``{"time": unix seconds,
    "event": kind, **fields}`` (the same record as the ``events.jsonl`` line); the kinds and their
    fields are listed in docs/plugins.md (``run_start``, ``train`` / ``tokenizer_train`` scalars with
    ``step``, ``diagnostics``, ``samples`` with the ``grid`` PNG path, ``evaluation`` with the
    ``protocol_hash`` and ``metrics``, ``run_end`` with ``status``, ...). Unknown kinds must be
    ignored: new ones may be added. ``close()`` is called once at the end, also after a failure or an
    interrupt.

    A logger that raises is reported once (stderr and a ``warning`` event) and disabled; the run
    goes on. Raise a :class:`~dlbench.registry.DlbenchError` from ``__init__`` for a problem the user
    must fix before the run (e.g. a missing package): the run then stops before any work.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("log", "close")
    Config: ClassVar[type[ComponentConfig]] = EmptyConfig

    @abstractmethod
    def log(self, event: dict[str, Any]) -> None:
        ...

    def close(self) -> None:
        """Flush and release resources (called once)."""


KINDS: dict[str, type] = {
    "tokenizer": Tokenizer,
    "embedding": EmbeddingStrategy,
    "schedule": NoiseSchedule,
    "regularizer": Regularizer,
    "method": Method,
    "dataset": ImageDataset,
    "feature_extractor": FeatureExtractor,
    "logger": RunLogger,
}
