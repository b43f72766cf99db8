"""Progress of the long stages of a run, on a terminal and in a log file.

Every long stage (tokenizer training, tokenization, generator training, sampling, feature
extraction, the domain classifier, evaluation) reports through :func:`task`. What the user sees
depends on where stderr goes:

- a terminal: rich progress bars (count, rate, loss, elapsed, ETA) plus one summary line per
  finished stage that stays on screen;
- anything else (a file, a pipe, ``nohup``, CI, a batch scheduler): plain lines, one when a stage
  starts, one when it ends, and one every ``interval`` seconds in between, e.g.::

      dlbench 2026-12-01 15:31:05 [train] 10/20 steps (50%) | 3.21 steps/s, 51.4 images/s | loss 1.2345 | elapsed 0:00:03 | ETA 0:00:03

  Each line starts with ``dlbench``, a local time stamp and the stage in brackets, so
  ``grep '\\[train\\]' run.log`` follows one stage.

Settings: :func:`configure` (``dlbench run --quiet --progress-interval S``) or the environment:
``DLBENCH_PROGRESS`` = ``auto`` (default: rich on a terminal, plain otherwise) | ``rich`` | ``plain``
| ``off``; ``DLBENCH_PROGRESS_INTERVAL`` = seconds between plain lines (default 30; 0 = a line at
every update). Only the main process (rank 0 under torchrun) reports.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from dlbench.registry import DlbenchError

MODES = ("auto", "rich", "plain", "off")
DEFAULT_INTERVAL_S = 30.0

_settings: dict[str, Any] = {"mode": None, "interval": None}


class ProgressConfigError(DlbenchError):
    pass


def configure(*, mode: str | None = None, interval: float | None = None, quiet: bool | None = None) -> None:
    """Set the progress mode and the interval between plain lines for this process.

    ``quiet=True`` is ``mode="off"``. Unset arguments keep their current value (environment or default).
    """
    if quiet:
        mode = "off"
    if mode is not None:
        if mode not in MODES:
            raise ProgressConfigError(f"progress mode {mode!r}: choose one of {', '.join(MODES)}")
        _settings["mode"] = mode
    if interval is not None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval >= 0):
            raise ProgressConfigError(f"progress interval {interval!r}: give a number of seconds >= 0")
        _settings["interval"] = float(interval)


def reset() -> None:
    """Forget :func:`configure` settings (back to the environment and defaults)."""
    _settings.update(mode=None, interval=None)


def mode() -> str:
    """The effective mode: ``rich``, ``plain`` or ``off`` (``auto`` resolved against stderr)."""
    m = _settings["mode"] or os.environ.get("DLBENCH_PROGRESS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ProgressConfigError(f"DLBENCH_PROGRESS={m!r}: choose one of {', '.join(MODES)}")
    if m == "auto":
        stream = sys.stderr
        m = "rich" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "plain"
    return m


def interval() -> float:
    """Seconds between two plain progress lines of one stage."""
    if _settings["interval"] is not None:
        return _settings["interval"]
    raw = os.environ.get("DLBENCH_PROGRESS_INTERVAL")
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ProgressConfigError(f"DLBENCH_PROGRESS_INTERVAL={raw!r}: give a number of seconds >= 0")
    return value


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


# ---------------------------------------------------------------------------------------------
# formatting (pure)
# ---------------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not (1e-3 <= abs(value) < 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def format_rate(rate: float) -> str:
    return f"{rate:.3g}" if rate < 1000 else f"{rate:.0f}"


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _write_line(stage: str, text: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    stream.write(f"dlbench {_timestamp()} [{stage}] {text}\n")
    stream.flush()


# ---------------------------------------------------------------------------------------------
# one shared rich display (rich allows a single live display at a time; stages nest)
# ---------------------------------------------------------------------------------------------

_live: Any = None
_live_users = 0


def _live_progress():
    global _live, _live_users
    if _live is None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        _live = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        _live.start()
    _live_users += 1
    return _live


def _live_release() -> None:
    global _live, _live_users
    _live_users -= 1
    if _live_users <= 0 and _live is not None:
        _live.stop()
        _live, _live_users = None, 0


def _live_print(text: str) -> None:
    if _live is not None:
        _live.console.print(text, highlight=False, markup=False)
    else:
        from rich.console import Console

        Console(stderr=True).print(text, highlight=False, markup=False)


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


class Task:
    """Progress of one stage. Use through :func:`task` (a context manager) or call :meth:`close`.

    ``total`` is the amount of work in ``unit`` (None when unknown: no percentage, no ETA).
    ``completed`` is where the stage starts (a resumed training). ``per_unit`` converts the rate to
    ``per_unit_name``/s as well (e.g. images per training step). ``deadline_s`` caps the ETA (a time
    budget). With ``lazy=True`` nothing is shown until the first :meth:`update` (work that may be
    skipped, e.g. reference features found in the cache).
    """

    def __init__(self, stage: str, total: float | None, unit: str = "steps", *, completed: float = 0,
                 per_unit: float | None = None, per_unit_name: str = "images", deadline_s: float | None = None,
                 info: str = "", lazy: bool = False, display: str | None = None, every: float | None = None):
        self.stage, self.total, self.unit = stage, total, unit
        self.completed = self.start_completed = completed
        self.per_unit, self.per_unit_name, self.deadline_s = per_unit, per_unit_name, deadline_s
        self.info = info
        self.display = display if display is not None else (mode() if _is_main() else "off")
        self.every = every if every is not None else interval()
        self.fields: dict[str, Any] = {}
        self.started = self.closed = False
        self._bar = None
        self.t0 = self.last_line = time.monotonic()
        if not lazy:
            self._start()

    # -- numbers -----------------------------------------------------------------------------
    def elapsed(self, now: float | None = None) -> float:
        return (now if now is not None else time.monotonic()) - self.t0

    def rate(self, now: float | None = None) -> float | None:
        """Units per second over this process's part of the stage (None before any progress)."""
        dt, done = self.elapsed(now), self.completed - self.start_completed
        return done / dt if dt > 0 and done > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left: remaining work at the current rate, capped by the time budget."""
        now = now if now is not None else time.monotonic()
        rate, left = self.rate(now), None
        if self.total is not None and rate:
            left = max(self.total - self.completed, 0) / rate
        if self.deadline_s is not None:
            budget_left = max(self.deadline_s - self.elapsed(now), 0.0)
            left = budget_left if left is None else min(left, budget_left)
        if left is None and self.total is not None and self.completed >= self.total:
            left = 0.0
        return left

    def _count(self) -> str:
        done = int(self.completed)
        if self.total is None:
            return f"{done} {self.unit}" if done else ""
        total = int(self.total)
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        return f"{done}/{total} {self.unit} ({pct:.0f}%)"

    def _rate_text(self, now: float) -> str | None:
        rate = self.rate(now)
        if rate is None:
            return None
        text = f"{format_rate(rate)} {self.unit}/s"
        if self.per_unit:
            text += f", {format_rate(rate * self.per_unit)} {self.per_unit_name}/s"
        return text

    def _fields_text(self) -> list[str]:
        return [f"{k} {format_value(v)}" for k, v in self.fields.items() if v is not None]

    def status_line(self, now: float | None = None) -> str:
        """The periodic line: count, rate, fields (loss), elapsed, ETA."""
        now = now if now is not None else time.monotonic()
        parts = [self._count()] if self._count() else []
        if (r := self._rate_text(now)) is not None:
            parts.append(r)
        parts += self._fields_text()
        parts.append(f"elapsed {format_duration(self.elapsed(now))}")
        parts.append(f"ETA {format_duration(self.eta(now))}")
        return " | ".join(parts)

    def _done_line(self, error: str | None, now: float) -> str:
        word = "done" if error is None else f"stopped ({error})"
        count = self._count()
        parts = [f"{word}: {count + ' ' if count else ''}in {format_duration(self.elapsed(now))}"]
        if (r := self._rate_text(now)) is not None:
            parts.append(r)
        parts += self._fields_text()
        return " | ".join(parts)

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        self.started = True
        self.t0 = self.last_line = time.monotonic()
        what = f"{int(self.completed)}/{int(self.total)} {self.unit}" if self.total is not None else ""
        text = "start" + (f": {what}" if what else "") + (f" ({self.info})" if self.info else "")
        if self.display == "plain":
            _write_line(self.stage, text)
        elif self.display == "rich":
            self._bar = _live_progress().add_task(self.stage, total=self.total, completed=self.completed,
                                                   count=self._count(), info="")

    def update(self, completed: float | None = None, *, advance: float | None = None, **fields: Any) -> None:
        """Record progress (absolute ``completed`` or relative ``advance``) and fields such as ``loss``."""
        if self.closed:
            return
        if not self.started:
            self._start()
        if completed is not None:
            self.completed = completed
        if advance is not None:
            self.completed += advance
        self.fields.update(fields)
        if self.display == "plain":
            now = time.monotonic()
            if now - self.last_line >= self.every:
                _write_line(self.stage, self.status_line(now))
                self.last_line = now
        elif self.display == "rich" and self._bar is not None:
            now = time.monotonic()
            info = " | ".join([x for x in (self._rate_text(now),) if x] + self._fields_text())
            _live.update(self._bar, completed=self.completed, count=self._count(), info=info)

    def close(self, error: str | None = None) -> None:
        """End the stage: a ``done:`` line (``stopped (...)`` with ``error``)."""
        if self.closed:
            return
        self.closed = True
        if not self.started:
            return
        now = time.monotonic()
        line = self._done_line(error, now)
        if self.display == "plain":
            _write_line(self.stage, line)
        elif self.display == "rich":
            if self._bar is not None:
                _live.remove_task(self._bar)
            _live_print(f"dlbench {_timestamp()} [{self.stage}] {line}")
            _live_release()

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(None if exc_type is None else exc_type.__name__)


def task(stage: str, total: float | None, unit: str = "steps", **kwargs: Any) -> Task:
    """A :class:`Task` for ``stage`` (shown as ``[stage]``); use as ``with task(...) as t: t.update(...)``."""
    return Task(stage, total, unit, **kwargs)


def note(stage: str, message: str) -> None:
    """One line about a stage that needs no progress (e.g. a cached tokenizer was reused)."""
    if not _is_main():
        return
    m = mode()
    if m == "plain":
        _write_line(stage, message)
    elif m == "rich":
        _live_print(f"dlbench {_timestamp()} [{stage}] {message}")
