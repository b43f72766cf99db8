"""Checks that keep a comparison's statistics honest (used by :mod:`dlbench.report.compare`).

- the same run directory given twice is refused (it would count one run as two seeds and shrink the
  interval to zero width);
- runs of one method that share a training seed are flagged: they are not independent samples, so
  the t-interval over them is too narrow;
- a metric that is NaN/inf in some runs is averaged over the runs where it is finite: its ``n`` is
  shown next to it, so the seeds column never claims more than the metric has;
- the distribution and version of every component a run used (``meta.json`` ``components``) is listed.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any, Sequence

from dlbench.registry import DlbenchError

__all__ = ["DuplicateRunError", "check_distinct_runs", "integrity_notes", "metric_counts"]


class DuplicateRunError(DlbenchError):
    """The same run directory was given more than once."""


def check_distinct_runs(records: Sequence[Any]) -> None:
    seen: dict[str, Any] = {}
    for r in records:
        key = os.path.realpath(r.path)
        if key in seen:
            raise DuplicateRunError(
                f"run {r.path} is given twice (as {seen[key].path} too); one run counted twice would fake a second "
                "seed and a zero-width interval: pass each run directory once"
            )
        seen[key] = r


def metric_counts(runs: Sequence[Any], metric: str) -> int:
    """How many of ``runs`` have a finite value of ``metric``."""
    n = 0
    for r in runs:
        v = (r.metrics.get("metrics") or {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            n += 1
    return n


def integrity_notes(summaries: Sequence[Any], metric_names: Sequence[str]) -> list[str]:
    """Footer lines: shared training seeds, metrics with fewer finite values than runs, provenance."""
    notes: list[str] = []
    for s in summaries:
        by_seed: dict[int, list[str]] = defaultdict(list)
        for r in s.runs:
            by_seed[r.train_seed].append(str(r.path))
        for seed, paths in sorted(by_seed.items()):
            if len(paths) > 1:
                notes.append(f"warning: {s.label}: {len(paths)} runs share training seed {seed} ({', '.join(paths)}); "
                             "they are not independent, so its interval is too narrow")
        for m in metric_names:
            n = metric_counts(s.runs, m)
            if 0 < n < len(s.runs) or (n == 0 and any(m in (r.metrics.get("metrics") or {}) for r in s.runs)):
                notes.append(f"{s.label}: {m} is finite in {n} of {len(s.runs)} runs (NaN/inf dropped); n={n}")
        comps: dict[str, set[str]] = defaultdict(set)
        for r in s.runs:
            for name, prov in ((r.meta or {}).get("components") or {}).items():
                comps[name].add(f"{prov.get('distribution') or '?'} {prov.get('version') or '?'}")
        if comps:
            notes.append(f"{s.label} components: " + "; ".join(
                f"{name} from {', '.join(sorted(v))}" for name, v in sorted(comps.items())))
    return notes
