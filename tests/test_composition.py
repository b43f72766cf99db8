"""Composition through the registry: component slots ({name, params} references checked at config time and
built through MethodContext.build) and tokenizer regularizers composed from the run config."""

from __future__ import annotations

import pytest
import torch

from dlbench.config import build_config
from dlbench.interfaces import ComponentRef, MethodContext, Slot
from dlbench.plugins import get_registry
from dlbench.registry import SlotError, build_ref, resolve_ref


@pytest.fixture(scope="module")
def registry():
    reg = get_registry()
    if "vqlcmd" not in reg.names("method") or "prior-kl" not in reg.names("regularizer"):
        pytest.skip("dlbench entry points not installed")
    return reg


# ---------------------------------------------------------------------------------------------
# slots
# ---------------------------------------------------------------------------------------------


def test_a_plain_string_is_a_reference_by_name():
    assert ComponentRef.model_validate("cosine") == ComponentRef(name="cosine", params={})


def test_slot_params_are_validated_and_completed_by_the_component_config(registry):
    spec, cfg = resolve_ref(registry, {"name": "shifted-cosine", "params": {"shift": -4}},
                            Slot("schedule", family="continuous"), where="x")
    assert spec.canonical == "schedule/shifted-cosine" and cfg.shift == -4 and cfg.t_min == 1e-3
    with pytest.raises(SlotError, match=r"^x.params for schedule/shifted-cosine: shiftt: Extra inputs"):
        resolve_ref(registry, {"name": "shifted-cosine", "params": {"shiftt": 1}}, Slot("schedule"), where="x")


def test_wrong_family_and_stage_are_refused_with_what_fits(registry):
    with pytest.raises(SlotError, match="discrete schedule; this slot takes a continuous schedule .one of: .*cosine"):
        resolve_ref(registry, "mask-and-replace", Slot("schedule", family="continuous"), where="method.params.schedule")
    with pytest.raises(SlotError, match="generator regularizer; this slot takes a tokenizer-stage regularizer"):
        resolve_ref(registry, "consistency-matching", Slot("regularizer", stage="tokenizer"), where="r")
    with pytest.raises(SlotError, match="Did you mean 'cosine'"):
        resolve_ref(registry, "cosin", Slot("schedule", family="continuous"), where="s")


def test_run_config_slots_resolve_through_set(registry):
    cfg = build_config("vqlcmd", registry=registry, preset="quick",
                       overrides=["method.schedule=cosine", "method.embedding.params.dim=4"])
    assert cfg.method.params["schedule"] == {"name": "cosine", "params": {"t_min": 1e-3, "t_max": 0.999}}
    # a partial slot ({params} only) keeps the default component; the quick preset's dim is overridden
    assert cfg.method.params["embedding"]["name"] == "learnable"
    assert cfg.method.params["embedding"]["params"]["dim"] == 4
    with pytest.raises(SlotError, match="method.params.schedule: schedule/vqdiffusion-alpha1 does not fit"):
        build_config("vqlcmd", registry=registry, preset="quick", overrides=["method.schedule=vqdiffusion-alpha1"])
    with pytest.raises(SlotError, match="method.params.schedule: .*continuous schedule; this slot takes a discrete"):
        build_config("vq-diffusion", registry=registry, preset="quick", overrides=["method.schedule=linear"])


def test_the_method_builds_its_slots_through_the_context(registry):
    """The method gets its schedule from the context's registry, not from a module-level table."""
    from dlbench.registry import Registry
    from dlbench_vqlcmd.method import VQLCMD

    class Spy(Registry):
        def __init__(self, inner):
            super().__init__()
            self._specs, self.asked = inner._specs, []

        def get(self, kind, name):
            self.asked.append((kind, name))
            return super().get(kind, name)

    spy = Spy(registry)
    ctx = MethodContext(codebook_size=6, token_grid=(2, 2), registry=spy,
                        backbone={"preset": "tiny", "width": 16, "depth": 1, "heads": 2})
    m = VQLCMD(VQLCMD.Config(schedule="linear", embedding={"name": "one-hot"}), context=ctx)
    assert ("schedule", "linear") in spy.asked and ("embedding", "one-hot") in spy.asked
    assert type(m.schedule).__name__ == "LinearLogSNRSchedule" and m.embedding.dim == 6


def test_default_dlogsnr_is_the_derivative_of_logsnr():
    from dlbench.interfaces import ContinuousSchedule

    class Quadratic(ContinuousSchedule):
        def logsnr(self, t):
            return 4.0 - 8.0 * t**2

    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    torch.testing.assert_close(Quadratic().dlogsnr(t), -16.0 * t)


