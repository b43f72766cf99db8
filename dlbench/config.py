"""Run configuration: pydantic sections, presets, ``--set`` overrides and config files.

A run config is built in layers, later layers winning:

1. the section defaults below;
2. the base preset (:data:`BASE_PRESETS`: ``quick`` / ``default`` / ``benchmark`` / ``collapse`` / ``paper``);
3. the method's own preset overrides (``Method.presets[preset]``); for ``paper`` also the per-dataset
   published settings of :mod:`dlbench.paper_presets` (refused for a dataset without them);
4. ``--config FILE`` (JSON, TOML or YAML);
5. explicit CLI arguments (``--dataset``, ``--tokenizer``, ``--seed``, ``--device``);
6. ``--set section.field=value`` overrides (``--set method.w_cm=0.5`` is short for
   ``method.params.w_cm``).

:func:`resolve_config` then validates every component's ``params`` against the component's own
config model and writes the defaults back, so the saved ``config.json`` is complete and re-running
from it reproduces the run configuration exactly. Every error names the field, the value and why.

Longer than ~350 lines because the section models and the layers that fill them are read together:
each ``--set``/file rule and each resolution check refers to the fields defined above it (sections:
models, raw layers, resolution).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlbench.interfaces import ComponentRef as _ComponentRef
from dlbench.registry import TOKENIZER_REGULARIZERS, DlbenchError, Registry, resolve_ref, resolve_slots

PresetName = Literal["quick", "default", "benchmark", "collapse", "paper"]
PRESETS: tuple[str, ...] = ("quick", "default", "benchmark", "collapse", "paper")
#: seeds are 64-bit generator states (torch.manual_seed, splitmix64 derivations add small offsets)
MAX_SEED = 2**63 - 1


class ConfigError(DlbenchError, ValueError):
    """A bad configuration value; the message names the field, the value and the reason."""


class Section(BaseModel):
    # NaN/inf are refused in every float field (lr=inf passes gt=0 and diverges at the first step)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: a registered component by name plus its parameters (validated by the component's Config); a plain
#: string is short for ``{"name": string}``
ComponentRef = _ComponentRef
#: the slot of ``tokenizer.regularizers``: tokenizer-stage regularizers composed into the tokenizer's loss
TOKENIZER_REGULARIZER_SLOT = TOKENIZER_REGULARIZERS


class TrainingConfig(Section):
    """Optimisation and budget of one training stage (generator or tokenizer)."""

    steps: int = Field(2000, gt=0, description="optimizer steps (the budget unless images/minutes set)")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    #: "auto": bf16 autocast where the CPU/GPU computes bf16 natively, else fp32 (resolved at run time by
    #: ``dlbench.train.dist.resolve_precision`` and recorded in the run's metadata)
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (same global batch, less memory)")
    budget_images: int | None = Field(None, gt=0, description="stop after this many images seen")
    budget_minutes: float | None = Field(None, gt=0, description="stop after this wall-clock time")
    budget_flops: float | None = Field(None, gt=0, description="stop after this many training FLOPs "
                                       "(6 * params * positions * forwards_per_step per image)")
    log_every: int = Field(50, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    diagnostics_every: int = Field(200, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class TokenizerTrainingConfig(TrainingConfig):
    """A tokenizer's training: fp32 by default, whatever the machine (its cache key, and so the identity
    of the shared tokenizer, must not depend on where it was trained)."""

    precision: Literal["fp32", "bf16", "auto"] = "fp32"


class TokenizerRef(ComponentRef):
    """The tokenizer and how it is trained. Its seed is its own: runs that differ only in the
    generator's seed share one trained tokenizer (same harness across a multi-seed comparison)."""

    name: str = "vqvae"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="tokenizer training seed (kept apart from the run seed)")
    training: TokenizerTrainingConfig = Field(
        default_factory=lambda: TokenizerTrainingConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100,
                                                        ema_decay=0.0, grad_clip=None, precision="fp32")
    )
    regularizers: list[ComponentRef] = Field(
        default_factory=list, description="tokenizer-stage regularizers added to the tokenizer's training loss, "
        "e.g. [{name = \"prior-kl\"}, \"stochastic-mask\"] (part of the tokenizer cache key)")


class DatasetRef(ComponentRef):
    name: str = "fashion-mnist-small"


class MethodRef(ComponentRef):
    pass


class BackboneConfig(Section):
    """The shared denoiser backbone: a size preset plus overrides (``dlbench.nn.denoiser``)."""

    preset: str = "tiny"
    params: dict[str, Any] = Field(default_factory=dict)
    compile: bool = Field(False, description="torch.compile the denoiser (slow first steps; pays off on long runs)")


