"""Run loggers: every event a run records goes to each logger of the run (kind ``logger``).

A run's events (``RunDir.event(kind, **fields)``) are records ``{"time", "event", **fields}``. When a
run starts, :func:`open_loggers` builds the ``jsonl`` logger (the run directory's own
``events.jsonl``, always on) plus the loggers the config names (``loggers = ["tensorboard"]`` or
``dlbench run --logger tensorboard``) and attaches them to the run directory as a
:class:`LoggerSet`: from then on each event reaches every logger, in order.

A logger that raises (while being built, logging or closing) is reported once -- one line on stderr
and a ``warning`` event to the remaining loggers -- and disabled; the run goes on. A
:class:`~dlbench.registry.DlbenchError` raised while building (e.g. a missing optional package) is the
user's to fix and stops the run before any work.

Built-ins: ``jsonl`` and ``tensorboard`` (the optional extra ``dlbench[tensorboard]``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from pydantic import Field

from dlbench.interfaces import ComponentConfig, EmptyConfig, RunLogger
from dlbench.registry import DlbenchError


class LoggerUnavailableError(DlbenchError):
    pass


def _json_default(obj: Any) -> Any:
    from dlbench.runs import _json_default as default

    return default(obj)


# ---------------------------------------------------------------------------------------------
# built-in loggers
# ---------------------------------------------------------------------------------------------


class JsonlLogger(RunLogger):
    """The run directory's events.jsonl: one JSON object per line, appended (always on)."""

    Config = EmptyConfig

    def __init__(self, config: EmptyConfig | None = None, *, run_dir: str | Path, run_config: dict | None = None,
                 resume: bool = False):
        self.path = Path(run_dir) / "events.jsonl"

    #: the run directory's own record, not a tracker: its failure (e.g. disk full) fails the run
    essential = True

    def log(self, event: dict[str, Any]) -> None:
        # one write per line in append mode: a crash leaves at most a torn last line, which readers skip
        import os

        from dlbench.fsutil import disk_errors

        line = json.dumps(event, default=_json_default, sort_keys=True) + "\n"
        with disk_errors(self.path), open(self.path, "a+b") as fh:
            # a line torn by a crash has no newline: end it first, or this event would be glued to it
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode("utf-8"))

    def close(self) -> None:
        pass


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists and other non-scalars become JSON strings."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
        return out
    key = prefix[:-1]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        out[key] = "None" if obj is None else obj
    else:
        out[key] = json.dumps(obj, default=str, sort_keys=True)
    return out


#: events the training loop and the runner write that are not scalar series
_NOT_SCALARS = {"run_start", "run_end", "checkpoint", "tokenizer", "samples", "recon", "evaluation",
                "warning", "failure", "sampling"}


def _numeric(fields: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in fields.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in {"step", "time", "rank"}}