# ---------------------------------------------------------------------------------------------
# tokenizer regularizers from the run config
# ---------------------------------------------------------------------------------------------


def test_tokenizer_regularizers_compose_into_the_tokenizer_and_its_cache_key(registry):
    from dlbench.runner.tokenizer_stage import build_tokenizer, tokenizer_key_inputs

    regs = '[{"name":"prior-kl"},{"name":"stochastic-mask","params":{"ratio":0.5}}]'
    plain = build_config("vq-diffusion", registry=registry, preset="quick")
    composed = build_config("vq-diffusion", registry=registry, preset="quick",
                            overrides=[f"tokenizer.regularizers={regs}"])
    assert [r.name for r in composed.tokenizer.regularizers] == ["prior-kl", "stochastic-mask"]
    assert composed.tokenizer.regularizers[0].params == {"weight": 0.1, "entropy_weight": 1.0}
    ds = registry.get("dataset", plain.dataset.name).build(plain.dataset.params)
    # without regularizers the key inputs are unchanged (cached and shipped tokenizers stay valid)
    assert "regularizers" not in tokenizer_key_inputs(plain, ds)
    assert tokenizer_key_inputs(composed, ds)["regularizers"][1] == composed.tokenizer.regularizers[1].model_dump()
    tok = build_tokenizer(composed, registry, ds)
    assert [(n, w, type(m).__name__) for n, w, m in tok.regularizers] == [
        ("prior-kl", 0.1, "PriorKL"), ("stochastic-mask", 1.0, "StochasticMask")]
    torch.manual_seed(0)
    _, terms = tok.train().training_loss(torch.rand(8, ds.channels, ds.resolution, ds.resolution) * 2 - 1)
    assert {"prior-kl", "stochastic-mask", "perturbed_frac"} <= set(terms) and terms["perturbed_frac"] > 0
    assert not build_tokenizer(plain, registry, ds).regularizers


def test_tokenizer_regularizer_errors_before_training(registry):
    with pytest.raises(SlotError, match=r"tokenizer.regularizers.0: unknown regularizer 'prior-kll'. Did you mean"):
        build_config("vq-diffusion", registry=registry, preset="quick",
                     overrides=['tokenizer.regularizers=["prior-kll"]'])
    with pytest.raises(SlotError, match=r"tokenizer.regularizers.0.params for regularizer/prior-kl: weigth"):
        build_config("vq-diffusion", registry=registry, preset="quick",
                     overrides=['tokenizer.regularizers=[{"name":"prior-kl","params":{"weigth":1}}]'])
    with pytest.raises(Exception, match="each regularizer may appear once"):
        build_config("vq-diffusion", registry=registry, preset="quick",
                     overrides=['tokenizer.regularizers=["prior-kl","prior-kl"]'])


def test_build_ref_passes_the_kind_context(registry):
    emb = build_ref(registry, {"name": "one-hot", "params": {"scale": 2.0}}, Slot("embedding"), codebook_size=3)
    torch.testing.assert_close(emb.weight(), 2.0 * torch.eye(3))


# ---------------------------------------------------------------------------------------------
# the method protocol in the interfaces, checked by the conformance kit
# ---------------------------------------------------------------------------------------------


def _tiny_method(**overrides):
    from dlbench.interfaces import Method

    class Tiny(Method):
        def __init__(self, config=None, *, context):
            super().__init__()
            self.k, self.grid = context.codebook_size, context.token_grid
            self.logits = torch.nn.Parameter(torch.zeros(self.k))

        def loss(self, tokens, labels):
            return torch.nn.functional.cross_entropy(self.logits.expand(tokens.numel(), -1), tokens.flatten()), {}

        def sample(self, labels, seeds, *, num_samples=None, steps=None, guidance=1.0, callback=None, **options):
            from dlbench.seeding import PerSampleRNG

            g = PerSampleRNG(seeds, self.logits.device).gumbel(*self.grid, self.k)
            for i in range(steps or 1):
                if callback is not None:
                    callback({"i": i, "steps": steps or 1, "t": 1 - i / (steps or 1), "x": g, "x0_logits": g})
            return (self.logits + g).argmax(-1)

    for name, fn in overrides.items():
        setattr(Tiny, name, fn)
    return Tiny


