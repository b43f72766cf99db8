"""The evaluation protocol: every number dlbench reports carries the hash of one of these.

DESIGN.md "Evaluation protocol": a result *is* its protocol. Two results are comparable only when
their protocols hash the same; :meth:`EvalProtocol.diff` names the fields that differ so ``compare``
can refuse (not footnote) a mixed table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlbench.registry import DlbenchError

__all__ = ["EvalProtocol", "TokenMetricSettings", "PRESETS", "ProtocolError", "resolve_protocol", "BACKEND_RESIZE"]

InceptionMetric = Literal["fid", "kid", "prc", "isc"]

#: the resize rule each backend applies after the uint8 round trip (fixed by the backend's own code)
BACKEND_RESIZE = {
    "torch-fidelity": "tf1-bilinear-299",  # torch_fidelity.interpolate_compat_tensorflow, on uint8 input
    "clean-fid": "pil-bicubic-299",  # cleanfid.resize.make_resizer("PIL", False, "bicubic"), float, per channel
}
_DISTRIBUTION = {"torch-fidelity": "torch-fidelity", "clean-fid": "clean-fid"}


class ProtocolError(DlbenchError):
    """A protocol that cannot be built or used as asked."""


class TokenMetricSettings(BaseModel):
    """Settings of the token-level metrics (docs/protocol.md, "Token-level metrics"); part of the protocol.

    ``smoothing`` is the add-alpha pseudo-count of every cell of a per-position unigram histogram; a
    neighbour-pair histogram has ``K^2`` cells and gets ``smoothing / K`` per cell, so each of its K
    conditional rows carries the same pseudo-mass as one unigram histogram.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    smoothing: float = Field(default=0.5, gt=0, description="add-alpha pseudo-count per unigram cell")
    nll_num_grids: int = Field(default=256, gt=0, description="held-out token grids for the NLL bound")
    nll_mc: int = Field(default=1, gt=0, description="Monte Carlo draws per grid (the method says what one draw is)")
    nll_seed: int = 0


