"""The orchestration layer: resolve -> pre-flight -> stages -> artefacts, for one run or a comparison.

Every entry point takes a typed :class:`~dlbench.config.RunConfig` (or a run directory) and the
:class:`~dlbench.registry.Registry` explicitly; :mod:`dlbench.api` resolves both once and calls these.
Nothing here looks up a global registry; :mod:`dlbench.report` only reads what these write.

Modules, one job each:

- :mod:`~dlbench.runner.session`: one run (pre-flight, run directory, provenance, loggers, run end);
  ``dlbench eval`` with the run locked.
- :mod:`~dlbench.runner.stages`: the stage sequence of a run and its ``metrics.json``.
- :mod:`~dlbench.runner.tokenizer_stage`: the trained tokenizer (cache key, shipped copy, training).
- :mod:`~dlbench.runner.tokens`: token arrays of dataset splits (the token cache), ``--skip-bad`` counts.
- :mod:`~dlbench.runner.generator_stage`: build and train the method; its compute record.
- :mod:`~dlbench.runner.sampling`: per-index-seeded sampling, decoding, ``samples.npz``/``.png``.
- :mod:`~dlbench.runner.evaluation`: protocol metrics, calibration, re-evaluation of a finished run.
- :mod:`~dlbench.runner.calibration`: token metrics / anchors / learning curves / FLOPs budgets bound to a run.
- :mod:`~dlbench.runner.restore`: rebuild a finished run's method and tokenizer; ``dlbench sample``.
- :mod:`~dlbench.runner.sampler_tuning`: ``compare --tune-sampling``.
- :mod:`~dlbench.runner.compare_runs`: ``dlbench compare`` (plan, reuse or train, then report).
- :mod:`~dlbench.runner.common`: helpers every stage uses.
"""

from __future__ import annotations

from typing import Any

#: public name -> module (imported on first use: ``import dlbench.api`` stays cheap)
_EXPORTS = {
    "run": "session", "reevaluate": "session", "RunResult": "session", "RunFailed": "session",
    "RunInterrupted": "session", "execute": "stages", "evaluate_run": "evaluation", "sample_run": "restore",
    "load_trained_method": "restore", "compare": "compare_runs", "budget_overrides": "compare_runs", "plan_runs": "compare_runs",
    "PipelineError": "common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"dlbench.runner.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dlbench.runner' has no attribute {name!r}")
