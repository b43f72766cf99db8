"""End to end through the public API on the embedded dataset with the quick preset:
train tokenizer (cached) -> train method -> sample -> evaluate -> eval/sample/compare/resume a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlbench import api
from dlbench.report.compare import RunRecord, summarise
from dlbench.report.render import render
from dlbench.runs import RunDir

RUN_FILES = ("config.json", "meta.json", "metrics.json", "protocol.json", "events.jsonl", "samples.npz",
             "samples.png", "recon.png")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def quick_runs(out):
    return {m: api.run(m, preset="quick", out=out) for m in ("vq-diffusion", "vqlcmd")}


def _check_run(result, method):
    rd = result.run_dir
    for name in RUN_FILES:
        assert rd.file(name).exists(), f"{method}: {name} missing"
    metrics = json.loads(rd.file("metrics.json").read_text())
    assert metrics["status"] == "ok"
    protocol = json.loads(rd.file("protocol.json").read_text())
    assert metrics["protocol_hash"] == protocol["hash"] and len(metrics["protocol_hash"]) == 64
    assert set(metrics["metrics"]) >= {"domain_fd", "domain_class_acc"}
    assert all(np.isfinite(v) for v in metrics["metrics"].values())
    assert metrics["compute"]["train_steps"] == result.config.training.steps
    assert metrics["seeds"] == {"train": 0, "sample": 0, "tokenizer": 0}
    samples = np.load(rd.file("samples.npz"))
    h, w = 8, 8
    assert samples["tokens"].shape == (result.config.sampling.num_samples, h, w)
    assert samples["images"].dtype == np.uint8 and samples["images"].shape[1:] == (1, 32, 32)
    meta = json.loads(rd.file("meta.json").read_text())
    assert meta["torch"] and meta["plugins"]["core"]["ok"] and "finished" in meta
    kinds = {e["event"] for e in rd.events()}
    assert {"run_start", "train", "train_end", "samples", "evaluation", "run_end"} <= kinds


@pytest.mark.parametrize("method", ["vq-diffusion", "vqlcmd"])
def test_quick_run_writes_complete_run_directory(quick_runs, method):
    _check_run(quick_runs[method], method)


def test_second_run_reuses_cached_tokenizer(quick_runs):
    actions = [[e["action"] for e in r.run_dir.events("tokenizer")] for r in quick_runs.values()]
    assert actions[0] + actions[1] == ["trained", "reused"] or actions == [["reused"], ["reused"]]


def test_vqlcmd_logs_collapse_diagnostics_and_ce_curve(quick_runs):
    rd = quick_runs["vqlcmd"].run_dir
    diags = rd.events("diagnostics")
    assert diags and any(k.startswith("embed/") for k in diags[-1])
    report = json.loads(rd.file("metrics.json").read_text())["end_of_training"]
    assert len(report["ce_curve"]["t"]) == len(report["ce_curve"]["ce"]) > 3


def test_eval_and_sample_a_finished_run(quick_runs, tmp_path):
    rd = quick_runs["vq-diffusion"].run_dir
    before = json.loads(rd.file("metrics.json").read_text())
    ev = api.evaluate(rd.path)
    assert ev["protocol_hash"] == before["protocol_hash"]
    assert ev["metrics"] == pytest.approx(before["metrics"])  # same samples, same protocol -> same numbers
    png = api.sample(rd.path, n=8, seed=5, output=tmp_path / "grid")
    assert png.exists() and np.load(tmp_path / "grid.npz")["tokens"].shape == (8, 8, 8)
    again = api.sample(rd.path, n=8, seed=5, output=tmp_path / "grid2")
    assert np.array_equal(np.load(tmp_path / "grid.npz")["tokens"], np.load(again.with_suffix(".npz"))["tokens"])


def test_compare_existing_runs(quick_runs, tmp_path):
    from dlbench.report.compare import check_matched
    from dlbench.report.html import write_report

    records = [RunRecord.load(r.run_dir.path) for r in quick_runs.values()]
    notes = check_matched(records, allow_mismatch=True)
    cmp = summarise(records, ["vq-diffusion", "vqlcmd"], notes)
    table = render(cmp, "table")
    assert "vq-diffusion" in table and "vqlcmd" in table and "domain_fd" in table
    data = json.loads(render(cmp, "json"))
    assert data["rows"][0]["nfe"] > 0 and data["rows"][1]["train_flops"] > 0
    index = write_report(cmp, tmp_path / "html")
    assert "samples of vqlcmd" in index.read_text()


def test_cli_compare_runs_takes_several_directories(quick_runs):
    """`dlbench compare --runs A B` (as in the README and a shell glob) compares both runs."""
    from typer.testing import CliRunner

    from dlbench.cli import app

    dirs = [str(r.run_dir.path) for r in quick_runs.values()]
    result = CliRunner().invoke(app, ["compare", "--runs", *dirs, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "vq-diffusion" in result.output and "vqlcmd" in result.output


def test_resume_extends_a_run_and_refuses_changed_config(out):
    first = api.run("vq-diffusion", preset="quick", out=out, overrides=["training.steps=6"])
    longer = api.run("vq-diffusion", preset="quick", out=out, overrides=["training.steps=10"],
                     resume=first.run_dir.path)
    assert longer.run_dir.path == first.run_dir.path
    assert longer.metrics["compute"]["train_steps"] == 10
    assert first.run_dir.events("train_resume")[-1]["step"] == 6
    from dlbench.config import ConfigError

    with pytest.raises(ConfigError, match="training.lr"):
        api.run("vq-diffusion", preset="quick", out=out, overrides=["training.lr=0.1"], resume=first.run_dir.path)
    assert json.loads(RunDir(first.run_dir.path).file("metrics.json").read_text())["status"] == "ok"


def test_regvq_quick_run(out):
    result = api.run("regvq", preset="quick", out=out)
    _check_run(result, "regvq")
    assert result.config.tokenizer.name == "regvq"


@pytest.mark.slow
def test_torchrun_pipeline_two_ranks(tmp_path):
    """`torchrun -m dlbench run` end to end with 2 gloo ranks (last in this module so the domain classifier
    is already in the session cache): tokenizer training (whose last step is
    also a checkpoint step), generator training, sharded sampling and evaluation finish, rank 0 alone
    reports, and the run directory is complete."""
    import os
    import subprocess
    import sys

    overrides = ["tokenizer.training.steps=4", "tokenizer.training.checkpoint_every=2",
                 "tokenizer.training.log_every=2", "training.steps=4", "training.checkpoint_every=2",
                 "sampling.num_samples=16", "sampling.steps=2", "tokenizer.seed=7"]  # seed: a fresh tokenizer key
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dlbench", "run", "vq-diffusion", "--preset", "quick", "--out", str(tmp_path)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1  # the other rank stays quiet
    (run,) = tmp_path.glob("vq-diffusion/*/*")
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    assert metrics["status"] == "ok" and meta["world_size"] == 2
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    starts = {e["event"]: e for e in events if e["event"].endswith("_start")}
    assert starts["tokenizer_train_start"]["world_size"] == 2 and starts["train_start"]["world_size"] == 2
    assert {"train_end", "samples", "evaluation", "run_end"} <= {e["event"] for e in events}
