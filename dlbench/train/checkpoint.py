"""Checkpoints: atomic, pointer-based, resumable bit-for-bit (k-diffusion style ``latest`` pointer).

Layout under a checkpoint directory::

    step-00000100/  model.pt  ema.pt  optimizer.pt  state.json
    latest.json     {"step": 100, "path": "step-00000100"}

``*.pt`` hold plain state dicts loadable with ``torch.load(weights_only=True)``. ``state.json`` holds
the step, images seen, elapsed time, RNG states (torch, CUDA, numpy, python -- one entry per rank),
the config hash and the config itself (to name differing fields on a refused resume). A checkpoint
is written into a temporary directory and renamed into place, then ``latest.json`` is replaced
atomically; the previous ``keep - 1`` checkpoints stay as fallbacks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlbench.fsutil import disk_errors, temp_prefix
from dlbench.registry import DlbenchError


class CheckpointError(DlbenchError):
    pass


class ResumeConfigMismatch(CheckpointError):
    """Resume refused: the run's configuration changed since the checkpoint."""

    def __init__(self, where: Path, diff: dict[str, tuple[Any, Any]]):
        self.diff = diff
        fields = "; ".join(f"{k}: {a!r} (checkpoint) != {b!r} (now)" for k, a, b in
                           ((k, *v) for k, v in sorted(diff.items())))
        super().__init__(
            f"cannot resume from {where}: the configuration changed ({fields}). "
            "Restore those values, or start a new run without --resume"
        )


def _atomic_write_text(path: Path, text: str) -> None:
    from dlbench.runs import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


# ---------------------------------------------------------------------------------------------
# RNG state (JSON-serialisable)
# ---------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    ema: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``step-XXXXXXXX/`` atomically, point ``latest.json`` at it, prune to ``keep`` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = directory / name
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), dir=directory))  # pid in the name: see fsutil
    try:
        with disk_errors(tmp / "model.pt"):
            torch.save(model, tmp / "model.pt")
            torch.save(optimizer, tmp / "optimizer.pt")
            if ema is not None:
                torch.save(ema, tmp / "ema.pt")
            (tmp / "state.json").write_text(json.dumps({**state, "step": step}, sort_keys=True))
        if final.exists():  # re-saving the same step (e.g. final == periodic): replace
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(directory / "latest.json", json.dumps({"step": step, "path": name}) + "\n")
    old = sorted(p for p in directory.glob("step-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``latest.json`` points at (or the newest complete one if the pointer is broken)."""
    directory = Path(directory)
    pointer = directory / "latest.json"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["path"]
            path = directory / name
            if isinstance(name, str) and path.parent == directory and (path / "state.json").is_file():
                return path
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, OSError):
            pass  # a torn pointer: fall back to scanning
    complete = checkpoint_candidates(directory)
    return complete[0] if complete else None


def checkpoint_candidates(directory: str | Path) -> list[Path]:
    """Complete-looking checkpoints (a ``state.json`` present), newest first."""
    directory = Path(directory)
    return sorted((p for p in directory.glob("step-*") if (p / "state.json").is_file()), reverse=True)


def load_latest_intact(directory: str | Path, map_location: str | torch.device = "cpu",
                       warn=None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads completely: ``latest.json``'s target first, then older ones.

    A truncated/zero-byte/corrupt file skips that checkpoint (``warn(message)`` is told which file);
    None when there is no checkpoint at all; :class:`CheckpointError` naming every damaged file when
    checkpoints exist but none is intact."""
    directory = Path(directory)
    first = latest_checkpoint(directory)
    order = ([first] if first is not None else []) + [p for p in checkpoint_candidates(directory) if p != first]
    problems: list[str] = []
    for path in order:
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except DlbenchError as exc:
            problems.append(str(exc))
            if warn is not None:
                warn(f"skipping damaged checkpoint: {exc}")
    if problems:
        raise CheckpointError(f"no intact checkpoint in {directory}: " + " | ".join(problems))
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"model", "optimizer", "ema" (or None), "state"}`` from a checkpoint directory."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.json)")

    from dlbench.safeload import read_json_file, torch_load

    def load(name: str, required: bool = False) -> Any:
        f = path / name
        if not f.is_file():
            if required:
                raise CheckpointError(f"{f}: missing from the checkpoint")
            return None
        return torch_load(f, what="checkpoint file", map_location=map_location)

    state = read_json_file(path / "state.json", what="checkpoint state")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path / 'state.json'}: checkpoint state has no integer 'step'; the file is damaged")
    return {
        "model": load("model.pt", required=True),
        "optimizer": load("optimizer.pt"),
        "ema": load("ema.pt"),
        "state": state,
    }
