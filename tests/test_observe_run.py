"""A real quick run with stdout and stderr going to a file (as under nohup / CI / a batch scheduler):
progress lines for every stage, TensorBoard event files, third-party loggers (one recording, one
raising), and ``dlbench runs`` over finished, failed, interrupted and running runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlbench.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]

# The run goes through the real CLI in a child process whose stdout/stderr is a file. Before that it
# registers two test loggers through the public plugin API and shrinks the domain classifier (400
# steps by default; 6 here) so the whole run, every stage trained from an empty cache, stays short.
SCRIPT = r"""
import json, sys
from pathlib import Path

import dlbench.eval.api as eval_api
from dlbench import hookimpl
from dlbench.eval.domain import DomainClassifierConfig
from dlbench.interfaces import RunLogger

_train = eval_api.train_domain_classifier
def small_classifier(*args, config=None, **kwargs):
    return _train(*args, config=DomainClassifierConfig(steps=6, batch_size=32, max_train_images=256,
                                                        max_test_images=64), **kwargs)
eval_api.train_domain_classifier = small_classifier

class Recording(RunLogger):
    "Appends every event it receives to received.jsonl in the run directory."
    def __init__(self, config, *, run_dir, run_config, resume):
        self.path = Path(run_dir) / "received.jsonl"
    def log(self, event):
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
    def close(self):
        pass

class Exploding(RunLogger):
    "Raises on its third event."
    def __init__(self, config, **context):
        self.n = 0
    def log(self, event):
        self.n += 1
        if self.n >= 3:
            raise RuntimeError("tracker backend unreachable")
    def close(self):
        pass

class TestLoggers:
    @hookimpl
    def register_loggers(self, register):
        register("recording", Recording)
        register("exploding", Exploding)

