"""Conformance kit: checks a plugin author runs in their own tests.

Each ``check_*`` builds or takes a component, exercises its interface on tiny inputs and raises
``AssertionError`` with a message naming the broken contract. Example::

    from dlbench.testing import check_method
    def test_my_method_conforms():
        check_method(MyMethod)
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import torch
from pydantic import BaseModel, ValidationError

from dlbench.interfaces import (
    ContinuousSchedule,
    DiscreteSchedule,
    SAMPLE_CALLBACK_KEYS,
    MethodContext,
)

__all__ = [
    "check_method_protocol",
    "check_config_roundtrip",
    "check_continuous_schedule",
    "check_discrete_schedule",
    "check_schedule",
    "check_method",
    "check_tokenizer",
    "check_embedding",
    "check_dataset",
    "check_feature_extractor",
]


def _fail(msg: str) -> NoReturn:
    raise AssertionError(msg)


def check_config_roundtrip(config: type[BaseModel] | BaseModel) -> BaseModel:
    """Defaults validate (when given a class), JSON round trip is exact, and unknown fields are rejected.

    Pass an instance for a config with required fields; it is round-tripped instead of the defaults.
    """
    if isinstance(config, BaseModel):
        config_cls, cfg = type(config), config
    else:
        config_cls = config
        try:
            cfg = config_cls()
        except ValidationError as exc:
            _fail(f"{config_cls.__name__}: the defaults do not validate (give every field a default, "
                  f"or pass a config instance): {exc}")
    name = config_cls.__name__
    dumped = cfg.model_dump(mode="json")
    try:
        again = config_cls.model_validate(json.loads(json.dumps(dumped)))
    except ValidationError as exc:
        _fail(f"{name}: its own JSON dump does not validate: {exc}")
    if again != cfg:
        _fail(f"{name}: JSON round trip changed the config: {cfg!r} -> {again!r}")
    # Only an ``extra_forbidden`` error counts: any other failure (a validator rejecting the dump) would
    # otherwise pass for "unknown fields rejected".
    try:
        config_cls.model_validate({**dumped, "surely_not_a_field": 1})
    except ValidationError as exc:
        if not any(e["type"] == "extra_forbidden" for e in exc.errors()):
            _fail(f"{name}: adding an unknown field failed for another reason than extra='forbid': {exc}")
    else:
        _fail(f"{name}: unknown fields are silently accepted (set extra='forbid')")
    return cfg


def check_continuous_schedule(schedule: ContinuousSchedule, n: int = 257) -> None:
    """Finite log-SNR, monotone non-increasing in t, alpha^2 + sigma^2 = 1 (VP) and
    ``alpha^2 = sigmoid(lambda)`` (``alpha_sigma`` agrees with ``logsnr``)."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    lam = schedule.logsnr(t)
    if lam.shape != t.shape:
        _fail(f"logsnr(t) shape {tuple(lam.shape)} != t shape {tuple(t.shape)}")
    if not torch.isfinite(lam).all():
        _fail("logsnr(t) is not finite on [0, 1]: clip t or lambda")
    if (lam[1:] - lam[:-1] > 1e-9).any():
        _fail("logsnr(t) must be non-increasing in t (more noise at larger t)")
    a, s = schedule.alpha_sigma(t)
    if a.shape != t.shape or s.shape != t.shape:
        _fail(f"alpha_sigma(t) shapes {tuple(a.shape)}, {tuple(s.shape)} != t shape {tuple(t.shape)}")
    a, s = a.double(), s.double()
    if not torch.allclose(a**2 + s**2, torch.ones_like(t), atol=1e-6):
        _fail("alpha^2 + sigma^2 != 1 (the schedule must be variance preserving)")
    if not torch.allclose(a**2, torch.sigmoid(lam.double()), atol=1e-5):
        _fail("alpha_sigma(t) disagrees with logsnr(t): need alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)")
    # dlogsnr: central differences on the interior (a clipped family may have kinks at its clip points)
    ti = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (schedule.logsnr(ti + h).double() - schedule.logsnr(ti - h).double()) / (2 * h)
    d = schedule.dlogsnr(ti)
    if d.shape != ti.shape:
        _fail(f"dlogsnr(t) shape {tuple(d.shape)} != t shape {tuple(ti.shape)}")
    if not torch.allclose(d.double(), fd, rtol=1e-3, atol=1e-3):
        bad = int((d.double() - fd).abs().argmax())
        _fail(f"dlogsnr(t) is not d logsnr / dt: at t={float(ti[bad]):.2f} got {float(d[bad]):.4g}, "
              f"finite differences {float(fd[bad]):.4g}")


