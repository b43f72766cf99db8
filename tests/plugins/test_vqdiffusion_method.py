"""The vq-diffusion method end to end on random tokens (no tokenizer): train, sample, invariances."""

from __future__ import annotations

import pytest
import torch

from dlbench.interfaces import MethodContext
from dlbench.registry import DlbenchError, Registry
from dlbench_vqdiffusion import plugin
from dlbench_vqdiffusion.method import VQDiffusion, VQDiffusionConfig

K, GRID, CLASSES = 12, (3, 4), 3
SAMPLERS = [
    {"sampler": "ancestral", "truncation": 0.9},
    {"sampler": "fast", "stride": 3},
    {"sampler": "high-quality"},
    {"sampler": "purity", "purity_weight": 1.0, "truncation": 0.95},
]


def build(num_classes=CLASSES, **params) -> VQDiffusion:
    torch.manual_seed(0)
    config = VQDiffusionConfig(**{"num_steps": 8, "importance_warmup": 1, **params})
    ctx = MethodContext(codebook_size=K, token_grid=GRID, num_classes=num_classes,
                        backbone={"preset": "tiny", "params": {"width": 32, "depth": 1, "heads": 2}})
    return VQDiffusion(config, context=ctx)


@pytest.fixture(scope="module")
def trained() -> VQDiffusion:
    """A few training steps on structured random tokens (token = class + column), so that the network
    output is far from uniform and the samplers have something to follow."""
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        labels = torch.randint(0, CLASSES, (16,), generator=g)
        tokens = (labels[:, None, None] * 4 + torch.arange(4)[None, None, :]).expand(16, *GRID).clone()
        loss, logs = model.loss(tokens, labels)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert {"loss", "vlb", "aux_ce", "mask_frac", "t_mean"} <= set(logs)
    assert all(torch.isfinite(v) for v in logs.values())
    return model.eval()


def test_registers_through_the_plugin_hook_and_satisfies_the_interface():
    reg = Registry()
    plugin.register_methods(
        register=lambda name, factory, **kw: reg.add("method", name, factory, plugin="vqdiffusion", **kw)
    )
    spec = reg.get("method", "vq-diffusion")
    assert spec.factory is VQDiffusion and spec.config is VQDiffusionConfig
    assert VQDiffusion.requires.inputs == "token_ids" and VQDiffusion.requires.conditioning == "optional"
    assert set(VQDiffusion.presets) == {"quick", "default", "benchmark", "paper"}
    for preset in VQDiffusion.presets.values():  # every preset's method params validate
        VQDiffusionConfig.model_validate(preset.get("method", {}).get("params", {}))
    paper = VQDiffusion.presets["paper"]
    assert paper["method"]["params"]["num_steps"] == 100 and paper["training"]["betas"] == (0.9, 0.96)
    from dlbench.plugins import get_registry
    from dlbench.registry import SlotError, resolve_slots

    with pytest.raises(SlotError, match="unknown schedule 'mask-and-replce'. Did you mean 'mask-and-replace'"):
        resolve_slots(get_registry(), VQDiffusionConfig(schedule="mask-and-replce"), where="method.params")
    with pytest.raises(SlotError, match="continuous schedule; this slot takes a discrete schedule"):
        resolve_slots(get_registry(), VQDiffusionConfig(schedule="cosine"), where="method.params")
    legacy = VQDiffusionConfig.model_validate({"schedule": "mask-and-replace", "schedule_params": {}})
    assert legacy.schedule.name == "mask-and-replace"


def test_importance_sampler_warms_up_and_is_checkpointed(trained):
    assert trained.time_sampler.warmed_up
    assert trained.diagnostics()["t_sampler_warm"] == 1.0
    assert "time_sampler.loss_sq_history" in trained.state_dict()


