"""Run directories: layout, metadata, locking, events, atomic JSON.

Layout (DESIGN.md § Run directory)::

    runs/<method>/<dataset>/<timestamp>-<shorthash>/
      config.json  meta.json  protocol.json  metrics.json  events.jsonl
      checkpoints/ (+ latest.json)  samples.npz  samples.png  recon.png  report.html

Every JSON is written atomically (temp file in the same directory, fsync, ``os.replace``), so a
crash mid-write leaves the previous file intact. A lock file (``.lock``, created with ``O_EXCL``,
holding the owner's pid and host) refuses a second writer; a lock whose pid is dead on this host is
stale and taken over.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from dlbench.registry import DlbenchError

DEFAULT_RUNS_ROOT = Path("runs")

#: events.jsonl names the runner writes and the report and loggers read (one name per kind of record).
#: The training loop names a stage's log lines after the stage: ``{"event": <stage>, "step", "loss", ...}``
#: and ``{"event": "diagnostics", "stage": <stage>, ...}``.
EVENT_TOKENIZER_TRAIN = "tokenizer_train"
EVENT_GENERATOR_TRAIN = "train"
#: protocol metrics: ``{"event": "evaluation", "protocol_hash", "metrics": {name: value}, "step"}`` (no
#: ``step`` when ``dlbench eval`` re-evaluates a finished run)
EVENT_EVALUATION = "evaluation"


class RunLockedError(DlbenchError):
    pass


class RunDirError(DlbenchError):
    pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never a torn one.

    The temporary file is named ``.<name>.<pid>.<random>.tmp`` so that one left by a killed process
    can be recognised and removed later (:func:`dlbench.fsutil.clean_stale_temps`); see
    :func:`dlbench.fsutil.atomic_write`."""
    from dlbench.fsutil import atomic_write

    with atomic_write(path) as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, default: Any = None) -> Any:
    """Parsed JSON, ``default`` when missing; a torn/corrupt file is a one-line error naming it."""
    from dlbench.safeload import read_json_file

    return read_json_file(path, what=Path(path).name, default=default)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run directory. Use :meth:`create` for a new run and :meth:`open` for an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._locked = False
        self.loggers: Any = None  # a dlbench.observe.loggers.LoggerSet while a run is attached

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, method: str, dataset: str, config_hash: str) -> "RunDir":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = Path(root) / method / dataset
        for attempt in range(100):
            suffix = "" if attempt == 0 else f"-{attempt}"
            path = base / f"{stamp}-{config_hash[:8]}{suffix}"
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
        raise RunDirError(f"could not create a fresh run directory under {base}")

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise RunDirError(
                f"{path} is not a dlbench run directory (no config.json). "
                "Pass a directory created by `dlbench run`, e.g. runs/<method>/<dataset>/<stamp>-<hash>"
            )
        return cls(path)

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str, default: Any = None) -> Any:
        return read_json(self.path / name, default)

    def update_json(self, name: str, **fields: Any) -> dict[str, Any]:
        data = self.read_json(name, {}) or {}
        data.update(fields)
        self.write_json(name, data)
        return data

    def event(self, kind: str, **fields: Any) -> None:
        """Record one time-stamped event: to every attached logger (see :meth:`attach`; the ``jsonl``
        logger appends it to events.jsonl), or straight to events.jsonl when none is attached."""
        rec = {"time": time.time(), "event": kind, **fields}
        if self.loggers is not None:
            self.loggers.log(rec)
        else:
            from dlbench.observe.loggers import JsonlLogger

            JsonlLogger(run_dir=self.path).log(rec)

    def attach(self, loggers: Any) -> None:
        """Send this run's events to ``loggers`` (a :class:`dlbench.observe.loggers.LoggerSet`)."""
        self.loggers = loggers

    @contextmanager
    def logging(self, make: Any) -> Iterator["RunDir"]:
        """Attach the loggers ``make()`` builds for the duration of the block, then close them."""
        self.attach(make())
        try:
            yield self
        finally:
            self.detach()

    def detach(self) -> None:
        """Close the attached loggers; later events go straight to events.jsonl."""
        if self.loggers is not None:
            loggers, self.loggers = self.loggers, None
            loggers.close()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.path / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash is ignored, earlier lines stay valid
            if kind is None or rec.get("event") == kind:
                out.append(rec)
        return out

    # -- locking -----------------------------------------------------------------------------
    def acquire(self) -> None:
        lock = self.path / ".lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    owner = {}
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
                    lock.unlink(missing_ok=True)  # stale: its writer died
                    continue
                raise RunLockedError(
                    f"run directory {self.path} is in use by pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')} since {owner.get('since', '?')}; wait for it to finish, or "
                    f"delete {lock} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._locked = True
            from dlbench.fsutil import clean_stale_temps

            clean_stale_temps(self.path, self.checkpoints)  # left by a killed writer of this run
            return
        raise RunLockedError(f"could not lock {self.path}")

    def release(self) -> None:
        if self._locked:
            (self.path / ".lock").unlink(missing_ok=True)
            self._locked = False

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def git_sha(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect_meta(*, argv: list[str] | None = None, device: str | None = None, seeds: dict[str, int] | None = None,
                 precision: str | None = None) -> dict[str, Any]:
    """Provenance recorded in meta.json: argv, git sha, versions, device, seeds."""
    import torch

    import dlbench
    from dlbench.plugins import get_manager

    manager = get_manager()
    return {
        "argv": list(sys.argv if argv is None else argv),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "dlbench": dlbench.__version__,
        "plugins": {
            name: {"distribution": p.distribution, "version": p.version, "ok": p.ok}
            for name, p in manager.plugins.items()
        },
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "seeds": seeds or {},
        "started": utcnow(),
    }


def find_runs(root: str | Path = DEFAULT_RUNS_ROOT) -> list[RunDir]:
    root = Path(root)
    if not root.exists():
        return []
    return [RunDir(p.parent) for p in sorted(root.glob("**/config.json"))]