from dlbench.plugins import get_manager
assert get_manager().register_plugin(TestLoggers(), "test-loggers").ok
from dlbench.cli import main
main(sys.argv[1:])
"""

TOKENIZER_ARGS = ["--set", "tokenizer.training.steps=3", "--set", "tokenizer.training.batch_size=8"]
STAGES = ("tokenizer_train", "tokenize", "train", "sample", "domain_classifier", "domain_features/generated",
          "domain_features/reference")


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    env["DLBENCH_CACHE"] = str(cache)  # empty: every stage really runs (tokenizer, classifier, ...)
    env.pop("DLBENCH_PROGRESS", None)
    env.pop("DLBENCH_PROGRESS_INTERVAL", None)
    return env


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    base = tmp_path_factory.mktemp("observe")
    out, cache, log = base / "runs", base / "cache", base / "run.log"
    env = _env(cache)
    args = ["run", "vqlcmd", "--preset", "quick", "--out", str(out), *TOKENIZER_ARGS,
            "--set", "training.steps=4", "--set", "training.batch_size=8", "--set", "training.log_every=1",
            "--set", "training.diagnostics_every=2", "--logger", "tensorboard", "--logger", "recording",
            "--logger", "exploding", "--progress-interval", "0"]
    with open(log, "w") as fh:  # `dlbench run ... > run.log 2>&1`
        proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                              cwd=base, timeout=1200)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    (run_dir,) = [p.parent for p in out.glob("*/*/*/config.json")]
    return SimpleNamespace(log=text, run_dir=RunDir(run_dir), out=out, cache=cache, env=env, base=base)


def _stage_lines(log: str, stage: str) -> list[str]:
    return [line for line in log.splitlines() if f"[{stage}]" in line]


@pytest.mark.slow
def test_log_file_has_progress_lines_for_every_stage(logged_run):
    log = logged_run.log
    assert "\x1b[" not in log  # no terminal escape codes in a file
    line_re = re.compile(r"^dlbench \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[[a-z_/]+\] ")
    for stage in STAGES:
        # a stage done once in the run and then reused prints one "skipped: reused cached ..." line later
        # (the domain classifier is first trained for a learning-curve point, then reused by the evaluation)
        lines = [x for x in _stage_lines(log, stage) if "] skipped: " not in x]
        assert lines and all(line_re.match(x) for x in lines), (stage, lines)
        assert "] start: 0/" in lines[0], (stage, lines[0])
        assert "] done: " in lines[-1], (stage, lines[-1])
        periodic = [x for x in lines[1:-1] if re.search(r"ETA \d+:\d\d:\d\d$", x)]
        assert periodic, (stage, lines)
        assert re.search(r"\d+/\d+ (steps|images) \(\d+%\) \| [\d.]+ (steps|images)/s", periodic[-1]), periodic[-1]
    for stage in ("tokenizer_train", "train", "domain_classifier"):  # training stages show loss and images/s
        assert any(re.search(r"steps/s, [\d.]+ images/s \| loss [-\d.e+]+ \|", x) for x in _stage_lines(log, stage))
    evaluate = _stage_lines(log, "evaluate")
    assert "] start (protocol quick" in evaluate[0] and "] done: in " in evaluate[-1]
    # stage order in the file is the pipeline's order (the domain classifier may start inside "train", for a
    # learning-curve point, so it is not in this list)
    firsts = [log.index(f"[{s}] start") for s in ("tokenizer_train", "tokenize", "train", "sample", "evaluate")]
    assert firsts == sorted(firsts)


@pytest.mark.slow
def test_tensorboard_event_files_hold_losses_and_a_sample_grid(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd = logged_run.run_dir
    ea = EventAccumulator(str(rd.file("tensorboard")), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    logged = [(e["step"], e["loss"]) for e in rd.events("train")]
    assert [(s.step, s.value) for s in ea.Scalars("train/loss")] == [(st, pytest.approx(v)) for st, v in logged]
    assert len(logged) == 4
    assert len(ea.Scalars("tokenizer_train/loss")) >= 1
    assert any(t.startswith("train/diagnostics/embed/") for t in ea.Tags()["scalars"])
    metrics = json.loads(rd.file("metrics.json").read_text())
    assert ea.Scalars("eval/domain_fd")[-1].value == pytest.approx(metrics["metrics"]["domain_fd"])
    (grid,) = ea.Images("samples")
    from PIL import Image

    with Image.open(rd.file("samples.png")) as png:
        assert (grid.width, grid.height) == png.size
    assert "tokenizer/reconstructions" in ea.Tags()["images"]
    start = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert metrics["protocol_hash"].encode() in start and b"training.lr" in start


@pytest.mark.slow
def test_a_plugin_logger_receives_every_event(logged_run):
    rd = logged_run.run_dir
    received = [json.loads(x) for x in rd.file("received.jsonl").read_text().splitlines()]
    recorded = rd.events()
    assert received == recorded
    kinds = {e["event"] for e in received}
    assert {"run_start", "tokenizer_train", "train", "diagnostics", "samples", "evaluation", "warning",
            "run_end"} <= kinds
    assert "eval" not in kinds  # one name per record kind: the metrics are in "evaluation" only


@pytest.mark.slow
def test_a_raising_logger_leaves_the_run_finished_and_is_reported_once(logged_run):
    rd = logged_run.run_dir
    assert json.loads(rd.file("metrics.json").read_text())["status"] == "ok"
    assert rd.events("run_end")[-1]["status"] == "ok"
    warnings = [e for e in rd.events("warning") if e.get("logger") == "exploding"]
    assert len(warnings) == 1 and "tracker backend unreachable" in warnings[0]["message"]
    assert logged_run.log.count("logger 'exploding' failed") == 1


# ---------------------------------------------------------------------------------------------
# dlbench runs
# ---------------------------------------------------------------------------------------------


def _runs_json(capsys, *args: str) -> list[dict]:
    from dlbench.cli import main

    capsys.readouterr()
    main(["runs", *args, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def _wait_for_event(run_root: Path, kind: str, proc: subprocess.Popen, old: set[Path], timeout: float = 600) -> RunDir:
    """The new run directory under ``run_root`` once it has recorded a ``kind`` event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be observed running"
        for cfg in run_root.glob("*/*/*/config.json"):
            rd = RunDir(cfg.parent)
            if rd.path not in old and rd.events(kind):
                return rd
        time.sleep(0.5)
    raise AssertionError(f"no {kind} event within {timeout} s")


def _make_failed_run(out: Path) -> RunDir:
    """A run that diverged, written by the pipeline's own failure path."""
    from dlbench import api
    from dlbench.runs import utcnow
    from dlbench.runner.common import failed
    from dlbench.train.dist import DistContext

    cfg = api.resolve("vq-diffusion", preset="quick", seed=7)
    rd = RunDir.create(out, cfg.method.name, cfg.dataset.name, cfg.hash())
    with rd.locked():
        rd.write_json("config.json", cfg.to_dict())
        rd.write_json("meta.json", {"started": utcnow()})
        rd.event("run_start", resume=False, argv=[])
        failed(rd, DistContext(), "training diverged at step 3: non-finite loss (loss=nan)", 3)
        rd.event("run_end", status="failed")
    return rd


