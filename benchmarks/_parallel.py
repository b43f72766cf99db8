"""Train the runs a ``dlbench compare`` would train, several processes at once, so the comparison reuses them.

``train_missing(methods, jobs=N, out=..., preset=..., seeds=..., budget=..., overrides=[...])`` takes the plan
``compare`` makes (:func:`dlbench.api.plan_compare`), skips the runs it would reuse, and trains the rest in ``N``
worker processes (each ``python benchmarks/_parallel.py CONFIG.json OUT``, given ``OMP_NUM_THREADS = cores // N``,
at least 1; its output goes to ``OUT/worker-METHOD-SEED.log``). On a 2-core CPU two one-thread processes train
about twice as many runs per hour as one two-thread process (benchmarks/results/cpu_parallel.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def train_missing(methods: list[str], *, jobs: int, out: str, log=print, **plan_kwargs) -> int:
    """Train the planned runs ``compare(methods, out=out, **plan_kwargs)`` would not reuse; returns how many."""
    from dlbench.api import plan_compare
    from dlbench.runner.compare_runs import find_reusable

    plans = plan_compare(methods, **plan_kwargs)
    missing = [c for c in plans if find_reusable(Path(out), c.hash(), c.method.name, c.dataset.name) is None]
    if not missing:
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH")) if p)
    Path(out).mkdir(parents=True, exist_ok=True)

    def one(i_cfg) -> int:
        i, cfg = i_cfg
        path = Path(tmp) / f"{i}.json"
        path.write_text(json.dumps(cfg.to_dict()))
        logfile = Path(out) / f"worker-{cfg.method.name}-{cfg.seed}.log"
        log(f"[worker] training {cfg.method.name} seed {cfg.seed} (config {cfg.hash()[:12]}; log {logfile})")
        with open(logfile, "w") as fh:
            rc = subprocess.call([sys.executable, __file__, str(path), str(out)], env=env, stdout=fh,
                                 stderr=subprocess.STDOUT)
        log(f"[worker] {cfg.method.name} seed {cfg.seed}: exit {rc}")
        return rc

    with tempfile.TemporaryDirectory(prefix="dlbench-plans-") as tmp, ThreadPoolExecutor(max(1, jobs)) as pool:
        codes = list(pool.map(one, enumerate(missing)))
    failed = sum(1 for c in codes if c)
    if failed:
        raise SystemExit(f"{failed} of {len(codes)} worker runs failed; see the worker-*.log files under {out}")
    return len(missing)


def _worker(config_path: str, out: str) -> int:
    from dlbench.api import run
    from dlbench.config import RunConfig

    run(config=RunConfig.model_validate(json.loads(Path(config_path).read_text())), out=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1], sys.argv[2]))