class SamplingConfig(Section):
    num_samples: int = Field(64, gt=0, description="samples drawn at the end of training (grid + eval)")
    batch_size: int = Field(64, gt=0)
    steps: int | None = Field(None, gt=0, description="sampling steps (method default when unset)")
    guidance: float = Field(1.0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict, description="method-specific sampler options")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sampling seed, kept apart from the training seed (run.seed); "
                      "sample i uses dlbench.seeding.sample_seeds(seed, i)")


class EvaluationConfig(Section):
    enabled: bool = True
    protocol: str = "quick"
    overrides: dict[str, Any] = Field(default_factory=dict)
    token_metrics: dict[str, Any] | None = Field(
        default_factory=dict, description="token-metric settings (part of the protocol); null turns them off")
    anchors: bool = Field(True, description="compute (or reuse) the anchor rows of this dataset/tokenizer/protocol")
    curve_points: int = Field(0, ge=0, description="learning-curve points, evenly spaced over the budget")
    curve_samples: int = Field(256, gt=1, description="samples per learning-curve point")


class RunConfig(Section):
    """A complete, round-trippable description of one run."""

    method: MethodRef
    tokenizer: TokenizerRef = Field(default_factory=TokenizerRef)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    preset: str = "default"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loggers: list[ComponentRef] = Field(
        default_factory=list, description="run loggers besides events.jsonl, e.g. ['tensorboard'] "
        "(kind logger; not part of the config hash)")

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_names(cls, v: Any) -> Any:
        # sugar: loggers = ["tensorboard"] is loggers = [{name = "tensorboard"}]
        return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, (list, tuple)) else v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self, exclude: tuple[str, ...] = ("device", "loggers")) -> str:
        """sha256 of the canonical JSON (device and loggers excluded: they do not change the experiment)."""
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# Base presets, shared by every method; methods refine them through ``Method.presets``.
# Never edit a released preset in place: add a new name (old runs must stay reproducible).
BASE_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "tokenizer": {"training": {"steps": 30, "batch_size": 32, "log_every": 10, "checkpoint_every": 30}},
        "training": {"steps": 20, "batch_size": 16, "warmup_steps": 2, "log_every": 5,
                     "checkpoint_every": 10, "diagnostics_every": 10},
        "sampling": {"num_samples": 16, "batch_size": 16, "steps": 4},
        "evaluation": {"protocol": "quick", "overrides": {"num_generated": 16}, "curve_points": 2,
                       "curve_samples": 16},
        "dataset": {"params": {"max_images": 512}},
    },
    # sized so one run (tokenizer cached) is ~10 min on 2 CPU cores, most of it Inception features
    # of 2000 samples; both the generator budget and the sampling NFE are shared by every method.
    "default": {
        "tokenizer": {"training": {"steps": 1500, "batch_size": 64}},
        "training": {"steps": 500, "batch_size": 64},
        "sampling": {"num_samples": 2000, "batch_size": 250, "steps": 25},
        "evaluation": {"protocol": "default", "curve_points": 5, "curve_samples": 256},
    },
    # a comparison sized for a 2-core CPU: 3x the default's generator budget, 50 sampling steps, 3 learning-curve
    # points. Measured: 16-24 min per run (one 31) with two one-thread runs sharing the 2 cores of an AMX Xeon,
    # so 3 methods x 3 seeds take ~2 h (benchmarks/results/compare_benchmark.md). Methods that do more
    # forward+backward passes per step than one get fewer steps (equal compute): see each method's presets.
    "benchmark": {
        "tokenizer": {"training": {"steps": 1500, "batch_size": 64}},
        "training": {"steps": 1500, "batch_size": 64, "diagnostics_every": 250, "checkpoint_every": 500},
        "sampling": {"num_samples": 2000, "batch_size": 250, "steps": 50},
        "evaluation": {"protocol": "default", "curve_points": 3, "curve_samples": 256},
    },
    # embedding-collapse study (csdm vs vqlcmd): long enough for the table to move and settle (measured: under the
    # collapse configuration min distance/sigma falls ~90 % by step 150 and the table stops moving by ~450,
    # benchmarks/results/vqlcmd_collapse_study.md), diagnostics every 50 steps, the cheapest evaluation
    "collapse": {
        "tokenizer": {"training": {"steps": 1500, "batch_size": 64}},
        "training": {"steps": 600, "batch_size": 64, "diagnostics_every": 50, "checkpoint_every": 300},
        "sampling": {"num_samples": 256, "batch_size": 128, "steps": 25},
        "evaluation": {"protocol": "quick"},
    },
    "paper": {
        "training": {"steps": 500_000, "batch_size": 256, "precision": "bf16"},
        "sampling": {"num_samples": 50_000, "batch_size": 250},
        "evaluation": {"protocol": "paper"},
    },
}


