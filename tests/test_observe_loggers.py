"""Run loggers (dlbench.observe.loggers): registry kind, fan-out, failure isolation, config, TensorBoard."""

from __future__ import annotations

import json

import pytest

from dlbench import hookimpl
from dlbench.config import ConfigError
from dlbench.interfaces import ComponentConfig, RunLogger
from dlbench.observe.loggers import JsonlLogger, LoggerSet, TensorBoardLogger, flatten, logger_names, open_loggers
from dlbench.plugins import get_manager
from dlbench.runs import RunDir


class Recording(RunLogger):
    """Keeps every event it gets."""

    class Config(ComponentConfig):
        tag: str = "r"

    def __init__(self, config, *, run_dir, run_config, resume):
        self.config, self.events, self.closed = config, [], 0

    def log(self, event):
        self.events.append(event)

    def close(self):
        self.closed += 1


class Boom(RunLogger):
    """Raises on every event."""

    def __init__(self, config, **context):
        pass

    def log(self, event):
        raise ConnectionError("tracker server down")


class BrokenInit(RunLogger):
    """Cannot start."""

    def __init__(self, config, **context):
        raise RuntimeError("no API key")

    def log(self, event):
        pass


@pytest.fixture
def registry():
    class Plugin:
        @hookimpl
        def register_loggers(self, register):
            register("recording", Recording)
            register("boom", Boom)
            register("broken-init", BrokenInit)

    manager = get_manager()
    info = manager.register_plugin(Plugin(), "observe-test")
    assert info.ok, info.error
    return manager.registry


def test_logger_is_a_component_kind_with_builtins(registry):
    assert {"jsonl", "tensorboard", "recording"} <= set(registry.names("logger"))
    assert registry.get("logger", "jsonl").plugin == "core"


def test_every_event_reaches_every_logger_and_events_jsonl(registry, tmp_path):
    rd = RunDir(tmp_path)
    loggers = open_loggers(["recording"], tmp_path, {"seed": 1}, registry=registry)
    assert loggers.names == ["jsonl", "recording"]
    recording = dict(loggers.active)["recording"]
    with rd.logging(lambda: loggers):
        rd.event("train", step=1, loss=0.5)
        rd.event("run_end", status="ok")
    assert not loggers.failed and recording.closed == 1
    on_disk = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert recording.events == on_disk == rd.events()
    assert [e["event"] for e in on_disk] == ["train", "run_end"]
    rd.event("evaluation", metrics={})  # detached: straight to events.jsonl, not to the closed loggers
    assert len(rd.events()) == 3 and len(recording.events) == 2


def test_a_raising_logger_is_reported_once_and_disabled(registry, tmp_path, capsys):
    rd = RunDir(tmp_path)
    recording = Recording(Recording.Config(), run_dir=tmp_path, run_config={}, resume=False)
    loggers = LoggerSet([("jsonl", JsonlLogger(run_dir=tmp_path)), ("boom", Boom(None)), ("recording", recording)])
    rd.attach(loggers)
    for step in range(5):
        rd.event("train", step=step, loss=1.0)
    rd.detach()
    err = capsys.readouterr().err
    assert err.count("logger 'boom' failed") == 1 and "ConnectionError: tracker server down" in err
    warnings = rd.events("warning")
    assert len(warnings) == 1 and warnings[0]["logger"] == "boom"
    # the others got every event, the warning included, and were closed once
    assert [e["event"] for e in recording.events] == ["train", "warning", "train", "train", "train", "train"]
    assert recording.closed == 1 and loggers.failed.keys() == {"boom"}


def test_a_logger_that_cannot_start_is_reported_and_left_out(registry, tmp_path, capsys):
    loggers = open_loggers(["broken-init", "recording"], tmp_path, {}, registry=registry)
    assert loggers.names == ["jsonl", "recording"]
    assert "logger 'broken-init' failed while starting (RuntimeError: no API key)" in capsys.readouterr().err
    assert [e["event"] for e in RunDir(tmp_path).events()] == ["warning"]


def test_unknown_logger_and_bad_params_are_config_errors(registry, tmp_path):
    from dlbench import api

    with pytest.raises(Exception, match="unknown logger 'tensorbaord'. Did you mean 'tensorboard'"):
        api.resolve("vqlcmd", preset="quick", loggers=["tensorbaord"])
    with pytest.raises(ConfigError, match=r"loggers.0.params"):
        api.resolve("vqlcmd", preset="quick", overrides=['loggers=[{"name": "recording", "params": {"tga": 1}}]'])


def test_loggers_in_config_do_not_change_the_experiment_hash(registry):
    from dlbench import api

    plain = api.resolve("vqlcmd", preset="quick")
    with_tb = api.resolve("vqlcmd", preset="quick", loggers=["tensorboard", "recording"])
    from_config = api.resolve("vqlcmd", preset="quick", overrides=['loggers=["tensorboard"]'])
    assert [r.name for r in with_tb.loggers] == ["tensorboard", "recording"]
    assert [r.name for r in from_config.loggers] == ["tensorboard"]
    assert plain.hash() == with_tb.hash() == from_config.hash()
    assert logger_names(with_tb.loggers)[0] == ("jsonl", {})


