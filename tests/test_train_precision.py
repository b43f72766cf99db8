"""Precision "auto": bf16 autocast where the machine computes bf16 natively, fp32 elsewhere; tokenizers stay fp32."""

import pytest
import torch

from dlbench.config import TokenizerRef, TrainingConfig
from dlbench.train.dist import resolve_precision

_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {name}
flags\t\t: fpu vme sse sse2 avx avx2 {extra}

"""


@pytest.mark.parametrize("name,extra,want", [
    ("Intel Xeon (Sapphire Rapids)", "avx512f avx512_bf16 amx_bf16 amx_tile", "bf16"),
    ("AMD EPYC (Zen 4)", "avx512f avx512_bf16", "bf16"),
    ("Intel Xeon with AMX only listed", "amx_bf16 amx_tile", "bf16"),
    ("AMD EPYC (Zen 2/3)", "", "fp32"),
    ("Intel Xeon (Skylake)", "avx512f avx512bw avx512_vnni", "fp32"),
])
def test_auto_precision_from_cpuinfo(tmp_path, name, extra, want):
    f = tmp_path / "cpuinfo"
    f.write_text(_CPUINFO.format(vendor="x", name=name, extra=extra))
    assert resolve_precision("auto", "cpu", cpuinfo=f) == want
    # explicit choices pass through whatever the CPU
    assert resolve_precision("fp32", "cpu", cpuinfo=f) == "fp32"
    assert resolve_precision("bf16", "cpu", cpuinfo=f) == "bf16"


def test_auto_precision_is_fp32_when_the_cpu_cannot_be_told(tmp_path):
    assert resolve_precision("auto", "cpu", cpuinfo=tmp_path / "missing") == "fp32"
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert resolve_precision("auto", "cpu", cpuinfo=tmp_path / "arm") == "fp32"


def test_generator_defaults_to_auto_but_tokenizer_training_stays_fp32():
    """The tokenizer's cache key includes its training config: it must not depend on the machine."""
    assert TrainingConfig().precision == "auto"
    tok = TokenizerRef()
    assert tok.training.precision == "fp32"
    # a preset/config that sets only some tokenizer training fields keeps fp32 too
    assert TokenizerRef.model_validate({"training": {"steps": 30}}).training.precision == "fp32"
    dumped = tok.training.model_dump(mode="json")
    assert dumped == TrainingConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.0,
                                    grad_clip=None, precision="fp32").model_dump(mode="json")


def test_training_records_the_resolved_precision(tmp_path, monkeypatch):
    from dlbench.train import loop
    from dlbench.train.loop import TensorBatches, train

    monkeypatch.setattr(loop, "resolve_precision", lambda p, d: "fp32" if p == "auto" else p)
    model = torch.nn.Linear(3, 1)
    events = []
    result = train(model, lambda m, b: (m(b[0]).pow(2).mean(), {}),
                   TensorBatches(torch.randn(8, 3), batch_size=4, seed=0), TrainingConfig(steps=2, log_every=1),
                   events=lambda k, **f: events.append((k, f)), show_progress=False)
    assert result.precision == "fp32"
    start = next(f for k, f in events if k == "train_start")
    assert start["precision"] == "fp32" and start["precision_requested"] == "auto"


def test_backbone_compile_flag_compiles_every_denoiser_in_place(monkeypatch):
    """`backbone.compile=true` calls nn.Module.compile on each TokenDenoiser (state_dict names unchanged)."""
    from dlbench.interfaces import MethodContext
    from dlbench.nn.denoiser import TokenDenoiser
    from dlbench.plugins import get_registry
    from dlbench.runner.generator_stage import compile_denoisers

    calls = []
    monkeypatch.setattr(TokenDenoiser, "compile", lambda self, **kw: calls.append(kw))
    method = get_registry().get("method", "vqlcmd").build(
        {}, context=MethodContext(codebook_size=8, token_grid=(2, 2), num_classes=None,
                                  backbone={"preset": "tiny", "width": 32, "depth": 1, "heads": 2}))
    keys = set(method.state_dict())
    n = compile_denoisers(method)
    assert n == len(calls) == 2  # the live denoiser and the EMA teacher's copy
    assert set(method.state_dict()) == keys
