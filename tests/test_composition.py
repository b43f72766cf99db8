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
    from dlbench.train.pipeline import build_tokenizer, tokenizer_key_inputs

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
    tok = build_tokenizer(composed, ds)
    assert [(n, w, type(m).__name__) for n, w, m in tok.regularizers] == [
        ("prior-kl", 0.1, "PriorKL"), ("stochastic-mask", 1.0, "StochasticMask")]
    torch.manual_seed(0)
    _, terms = tok.train().training_loss(torch.rand(8, ds.channels, ds.resolution, ds.resolution) * 2 - 1)
    assert {"prior-kl", "stochastic-mask", "perturbed_frac"} <= set(terms) and terms["perturbed_frac"] > 0
    assert not build_tokenizer(plain, ds).regularizers


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
