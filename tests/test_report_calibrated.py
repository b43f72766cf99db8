"""Anchor rows in compare tables, placement sentences, budgets in FLOPs/seconds, sampler-grid points at equal
NFE, and the HTML ladder / learning curves, on constructed runs."""

from __future__ import annotations

import json

import pytest

from dlbench.config import ConfigError
from dlbench.report.compare import RunRecord, summarise
from dlbench.report.render import render
from dlbench.runner.compare_runs import budget_overrides
from dlbench.runs import RunDir
from dlbench.runner.sampler_tuning import at_equal_nfe, grid_points

PROTO = {"backend": "torch-fidelity", "num_generated": 100, "hash": "bbbb2222"}
ANCHORS = {"version": "anchors-v1", "key": "k" * 24, "n": 100, "rows": {
    "real": {"metrics": {"fid": 2.0, "token_kl_pair": 0.3, "domain_class_acc": 0.9}, "unavailable": {}},
    "reconstruction": {"metrics": {"fid": 10.0, "token_kl_pair": 0.3, "domain_class_acc": 0.85}, "unavailable": {}},
    "class_marginals": {"metrics": {"fid": 90.0, "token_kl_pair": 1.0, "domain_class_acc": 0.8, "nll_bound": 3.0},
                        "unavailable": {}},
    "marginals": {"metrics": {"fid": 120.0, "token_kl_pair": 1.2, "domain_class_acc": 0.1, "nll_bound": 3.4},
                  "unavailable": {}},
}}


def make_run(root, method, seed, metrics, anchors=ANCHORS):
    rd = RunDir.create(root, method, "fashion-mnist-small", f"{method}{seed}yyyyyyyy")
    cfg = {"method": {"name": method, "params": {}}, "seed": seed, "sampling": {"seed": 0, "num_samples": 100},
           "training": {"steps": 10, "batch_size": 8}, "tokenizer": {"name": "vqvae", "params": {}},
           "dataset": {"name": "fashion-mnist-small", "params": {}}, "backbone": {"preset": "tiny", "params": {}}}
    rd.write_json("config.json", cfg)
    rd.write_json("protocol.json", PROTO)
    rd.write_json("metrics.json", {"status": "ok", "protocol_hash": PROTO["hash"], "metrics": metrics,
                                   "anchors": anchors, "curve_anchors": anchors,
                                   "compute": {"params": 10, "train_steps": 10, "nfe": 4, "train_flops": 1e9}})
    for step, v in ((5, 2.0), (10, 1.5)):
        rd.event("curve", step=step, n=100, token_kl_pair=v + seed * 0.1, fid=100.0 / step)
    return RunRecord.load(rd.path)


def test_tables_carry_anchor_rows_and_say_where_methods_sit(tmp_path):
    recs = [make_run(tmp_path, "a", s, {"fid": f, "token_kl_pair": p, "nll_bound": 3.2 + s * 0.01})
            for s, (f, p) in enumerate([(50.0, 0.9), (52.0, 0.95), (51.0, 0.92)])]
    recs += [make_run(tmp_path, "b", s, {"fid": f, "token_kl_pair": p}) for s, (f, p) in
             enumerate([(89.0, 1.1), (92.0, 1.3), (91.0, 0.9)])]
    cmp = summarise(recs, ["a", "b"])
    text = render(cmp, "table")
    for label in ("anchor: real (held-out)", "anchor: reconstruction", "anchor: class marginals", "anchor: marginals"):
        assert label in text
    assert "where a sits: fid between class marginals (90) and reconstruction (10)" in text
    assert "token_kl_pair between class marginals (1) and reconstruction (0.3)" in text
    assert "nll_bound between marginals (3.4) and class marginals (3)" in text
    assert "where b sits: fid not distinguishable from class marginals (95 % CI)" in text
    md = render(cmp, "md")
    assert "| *anchor: class marginals* | – | *90* |" in md
    rows = json.loads(render(cmp, "json"))["rows"]
    anchor_rows = [r for r in rows if r["kind"] == "anchor"]
    assert [r["anchor"] for r in anchor_rows] == ["real", "reconstruction", "class_marginals", "marginals"]
    assert anchor_rows[2]["fid"] == 90.0 and anchor_rows[0]["nll_bound"] is None
    assert "\\midrule" in render(cmp, "latex").split("\\midrule", 1)[1]  # anchors set apart


def test_runs_without_anchors_say_so(tmp_path):
    recs = [make_run(tmp_path, "a", 0, {"fid": 1.0}, anchors=None)]
    text = render(summarise(recs), "table")
    assert "anchor rows unavailable" in text and "anchor: real" not in text


def test_budget_overrides_flops_and_seconds():
    assert budget_overrides("flops=1e15") == ["training.budget_flops=1000000000000000.0", "training.steps=100000000"]
    assert budget_overrides("seconds=90")[0] == "training.budget_minutes=1.5"
    with pytest.raises(ConfigError, match="positive"):
        budget_overrides("flops=0")


class FakeMethod:
    """NFE like VQ-Diffusion: one evaluation per step, two with guidance."""

    def nfe(self, steps=None, guidance=1.0, **options):
        if options.get("truncation", 1.0) > 1.0:
            raise ValueError("bad truncation")
        return (steps or 10) * (2 if guidance != 1.0 else 1)


def test_grid_points_at_equal_nfe():
    grid = {"options.truncation": [0.9, 1.0], "guidance": [1.0, 2.0]}
    points = grid_points(grid, conditional=True)
    assert len(points) == 4 and {"guidance": 2.0, "options": {"truncation": 0.9}} in points
    assert all(p["guidance"] is None for p in grid_points(grid, conditional=False))
    assert len(grid_points(grid, conditional=False)) == 2
    m = FakeMethod()
    assert at_equal_nfe(m, {"guidance": 2.0, "options": {}}, 8, 8) == 4  # guidance: half the steps
    assert at_equal_nfe(m, {"guidance": 1.0, "options": {}}, 8, 8) == 8
    assert at_equal_nfe(m, {"guidance": 2.0, "options": {}}, 7, 7) is False  # odd NFE: no equal setting
    assert at_equal_nfe(m, {"guidance": 1.0, "options": {"truncation": 2.0}}, 8, 8) is False


def test_html_report_draws_ladder_and_curves(tmp_path):
    from dlbench.report.html import write_report

    recs = [make_run(tmp_path, "a", s, {"fid": 50.0 + s, "token_kl_pair": 0.9}) for s in range(2)]
    path = write_report(summarise(recs), tmp_path / "report")
    html = path.read_text()
    assert "anchor ladder" in html and "Learning curves" in html and "tr class='anchor'" in html
    assert (tmp_path / "report" / "anchor_ladder.png").is_file()
    assert (tmp_path / "report" / "learning_curves.png").is_file()