# ---------------------------------------------------------------------------------------------
# dict utilities
# ---------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


COMPONENT_SECTIONS = {"method", "tokenizer", "dataset"}


def parse_value(raw: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, bools, null, lists, objects), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        low = raw.strip().lower()
        if low in {"true", "false"}:
            return low == "true"
        if low in {"none", "null"}:
            return None
        return raw


def apply_set(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``path.to.field=value`` to a nested dict (returns a new dict)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. training.lr=3e-4")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    known = set(RunConfig.model_fields)
    if parts[0] not in known:
        raise ConfigError(
            f"--set {key}: unknown section {parts[0]!r}; sections are {', '.join(sorted(known))}"
        )
    # sugar: method.w_cm -> method.params.w_cm (the component's own fields live under params)
    if parts[0] in COMPONENT_SECTIONS and len(parts) >= 2:
        ref_fields = {"method": MethodRef, "tokenizer": TokenizerRef, "dataset": DatasetRef}[parts[0]].model_fields
        if parts[1] not in ref_fields:
            parts = [parts[0], "params", *parts[1:]]
    if parts[0] == "backbone" and len(parts) >= 2 and parts[1] not in BackboneConfig.model_fields:
        parts = ["backbone", "params", *parts[1:]]
    out = copy.deepcopy(data)
    node = out
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if isinstance(nxt, str) and parts[i + 1] in ("name", "params"):
            nxt = node[p] = {"name": nxt}  # a component named by a plain string: schedule=x, then schedule.params.y
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = parse_value(raw)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror or exc})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"--config {path}: cannot parse ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping at the top level")
    check_section_shapes(data, f"--config {path}")
    return data


def check_section_shapes(data: dict[str, Any], source: str) -> None:
    """Sections must be mappings (``{"method": "vqlcmd"}`` is a common slip for ``{"method": {"name": ...}}``)."""
    for key, value in data.items():
        field = RunConfig.model_fields.get(key)
        kind = getattr(field, "annotation", None) if field is not None else None
        if isinstance(kind, type) and issubclass(kind, BaseModel) and not isinstance(value, dict):
            example = '{"name": ' + json.dumps(value) + "}" if key in COMPONENT_SECTIONS and isinstance(value, str) \
                else "{...}"
            raise ConfigError(
                f"{source}: section {key!r} must be a mapping, got {type(value).__name__} {value!r}; "
                f"write \"{key}\": {example}"
            )


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        msgs.append(f"{loc or '(root)'}{shown}: {err['msg']}")
    return "invalid config: " + "; ".join(msgs)


# ---------------------------------------------------------------------------------------------
# building and resolving
# ---------------------------------------------------------------------------------------------


def build_config(
    method: str,
    *,
    registry: Registry,
    preset: str = "default",
    dataset: str | None = None,
    tokenizer: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
    device: str | None = None,
) -> RunConfig:
    """Compose the layered config for ``method`` and resolve it (see module docstring)."""
    spec = registry.get("method", method)
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: choose one of {', '.join(PRESETS)}")
    data: dict[str, Any] = {"method": {"name": spec.name}, "preset": preset}
    data = deep_merge(data, BASE_PRESETS[preset])
    method_presets = getattr(spec.factory, "presets", {}) or {}
    data = deep_merge(data, method_presets.get(preset, {}))
    file_data = load_config_file(config_file) if config_file is not None else None
    if preset == "paper":  # per-dataset published settings (dlbench.paper_presets)
        from dlbench.paper_presets import apply_paper_preset

        ds = dataset or (file_data or {}).get("dataset", {}).get("name") or data.get("dataset", {}).get("name")
        owns = "name" in method_presets.get("paper", {}).get("tokenizer", {})
        data = apply_paper_preset(data, spec.name, ds or DatasetRef().name, method_owns_tokenizer=owns)
    if file_data is not None:
        if "method" in file_data and file_data["method"].get("name", spec.name) != spec.name:
            raise ConfigError(
                f"--config {config_file}: method.name is {file_data['method']['name']!r} "
                f"but the command asked for {spec.name!r}"
            )
        data = deep_merge(data, file_data)
    if dataset is not None:
        if data.get("dataset", {}).get("name") not in (None, dataset):
            data["dataset"] = {"name": dataset}  # preset params belong to the preset's dataset
        data = deep_merge(data, {"dataset": {"name": dataset}})
    if tokenizer is not None:
        if data.get("tokenizer", {}).get("name") not in (None, tokenizer):
            data.setdefault("tokenizer", {})["params"] = {}
        data = deep_merge(data, {"tokenizer": {"name": tokenizer}})
    if seed is not None:
        data["seed"] = seed
    if device is not None:
        data["device"] = device
    for assignment in overrides:
        data = apply_set(data, assignment)
    return resolve_config(data, registry)


