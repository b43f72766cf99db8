"""A run carries token metrics, its NLL-bound status, anchor rows, learning-curve events and a FLOPs budget;
re-evaluation reproduces them (placeholder method, tiny data)."""

from __future__ import annotations

from dlbench.runner import evaluation, stages
from dlbench.runner.calibration import flops_per_image
from test_train_pipeline import _config, _new_run, registry  # noqa: F401 - the fixture is used by name


def test_run_records_token_metrics_anchors_and_curves(registry, tmp_path):  # noqa: F811
    # token metrics only (no domain classifier to train): the protocol still computes something
    cfg = _config(registry, evaluation={"enabled": True, "protocol": "quick",
                                        "overrides": {"num_generated": 10, "domain_metrics": False},
                                        "curve_points": 3, "curve_samples": 8},
                  training={"budget_flops": 1.0})  # tiny FLOPs budget: stops after the first step
    rd = _new_run(tmp_path, cfg)
    m = stages.execute(cfg, registry, rd, resume=False)
    assert m["status"] == "ok"
    assert m["compute"]["budget"]["measure"] == "flops" and m["training"]["step"] == 1
    assert m["training"]["stopped_by"] == "images"
    for key in ("token_kl_unigram", "token_kl_pair"):
        assert key in m["metrics"], key
    assert "nll_bound" in m["unavailable"]  # the placeholder declares no bound
    assert m["protocol"]["token_metrics"]["smoothing"] == 0.5
    assert "rows" in m["anchors"], m["anchors"]
    rows = m["anchors"]["rows"]
    assert set(rows) == {"real", "reconstruction", "class_marginals", "marginals"}
    assert rows["real"]["metrics"]["token_kl_pair"] == rows["reconstruction"]["metrics"]["token_kl_pair"]
    assert rows["marginals"]["metrics"]["nll_bound"] > 0
    curves = rd.events("curve")
    assert [e["step"] for e in curves] == [1] and curves[0]["n"] == 8  # the budget ended at the first point
    assert m["curve_anchors"]["n"] == 8
    again = evaluation.evaluate_run(rd, registry)
    assert again["metrics"] == m["metrics"] and again["anchors"]["key"] == m["anchors"]["key"]


def test_flops_per_image_counts_forward_equivalents(registry):  # noqa: F811
    from dlbench.interfaces import MethodContext
    from test_train_pipeline import Placeholder, PlaceholderConfig

    m = Placeholder(PlaceholderConfig(), context=MethodContext(codebook_size=4, token_grid=(2, 3), num_classes=2))
    params = 2 * 3 * 4 + 3 * 4
    assert flops_per_image(m, (2, 3)) == 6.0 * params * 6
    m.forwards_per_step = 2.5
    assert flops_per_image(m, (2, 3)) == 6.0 * params * 6 * 2.5


def test_curve_points_are_evenly_spaced_over_the_budget():
    from types import SimpleNamespace

    from dlbench.eval.protocol import resolve_protocol
    from dlbench.runner.calibration import CurveRecorder
    from dlbench.train.dist import DistContext

    def recorder(training):
        cfg = SimpleNamespace(evaluation=SimpleNamespace(curve_points=4, curve_samples=8))
        rec = CurveRecorder(cfg=cfg, protocol=resolve_protocol("quick", token_metrics={}), dataset=None,
                            tokenizer=None, key="k", ctx=DistContext(), emit=None, num_classes=None, training=training)
        rec.steps = []
        rec.record = lambda step, gen: rec.steps.append(step)
        return rec

    by_steps = recorder(SimpleNamespace(steps=100, budget_images=None, budget_minutes=None))
    for step in range(1, 101):
        by_steps({"step": step, "images_seen": step * 8, "elapsed_s": 0.0, "model": None, "ema": None})
    assert by_steps.steps == [25, 50, 75]  # the fourth point is finish() on the final weights
    by_images = recorder(SimpleNamespace(steps=10**8, budget_images=800, budget_minutes=None))
    for step in range(1, 101):
        by_images({"step": step, "images_seen": step * 8, "elapsed_s": 0.0, "model": None, "ema": None})
    assert by_images.steps == [25, 50, 75]
    resumed = recorder(SimpleNamespace(steps=100, budget_images=None, budget_minutes=None))
    resumed({"step": 80, "images_seen": 640, "elapsed_s": 0.0, "model": None, "ema": None})
    assert resumed.steps == [80]  # fractions passed before a resume give one point, not three
