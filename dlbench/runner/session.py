"""One run from a resolved config: pre-flight -> run directory -> provenance + loggers -> stages -> run end.

:func:`run` is what :func:`dlbench.api.run` (and through it ``dlbench run`` and ``dlbench compare``) calls
once the config is resolved. It takes the registry explicitly; the run directory it creates (or continues)
holds everything the run wrote (DESIGN.md § Run directory).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dlbench.registry import DlbenchError
from dlbench.runs import RunDir, collect_meta, utcnow

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.registry import Registry


@dataclass
class RunResult:
    run_dir: RunDir
    config: RunConfig
    metrics: dict[str, Any] | None
    rank: int = 0  # torchrun rank of this process; only rank 0 holds the metrics and reports them


class RunInterrupted(DlbenchError):
    """Ctrl-C / SIGINT during a run: exit code 130, checkpoints kept, the message says how to resume."""

    exit_code = 130


class RunFailed(DlbenchError):
    """The run ended without a result (e.g. diverged training); exit code 1, metrics.json says why."""

    exit_code = 1


def dist_info() -> tuple[int, int]:
    """``(rank, world size)`` of this process under torchrun (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shared_run_dir(make: Callable[[], RunDir]) -> RunDir:
    """Rank 0 creates the run directory; under torchrun every rank gets rank 0's path."""
    rank, world = dist_info()
    if world == 1:
        return make()
    from dlbench.train import dist

    dist.init_distributed()
    import torch.distributed as tdist

    box = [str(make().path) if rank == 0 else None]
    tdist.broadcast_object_list(box, src=0)
    return RunDir(box[0])


def run(config: RunConfig, registry: Registry, *, out: str | Path = "runs",
        resume: RunDir | None = None) -> RunResult:
    """Pre-flight ``config``, create the run directory under ``out`` (or continue ``resume`` from its latest
    intact checkpoint), record provenance, open the config's loggers and run every stage
    (:func:`dlbench.runner.stages.execute`). Every check that can run before training runs before a run
    directory is created."""
    from dlbench.observe.loggers import open_loggers
    from dlbench.preflight import preflight
    from dlbench.runner.stages import execute
    from dlbench.train.dist import resolve_device, resolve_precision

    rank, world = dist_info()
    if resume is not None:
        preflight(config, registry=registry)
        run_dir = resume
    else:
        preflight(config, out=out, registry=registry)
        run_dir = shared_run_dir(lambda: RunDir.create(out, config.method.name, config.dataset.name, config.hash()))

    if rank != 0:
        metrics = execute(config, registry, run_dir, resume=resume is not None)
        return RunResult(run_dir, config, metrics, rank=rank)

    with run_dir.locked(), run_dir.logging(lambda: open_loggers(config.loggers, run_dir.path, config.to_dict(),
                                                                resume=resume is not None, registry=registry)):
        run_dir.write_json("config.json", config.to_dict())
        # "auto" is resolved here from what this machine reports (the training loop decides the same way)
        meta = collect_meta(device=config.device, seeds={"train": config.seed, "sample": config.seed},
                            precision=resolve_precision(config.training.precision, resolve_device(config.device)))
        meta["precision_requested"] = config.training.precision
        meta["world_size"] = world
        if resume is not None:
            meta["resumed_from"] = _previous_meta(run_dir)
        run_dir.write_json("meta.json", meta)
        run_dir.event("run_start", resume=resume is not None, argv=sys.argv)
        registry.used.clear()
        for kind in ("method", "tokenizer", "dataset"):
            registry.get(kind, getattr(config, kind).name)
        try:
            metrics = execute(config, registry, run_dir, resume=resume is not None)
        except KeyboardInterrupt:
            run_dir.event("run_end", status="interrupted")
            raise RunInterrupted(
                f"interrupted; finished checkpoints are kept in {run_dir.path}; resume with "
                f"`dlbench run --resume {run_dir.path}`"
            ) from None
        except BaseException as exc:
            run_dir.event("run_end", status="error", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                from dlbench.plugins import component_provenance

                # which distribution (and version) provided every component this run looked up
                run_dir.update_json("meta.json", finished=utcnow(),
                                    components=component_provenance(registry.used.values()))
            except DlbenchError:
                pass  # a damaged meta.json must not hide the run's own outcome
        run_dir.event("run_end", status=(metrics or {}).get("status", "ok"))
    return RunResult(run_dir, config, metrics)


def _previous_meta(run_dir: RunDir) -> dict[str, Any]:
    """The meta.json of the run's first part; a damaged one is moved aside and said so."""
    from dlbench.safeload import CorruptFileError

    try:
        return run_dir.read_json("meta.json", {}) or {}
    except CorruptFileError as exc:  # provenance of the first part is lost; say so, keep the bytes
        aside = run_dir.file(f"meta.json.corrupt-{int(time.time())}")
        os.replace(run_dir.file("meta.json"), aside)
        return {"error": f"{exc}; moved to {aside.name}"}


def reevaluate(run_dir: RunDir, registry: Registry, *, protocol: str | None = None) -> dict[str, Any]:
    """``dlbench eval``: evaluate a finished run under ``protocol`` (default: its own) with the run locked and
    its own loggers open (one whose plugin is gone is skipped, not fatal)."""
    from dlbench.observe.loggers import open_loggers
    from dlbench.runner.evaluation import evaluate_run

    saved = run_dir.read_json("config.json", {}) or {}
    known = set(registry.names("logger"))
    refs = [r for r in saved.get("loggers") or [] if (r.get("name") if isinstance(r, dict) else r) in known]
    with run_dir.locked(), run_dir.logging(lambda: open_loggers(refs, run_dir.path, saved, resume=True,
                                                                registry=registry)):
        return evaluate_run(run_dir, registry, protocol=protocol)