@pytest.mark.parametrize("options", SAMPLERS, ids=lambda o: o["sampler"])
def test_samples_have_the_grid_shape_no_mask_and_are_seed_deterministic(trained, options):
    labels = torch.tensor([0, 1, 2, 1])
    seeds = torch.tensor([11, 12, 13, 14])
    a = trained.sample(labels, seeds, guidance=2.0, **options)
    b = trained.sample(labels, seeds, guidance=2.0, **options)
    assert a.shape == (4, *GRID) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < K  # never [MASK] (= K)
    assert torch.equal(a, b)
    c = trained.sample(labels, seeds + 100, guidance=2.0, **options)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("options", SAMPLERS, ids=lambda o: o["sampler"])
def test_sampling_does_not_depend_on_batch_size(trained, options):
    labels = torch.tensor([2, 0, 1, 2])
    seeds = torch.tensor([5, 6, 7, 8])
    whole = trained.sample(labels, seeds, guidance=1.5, **options)
    halves = torch.cat([trained.sample(labels[:2], seeds[:2], guidance=1.5, **options),
                        trained.sample(labels[2:], seeds[2:], guidance=1.5, **options)])
    assert torch.equal(whole, halves)


def test_unconditional_model_samples_without_labels():
    model = build(num_classes=None).eval()
    out = model.sample(None, torch.arange(3), num_samples=3, steps=3)
    assert out.shape == (3, *GRID) and int(out.max()) < K
    loss, _ = model.train().loss(torch.randint(0, K, (2, *GRID)), None)
    assert torch.isfinite(loss)


def test_high_quality_sampler_reveals_the_budget_and_freezes_revealed_tokens(trained):
    states = []
    trained.sample(torch.tensor([0, 1]), torch.tensor([1, 2]), sampler="high-quality", steps=4,
                   callback=lambda info: states.append(info["x"].clone()))
    assert len(states) == 4
    masked = [int((s == K).sum(dim=1).max()) for s in states]
    assert masked == [9, 6, 3, 0]  # 12 positions, 3 per step
    for before, after in zip(states, states[1:]):
        revealed = before != K
        assert torch.equal(after[revealed], before[revealed])


def test_nfe_counts_guidance_and_stride(trained):
    assert trained.nfe() == 8
    assert trained.nfe(steps=4, guidance=3.0) == 8
    assert trained.nfe(stride=3) == 3


def test_bad_inputs_raise_actionable_errors(trained):
    with pytest.raises(DlbenchError, match="sampling.options"):
        trained.sample(None, torch.arange(2), truncaton=0.9)
    with pytest.raises(DlbenchError, match="needs class labels"):
        trained.sample(None, torch.arange(2), guidance=2.0)
    with pytest.raises(DlbenchError, match="stride"):
        trained.sample(None, torch.arange(2), sampler="fast")
    with pytest.raises(DlbenchError, match="token ids must lie"):
        trained.loss(torch.full((2, *GRID), K), None)
    with pytest.raises(DlbenchError, match="unconditional"):
        build(num_classes=None).loss(torch.zeros(2, *GRID, dtype=torch.long), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("preset", ["quick", "default", "benchmark", "paper"])
def test_presets_resolve_through_the_run_config(preset):
    from dlbench.config import build_config
    from dlbench.plugins import get_registry

    registry = get_registry()
    if "vq-diffusion" not in registry.names("method"):
        pytest.skip("dlbench entry points not installed")
    cfg = build_config("vq-diffusion", registry=registry, preset=preset, dataset="ffhq" if preset == "paper" else None)
    params = VQDiffusionConfig.model_validate(cfg.method.params)
    assert cfg.sampling.steps is None or cfg.sampling.steps <= params.num_steps
    VQDiffusion(params, context=MethodContext(codebook_size=8, token_grid=(2, 2), num_classes=2,
                                               backbone={"preset": "tiny", "params": {"width": 16, "depth": 1,
                                                                                      "heads": 2}})).nfe(
        cfg.sampling.steps, cfg.sampling.guidance, **cfg.sampling.options)