def check_discrete_schedule(schedule: DiscreteSchedule, num_steps: int = 10, num_classes: int = 5) -> None:
    """Coefficients are probabilities, ``alpha + K beta + gamma = 1`` per step and cumulatively, and the
    cumulative ones match the one-step ones: ``alpha_bar = cumprod(alpha)``,
    ``1 - gamma_bar = cumprod(1 - gamma)`` (METHODS.md B.1)."""
    c = schedule.coefficients(num_steps, num_classes)
    for key in ("alpha", "beta", "gamma", "alpha_bar", "beta_bar", "gamma_bar"):
        if key not in c:
            _fail(f"coefficients() lacks {key!r}")
        v = c[key]
        if v.shape != (num_steps,):
            _fail(f"{key} has shape {tuple(v.shape)}, expected ({num_steps},)")
        if (v < -1e-12).any() or (v > 1 + 1e-12).any():
            _fail(f"{key} outside [0, 1]")
    c = {k: torch.as_tensor(c[k], dtype=torch.float64) for k in c}
    for suffix, what in (("", "step"), ("_bar", "cumulative step")):
        total = c["alpha" + suffix] + num_classes * c["beta" + suffix] + c["gamma" + suffix]
        if not torch.allclose(total, torch.ones_like(total), atol=1e-6):
            _fail(f"alpha{suffix} + K*beta{suffix} + gamma{suffix} != 1 for some {what} "
                  "(transition probabilities must sum to 1)")
    if not torch.allclose(torch.cumprod(c["alpha"], 0), c["alpha_bar"], atol=1e-6, rtol=1e-5):
        _fail("alpha_bar != cumprod(alpha)")
    if not torch.allclose(1 - torch.cumprod(1 - c["gamma"], 0), c["gamma_bar"], atol=1e-6, rtol=1e-5):
        _fail("gamma_bar != 1 - cumprod(1 - gamma)")


def check_schedule(schedule: Any) -> None:
    """Dispatch to :func:`check_discrete_schedule` or :func:`check_continuous_schedule` by family."""
    if isinstance(schedule, DiscreteSchedule) or hasattr(schedule, "coefficients"):
        check_discrete_schedule(schedule)
    else:
        check_continuous_schedule(schedule)


