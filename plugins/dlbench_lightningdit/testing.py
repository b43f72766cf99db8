"""Conformance checks for methods over continuous latents (``requires.inputs == "latents"``).

:func:`dlbench.testing.check_method` assumes token ids in and token ids out; a continuous method takes and returns
float latents in the continuous tokenizer's layout ``"b h w d"``. Use::

    from dlbench_lightningdit.testing import check_continuous_method
    def test_my_flow_conforms():
        check_continuous_method(MyFlow, latent_dim=4)
"""

from __future__ import annotations

from typing import Any

import torch

from dlbench.interfaces import MethodContext, NLLBound
from dlbench.registry import DlbenchError
from dlbench.testing import check_config_roundtrip

__all__ = ["CALLBACK_KEYS", "check_continuous_method"]

#: the sampler-callback keys every dlbench sampler passes (``dlbench.interfaces.SAMPLE_CALLBACK_KEYS`` where the
#: installed dlbench defines it)
try:
    from dlbench.interfaces import SAMPLE_CALLBACK_KEYS as CALLBACK_KEYS  # type: ignore[attr-defined]
except ImportError:  # a dlbench before the shared callback contract
    CALLBACK_KEYS = ("i", "steps", "t", "x", "x0_logits")


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def check_continuous_method(
    method_cls: type,
    *,
    config: Any = None,
    context: MethodContext | None = None,
    latent_dim: int = 4,
    batch: int = 3,
    sample_kwargs: dict[str, Any] | None = None,
    atol: float = 1e-5,
) -> torch.nn.Module:
    """``requires.inputs == "latents"``; the config round-trips; ``loss(latents "b h w d", labels)`` is a finite
    scalar with gradients and token ids are refused with a :class:`~dlbench.registry.DlbenchError`;
    ``sample`` returns finite float latents ``"b h w d"``, identical for fixed seeds and (to ``atol``, batched
    matrix products may round differently) independent of the batch they are drawn in, with and without
    guidance; the callback gets exactly the shared keys with ``x`` in ``"b h w d"``; ``nfe`` is a positive int,
    not smaller with guidance; ``nll_bound`` is None or an :class:`NLLBound`.

    ``context`` defaults to a 2-class ``(2, 3)`` grid without a tokenizer, so the config must accept
    ``latent_dim`` (or pass ``config``). The model's output layers are perturbed first, so that samples depend on
    the network (a zero-initialised head would make every check pass on pure noise).
    """
    requires = getattr(method_cls, "requires", None)
    if getattr(requires, "inputs", None) != "latents":
        _fail(f"{method_cls.__name__}.requires.inputs must be 'latents' (the preflight pairs it with continuous "
              f"tokenizers); got {getattr(requires, 'inputs', None)!r}")
    context = context or MethodContext(codebook_size=0, token_grid=(2, 3), num_classes=2)
    cfg = method_cls.Config(latent_dim=latent_dim) if config is None else config
    check_config_roundtrip(cfg)
    torch.manual_seed(0)
    m = method_cls(cfg, context=context)
    d = getattr(m, "latent_dim", latent_dim)
    h, w = context.token_grid
    ncls = context.num_classes
    latents = torch.randn(batch, h, w, d)
    labels = torch.arange(batch) % ncls if ncls else None
    loss, terms = m.loss(latents, labels)
    if loss.ndim != 0 or not torch.isfinite(loss):
        _fail(f"loss must be a finite scalar, got shape {tuple(loss.shape)} value {loss}")
    if not isinstance(terms, dict):
        _fail("loss must return (scalar, dict of named terms)")
    params = [p for p in m.parameters() if p.requires_grad]
    if not params or not loss.requires_grad:
        _fail("loss does not require grad: is it computed under torch.no_grad() or detached?")
    loss.backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in params):
        _fail("loss does not produce gradients for any parameter")
    try:
        m.loss(torch.zeros(batch, h, w, dtype=torch.long), labels)
    except DlbenchError:
        pass
    else:
        _fail("loss accepted token ids 'b h w': a continuous method must refuse them with a DlbenchError")
    m.zero_grad(set_to_none=True)
    with torch.no_grad():  # move off the zero-initialised output so samples depend on the network
        g = torch.Generator().manual_seed(1)
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.eval()
    kw = {"steps": 3, **(sample_kwargs or {})}
    seeds = torch.arange(4, dtype=torch.long) + 100
    lab4 = torch.arange(4) % ncls if ncls else None
    for guidance in ([1.0, 2.0] if ncls else [1.0]):
        with torch.no_grad():
            a = m.sample(lab4, seeds, num_samples=4, guidance=guidance, **kw)
            b = m.sample(lab4, seeds, num_samples=4, guidance=guidance, **kw)
            c = torch.cat([
                m.sample(None if lab4 is None else lab4[:1], seeds[:1], num_samples=1, guidance=guidance, **kw),
                m.sample(None if lab4 is None else lab4[1:], seeds[1:], num_samples=3, guidance=guidance, **kw),
            ])
        if a.shape != (4, h, w, d) or not a.is_floating_point() or not torch.isfinite(a).all():
            _fail(f"sample() must return finite float latents of shape (4, {h}, {w}, {d}); got {a.dtype} "
                  f"{tuple(a.shape)}")
        if not torch.equal(a, b):
            _fail("sample() is not deterministic for fixed seeds: draw noise from the seeds "
                  "(dlbench.seeding.PerSampleRNG), never from the global RNG")
        if not torch.allclose(a, c, atol=atol, rtol=0):
            _fail(f"sample() depends on batch composition (max diff {(a - c).abs().max():.2e}): use per-sample RNG "
                  "streams (dlbench.seeding)")
    calls: list[dict[str, Any]] = []
    with torch.no_grad():
        m.sample(None if lab4 is None else lab4[:2], seeds[:2], num_samples=2, callback=calls.append, **kw)
    for info in calls:
        if set(info) != set(CALLBACK_KEYS):
            _fail(f"sampler callback keys {sorted(info)} != {sorted(CALLBACK_KEYS)}")
        if tuple(info["x"].shape) != (2, h, w, d):
            _fail(f"callback x must be the state 'b h w d' {(2, h, w, d)}, got {tuple(info['x'].shape)}")
    n1 = m.nfe(kw["steps"], 1.0)
    n2 = m.nfe(kw["steps"], 2.0)
    if not isinstance(n1, int) or n1 < 1 or n2 < n1:
        _fail(f"nfe must be a positive int, not smaller with guidance; got {n1!r} (guidance 1), {n2!r} (guidance 2)")
    bound = m.nll_bound(latents, labels)
    if bound is not None and not isinstance(bound, NLLBound):
        _fail(f"nll_bound must return None or an NLLBound, got {type(bound).__name__}")
    return m