def test_conformance_kit_checks_the_method_protocol():
    from dlbench.testing import check_method

    ctx = MethodContext(codebook_size=5, token_grid=(2, 2), num_classes=None)
    check_method(_tiny_method(), context=ctx)
    with pytest.raises(AssertionError, match=r"nfe must take \(steps, guidance, \*\*options\)"):
        check_method(_tiny_method(nfe=lambda self, steps=None, guidance=1.0: 1), context=ctx,
                     sample_kwargs={"temperature": 1.0})
    old = _tiny_method()
    inner = old.sample

    def old_keys(self, labels, seeds, *, callback=None, **kw):  # VQ-LCMD's keys before they were unified
        return inner(self, labels, seeds, callback=None if callback is None else (
            lambda info: callback({"i": info["i"], "steps": info["steps"], "t": info["t"], "z": info["x"],
                                   "logits": info["x0_logits"]})), **kw)

    with pytest.raises(AssertionError, match="sampler callback keys"):
        check_method(_tiny_method(sample=old_keys), context=ctx)
    with pytest.raises(AssertionError, match="lr_scales.. prefix 'table' matches no parameter"):
        check_method(_tiny_method(lr_scales=lambda self: {"table": 10.0}), context=ctx)


def test_conformance_kit_checks_dlogsnr():
    from dlbench.interfaces import ContinuousSchedule
    from dlbench.testing import check_schedule

    class Wrong(ContinuousSchedule):
        def logsnr(self, t):
            return 5.0 - 10.0 * t

        def dlogsnr(self, t):
            return torch.full_like(t, 10.0)  # sign error

    with pytest.raises(AssertionError, match="dlogsnr.t. is not d logsnr / dt"):
        check_schedule(Wrong())


def test_both_sampler_families_report_one_key_set():
    from dlbench.interfaces import SAMPLE_CALLBACK_KEYS
    from dlbench_vqdiffusion.method import VQDiffusion
    from dlbench_vqlcmd.method import VQLCMD

    ctx = MethodContext(codebook_size=6, token_grid=(2, 2), backbone={"preset": "tiny", "width": 16, "depth": 1,
                                                                      "heads": 2})
    for cls, params in ((VQLCMD, {"embedding": {"params": {"dim": 4}}}), (VQDiffusion, {"num_steps": 4})):
        m = cls(cls.Config(**params), context=ctx)
        calls = []
        m.sample(None, torch.arange(2), num_samples=2, steps=3, callback=calls.append)
        assert len(calls) == 3 and all(set(c) == set(SAMPLE_CALLBACK_KEYS) for c in calls), cls
        assert [c["i"] for c in calls] == [0, 1, 2] and all(c["steps"] == 3 for c in calls)
        assert all(0 <= c["t"] <= 1 for c in calls) and calls[0]["t"] > calls[-1]["t"]


def test_the_runner_passes_a_sampler_callback():
    from dlbench.train.dist import DistContext
    from dlbench.runner.sampling import sample_tokens

    ctx = MethodContext(codebook_size=5, token_grid=(2, 2))
    m = _tiny_method()(context=ctx)
    events = []
    toks = sample_tokens(m, 3, seed=0, labels=None, batch_size=2, steps=4, guidance=1.0, options={},
                         ctx=DistContext(), events=lambda kind, **kw: events.append((kind, kw)))
    assert toks.shape == (3, 2, 2)
    assert [kw["sampler_steps"] for kind, kw in events if kind == "sampling"] == [4, 4]


def test_one_name_for_the_cfg_label_dropout():
    from dlbench_vqdiffusion.method import VQDiffusionConfig
    from dlbench_vqlcmd.method import VQLCMDConfig

    assert "label_dropout" in VQDiffusionConfig.model_fields and "label_dropout" in VQLCMDConfig.model_fields
    assert VQDiffusionConfig.model_validate({"label_drop": 0.2}).label_dropout == 0.2  # saved configs still load
    with pytest.raises(ValueError, match="give label_dropout only"):
        VQDiffusionConfig.model_validate({"label_drop": 0.2, "label_dropout": 0.3})


def test_a_list_slot_builds_every_component(registry):
    from typing import Annotated

    from pydantic import Field

    from dlbench.interfaces import ComponentConfig
    from dlbench.registry import resolve_slots

    class WithRegs(ComponentConfig):
        regs: Annotated[list[ComponentRef], Slot("regularizer", stage="tokenizer")] = Field(default_factory=list)

    cfg = WithRegs(regs=["prior-kl", {"name": "stochastic-mask", "params": {"ratio": 0.2}}])
    resolve_slots(registry, cfg, where="method.params")
    assert cfg.regs[1].params["ratio"] == 0.2 and cfg.regs[0].params["weight"] == 0.1
    built = MethodContext(codebook_size=4, token_grid=(1, 1), registry=registry).build(cfg, "regs")
    assert [type(m).__name__ for m in built] == ["PriorKL", "StochasticMask"]
    with pytest.raises(SlotError, match=r"method.params.regs.1: regularizer/random-dropping does not fit"):
        resolve_slots(registry, WithRegs(regs=["prior-kl", "random-dropping"]), where="method.params")