class EvalProtocol(BaseModel):
    """Everything that changes an evaluation number. Frozen; ``hash()`` identifies it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="preset this protocol came from (or 'custom')")
    backend: Literal["torch-fidelity", "clean-fid"]
    backend_version: str | None = None
    inception_metrics: tuple[InceptionMetric, ...] = Field(
        default=("fid", "kid", "prc"), description="metrics computed by the backend on Inception features"
    )
    feature_extractor: str = "inception-v3-fid"
    feature_extractor_sha256: str | None = None
    #: samples always go through uint8 (round(clamp((x+1)*127.5))) before any feature; gray -> 3 channels
    quantization: Literal["uint8"] = "uint8"
    resize: Literal["tf1-bilinear-299", "pil-bicubic-299"] = "tf1-bilinear-299"
    num_generated: int = Field(gt=1)
    #: reference images (None = the whole reference split)
    num_reference: int | None = Field(default=None, gt=1)
    reference_dataset: str | None = None
    reference_split: str = "train"
    reference_fingerprint: str | None = None
    kid_subsets: int = Field(default=100, gt=0)
    kid_subset_size: int = Field(default=1000, gt=1)
    kid_seed: int = Field(default=2020, ge=0, lt=2**32, description="numpy seeds are 32-bit")
    prc_neighborhood: int = Field(default=3, gt=0)
    sampling: dict[str, Any] = Field(default_factory=dict, description="steps, guidance, truncation, ...")
    #: Inception feature precision. fp32 is the exact mode (torch-fidelity's numbers); bf16 is the fast
    #: mode (convolutions in bfloat16), whose FID deviation from exact mode is measured on real images and
    #: reported next to every number (``fid_bf16_deviation``); fp64 is torch-fidelity's float64 extractor
    precision: Literal["fp32", "fp64", "bf16"] = "fp32"
    domain_metrics: bool = True
    domain_classifier: str = "v1"
    #: token-level metrics (unigram / neighbour-pair KL, NLL bound); None = not computed. Left out of the
    #: canonical JSON when None, so protocols that predate them keep their hashes.
    token_metrics: TokenMetricSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "EvalProtocol":
        want = BACKEND_RESIZE[self.backend]
        if self.inception_metrics and self.resize != want:
            raise ValueError(f"resize={self.resize!r} but backend {self.backend!r} resizes as {want!r}")
        if self.backend == "clean-fid" and set(self.inception_metrics) - {"fid", "kid"}:
            raise ValueError(
                f"backend 'clean-fid' computes fid and kid only, not {sorted(set(self.inception_metrics) - {'fid', 'kid'})}"
            )
        if self.precision == "bf16" and self.backend != "torch-fidelity":
            raise ValueError("precision 'bf16' (fast feature mode) is implemented for backend 'torch-fidelity' only")
        if not self.inception_metrics and not self.domain_metrics and self.token_metrics is None:
            raise ValueError("protocol computes nothing: no inception_metrics, domain_metrics=False, no token_metrics")
        return self

    # -- identity ---------------------------------------------------------------------------------

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        if data.get("token_metrics") is None:
            data.pop("token_metrics", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """sha256 of the canonical JSON of all fields."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def short_hash(self) -> str:
        return self.hash()[:12]

    def reference_key(self) -> str:
        """Hash of the fields that determine the *reference* features/statistics (cache key).

        Narrower than :meth:`hash` on purpose: changing ``num_generated`` or sampling settings
        reuses the reference statistics.
        """
        keys = (
            "backend", "backend_version", "feature_extractor", "feature_extractor_sha256", "quantization",
            "resize", "num_reference", "reference_dataset", "reference_split", "reference_fingerprint", "precision",
        )
        payload = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def diff(self, other: "EvalProtocol") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{field: (self_value, other_value)}``."""
        a, b = self.model_dump(mode="json"), other.model_dump(mode="json")
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# ---------------------------------------------------------------------------------------------
# Presets. Released presets are NEVER edited in place (STYLE.md lesson 2): old runs must stay
# reproducible and comparable. A change gets a new name (e.g. "default-v2").
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # CPU seconds: domain-classifier metrics only, no Inception
    "quick": dict(
        name="quick", backend="torch-fidelity", inception_metrics=(), feature_extractor="domain-classifier",
        num_generated=256, num_reference=1000, reference_split="test", domain_metrics=True,
    ),
    # Inception FID/KID/precision-recall on 2000 samples + domain metrics
    "default": dict(
        name="default", backend="torch-fidelity", inception_metrics=("fid", "kid", "prc"),
        num_generated=2000, num_reference=2000, reference_split="test", kid_subsets=100, kid_subset_size=1000,
        domain_metrics=True,
    ),
    # paper-comparable: 50k samples vs the whole training split (VQ-Diffusion authors, cientgu#14)
    "paper": dict(
        name="paper", backend="torch-fidelity", inception_metrics=("fid", "kid", "prc", "isc"),
        num_generated=50_000, num_reference=None, reference_split="train", kid_subsets=100, kid_subset_size=1000,
        domain_metrics=True,
    ),
    # clean-fid backend (clean mode: PIL bicubic resize in float)
    "clean": dict(
        name="clean", backend="clean-fid", inception_metrics=("fid", "kid"), resize="pil-bicubic-299",
        num_generated=2000, num_reference=2000, reference_split="test", kid_subsets=100, kid_subset_size=1000,
        domain_metrics=True,
    ),
}


def _backend_version(backend: str) -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION[backend])
    except importlib.metadata.PackageNotFoundError:
        raise ProtocolError(f"backend {backend!r} is not installed: pip install {_DISTRIBUTION[backend]}") from None


def resolve_protocol(
    name_or_dict: str | dict[str, Any] | EvalProtocol, *, resolve_weights: bool = True,
    token_metrics: dict[str, Any] | None = None, **overrides: Any
) -> EvalProtocol:
    """Build a protocol from a preset name, a dict or a protocol, apply ``overrides``, and fill in
    the backend version and (when Inception metrics are asked for) the weights' sha256.
    ``token_metrics`` (a :class:`TokenMetricSettings` dict; ``{}`` = defaults) turns the token-level metrics
    on without renaming the preset: the settings are in the hash, and a protocol without them keeps its own."""
    if isinstance(name_or_dict, EvalProtocol):
        base = name_or_dict.model_dump()
    elif isinstance(name_or_dict, str):
        if name_or_dict not in PRESETS:
            import difflib

            close = difflib.get_close_matches(name_or_dict, PRESETS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProtocolError(f"unknown evaluation protocol {name_or_dict!r}.{hint} Known: {', '.join(PRESETS)}")
        base = dict(PRESETS[name_or_dict])
    else:
        base = dict(name_or_dict)
        base.setdefault("name", "custom")
    if overrides:
        base.update(overrides)
        if isinstance(name_or_dict, str):
            # an edited preset is not the preset: mark it so its hash is never mistaken for it
            base["name"] = base["name"] if base["name"].endswith("+custom") else base["name"] + "+custom"
    if token_metrics is not None:
        base["token_metrics"] = token_metrics
    if "backend" in overrides and "resize" not in overrides:
        base["resize"] = BACKEND_RESIZE[overrides["backend"]]
    if base.get("backend_version") is None and "backend" in base:
        base["backend_version"] = _backend_version(base["backend"])
    if resolve_weights and base.get("inception_metrics", ("fid",)) and base.get("feature_extractor_sha256") is None:
        if base.get("feature_extractor", "inception-v3-fid") == "inception-v3-fid":
            from dlbench.eval.inception import resolve_inception_weights

            base["feature_extractor_sha256"] = resolve_inception_weights().sha256
    try:
        return EvalProtocol.model_validate(base)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        if not loc:  # a cross-field rule: the message names the fields
            raise ProtocolError(f"evaluation protocol: {first['msg']}") from None
        raise ProtocolError(f"evaluation protocol field {loc!r}: {first['msg']} (got {first.get('input')!r})") from None
