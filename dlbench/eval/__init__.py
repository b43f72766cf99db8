"""Evaluation: protocol, backends (torch-fidelity, clean-fid), feature extractors, domain and
tokenizer metrics, collapse diagnostics. See docs/protocol.md."""

from __future__ import annotations

from dlbench.eval.collapse import collapse_diagnostics
from dlbench.eval.extractors import InceptionFIDExtractor
from dlbench.eval.domain import DomainClassifierExtractor
from dlbench.eval.protocol import PRESETS, EvalProtocol, ProtocolError, resolve_protocol


def evaluate_samples(*args, **kwargs):  # noqa: D103 -- lazy: keeps `import dlbench.eval` light
    from dlbench.eval.api import evaluate_samples as f

    return f(*args, **kwargs)


def evaluate_tokenizer(*args, **kwargs):  # noqa: D103
    from dlbench.eval.api import evaluate_tokenizer as f

    return f(*args, **kwargs)


evaluate_samples.__doc__ = "See :func:`dlbench.eval.api.evaluate_samples`."
evaluate_tokenizer.__doc__ = "See :func:`dlbench.eval.api.evaluate_tokenizer`."

__all__ = [
    "EvalProtocol", "PRESETS", "ProtocolError", "resolve_protocol", "collapse_diagnostics",
    "DomainClassifierExtractor", "InceptionFIDExtractor", "evaluate_samples", "evaluate_tokenizer",
]