def test_flatten_config_for_hparams():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": "None", "e": "{}"}


def test_tensorboard_logger_writes_scalars_images_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Image.new("L", (10, 6), color=128).save(tmp_path / "samples.png")
    tb = TensorBoardLogger(TensorBoardLogger.Config(), run_dir=tmp_path, run_config={"seed": 3, "training": {"lr": 0.1}})
    tb.log({"time": 1.0, "event": "train", "step": 5, "loss": 2.0, "rec": 1.5})
    tb.log({"time": 2.0, "event": "diagnostics", "stage": "train", "step": 5, "embed/mean_norm": 0.7})
    tb.log({"time": 3.0, "event": "samples", "n": 4, "grid": str(tmp_path / "samples.png"), "step": 5})
    tb.log({"time": 4.0, "event": "evaluation", "protocol_hash": "abc123", "metrics": {"domain_fd": 3.0}})
    tb.log({"time": 5.0, "event": "run_end", "status": "ok"})
    tb.log({"time": 5.0, "event": "something_new", "x": 1})  # unknown kinds are ignored
    tb.close()
    # `dlbench eval` later: a new writer at the run's last step; another protocol gets its own series
    (tmp_path / "metrics.json").write_text(json.dumps({"training": {"step": 5}}))
    (tmp_path / "protocol.json").write_text(json.dumps({"hash": "abc123"}))
    later = TensorBoardLogger(TensorBoardLogger.Config(), run_dir=tmp_path, run_config={}, resume=True)
    later.log({"time": 6.0, "event": "evaluation", "protocol_hash": "ffee9988aa", "metrics": {"fid": 40.0}})
    later.close()
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    assert [(s.step, s.value) for s in ea.Scalars("train/loss")] == [(5, 2.0)]
    assert ea.Scalars("train/diagnostics/embed/mean_norm")[0].value == pytest.approx(0.7)
    assert [(s.step, s.value) for s in ea.Scalars("eval/domain_fd")] == [(5, 3.0)]
    assert [(s.step, s.value) for s in ea.Scalars("eval@ffee9988/fid")] == [(5, 40.0)]
    img = ea.Images("samples")[0]
    assert (img.width, img.height) == (10, 6)
    assert set(ea.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                     "_hparams_/session_end_info"}
    start = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"abc123" in start and b"training.lr" in start


def test_the_mlflow_plugin_in_the_docs_works_against_the_public_interface(tmp_path, monkeypatch):
    """docs/plugins.md's complete logger plugin, run as written against a stand-in ``mlflow`` module."""
    import re
    import sys
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class MLflowLogger" in b]
    calls: list[tuple] = []
    fake = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "set_tag", "log_metrics",
                 "log_artifact", "end_run"):
        setattr(fake, name, lambda *a, _n=name, **k: calls.append((_n, a, k)))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    module = types.ModuleType("dlbench_mlflow_doc")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    manager = get_manager()
    assert manager.register_plugin(module, "mlflow-doc").ok
    loggers = open_loggers([{"name": "mlflow", "params": {"experiment": "abl"}}], tmp_path,
                           {"seed": 0, "training": {"lr": 0.1}}, registry=manager.registry)
    assert loggers.names == ["jsonl", "mlflow"]
    rd = RunDir(tmp_path)
    with rd.logging(lambda: loggers):
        rd.event("train", step=5, loss=2.0, lr=0.1)
        rd.event("samples", n=4, path="s.npz", grid=str(tmp_path / "samples.png"), step=5)
        rd.event("evaluation", protocol_hash="abc", metrics={"domain_fd": 1.0, "note": "x"}, step=5)
        rd.event("run_end", status="ok")
    assert not loggers.failed
    names = [c[0] for c in calls]
    assert names[:3] == ["set_experiment", "start_run", "log_params"] and names[-1] == "end_run"
    assert ("log_metrics", ({"train/loss": 2.0, "train/lr": 0.1},), {"step": 5}) in calls
    assert ("set_tag", ("protocol_hash", "abc"), {}) in calls
    assert ("log_metrics", ({"eval/domain_fd": 1.0},), {"step": 5}) in calls
    assert calls[2][1][0] == {"seed": "0", "training.lr": "0.1"}


def test_dlbench_eval_sends_its_evaluation_to_the_runs_loggers(registry, tmp_path, monkeypatch):
    from dlbench import api
    from dlbench.runner import evaluation

    seen: list[dict] = []
    monkeypatch.setattr(Recording, "log", lambda self, event: seen.append(event))
    (tmp_path / "config.json").write_text(json.dumps({"loggers": [{"name": "recording"}, {"name": "uninstalled"}]}))
    monkeypatch.setattr(evaluation, "evaluate_run", lambda rd, registry, protocol=None: rd.event(
        "evaluation", protocol_hash="h", metrics={"fid": 1.0}) or {"protocol_hash": "h"})
    assert api.evaluate(tmp_path) == {"protocol_hash": "h"}
    assert [e["event"] for e in seen] == ["evaluation"]  # the uninstalled logger is skipped, not fatal
    assert [e["event"] for e in RunDir(tmp_path).events()] == ["evaluation"]
