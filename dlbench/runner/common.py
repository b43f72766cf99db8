"""Helpers every runner stage uses: the runner's error, the cache root, console, event sink, PNG grids.

Images go back to uint8 by the evaluation protocol's rule (:func:`dlbench.eval.quantize.quantize_uint8`);
nothing here knows about a particular stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dlbench.registry import DlbenchError
from dlbench.runs import RunDir, atomic_write_bytes
from dlbench.train.dist import DistContext


class PipelineError(DlbenchError):
    """A run cannot go on (a missing tokenizer cache entry, a run that never trained, ...)."""


def cache_root() -> Path:
    from dlbench.eval.inception import cache_dir

    return cache_dir()


def is_continuous(tokenizer: Any) -> bool:
    """The tokenizer declares float latents (``Tokenizer.latent_kind == "continuous"``), not token ids."""
    return getattr(tokenizer, "latent_kind", "discrete") == "continuous"


def to_float_images(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``"b c H W"`` -> float in [-1, 1]."""
    return u8.float() / 127.5 - 1.0


def save_grid(images_u8: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """PNG grid of uint8 ``"n c H W"`` images, ``nrow`` per row, written atomically."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images_u8.float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if images_u8.shape[1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def console():
    from rich.console import Console

    return Console(stderr=True)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def events_for(run_dir: RunDir | None, ctx: DistContext):
    """The event sink of a stage: the run's events.jsonl on rank 0, a no-op elsewhere."""
    if run_dir is None or not ctx.is_main:
        return lambda *a, **k: None
    return run_dir.event


def safe_diagnostics(method: Any) -> dict[str, float]:
    try:
        return dict(method.diagnostics())
    except Exception as exc:  # noqa: BLE001 - diagnostics must never lose a finished run
        return {"error": f"{type(exc).__name__}: {exc}"}  # type: ignore[dict-item]


def failed(run_dir: RunDir, ctx: DistContext, reason: str, step: int | None) -> dict[str, Any]:
    """End a run without a result: ``{"status": "failed", ...}`` in metrics.json, a red line on the console."""
    metrics = {"status": "failed", "reason": reason, "step": step}
    if ctx.is_main:
        run_dir.write_json("metrics.json", metrics)
        console().print(f"[red]run failed:[/red] {reason}")
    return metrics