class TensorBoardLogger(RunLogger):
    """TensorBoard event files in the run directory: losses, diagnostics, sample grids, metrics, hparams."""

    class Config(ComponentConfig):
        subdir: str = Field("tensorboard", description="folder inside the run directory for the event files")
        flush_secs: int = Field(30, gt=0, description="how often the writer flushes to disk")

    def __init__(self, config: "TensorBoardLogger.Config", *, run_dir: str | Path, run_config: dict | None = None,
                 resume: bool = False):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise LoggerUnavailableError(
                f"logger 'tensorboard' needs the tensorboard package ({exc}); "
                "install it with: pip install 'dlbench[tensorboard]'"
            ) from None
        self.config = config
        self.logdir = Path(run_dir) / config.subdir
        self.writer = SummaryWriter(str(self.logdir), flush_secs=config.flush_secs)
        self.run_config = run_config or {}
        # a later `dlbench eval` of a finished run: its metrics land at the last training step, and a
        # protocol other than the run's own gets its own series (numbers of two protocols never share one)
        from dlbench.runs import read_json

        done = read_json(Path(run_dir) / "metrics.json", {}) or {}
        self.step = int((done.get("training") or {}).get("step") or 0)
        self.own_protocol: str | None = (read_json(Path(run_dir) / "protocol.json", {}) or {}).get("hash")
        self.protocol_hash: str | None = None
        self.final: dict[str, float] = {}
        self.hparams_written = False
        if self.run_config:
            self.writer.add_text("config", "```\n" + json.dumps(self.run_config, indent=2, sort_keys=True) + "\n```", 0)

    def _image(self, tag: str, path: str | None, step: int) -> None:
        if not path or not Path(path).is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        self.writer.add_image(tag, arr, step, dataformats="HWC")

    def log(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        fields = {k: v for k, v in event.items() if k not in {"event", "time"}}
        wall = event.get("time")
        if isinstance(fields.get("step"), int):
            self.step = fields["step"]
        if kind == "diagnostics":
            stage = fields.get("stage", "train")
            for k, v in _numeric(fields).items():
                self.writer.add_scalar(f"{stage}/diagnostics/{k}", v, self.step, walltime=wall)
        elif kind == "evaluation":
            h = fields.get("protocol_hash")
            if self.own_protocol is None:
                self.own_protocol = h
            own = h == self.own_protocol
            prefix = "eval" if own else f"eval@{str(h)[:8]}"
            for k, v in _numeric(fields.get("metrics") or {}).items():
                self.writer.add_scalar(f"{prefix}/{k}", v, self.step, walltime=wall)
                if own:
                    self.final[f"eval/{k}"] = v
            if own:
                self.protocol_hash = h
            self.writer.add_text("protocol_hash", str(h), self.step)
        elif kind == "samples":
            self._image("samples", fields.get("grid"), self.step)
        elif kind == "recon":
            self._image("tokenizer/reconstructions", fields.get("path"), self.step)
        elif kind in {"warning", "failure"}:
            self.writer.add_text(kind, json.dumps(fields, default=str, sort_keys=True), self.step)
        elif kind == "run_end":
            self._write_hparams(fields.get("status", "ok"))
        elif isinstance(kind, str) and kind not in _NOT_SCALARS and not kind.endswith(("_start", "_end", "_resume")) \
                and isinstance(fields.get("step"), int):
            # a training stage's scalars (train / tokenizer_train): loss terms, lr, grad_norm, ...
            for k, v in _numeric(fields).items():
                self.writer.add_scalar(f"{kind}/{k}", v, self.step, walltime=wall)

    def _write_hparams(self, status: str) -> None:
        """The config and protocol hash as hyper-parameters, the final metrics as their metrics (HParams tab)."""
        from torch.utils.tensorboard.summary import hparams

        hp = flatten({k: v for k, v in self.run_config.items()})
        hp["protocol_hash"] = self.protocol_hash or "none"
        hp["status"] = str(status)
        exp, ssi, sei = hparams(hp, self.final or {"eval/none": 0.0})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.hparams_written = True

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()




# ---------------------------------------------------------------------------------------------
# fan-out with failure isolation
# ---------------------------------------------------------------------------------------------


def _report(message: str) -> None:
    stream = sys.stderr
    if stream is not None:
        stream.write(f"warning: {message}\n")
        stream.flush()


class LoggerSet:
    """The loggers of one run: ``log(event)`` reaches each, a failing one is reported once and dropped."""

    def __init__(self, loggers: Iterable[tuple[str, RunLogger]] = ()):
        self.active: list[tuple[str, RunLogger]] = list(loggers)
        self.failed: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.active]

    def log(self, event: dict[str, Any]) -> None:
        failures = []
        for name, logger in list(self.active):
            try:
                logger.log(event)
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
                if getattr(logger, "essential", False):
                    raise  # the run's own events.jsonl: disk full etc. must stop the run and say where
                self.active = [(n, lg) for n, lg in self.active if n != name]
                failures.append((name, exc))
        # reported after this event reached everyone else, so every logger sees the events in one order
        for name, exc in failures:
            self.fail(name, exc, f"handling event {event.get('event')!r}")

    def fail(self, name: str, exc: BaseException, during: str) -> None:
        """Disable logger ``name``: one stderr line and a ``warning`` event to the others."""
        self.active = [(n, lg) for n, lg in self.active if n != name]
        if name in self.failed:
            return
        reason = f"{type(exc).__name__}: {exc}"
        self.failed[name] = reason
        message = f"logger {name!r} failed while {during} ({reason}); it is disabled for the rest of this run"
        _report(message)
        self.log({"time": time.time(), "event": "warning", "logger": name, "message": message})

    def close(self) -> None:
        for name, logger in list(self.active):
            try:
                logger.close()
            except Exception as exc:  # noqa: BLE001
                self.fail(name, exc, "closing")
        self.active = []


def logger_names(refs: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, params)]`` from config entries (strings or ``{"name", "params"}``), ``jsonl`` first, no repeats."""
    out: dict[str, dict[str, Any]] = {"jsonl": {}}
    for ref in refs:
        if isinstance(ref, str):
            name, params = ref, {}
        elif isinstance(ref, dict):
            name, params = ref["name"], dict(ref.get("params") or {})
        else:
            name, params = ref.name, dict(ref.params or {})
        out[name] = {**out.get(name, {}), **params}
    return list(out.items())


def open_loggers(refs: Iterable[Any], run_dir: str | Path, run_config: dict[str, Any] | None = None, *,
                 resume: bool = False, registry: Any = None) -> LoggerSet:
    """Build the run's loggers (``jsonl`` + ``refs``) through the registry.

    Unknown names and invalid params raise (the user's to fix, before any work); so does a
    :class:`DlbenchError` from a logger's constructor. Any other constructor failure is reported once
    and that logger is left out.
    """
    if registry is None:
        from dlbench.plugins import get_registry

        registry = get_registry()
    specs = [(registry.get("logger", name), params) for name, params in logger_names(refs)]
    configs = [(spec, spec.make_config(params)) for spec, params in specs]  # validate all before building any
    loggers = LoggerSet()
    pending: list[tuple[str, BaseException]] = []
    for spec, cfg in configs:
        try:
            loggers.active.append((spec.name, spec.factory(cfg, run_dir=Path(run_dir), run_config=run_config or {},
                                                          resume=resume)))
        except DlbenchError:
            loggers.close()
            raise
        except Exception as exc:  # noqa: BLE001
            pending.append((spec.name, exc))
    for name, exc in pending:  # reported once the others exist, so the warning event is recorded
        loggers.fail(name, exc, "starting")
    return loggers