def resolve_config(data: dict[str, Any] | RunConfig, registry: Registry) -> RunConfig:
    """Validate sections and every component's params; fill in defaults. Raises ConfigError."""
    if isinstance(data, RunConfig):
        data = data.to_dict()
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    for section, kind in (("method", "method"), ("tokenizer", "tokenizer"), ("dataset", "dataset")):
        ref: ComponentRef = getattr(cfg, section)
        spec = registry.get(kind, ref.name)
        try:
            params = spec.make_config(ref.params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"{section}.params")) from None
        resolve_slots(registry, params, where=f"{section}.params")  # schedule/embedding/... references
        ref.name = spec.name
        ref.params = params.model_dump(mode="json")
    for i, reg in enumerate(cfg.tokenizer.regularizers):
        spec, params = resolve_ref(registry, reg, TOKENIZER_REGULARIZER_SLOT, where=f"tokenizer.regularizers.{i}")
        reg.name, reg.params = spec.name, params.model_dump(mode="json")
    names = [r.name for r in cfg.tokenizer.regularizers]
    if len(set(names)) != len(names):
        raise ConfigError(f"tokenizer.regularizers = {names}: each regularizer may appear once")
    for i, ref in enumerate(cfg.loggers):
        spec = registry.get("logger", ref.name)
        try:
            params = spec.make_config(ref.params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"loggers.{i}.params")) from None
        ref.name = spec.name
        ref.params = params.model_dump(mode="json")
    # the backbone preset/params are validated by the shared denoiser module
    try:
        from dlbench.nn.denoiser import resolve_backbone
    except ImportError:  # pragma: no cover - engine not importable
        resolve_backbone = None
    if resolve_backbone is not None:
        try:
            bb = resolve_backbone(cfg.backbone.preset, **cfg.backbone.params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix="backbone.params")) from None
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"backbone.preset = {cfg.backbone.preset!r}: {exc}") from None
        cfg.backbone.params = {k: v for k, v in bb.model_dump(mode="json").items()}
    check_compatibility(cfg, registry)
    return cfg


def check_compatibility(cfg: RunConfig, registry: Registry) -> None:
    """Reject impossible method/dataset/tokenizer combinations before any training starts."""
    if cfg.tokenizer.regularizers:
        tok_cls = registry.get("tokenizer", cfg.tokenizer.name).factory
        if not callable(getattr(tok_cls, "add_regularizer", None)):
            raise ConfigError(
                f"tokenizer.regularizers: tokenizer {cfg.tokenizer.name!r} takes no regularizers (it has no "
                "add_regularizer); use a tokenizer that does, e.g. vqvae or regvq"
            )
    method_cls = registry.get("method", cfg.method.name).factory
    req = getattr(method_cls, "requires", None)
    if req is None:
        return
    ds_cls = registry.get("dataset", cfg.dataset.name).factory
    num_classes = getattr(ds_cls, "num_classes", None)
    if isinstance(num_classes, property):
        num_classes = "?"  # known only once built
    if req.conditioning == "class" and num_classes is None:
        raise ConfigError(
            f"method {cfg.method.name!r} needs class labels but dataset {cfg.dataset.name!r} is unlabelled"
        )
    if req.needs_codebook:
        tok_cls = registry.get("tokenizer", cfg.tokenizer.name).factory
        if not callable(getattr(tok_cls, "codebook", None)):
            raise ConfigError(
                f"method {cfg.method.name!r} needs the tokenizer's codebook vectors, "
                f"but tokenizer {cfg.tokenizer.name!r} has no codebook()"
            )


def load_run_config(path: str | Path, registry: Registry) -> RunConfig:
    """Load a saved ``config.json`` and re-validate it against the installed components."""
    from dlbench.safeload import read_json_file

    data = read_json_file(path, what="run config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: run config is {'missing' if data is None else 'not a JSON object'}")
    check_section_shapes(data, str(path))
    try:
        return resolve_config(data, registry)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Flat ``{dotted.field: (a, b)}`` of the leaves that differ."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(config_diff(va, vb, path + "."))
        elif va != vb:
            out[path] = (va, vb)
    return out
