import json
import math
import warnings

import pytest
import torch

from dlbench.config import TrainingConfig
from dlbench.nn.denoiser import DenoiserConfig, build_denoiser
from dlbench.registry import DlbenchError
from dlbench.train.checkpoint import ResumeConfigMismatch, latest_checkpoint, load_checkpoint
from dlbench.train.loop import TensorBatches, TrainingDiverged, train, warmup_lr


def _model():
    torch.manual_seed(123)
    cfg = DenoiserConfig(width=16, depth=1, heads=2, dropout=0.1)  # dropout: forward consumes RNG too
    return build_denoiser(cfg, grid=(2, 2), out_dim=5, input="tokens", vocab_size=5, num_classes=3)


def _loss(model, batch):
    tokens, labels = batch
    t = torch.rand(tokens.shape[0])  # global RNG: must be restored on resume
    logits = model(tokens, t, labels)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1))
    return ce, {"ce": ce.detach(), "t_mean": t.mean()}


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 5, (40, 2, 2), generator=g), torch.randint(0, 3, (40,), generator=g)


def _cfg(**kw):
    base = dict(steps=8, batch_size=6, lr=1e-2, warmup_steps=3, ema_decay=0.9, log_every=2,
                checkpoint_every=4, weight_decay=0.01, grad_clip=1.0, precision="fp32")
    return TrainingConfig(**{**base, **kw})


def _run(tmp, cfg, *, resume=False, record=None, events=None, model=None):
    model = model or _model()
    result = train(model, _loss, TensorBatches(*_data(), batch_size=cfg.batch_size, seed=7), cfg,
                   checkpoint_dir=tmp, resume=resume, config_record=record or {"training": cfg.model_dump(mode="json")},
                   events=events, seed=3, show_progress=False)
    return model, result


def test_resume_is_bit_for_bit(tmp_path):
    straight, r1 = _run(tmp_path / "a", _cfg(steps=8))
    # interrupted: 4 steps (checkpoint at 4), then resume to 8 with a fresh process-like state
    _run(tmp_path / "b", _cfg(steps=4))
    torch.manual_seed(999)  # whatever happened in between must not matter
    resumed, r2 = _run(tmp_path / "b", _cfg(steps=8), resume=True)
    assert r2.resumed_from == 4 and r2.step == 8 and r2.images_seen == 48
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    for a, b in zip(r1.ema.state_dict().values(), r2.ema.state_dict().values()):
        assert torch.equal(a, b)
    # sanity: the run did change the parameters (the comparison above could not pass vacuously)
    assert not torch.equal(_model().state_dict()["final.linear.weight"], straight.state_dict()["final.linear.weight"])


def test_checkpoint_files_pointer_and_pruning(tmp_path):
    _run(tmp_path, _cfg(steps=12, checkpoint_every=4))
    dirs = sorted(p.name for p in tmp_path.glob("step-*"))
    assert dirs == ["step-00000008", "step-00000012"]  # keep last 2
    assert json.loads((tmp_path / "latest.json").read_text())["path"] == "step-00000012"
    for name in ("model.pt", "ema.pt", "optimizer.pt"):  # weights_only loading works
        torch.load(tmp_path / "step-00000012" / name, weights_only=True)
    st = load_checkpoint(latest_checkpoint(tmp_path))["state"]
    assert st["step"] == 12 and len(st["rng"]) == 1 and st["config_hash"]
    # a broken pointer falls back to the newest complete checkpoint
    (tmp_path / "latest.json").write_text("garbage")
    assert latest_checkpoint(tmp_path).name == "step-00000012"


