"""Protocol-checked, multi-seed comparisons of finished runs (reads run directories; trains nothing).

Flow: load every run's records -> refuse to mix protocols (naming the differing fields) and, unless
allowed, budgets/tokenizers/data/backbones -> aggregate per method (mean ± 95% t-interval over training
seeds; Welch interval of the difference to the first method, the baseline). Rendering is
:mod:`dlbench.report.render`; planning and training the runs of ``dlbench compare`` is
:mod:`dlbench.runner.compare_runs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dlbench.config import config_diff
from dlbench.registry import DlbenchError
from dlbench.report.stats import Interval, diff_ci, mean_ci
from dlbench.runs import RunDir


class ProtocolMismatchError(DlbenchError):
    pass


class ComparisonMismatchError(DlbenchError):
    pass


#: lower is better for these metric-name prefixes; higher for everything else we know of
LOWER_IS_BETTER = ("fid", "kid", "domain_fd", "fd", "rfid", "token_kl", "nll")

#: config fields that must match across a comparison ("same harness, same budget")
MATCHED_FIELDS = {
    "tokenizer": "tokenizer",
    "dataset": "dataset",
    "backbone": "backbone",
    "training.steps": "budget",
    "training.batch_size": "budget",
    "training.budget_images": "budget",
    "training.budget_minutes": "budget",
    "training.budget_flops": "budget",
    "sampling.num_samples": "sampling",
}


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    protocol: dict[str, Any]
    meta: dict[str, Any]
    reused: bool = False

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def label(self) -> str:
        return self.config.get("label") or self.method

    @property
    def protocol_hash(self) -> str | None:
        return self.metrics.get("protocol_hash") or self.protocol.get("hash")

    @property
    def train_seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def sample_seed(self) -> int:
        return int(self.config.get("sampling", {}).get("seed", 0))

    @classmethod
    def load(cls, path: str | Path, reused: bool = False) -> "RunRecord":
        rd = RunDir.open(path)
        metrics = rd.read_json("metrics.json")
        if not metrics:
            raise ComparisonMismatchError(f"{rd.path} has no metrics.json: the run did not finish; resume it with "
                                          f"`dlbench run <method> --resume {rd.path}` or remove it")
        if metrics.get("status", "ok") != "ok":
            raise ComparisonMismatchError(f"{rd.path} failed ({metrics.get('reason', '?')}); it cannot be compared")
        return cls(rd.path, rd.read_json("config.json"), metrics, rd.read_json("protocol.json", {}) or {},
                   rd.read_json("meta.json", {}) or {}, reused)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_protocols(records: Sequence[RunRecord]) -> str:
    """All records share one protocol hash; otherwise raise naming the fields that differ."""
    by_hash: dict[str | None, RunRecord] = {}
    for r in records:
        by_hash.setdefault(r.protocol_hash, r)
    if None in by_hash:
        r = by_hash[None]
        raise ProtocolMismatchError(f"{r.path} has no protocol hash in metrics.json; re-evaluate it with `dlbench eval`")
    if len(by_hash) > 1:
        (h0, r0), *rest = by_hash.items()
        parts = []
        for h1, r1 in rest:
            diff = config_diff(_protocol_fields(r0), _protocol_fields(r1))
            fields = ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in sorted(diff.items())) or "(hash only)"
            parts.append(f"{r0.path.name} [{h0[:12]}] vs {r1.path.name} [{h1[:12]}]: {fields}")
        raise ProtocolMismatchError(
            "refusing to compare results from different evaluation protocols: " + "; ".join(parts)
            + ". Re-evaluate the runs under one protocol (`dlbench eval RUN --protocol P`)."
        )
    return next(iter(by_hash))  # type: ignore[return-value]


def _protocol_fields(r: RunRecord) -> dict[str, Any]:
    return {k: v for k, v in (r.protocol or {}).items() if k not in {"hash", "short_hash"}}


def _latent_kind(r: RunRecord) -> str:
    """``continuous`` when the run's tokenizer recorded float latents (``metrics.tokenizer.metadata``), else
    ``discrete``."""
    meta = ((r.metrics or {}).get("tokenizer") or {}).get("metadata") or {}
    return "continuous" if isinstance(meta, dict) and meta.get("latent_kind") == "continuous" else "discrete"


def check_matched(records: Sequence[RunRecord], allow_mismatch: bool) -> dict[str, list[str]]:
    """Fields of the shared harness that differ between runs; an error unless ``allow_mismatch``.

    A run over continuous latents (e.g. ``lightningdit`` on ``kl-vae``) cannot share a discrete method's
    tokenizer: against a baseline of the other latent kind its tokenizer differences are one marked note,
    not a refusal (the rest of the harness must still match)."""
    ref = _flat(records[0].config)
    ref_kind = _latent_kind(records[0])
    notes: dict[str, list[str]] = {}
    expected: set[str] = set()
    for r in records[1:]:
        flat = _flat(r.config)
        other_kind = _latent_kind(r) != ref_kind
        if other_kind:
            notes.setdefault(r.label, []).append(
                f"tokenizer: {flat.get('tokenizer.name')!r} ({_latent_kind(r)} latents; baseline "
                f"{ref.get('tokenizer.name')!r}, {ref_kind}): necessarily different")
            expected.add(r.label)
        # under one training-FLOPs budget the step count is each method's own cap (a method that does more passes
        # per step gets fewer steps: its preset's equal-compute rule), not a second budget to match
        same_flops = ref.get("training.budget_flops") is not None and ref.get("training.budget_flops") == flat.get(
            "training.budget_flops")
        for key in sorted(set(ref) | set(flat)):
            group = next((g for prefix, g in MATCHED_FIELDS.items() if key == prefix or key.startswith(prefix + ".")), None)
            if group is None or ref.get(key) == flat.get(key) or (other_kind and key.startswith("tokenizer.")):
                continue
            if same_flops and key == "training.steps":
                continue
            notes.setdefault(r.label, []).append(f"{key}: {flat.get(key)!r} (baseline {ref.get(key)!r})")
    refused = {m: v for m, v in notes.items() if m not in expected or len(v) > 1}
    if refused and not allow_mismatch:
        detail = "; ".join(f"{m}: {', '.join(v[:4])}{' …' if len(v) > 4 else ''}" for m, v in refused.items())
        raise ComparisonMismatchError(
            f"runs differ in the shared harness ({detail}). Match them, or pass --allow-mismatch to compare "
            "anyway with the differences marked in the table."
        )
    return notes


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------


@dataclass
class MethodSummary:
    label: str
    runs: list[RunRecord]
    metrics: dict[str, Interval] = field(default_factory=dict)
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    diffs: dict[str, Interval] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    mismatch: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    protocol_hash: str
    summaries: list[MethodSummary]
    metric_names: list[str]
    unavailable: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: the anchor record shared by the runs (dlbench.eval.anchors), None when the runs carry none
    anchors: dict[str, Any] | None = None

    @property
    def baseline(self) -> MethodSummary:
        return self.summaries[0]


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER) or metric.endswith("_fd")


def summarise(records: Sequence[RunRecord], order: Sequence[str] | None = None,
              mismatch: dict[str, list[str]] | None = None) -> Comparison:
    protocol_hash = check_protocols(records)
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    order = list(order or [])
    labels = [lab for lab in order if lab in groups] + [lab for lab in groups if lab not in order]
    metric_names = sorted({k for r in records for k, v in (r.metrics.get("metrics") or {}).items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    unavailable: dict[str, str] = {}
    for r in records:
        unavailable.update(r.metrics.get("unavailable") or {})
    summaries = []
    for lab in labels:
        runs = sorted(groups[lab], key=lambda r: r.train_seed)
        s = MethodSummary(lab, runs, mismatch=(mismatch or {}).get(lab, []))
        for m in metric_names:
            vals = [r.metrics["metrics"][m] for r in runs if isinstance(r.metrics.get("metrics", {}).get(m), (int, float))]
            vals = [float(v) for v in vals if math.isfinite(float(v))]
            if vals:
                s.per_seed[m] = vals
                s.metrics[m] = mean_ci(vals)
        s.compute = _compute_columns(runs)
        summaries.append(s)
    base = summaries[0]
    for s in summaries[1:]:
        for m, vals in s.per_seed.items():
            if m in base.per_seed:
                s.diffs[m] = diff_ci(vals, base.per_seed[m])
    from dlbench.report.calibrated import attach_anchors
    from dlbench.report.integrity import integrity_notes

    cmp = Comparison(protocol_hash, summaries, metric_names, unavailable,
                     notes=integrity_notes(summaries, metric_names))
    attach_anchors(cmp, records)
    return cmp


def _compute_columns(runs: Sequence[RunRecord]) -> dict[str, Any]:
    comp = [r.metrics.get("compute") or {} for r in runs]

    def avg(key: str) -> float | None:
        vals = [c[key] for c in comp if isinstance(c.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    return {
        "params": avg("params"),
        "train_steps": avg("train_steps"),
        "images_seen": avg("images_seen"),
        "wall_clock_s": avg("wall_clock_s"),
        "nfe": avg("nfe"),
        "train_flops": avg("train_flops"),
        "seeds": [r.train_seed for r in runs],
        "sample_seeds": sorted({r.sample_seed for r in runs}),
    }


def load_records(paths: Sequence[str | Path]) -> list[RunRecord]:
    """The records of these run directories; refuses the same run listed twice."""
    from dlbench.report.integrity import check_distinct_runs

    records = [RunRecord.load(p) for p in paths]
    check_distinct_runs(records)
    return records


__all__ = ["summarise", "RunRecord", "Comparison", "MethodSummary", "check_protocols", "check_matched",
           "ProtocolMismatchError", "ComparisonMismatchError", "load_records", "lower_is_better"]
