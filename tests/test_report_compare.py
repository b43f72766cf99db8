"""Comparison maths, protocol refusal, harness matching, reuse and output formats on constructed runs."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from scipy import stats as st

from dlbench.report.compare import (
    ComparisonMismatchError,
    ProtocolMismatchError,
    RunRecord,
    check_matched,
    summarise,
)
from dlbench.report.render import render
from dlbench.runner.compare_runs import budget_overrides, find_reusable
from dlbench.report.stats import diff_ci, mean_ci
from dlbench.runs import RunDir

PROTO = {"backend": "torch-fidelity", "num_generated": 1000, "extractor": "inception-v3-fid", "hash": "aaaa1111"}


def make_run(root, method, seed, metrics, protocol=PROTO, steps=100, tokenizer_k=256):
    rd = RunDir.create(root, method, "fashion-mnist-small", f"{method}{seed}xxxxxxxx")
    cfg = {"method": {"name": method, "params": {}}, "seed": seed, "sampling": {"seed": 0, "num_samples": 1000},
           "training": {"steps": steps, "batch_size": 64}, "tokenizer": {"name": "vqvae", "params": {"k": tokenizer_k}},
           "dataset": {"name": "fashion-mnist-small", "params": {}}, "backbone": {"preset": "tiny", "params": {}}}
    rd.write_json("config.json", cfg)
    rd.write_json("protocol.json", protocol)
    rd.write_json("metrics.json", {"status": "ok", "protocol_hash": protocol["hash"], "metrics": metrics,
                                   "unavailable": {"isc": "no logits in the bundled Inception"},
                                   "compute": {"params": 1000, "train_steps": steps, "images_seen": steps * 64,
                                               "wall_clock_s": 10.0, "nfe": 50, "train_flops": 1e12}})
    for step in (10, 20):  # as the training loop writes them (tests/test_train_pipeline.py checks that)
        rd.event("train", step=step, loss=1.0 / step, lr=0.1)
        rd.event("tokenizer_train", step=step, loss=5.0)  # another stage: not in the generator's curves
    rd.event("evaluation", step=steps, protocol_hash=protocol["hash"], metrics=metrics)
    return rd.path


def test_mean_ci_matches_t_interval():
    xs = [10.0, 12.0, 14.0]
    iv = mean_ci(xs)
    half = st.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # s = 2
    assert iv.mean == 12.0 and iv.low == pytest.approx(12 - half) and iv.high == pytest.approx(12 + half)
    assert iv.half_width == pytest.approx(4.968, abs=1e-3)
    one = mean_ci([5.0])
    assert one.n == 1 and math.isnan(one.low) and one.format() == "5"


def test_diff_ci_welch_and_significance():
    a, b = [1.0, 2.0, 3.0], [11.0, 12.0, 13.0]
    d = diff_ci(a, b)
    assert d.mean == -10.0 and not d.covers_zero
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert d.low == pytest.approx(ci.low) and d.high == pytest.approx(ci.high)
    assert diff_ci([1.0, 5.0, 9.0], [2.0, 6.0, 7.0]).covers_zero


def test_table_with_stats_and_not_significant(tmp_path):
    paths = [make_run(tmp_path, "base", s, {"fid": v, "domain_fd": 1.0 + s}) for s, v in enumerate([10, 12, 14])]
    paths += [make_run(tmp_path, "new", s, {"fid": v, "domain_fd": 2.0 + s}) for s, v in enumerate([9, 13, 13])]
    cmp = summarise([RunRecord.load(p) for p in paths], ["base", "new"])
    assert cmp.baseline.label == "base"
    new = cmp.summaries[1]
    assert new.metrics["fid"].mean == pytest.approx(35 / 3)
    assert new.diffs["fid"].covers_zero
    text = render(cmp, "table")
    assert "not significant" in text and "12 ± 4.97" in text and "isc: unavailable" in text
    md = render(cmp, "md")
    assert sum(line.startswith("|---") for line in md.splitlines()) == 2 and "fid ↓" in md


def test_formats_parse(tmp_path):
    paths = [make_run(tmp_path, m, s, {"fid": 10.0 + s + (m == "b")}) for m in "ab" for s in range(2)]
    cmp = summarise([RunRecord.load(p) for p in paths])
    data = json.loads(render(cmp, "json"))
    assert data["baseline"] == "a" and data["rows"][1]["fid_diff_vs_a"] == pytest.approx(1.0)
    assert data["rows"][0]["train_seeds"] == [0, 1] and data["rows"][0]["sample_seeds"] == [0]
    text = render(cmp, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["method"] for r in rows] == ["a", "b"] and float(rows[1]["fid"]) == pytest.approx(11.5)
    latex = render(cmp, "latex")
    assert latex.startswith("\\begin{tabular}") and "\\bottomrule" in latex


def test_protocol_mismatch_refused_naming_fields(tmp_path):
    other = {**PROTO, "num_generated": 2000, "hash": "bbbb2222"}
    a = make_run(tmp_path, "a", 0, {"fid": 1.0})
    b = make_run(tmp_path, "b", 0, {"fid": 2.0}, protocol=other)
    with pytest.raises(ProtocolMismatchError) as e:
        summarise([RunRecord.load(a), RunRecord.load(b)])
    assert "num_generated (1000 vs 2000)" in str(e.value)


def test_budget_and_tokenizer_mismatch_needs_flag(tmp_path):
    a = make_run(tmp_path, "a", 0, {"fid": 1.0}, steps=100)
    b = make_run(tmp_path, "b", 0, {"fid": 2.0}, steps=200, tokenizer_k=512)
    recs = [RunRecord.load(a), RunRecord.load(b)]
    with pytest.raises(ComparisonMismatchError, match="training.steps.*--allow-mismatch"):
        check_matched(recs, allow_mismatch=False)
    notes = check_matched(recs, allow_mismatch=True)
    cmp = summarise(recs, None, notes)
    assert "b †" in render(cmp, "table") and "tokenizer.params.k" in render(cmp, "table")


def test_continuous_latent_run_differs_in_tokenizer_without_refusal(tmp_path):
    """A method over continuous latents cannot share a discrete method's tokenizer: one marked note, no refusal;
    any other harness difference still needs --allow-mismatch."""
    a = make_run(tmp_path, "a", 0, {"fid": 1.0})
    c = make_run(tmp_path, "c", 0, {"fid": 2.0}, tokenizer_k=None)
    rc = RunDir(c)
    cfg = rc.read_json("config.json")
    rc.write_json("config.json", {**cfg, "tokenizer": {"name": "kl-vae", "params": {"latent_dim": 4}}})
    metrics = rc.read_json("metrics.json")
    rc.write_json("metrics.json", {**metrics, "tokenizer": {"metadata": {"latent_kind": "continuous"}}})
    notes = check_matched([RunRecord.load(a), RunRecord.load(c)], allow_mismatch=False)
    assert notes == {"c": ["tokenizer: 'kl-vae' (continuous latents; baseline 'vqvae', discrete): necessarily "
                           "different"]}
    rc.write_json("config.json", {**rc.read_json("config.json"), "training": {"steps": 7, "batch_size": 64}})
    with pytest.raises(ComparisonMismatchError, match="training.steps"):
        check_matched([RunRecord.load(a), RunRecord.load(c)], allow_mismatch=False)


def test_failed_or_unfinished_runs_are_not_compared(tmp_path):
    p = make_run(tmp_path, "a", 0, {"fid": 1.0})
    RunDir(p).write_json("metrics.json", {"status": "failed", "reason": "NaN loss at step 3"})
    with pytest.raises(ComparisonMismatchError, match="NaN loss"):
        RunRecord.load(p)


def test_budget_overrides():
    assert budget_overrides("steps=500") == ["training.steps=500"]
    assert budget_overrides("minutes=2")[0] == "training.budget_minutes=2.0"
    with pytest.raises(Exception, match="steps, images, minutes, seconds or flops"):
        budget_overrides("hours=1")


def test_reuse_finds_matching_finished_run(tmp_path):
    from dlbench.config import RunConfig

    cfg = RunConfig.model_validate({"method": {"name": "a"}, "seed": 3})
    rd = RunDir.create(tmp_path, "a", cfg.dataset.name, cfg.hash())
    rd.write_json("config.json", cfg.to_dict())
    assert find_reusable(tmp_path, cfg.hash(), "a", cfg.dataset.name) is None  # not finished
    rd.write_json("metrics.json", {"status": "ok", "protocol_hash": "x", "metrics": {}})
    assert find_reusable(tmp_path, cfg.hash(), "a", cfg.dataset.name) == rd.path
    other = RunConfig.model_validate({"method": {"name": "a"}, "seed": 4})
    assert find_reusable(tmp_path, other.hash(), "a", cfg.dataset.name) is None


def test_html_report_renders(tmp_path):
    from dlbench.report.html import write_report

    paths = [make_run(tmp_path / "runs", m, 0, {"fid": 1.0}) for m in "ab"]
    cmp = summarise([RunRecord.load(p) for p in paths])
    index = write_report(cmp, tmp_path / "html")
    text = index.read_text()
    assert "<table>" in text and "data:image/png;base64," in text and "Training loss" in text
    assert (tmp_path / "html" / "training_loss.png").stat().st_size > 1000


def test_plan_compare_is_exactly_what_compare_trains(tmp_path, monkeypatch):
    """A driver that trains ``plan_compare``'s configs elsewhere gets runs ``compare`` reuses: compare asks to
    train the same configs (same hashes, method-major, seeds 0..n-1, one equal-FLOPs budget)."""
    import dlbench.runner.session as session
    from dlbench.api import compare, plan_compare

    plans = plan_compare(["vqlcmd", "vq-diffusion"], preset="quick", seeds=2)
    assert [(c.method.name, c.seed) for c in plans] == [("vqlcmd", 0), ("vqlcmd", 1), ("vq-diffusion", 0),
                                                         ("vq-diffusion", 1)]
    assert len({c.training.budget_flops for c in plans}) == 1 and plans[0].training.budget_flops > 0
    asked = []

    class Stop(Exception):
        pass

    def fake_run(cfg, registry, out="runs", resume=None):
        asked.append(cfg.hash())
        raise Stop

    monkeypatch.setattr(session, "run", fake_run)
    with pytest.raises(Stop):
        compare(["vqlcmd", "vq-diffusion"], preset="quick", seeds=2, out=tmp_path, log=lambda m: None)
    assert asked == [plans[0].hash()]  # the first planned run, nothing reusable under an empty out


def test_equal_flops_budget_allows_each_methods_own_step_cap(tmp_path):
    """Under one training-FLOPs budget the methods' step counts differ by design (the benchmark preset's
    equal-compute rule); a different FLOPs budget, or no FLOPs budget, still refuses."""
    import json as _json

    def with_flops(path, flops):
        cfg = _json.loads((path / "config.json").read_text())
        cfg["training"]["budget_flops"] = flops
        (path / "config.json").write_text(_json.dumps(cfg))
        return path

    a = with_flops(make_run(tmp_path, "a", 0, {"fid": 1.0}, steps=1029), 4.8e13)
    b = with_flops(make_run(tmp_path, "b", 0, {"fid": 2.0}, steps=1500), 4.8e13)
    assert check_matched([RunRecord.load(a), RunRecord.load(b)], allow_mismatch=False) == {}
    c = with_flops(make_run(tmp_path, "c", 0, {"fid": 2.0}, steps=1500), 9.6e13)
    with pytest.raises(ComparisonMismatchError, match="budget_flops"):
        check_matched([RunRecord.load(a), RunRecord.load(c)], allow_mismatch=False)
