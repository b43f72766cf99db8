"""``dlbench runs``: one line per run directory under an output root, from what the run recorded.

Everything is read from the run directory (:mod:`dlbench.runs`): ``config.json`` (method, dataset,
preset, seed, budget), ``meta.json`` (start and finish time), the ``.lock`` file (owner pid and host),
``events.jsonl`` (progress, ``run_end`` status), ``checkpoints/latest.json`` and ``metrics.json``
(status, reason, metrics, protocol hash). Status is one of:

- ``running``: the lock's owner process is alive (on another host: its lock is taken at its word);
- ``finished``: metrics.json says ``ok``;
- ``failed``: metrics.json says ``failed`` (e.g. training diverged), or the run ended with an error;
- ``interrupted``: the process is gone without finishing (Ctrl-C, killed, crashed machine); such a
  run is resumable with ``dlbench run METHOD --resume RUN_DIR`` from its latest checkpoint.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from dlbench.registry import DlbenchError
from dlbench.runs import RunDir, _pid_alive, find_runs

STATUSES = ("running", "finished", "failed", "interrupted")
#: metrics shown in the table, in this order of preference (at most three)
HEADLINE_METRICS = ("fid", "kid_mean", "domain_fd", "domain_class_acc", "domain_is", "isc_mean", "precision", "recall")

_STAGE_OF_EVENT = {
    "run_start": "starting", "tokenizer_train_start": "tokenizer", "tokenizer_train": "tokenizer",
    "tokenizer_train_end": "tokenizer", "tokenizer_train_resume": "tokenizer", "tokenizer": "tokenize",
    "recon": "train", "train_start": "train", "train": "train", "train_resume": "train", "diagnostics": "train",
    "checkpoint": "train", "train_end": "sample", "sampling": "sample", "samples": "evaluate",
}


class RunsViewError(DlbenchError):
    pass


@dataclass
class RunSummary:
    path: str
    method: str
    dataset: str
    preset: str | None
    seed: int | None
    status: str
    reason: str | None = None
    pid: int | None = None
    host: str | None = None
    resumable: bool = False
    stage: str | None = None
    step: int = 0
    total_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    protocol_hash: str | None = None
    started: str | None = None
    finished: str | None = None
    age_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _started(rd: RunDir, meta: dict[str, Any]) -> tuple[str | None, float | None]:
    raw = meta.get("started")
    if raw:
        try:
            return raw, datetime.fromisoformat(raw).timestamp()
        except ValueError:
            pass
    try:
        ts = rd.file("config.json").stat().st_mtime
    except OSError:
        return None, None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds"), ts


def lock_owner(rd: RunDir) -> dict[str, Any] | None:
    """The live owner of the run's lock (``{"pid", "host", "since", "alive"}``), or None."""
    lock = rd.file(".lock")
    try:
        owner = json.loads(lock.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        owner = {}
    pid, host = owner.get("pid"), owner.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        owner["alive"] = _pid_alive(pid)
    else:
        owner["alive"] = True  # another host's process cannot be checked from here
    return owner


def _total_steps(config: dict[str, Any]) -> int | None:
    training = config.get("training") or {}
    steps = training.get("steps")
    images, batch = training.get("budget_images"), training.get("batch_size")
    if isinstance(steps, int) and isinstance(images, int) and isinstance(batch, int) and batch > 0:
        steps = min(steps, -(-images // batch))
    return steps


def _checkpoint_step(rd: RunDir) -> int | None:
    pointer = rd.checkpoints / "latest.json"
    try:
        return int(json.loads(pointer.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def headline(metrics: dict[str, Any], limit: int = 3) -> dict[str, float]:
    """The run's headline metrics (see :data:`HEADLINE_METRICS`), at most ``limit``."""
    values = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: float(values[k]) for k in [m for m in HEADLINE_METRICS if m in values][:limit]}


def summarize(rd: RunDir, *, now: float | None = None) -> RunSummary:
    """What one run directory says about itself."""
    now = time.time() if now is None else now
    config = rd.read_json("config.json", {}) or {}
    meta = rd.read_json("meta.json", {}) or {}
    try:
        metrics = rd.read_json("metrics.json", None)
    except json.JSONDecodeError:
        metrics = None
    events = rd.events()
    started, started_ts = _started(rd, meta)
    summary = RunSummary(
        path=str(rd.path), method=(config.get("method") or {}).get("name", "?"),
        dataset=(config.get("dataset") or {}).get("name", "?"), preset=config.get("preset"), seed=config.get("seed"),
        status="interrupted", started=started, finished=meta.get("finished"),
        age_s=None if started_ts is None else max(now - started_ts, 0.0), total_steps=_total_steps(config),
    )
    # steps of generator training: the newest of the logged steps and the latest checkpoint
    steps = [e.get("step") for e in events if e.get("event") in {"train", "train_end", "train_resume"}]
    steps.append(_checkpoint_step(rd))
    summary.step = max([s for s in steps if isinstance(s, int)], default=0)
    last_stage = next((_STAGE_OF_EVENT[e["event"]] for e in reversed(events) if e.get("event") in _STAGE_OF_EVENT),
                      None)
    if isinstance(metrics, dict):
        summary.metrics = headline(metrics.get("metrics") or {})
        summary.protocol_hash = metrics.get("protocol_hash")
    ends = [e for e in events if e.get("event") == "run_end"]
    last_end = ends[-1] if ends else None
    starts_after_end = last_end is not None and any(
        e.get("event") == "run_start" and e.get("time", 0) > last_end.get("time", 0) for e in events)

    owner = lock_owner(rd)
    if owner is not None and owner.get("alive"):
        summary.status, summary.pid, summary.host = "running", owner.get("pid"), owner.get("host")
        summary.stage = last_stage
        return summary
    end_status = None if (last_end is None or starts_after_end) else last_end.get("status")
    m_status = metrics.get("status", "ok") if isinstance(metrics, dict) else None
    if end_status == "error":
        summary.status, summary.reason = "failed", last_end.get("reason")
    elif end_status == "interrupted":
        summary.status = "interrupted"
    elif m_status == "failed" and end_status in (None, "failed"):
        summary.status, summary.reason = "failed", metrics.get("reason")
    elif m_status == "ok" and end_status in (None, "ok"):
        summary.status = "finished"
    else:
        summary.status = "interrupted"
    if summary.status == "interrupted":
        summary.stage = last_stage
        summary.resumable = rd.file("config.json").is_file()
        if owner is not None:
            summary.reason = f"process {owner.get('pid')} is gone (stale lock)"
    return summary


def list_runs(root: str | Path = "runs", *, methods: Iterable[str] = (), statuses: Iterable[str] = (),
              datasets: Iterable[str] = ()) -> list[RunSummary]:
    """Summaries of the runs under ``root``, oldest first, filtered by method / status / dataset."""
    root = Path(root)
    if not root.exists():
        raise RunsViewError(f"{root} does not exist; pass the directory your runs were written to "
                            "(`dlbench run --out DIR`, default runs/)")
    statuses = list(statuses)
    for s in statuses:
        if s not in STATUSES:
            raise RunsViewError(f"--status {s!r}: choose one of {', '.join(STATUSES)}")
    methods, datasets = set(methods), set(datasets)
    now = time.time()
    out = []
    for rd in find_runs(root):
        s = summarize(rd, now=now)
        if (methods and s.method not in methods) or (statuses and s.status not in statuses) or \
                (datasets and s.dataset not in datasets):
            continue
        out.append(s)
    return sorted(out, key=lambda s: (s.started or "", s.path))


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def status_text(s: RunSummary, width: int = 60) -> str:
    if s.status == "running":
        where = f"pid {s.pid}" + (f" on {s.host}" if s.host and s.host != socket.gethostname() else "")
        return f"running ({where}" + (f", {s.stage}" if s.stage else "") + ")"
    if s.status == "failed":
        reason = (s.reason or "?").splitlines()[0] if s.reason else "?"
        return "failed: " + (reason if len(reason) <= width else reason[: width - 3] + "...")
    if s.status == "interrupted":
        return "interrupted" + (", resumable" if s.resumable else "") + (f" ({s.stage})" if s.stage else "")
    return s.status


def metrics_text(s: RunSummary) -> str:
    if not s.metrics:
        return "-"
    text = ", ".join(f"{k} {v:.4g}" for k, v in s.metrics.items())
    return text + (f" [{s.protocol_hash[:8]}]" if s.protocol_hash else "")


def rows(summaries: list[RunSummary], root: str | Path) -> list[list[str]]:
    """Table rows; the run column is the directory name (``ROOT/<method>/<dataset>/<run>`` is its path)."""
    out = []
    for s in summaries:
        steps = f"{s.step}/{s.total_steps}" if s.total_steps is not None else str(s.step)
        out.append([Path(s.path).name, s.method, s.dataset, str(s.preset), str(s.seed), status_text(s),
                    steps, metrics_text(s), format_age(s.age_s)])
    return out


COLUMNS = ("run", "method", "dataset", "preset", "seed", "status", "steps", "metrics [protocol]", "age")
