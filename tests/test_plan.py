"""`dlbench plan`: FLOPs counted exactly on the meta device, cost arithmetic, the paper preset's table."""

import pytest
import torch
from torch import nn

from dlbench.config import build_config
from dlbench.plan import ACCELERATORS, build_plan, measure, render
from dlbench.plugins import get_registry


def test_measure_counts_flops_in_closed_form_on_meta():
    with torch.device("meta"):
        lin = nn.Linear(3, 4)
        flops, saved = measure(lin, torch.empty(2, 3, requires_grad=True))
        assert flops == 2 * 2 * 3 * 4  # 2 FLOPs per multiply-add
        conv = nn.Conv2d(2, 3, 3, padding=1)
        flops, _ = measure(conv, torch.empty(1, 2, 5, 5))
        assert flops == 2 * 25 * 3 * 2 * 9
        flops, saved = measure(lambda x: torch.relu(x), torch.empty(10, requires_grad=True))
        assert saved == 10 * 4  # relu keeps its fp32 output for backward


@pytest.fixture(scope="module")
def ffhq_plan():
    cfg = build_config("vqlcmd", registry=get_registry(), preset="paper", dataset="ffhq")
    return cfg, build_plan(cfg, accelerator="H100", devices=8)


def test_paper_ffhq_plan_arithmetic(ffhq_plan):
    cfg, plan = ffhq_plan
    assert plan.token_grid == (16, 16) and plan.peak_flops == ACCELERATORS["H100"][0] and plan.utilisation == 0.4
    stages = {s.name: s for s in plan.stages}
    tok = stages["tokenizer training"]
    assert tok.flops == pytest.approx(tok.flops_per_unit * cfg.tokenizer.training.batch_size * cfg.tokenizer.training.steps)
    assert 70e6 < tok.params < 75e6  # taming's f16 VQGAN (encoder, decoder, quantizer)
    gen = stages["generator training"]
    assert gen.flops == pytest.approx(gen.flops_per_step * cfg.training.steps)
    assert gen.memory_bytes["micro_batch"] == 256 // 8
    assert plan.seconds(gen) == pytest.approx(gen.flops / (8 * 989e12 * 0.4))
    assert plan.tokens_on_disk_bytes == 70_000 * 16 * 16 * 2  # uint16 ids for K = 1024 (dlbench.data.token_cache)
    text = render(plan)
    assert "16x16 tokens" in text and "assumed utilisation 40%" in text and "| **total**" in text


def test_more_devices_less_time_and_imported_tokenizer_skips_training(ffhq_plan, tmp_path):
    cfg, plan8 = ffhq_plan
    plan16 = build_plan(cfg, accelerator="H100", devices=16)
    gen8 = next(s for s in plan8.stages if s.name == "generator training")
    gen16 = next(s for s in plan16.stages if s.name == "generator training")
    assert plan16.seconds(gen16) == pytest.approx(plan8.seconds(gen8) / 2)
    ck = build_config("vqlcmd", registry=get_registry(), preset="paper", dataset="ffhq",
                      overrides=[f"tokenizer.checkpoint={tmp_path / 'last.ckpt'}"])
    tok = build_plan(ck, accelerator="A100").stages[0]
    assert tok.skipped and tok.flops == 0


def test_plan_cli(capsys):
    from dlbench.cli import main

    main(["plan", "vqlcmd", "--dataset", "ffhq", "--preset", "paper", "--accelerator", "h200", "--devices", "8"])
    out = capsys.readouterr().out
    assert "8 x H200" in out and "vqgan (f16, K=1024, d=256) -> 16x16 tokens" in out
    with pytest.raises(SystemExit) as exc:
        main(["plan", "vqlcmd", "--accelerator", "TPU9"])
    assert exc.value.code == 2


def test_plan_builds_methods_with_build_time_checks_and_counts_accumulation():
    """VQ-Diffusion validates its schedule at build time (not possible on meta): built on CPU, measured on meta."""
    reg = get_registry()
    cfg = build_config("vq-diffusion", registry=reg, preset="paper", dataset="ffhq")
    acc = build_config("vq-diffusion", registry=reg, preset="paper", dataset="ffhq", overrides=["training.grad_accum=4"])
    gen, gen4 = (next(s for s in build_plan(c, accelerator="A100", devices=8).stages if s.name == "generator training")
                 for c in (cfg, acc))
    assert gen.flops == gen4.flops and gen.params > 90e6
    assert gen4.memory_bytes["micro_batch"] == 8 and gen4.memory_bytes["activations"] == pytest.approx(
        gen.memory_bytes["activations"] / 4)