def test_resume_with_changed_config_names_fields(tmp_path):
    _run(tmp_path, _cfg(steps=4))
    with pytest.raises(ResumeConfigMismatch, match=r"training\.lr: 0\.01 \(checkpoint\) != 0\.02") as err:
        _run(tmp_path, _cfg(steps=8, lr=0.02), resume=True)
    assert isinstance(err.value, DlbenchError) and set(err.value.diff) == {"training.lr"}
    _run(tmp_path, _cfg(steps=8, log_every=4), resume=True)  # budget / cadence may change


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    events = []
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        value, terms = _loss(model, batch)
        return (value * float("nan") if calls["n"] == 6 else value), terms

    model = _model()
    with pytest.raises(TrainingDiverged, match="step 5: non-finite loss") as err:
        train(model, loss, TensorBatches(*_data(), batch_size=6, seed=7), _cfg(steps=8), checkpoint_dir=tmp_path,
              events=lambda kind, **f: events.append((kind, f)), show_progress=False)
    assert err.value.step == 5 and err.value.checkpoint.name == "step-00000004"
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert ("failure", {"stage": "train", "step": 5, "reason": err.value.reason}) in events
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_nan_gradient_with_finite_loss_is_caught():
    def loss(model, batch):
        value, terms = _loss(model, batch)
        return _NanGrad.apply(value), terms

    with pytest.raises(TrainingDiverged, match="step 0: non-finite gradient norm"):
        train(_model(), loss, TensorBatches(*_data(), batch_size=6, seed=7), _cfg(steps=2), show_progress=False)


def test_events_log_terms_separately_and_budget_in_images(tmp_path):
    events = []
    _, result = _run(tmp_path, _cfg(steps=100, budget_images=30), events=lambda k, **f: events.append((k, f)))
    assert result.step == 5 and result.stopped_by == "images"  # ceil(30 / 6)
    logs = [f for k, f in events if k == "train"]
    assert [f["step"] for f in logs] == [2, 4]
    assert {"loss", "ce", "t_mean", "lr", "grad_norm", "images_seen"} <= set(logs[0])
    assert events[-1][0] == "train_end" and events[-1][1]["stopped_by"] == "images"


def test_warmup_schedule():
    assert [warmup_lr(1.0, s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(2.0, 0, 0) == 2.0


def test_batches_are_a_function_of_step_and_shard_exactly():
    x = torch.arange(10)
    single = TensorBatches(x, batch_size=4, seed=1)
    ranks = [TensorBatches(x, batch_size=4, seed=1, rank=r, world=2) for r in range(2)]
    seen = []
    for step in range(5):  # 20 positions = 2 epochs: each epoch a permutation
        full = single.batch(step)[0]
        assert torch.equal(torch.cat([r.batch(step)[0] for r in ranks]).sort().values, full.sort().values)
        seen.append(full)
    seen = torch.cat(seen)
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(TensorBatches(x, batch_size=4, seed=1).batch(3)[0], single.batch(3)[0])
    with pytest.raises(DlbenchError, match="divisible"):
        TensorBatches(x, batch_size=5, seed=1, world=2)


def test_bf16_autocast_trains_and_is_recorded(tmp_path):
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the no-native-bf16 warning, on CPUs that lack it
        _, result = _run(tmp_path, _cfg(steps=4, precision="bf16"), events=lambda k, **f: events.append((k, f)))
    assert result.precision == "bf16" and math.isfinite(result.last_terms["loss"])
    assert dict(events)["train_start"]["precision"] == "bf16"


@pytest.mark.parametrize("flags, native", [("fpu sse avx2", False), ("fpu avx512f avx512_bf16", True),
                                           ("fpu amx_bf16 amx_tile", True)])
def test_bf16_on_cpu_without_native_support_warns(tmp_path, monkeypatch, flags, native):
    from dlbench.train import dist, loop

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert dist.cpu_has_native_bf16(cpuinfo) is native
    assert dist.cpu_has_native_bf16(tmp_path / "missing") is None  # unknown: no warning
    monkeypatch.setattr(loop, "bf16_warning", lambda device: dist.bf16_warning(device, cpuinfo))
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(tmp_path / "run", _cfg(steps=1, precision="bf16"), events=lambda k, **f: events.append((k, f)))
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    logged = [f["message"] for k, f in events if k == "warning"]
    if native:
        assert not said and not logged
    else:
        assert len(said) == 1 and said == logged and "--precision fp32" in said[0]


def test_optimizer_is_fused_on_cpu():
    # one fused AdamW kernel instead of torch's per-parameter loop on CPU (benchmarks/results/train_mfu.md)
    from dlbench.train.loop import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, 1e-3, (0.9, 0.99), 0.01)
    assert opt.defaults["fused"] is True
    model(torch.randn(2, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