def check_method(
    method_cls: type,
    *,
    config: Any = None,
    context: MethodContext | None = None,
    batch: int = 3,
    sample_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Loss is a finite scalar with gradients; samples have the right shape/dtype/range, are
    deterministic under fixed seeds and do not depend on the batch they are drawn in."""
    context = context or MethodContext(codebook_size=8, token_grid=(2, 3), num_classes=3)
    cfg = method_cls.Config() if config is None else config
    check_config_roundtrip(cfg)
    torch.manual_seed(0)
    m = method_cls(cfg, context=context)
    h, w = context.token_grid
    tokens = torch.randint(0, context.codebook_size, (batch, h, w))
    labels = torch.randint(0, context.num_classes, (batch,)) if context.num_classes else None
    loss, terms = m.loss(tokens, labels)
    if loss.ndim != 0 or not torch.isfinite(loss):
        _fail(f"loss must be a finite scalar, got shape {tuple(loss.shape)} value {loss}")
    if not isinstance(terms, dict):
        _fail("loss must return (scalar, dict of named terms)")
    params = [p for p in m.parameters() if p.requires_grad]
    if params:
        if not loss.requires_grad:
            _fail("loss does not require grad: is it computed under torch.no_grad() or detached?")
        loss.backward()
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in params):
            _fail("loss does not produce gradients for any parameter")
    m.eval()
    kw = {"steps": 2, **(sample_kwargs or {})}
    seeds = torch.arange(4, dtype=torch.long) + 100
    lab4 = torch.arange(4) % context.num_classes if context.num_classes else None
    with torch.no_grad():
        a = m.sample(lab4, seeds, num_samples=4, **kw)
        b = m.sample(lab4, seeds, num_samples=4, **kw)
        c = torch.cat([
            m.sample(None if lab4 is None else lab4[:2], seeds[:2], num_samples=2, **kw),
            m.sample(None if lab4 is None else lab4[2:], seeds[2:], num_samples=2, **kw),
        ])
    if a.shape != (4, h, w) or a.dtype != torch.long:
        _fail(f"sample() must return long tokens of shape (4, {h}, {w}); got {a.dtype} {tuple(a.shape)}")
    if a.min() < 0 or a.max() >= context.codebook_size:
        _fail(f"sampled tokens outside [0, {context.codebook_size})")
    if not torch.equal(a, b):
        _fail("sample() is not deterministic for fixed seeds: draw noise from the seeds "
              "(dlbench.seeding.PerSampleRNG), never from the global RNG")
    if not torch.equal(a, c):
        _fail("sample() depends on batch composition: use per-sample RNG streams (dlbench.seeding)")
    check_method_protocol(m, context=context, sample_kwargs=kw)
    return m


def check_method_protocol(m: Any, *, context: MethodContext, sample_kwargs: dict[str, Any]) -> None:
    """The rest of the :class:`~dlbench.interfaces.Method` protocol the runner calls: ``nfe(steps, guidance,
    **options)`` (one signature) a non-negative int, ``forwards_per_step`` >= 1, ``lr_scales()`` a dict of
    parameter-name prefixes to positive multipliers, ``on_step_end()`` callable, and a sampler ``callback``
    that (if called) gets exactly :data:`~dlbench.interfaces.SAMPLE_CALLBACK_KEYS`."""
    kw = dict(sample_kwargs)
    steps, guidance = kw.pop("steps", None), kw.pop("guidance", 1.0)
    try:
        nfe = m.nfe(steps, guidance, **kw)
    except TypeError as exc:
        _fail(f"nfe must take (steps, guidance, **options) like sample(): {exc}")
    if not isinstance(nfe, int) or nfe < 0:
        _fail(f"nfe(...) must be a non-negative int, got {nfe!r}")
    fps = m.forwards_per_step
    if not isinstance(fps, (int, float)) or not fps >= 1:
        _fail(f"forwards_per_step must be a number >= 1 (forward+backward passes per step), got {fps!r}")
    scales = m.lr_scales()
    names = [n for n, _ in m.named_parameters()]
    for prefix, value in dict(scales).items():
        if not (isinstance(value, (int, float)) and value > 0):
            _fail(f"lr_scales()[{prefix!r}] must be a positive multiplier, got {value!r}")
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            _fail(f"lr_scales() prefix {prefix!r} matches no parameter name")
    m.on_step_end()
    calls: list[dict[str, Any]] = []
    seeds = torch.arange(2, dtype=torch.long) + 7
    lab = torch.arange(2) % context.num_classes if context.num_classes else None
    with torch.no_grad():
        m.sample(lab, seeds, num_samples=2, steps=steps, guidance=guidance, callback=calls.append, **kw)
    for info in calls:
        if set(info) != set(SAMPLE_CALLBACK_KEYS):
            _fail(f"sampler callback keys {sorted(info)} != dlbench.interfaces.SAMPLE_CALLBACK_KEYS "
                  f"{sorted(SAMPLE_CALLBACK_KEYS)}")


def check_tokenizer(tokenizer: Any, *, channels: int = 1, resolution: int = 32, batch: int = 2) -> None:
    """encode/decode shapes, dtypes and ranges; codebook shape; token grid consistency."""
    x = torch.rand(batch, channels, resolution, resolution) * 2 - 1
    tokenizer.eval()
    with torch.no_grad():
        tok = tokenizer.encode(x)
        h, w = tokenizer.token_grid(resolution, resolution)
        if tok.shape != (batch, h, w) or tok.dtype != torch.long:
            _fail(f"encode must give long (b, {h}, {w}); got {tok.dtype} {tuple(tok.shape)}")
        k = tokenizer.codebook_size
        if tok.min() < 0 or tok.max() >= k:
            _fail("token ids outside [0, codebook_size)")
        y = tokenizer.decode(tok)
        if y.shape != x.shape:
            _fail(f"decode shape {tuple(y.shape)} != image shape {tuple(x.shape)}")
        if y.min() < -1 - 1e-4 or y.max() > 1 + 1e-4:
            _fail("decoded images must lie in [-1, 1]")
        cb = tokenizer.codebook()
        if cb.ndim != 2 or cb.shape[0] != k:
            _fail(f"codebook() must be (codebook_size, d); got {tuple(cb.shape)}")
        if not torch.equal(tokenizer.encode(x), tok):
            _fail("encode is not deterministic in eval mode")
    tokenizer.train()
    loss, terms = tokenizer.training_loss(x)
    if loss.ndim != 0 or not torch.isfinite(loss) or not isinstance(terms, dict):
        _fail("training_loss must return (finite scalar, dict)")


def check_embedding(embedding: Any, codebook_size: int) -> None:
    """``forward`` maps ``"b n" -> "b n d"`` and is a lookup into ``weight()`` (``"k d"``)."""
    ids = torch.randint(0, codebook_size, (2, 5))
    e = embedding(ids)
    if e.shape != (2, 5, embedding.dim):
        _fail(f"embedding(ids 'b n') must be 'b n d' = (2, 5, {embedding.dim}); got {tuple(e.shape)}")
    if embedding.weight().shape != (codebook_size, embedding.dim):
        _fail("weight() must be (codebook_size, dim)")
    if not torch.allclose(e, embedding.weight()[ids]):
        _fail("embedding(ids) must equal weight()[ids]")


def check_dataset(dataset: Any, split: str = "train", n: int = 4) -> None:
    """The first ``n`` items of ``split`` are ``(uint8 "c H W" at the dataset's resolution, label)`` with
    labels in ``[0, num_classes)``; the fingerprint is a stable string."""
    ds = dataset.split(split)
    if len(ds) == 0:
        _fail(f"split {split!r} is empty")
    for i in range(min(n, len(ds))):
        img, label = ds[i]
        if not isinstance(img, torch.Tensor):
            _fail(f"item {i}: image must be a uint8 torch.Tensor 'c H W', got {type(img).__name__}")
        if img.dtype != torch.uint8 or img.shape != (dataset.channels, dataset.resolution, dataset.resolution):
            _fail(f"item {i}: expected uint8 ({dataset.channels}, {dataset.resolution}, {dataset.resolution}), "
                  f"got {img.dtype} {tuple(img.shape)}")
        if dataset.num_classes is not None and not (0 <= int(label) < dataset.num_classes):
            _fail(f"item {i}: label {label} outside [0, {dataset.num_classes})")
    fp = dataset.fingerprint(split)
    if not isinstance(fp, str) or fp != dataset.fingerprint(split):
        _fail("fingerprint must be a stable string")


def check_feature_extractor(extractor: Any, *, channels: int = 3, resolution: int = 32) -> None:
    """uint8 ``"b c H W" -> "b f"`` finite features, each a function of its own image only."""
    x = torch.randint(0, 256, (3, channels, resolution, resolution), dtype=torch.uint8)
    with torch.no_grad():
        f = extractor.features(x)
        f1 = torch.cat([extractor.features(x[:1]), extractor.features(x[1:])])
    if f.shape != (3, extractor.dim):
        _fail(f"features must be (b, {extractor.dim}); got {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        _fail("features are not finite")
    if not torch.allclose(f, f1, atol=1e-4, rtol=1e-4):
        _fail("features depend on the batch they are computed in")
