"""Progress lines (dlbench.observe.progress): formatting, rate/ETA arithmetic, interval, quiet, settings."""

from __future__ import annotations

import io
import re

import pytest

from dlbench.observe import progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    progress.reset()
    yield c
    progress.reset()


class Captured:
    """stderr as pytest captures it (not a terminal: plain lines)."""

    def __init__(self, capsys) -> None:
        self.capsys, self.text = capsys, ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text


@pytest.fixture
def stderr(capsys, monkeypatch):
    monkeypatch.delenv("DLBENCH_PROGRESS", raising=False)
    monkeypatch.delenv("DLBENCH_PROGRESS_INTERVAL", raising=False)
    return Captured(capsys)


def lines(buf: Captured) -> list[str]:
    return buf.getvalue().splitlines()


def test_plain_lines_start_periodic_done_with_rate_loss_and_eta(clock, stderr):
    progress.configure(interval=10)
    with progress.task("train", 100, "steps", per_unit=16) as bar:
        for step in range(1, 101):
            clock.t += 0.5  # 2 steps/s -> 32 images/s
            bar.update(step, loss=1.0 / step)
    out = lines(stderr)
    assert re.fullmatch(r"dlbench \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[train\] start: 0/100 steps", out[0])
    periodic = out[1:-1]
    # one line per 10 s of a 50 s stage: after steps 20, 40, 60, 80, 100
    assert len(periodic) == 5
    assert periodic[0].endswith("[train] 20/100 steps (20%) | 2 steps/s, 32 images/s | loss 0.0500 | "
                                "elapsed 0:00:10 | ETA 0:00:40")
    assert periodic[-1].endswith("ETA 0:00:00")
    assert out[-1].endswith("[train] done: 100/100 steps (100%) in 0:00:50 | 2 steps/s, 32 images/s | loss 0.0100")


def test_eta_counts_only_this_process_progress_after_a_resume(clock):
    bar = progress.Task("train", 1000, completed=600, display="off")
    clock.t += 40
    bar.update(700)  # 100 steps in 40 s = 2.5 steps/s, 300 left
    assert bar.rate() == pytest.approx(2.5)
    assert bar.eta() == pytest.approx(120.0)


def test_eta_is_capped_by_a_time_budget(clock):
    bar = progress.Task("train", 10_000, display="off", deadline_s=60)
    clock.t += 30
    bar.update(10)  # would take 8 hours at this rate; the budget stops it in 30 s
    assert bar.eta() == pytest.approx(30.0)


def test_interval_zero_prints_every_update(clock, stderr):
    progress.configure(interval=0)
    with progress.task("sample", 3, "images") as bar:
        for i in range(3):
            clock.t += 1
            bar.update(i + 1)
    assert len(lines(stderr)) == 5 and all("ETA" in x for x in lines(stderr)[1:4])


def test_quiet_prints_nothing(clock, stderr):
    progress.configure(quiet=True, interval=0)
    with progress.task("train", 5) as bar:
        bar.update(5, loss=1.0)
    progress.note("tokenizer_train", "skipped")
    assert stderr.getvalue() == ""


def test_environment_sets_mode_and_interval(clock, stderr, monkeypatch):
    monkeypatch.setenv("DLBENCH_PROGRESS_INTERVAL", "0")
    with progress.task("tokenize", 2, "images") as bar:
        bar.update(1)
        bar.update(2)
    assert len(lines(stderr)) == 4
    monkeypatch.setenv("DLBENCH_PROGRESS", "off")
    with progress.task("tokenize", 2, "images") as bar:
        bar.update(2)
    assert len(lines(stderr)) == 4
    monkeypatch.setenv("DLBENCH_PROGRESS_INTERVAL", "soon")
    with pytest.raises(progress.ProgressConfigError, match="DLBENCH_PROGRESS_INTERVAL"):
        progress.interval()
    with pytest.raises(progress.ProgressConfigError, match="choose one of"):
        progress.configure(mode="fancy")