@pytest.mark.slow
def test_runs_lists_finished_failed_running_and_interrupted_runs(logged_run, capsys, monkeypatch):
    out = logged_run.out
    failed = _make_failed_run(out)
    old = {p.parent for p in out.glob("*/*/*/config.json")}
    # a real run in another process; observed while it trains, then interrupted with Ctrl-C (SIGINT)
    args = ["-m", "dlbench", "run", "vqlcmd", "--preset", "quick", "--out", str(out), *TOKENIZER_ARGS,
            "--set", "training.steps=100000", "--set", "training.batch_size=8", "--set", "training.checkpoint_every=1",
            "--seed", "3", "--quiet"]
    proc = subprocess.Popen([sys.executable, *args], env=logged_run.env, cwd=logged_run.base,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_faults.interruptible
    try:
        live = _wait_for_event(out, "checkpoint", proc, old)
        running = _runs_json(capsys, str(out), "--status", "running")
        assert [r["path"] for r in running] == [str(live.path)]
        assert running[0]["pid"] == proc.pid and running[0]["stage"] == "train" and running[0]["seed"] == 3
        assert running[0]["total_steps"] == 100000 and running[0]["step"] >= 1
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # it shut down by itself (exit code 130 is the CLI's business) and recorded why
    assert proc.returncode >= 0, output
    assert live.events("run_end")[-1]["status"] == "interrupted"

    every = {r["path"]: r for r in _runs_json(capsys, str(out))}
    assert len(every) == 3
    fin = every[str(logged_run.run_dir.path)]
    assert fin["status"] == "finished" and fin["method"] == "vqlcmd" and fin["preset"] == "quick"
    assert fin["step"] == fin["total_steps"] == 4
    metrics = json.loads(logged_run.run_dir.file("metrics.json").read_text())
    assert fin["metrics"]["domain_fd"] == pytest.approx(metrics["metrics"]["domain_fd"])
    assert fin["protocol_hash"] == metrics["protocol_hash"]
    bad = every[str(failed.path)]
    assert bad["status"] == "failed" and "non-finite loss" in bad["reason"] and bad["seed"] == 7
    stopped = every[str(live.path)]
    assert stopped["status"] == "interrupted" and stopped["resumable"] and stopped["step"] >= 1
    assert stopped["pid"] is None

    assert [r["status"] for r in _runs_json(capsys, str(out), "--method", "vq-diffusion")] == ["failed"]
    assert {r["status"] for r in _runs_json(capsys, str(out), "--status", "finished", "--status", "failed")} == \
        {"finished", "failed"}

    # the table: one row per run with status, steps, headline metrics with the protocol hash prefix
    from dlbench import cli

    monkeypatch.setattr(cli.out, "width", 250)  # one line per row (a pipe would get 80 columns)
    cli.main(["runs", str(out)])
    table = capsys.readouterr().out
    assert "finished" in table and "failed: training diverged" in table and "interrupted, resumable" in table
    assert f"[{metrics['protocol_hash'][:8]}]" in table and "4/4" in table


def test_a_stale_lock_of_a_dead_process_reads_as_interrupted(tmp_path):
    from dlbench.runs_view import summarize

    rd = RunDir(tmp_path)
    rd.write_json("config.json", {"method": {"name": "m"}, "dataset": {"name": "d"}, "training": {"steps": 10}})
    rd.event("run_start")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    rd.file(".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
    s = summarize(rd)
    assert s.status == "interrupted" and s.resumable and "stale lock" in s.reason
    rd.file(".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "x"}))
    assert summarize(rd).status == "running" and summarize(rd).pid == os.getpid()


def test_runs_on_a_missing_directory_is_a_one_line_error(tmp_path):
    from dlbench.runs_view import RunsViewError, list_runs

    with pytest.raises(RunsViewError, match="does not exist"):
        list_runs(tmp_path / "nope")
    with pytest.raises(RunsViewError, match="choose one of"):
        list_runs(tmp_path, statuses=["done"])