def test_lazy_task_shows_nothing_until_work_happens(clock, stderr):
    progress.configure(interval=0)
    bar = progress.task("inception_features/reference", 10, "images", lazy=True)
    bar.close()  # e.g. the reference features came from the cache
    assert stderr.getvalue() == ""


def test_an_exception_ends_the_stage_with_a_stopped_line(clock, stderr):
    progress.configure(interval=100)
    with pytest.raises(KeyboardInterrupt):
        with progress.task("train", 10) as bar:
            clock.t += 2
            bar.update(4)
            raise KeyboardInterrupt
    assert lines(stderr)[-1].endswith("[train] stopped (KeyboardInterrupt): 4/10 steps (40%) in 0:00:02 | 2 steps/s")


def test_rich_mode_on_a_terminal_keeps_a_summary_line(clock, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("DLBENCH_PROGRESS", raising=False)
    monkeypatch.setattr(progress.sys, "stderr", Tty())
    assert progress.mode() == "rich"
    bar = progress.Task("train", 10, display="rich")
    assert progress._live is not None  # a live rich display with ETA column
    columns = [type(c).__name__ for c in progress._live.columns]
    assert "TimeRemainingColumn" in columns
    bar.update(10, loss=0.5)
    bar.close()
    assert progress._live is None


def test_format_duration_and_values():
    assert progress.format_duration(3725) == "1:02:05"
    assert progress.format_duration(None) == "?"
    assert progress.format_value(0.5) == "0.5000" and progress.format_value(1e-6) == "1.000e-06"


def test_inception_feature_extraction_reports_progress_and_rate(clock, stderr):
    import torch

    from dlbench.eval.backends import extract_inception_features

    class StubNet(torch.nn.Module):  # the FidInception call signature; features are irrelevant here
        mode = "exact"

        def forward(self, x, logits=False):
            clock.t += 1
            return torch.zeros(len(x), 2048), None

    progress.configure(interval=0)
    events = []
    images = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    out = extract_inception_features(images, StubNet(), batch_size=2, label="generated",
                                     events=lambda kind, **f: events.append((kind, f)))
    assert out["2048"].shape == (5, 2048)
    text = lines(stderr)
    assert all("[inception_features/generated]" in x for x in text)
    assert "start: 0/5 images" in text[0] and "ETA" in text[-2] and "done: 5/5 images" in text[-1]
    assert events[0][0] == "features" and events[0][1]["n"] == 5 and events[0][1]["images_per_s"] > 0


def test_domain_classifier_training_and_features_report_progress(clock, stderr, tmp_path, monkeypatch):
    import torch

    from dlbench.eval import domain

    progress.configure(interval=0)
    monkeypatch.setattr(domain, "cache_dir", lambda: tmp_path)
    train = [(torch.full((1, 8, 8), 40 * (i % 3), dtype=torch.uint8), i % 3) for i in range(24)]
    cfg = domain.DomainClassifierConfig(steps=3, batch_size=8, width=4, feature_dim=8)
    model, _ = domain.train_domain_classifier(train, None, fingerprint="f", channels=1, num_classes=3, config=cfg)
    domain.domain_metrics(model, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(6, 1, 8, 8, dtype=torch.uint8))
    domain.train_domain_classifier(train, None, fingerprint="f", channels=1, num_classes=3, config=cfg)  # cached
    text = stderr.getvalue()
    assert "[domain_classifier] start: 0/3 steps" in text and "[domain_classifier] done: 3/3 steps" in text
    assert re.search(r"\[domain_classifier\] 2/3 steps \(67%\) \| loss [\d.]+ \| elapsed 0:00:00 \| ETA", text)
    assert "[domain_features/generated] done: 4/4 images" in text and "[domain_features/reference] done: 6/6" in text
    assert "[domain_classifier] skipped: reused cached classifier" in text
