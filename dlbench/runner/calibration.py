"""What calibrates a run's numbers: token metrics and the NLL bound, anchor rows, learning curves, compute
budgets. The maths lives in :mod:`dlbench.eval.token_metrics` and :mod:`dlbench.eval.anchors`; this module
binds it to a run (its tokenizer cache, dataset splits and protocol) for :mod:`dlbench.runner`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from dlbench.eval.anchors import (
    add_marginal_nll,
    anchor_key,
    compute_anchors,
    find_anchors,
    heldout_plan,
    save_anchors,
)
from dlbench.eval.token_metrics import token_metrics
from dlbench.interfaces import ImageDataset, Method, Tokenizer
from dlbench.runner.common import is_continuous
from dlbench.train.dist import DistContext, rank_local

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.eval.protocol import EvalProtocol
    from dlbench.registry import Registry


def protocol_with_tokens(protocol: EvalProtocol, settings: dict[str, Any] | None) -> EvalProtocol:
    """The protocol with its token-metric settings filled in (None: as it is)."""
    if settings is None:
        return protocol
    from dlbench.eval.protocol import resolve_protocol

    return resolve_protocol(protocol, token_metrics=settings)


def split_lengths(dataset: ImageDataset) -> dict[str, int]:
    return {s: len(dataset.split(s)) for s in dataset.splits}  # type: ignore[arg-type]


def reference_tokens(tokenizer: Tokenizer, dataset: ImageDataset, key: str, protocol: EvalProtocol,
                     ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and labels of the protocol's reference images (the held-out tokens of the token metrics)."""
    from dlbench.runner.tokens import tokenize_split

    tokens, labels = tokenize_split(tokenizer, dataset, protocol.reference_split, key, ctx)
    n = protocol.num_reference or len(tokens)
    return tokens[:n], labels[:n]


def token_evaluation(
    generator: Method, tokens: torch.Tensor, tokenizer: Tokenizer, dataset: ImageDataset, key: str,
    protocol: EvalProtocol, ctx: DistContext, conditional: bool,
) -> dict[str, Any]:
    """``{"metrics", "unavailable", "details"}``: unigram / pair KL of the sample tokens vs the reference tokens
    and the method's NLL bound on the first ``nll_num_grids`` reference grids (docs/protocol.md)."""
    tm = protocol.token_metrics
    ref, ref_labels = reference_tokens(tokenizer, dataset, key, protocol, ctx)
    metrics = token_metrics(tokens[: protocol.num_generated], ref, tokenizer.codebook_size, tm.smoothing)
    unavailable: dict[str, str] = {}
    details: dict[str, Any] = {}
    held = ref[: tm.nll_num_grids].to(ctx.device)
    held_labels = ref_labels[: tm.nll_num_grids].to(ctx.device) if conditional else None
    bound = generator.nll_bound(held, held_labels, mc=tm.nll_mc, seed=tm.nll_seed)
    if bound is None:
        unavailable["nll_bound"] = f"{type(generator).__name__} declares no likelihood bound"
    else:
        metrics["nll_bound"] = bound.value
        metrics["nll_bound_se"] = bound.stderr
        details["nll_bound"] = {"estimator": bound.estimator, "n_grids": bound.n, "stderr": bound.stderr}
    return {"metrics": metrics, "unavailable": unavailable, "details": details}


#: the reasons given when a run over continuous latents skips the token-id metrics (a method's own
#: ``unavailable_metrics`` takes precedence)
CONTINUOUS_UNAVAILABLE: dict[str, str] = {
    "token_kl_unigram": "continuous latents: no token ids, so no token statistics to compare",
    "token_kl_pair": "continuous latents: no token ids, so no token statistics to compare",
    "nll_bound": "continuous latents: no discrete-token likelihood",
}


def continuous_unavailable(generator: Method) -> dict[str, str]:
    """``{metric: reason}`` for the token metrics and NLL bound a run over continuous latents does not have."""
    own = getattr(generator, "unavailable_metrics", None) or {}
    return {**CONTINUOUS_UNAVAILABLE, **{str(k): str(v) for k, v in dict(own).items()}}


def anchors_for(
    protocol: EvalProtocol, dataset: ImageDataset, tokenizer: Tokenizer, key: str, ctx: DistContext, *,
    seed: int = 0, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The anchor record of (dataset, tokenizer, protocol): from the cache, else computed and stored there.

    ``protocol.num_generated`` real images are taken where :func:`heldout_plan` says (never from the
    reference set); a dataset too small for that gets ``{"unavailable": reason}``. Before computing, a record
    shipped with the package under the same key is installed (:func:`dlbench.shipped.install_anchors`).
    """
    from dlbench.eval.api import bind_reference
    from dlbench.runner.common import cache_root

    protocol = bind_reference(protocol, dataset)
    n = protocol.num_generated
    fingerprints = {s: dataset.fingerprint(s) for s in dataset.splits}
    akey = anchor_key(fingerprints=fingerprints, tokenizer_key=key, protocol_hash=protocol.hash(), n=n, seed=seed)
    folder = cache_root() / "anchors"
    found = find_anchors(akey, folder)
    if found is not None:
        return found
    from dlbench import shipped

    installed = shipped.install_anchors(akey, folder)  # the embedded default's anchors ship with the package
    if installed is not None:
        if log is not None:
            log(f"installed shipped anchor rows {akey}")
        return installed
    return compute_anchor_record(protocol, dataset, tokenizer, key, ctx, akey=akey, fingerprints=fingerprints,
                                 seed=seed, log=log)


def compute_anchor_record(
    protocol: EvalProtocol, dataset: ImageDataset, tokenizer: Tokenizer, key: str, ctx: DistContext, *, akey: str,
    fingerprints: dict[str, str], seed: int = 0, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute the anchor record ``akey`` of a reference-bound ``protocol`` and store it in the cache (rank 0).
    ``scripts/build_shipped_artifacts.py --only anchors`` calls this directly.

    Processes sharing a cache compute a record once: the computation holds ``anchors/.<akey>.lock``, and a
    process that waited on it returns the record the holder wrote.
    """
    from dlbench.fsutil import exclusive
    from dlbench.runner.common import cache_root

    folder = cache_root() / "anchors"
    with exclusive(folder / f".{akey}.lock"):
        found = find_anchors(akey, folder)
        if found is not None:
            return found
        return _compute_anchor_record(protocol, dataset, tokenizer, key, ctx, akey=akey, fingerprints=fingerprints,
                                      seed=seed, log=log)


def _compute_anchor_record(
    protocol: EvalProtocol, dataset: ImageDataset, tokenizer: Tokenizer, key: str, ctx: DistContext, *, akey: str,
    fingerprints: dict[str, str], seed: int, log: Callable[[str], None] | None,
) -> dict[str, Any]:
    from dlbench.data import load_split_tensors
    from dlbench.eval.api import evaluate_samples
    from dlbench.runner.common import cache_root
    from dlbench.runner.sampling import decode_tokens
    from dlbench.runner.tokens import tokenize_split

    n = protocol.num_generated
    folder = cache_root() / "anchors"
    plan = heldout_plan(split_lengths(dataset), protocol.reference_split, protocol.num_reference, n)
    if plan["anchor"] is None:
        return {"key": akey, "unavailable": f"no {n} held-out images outside the reference set for the real anchor"}
    if log is not None:
        log(f"computing anchor rows {akey} (once per dataset, tokenizer and protocol)")
    split, start, stop = plan["anchor"]
    images, labels = load_split_tensors(dataset, split, limit=stop)
    images, labels = images[start:stop], labels[start:stop].long()
    if is_continuous(tokenizer):
        rows = continuous_anchor_rows(images, labels, tokenizer, dataset, split, start, stop, key, protocol, ctx)
        record = {"version": "anchors-v1", "key": akey, "protocol_hash": protocol.hash(), "tokenizer_key": key,
                  "fingerprints": fingerprints, "n": n, "seed": seed,
                  "real_images": {"split": split, "start": start, "stop": stop}, "rows": rows}
        if ctx.is_main:
            save_anchors(folder / f"{akey}.json", record)
        return record
    all_tokens, _ = tokenize_split(tokenizer, dataset, split, key, ctx)
    real_tokens = all_tokens[start:stop]
    train_tokens, train_labels = tokenize_split(tokenizer, dataset, "train", key, ctx)
    train_tokens = train_tokens[:]  # the memory-mapped split as one long tensor (the marginals read all of it)
    labelled = bool(dataset.num_classes) and bool((train_labels >= 0).all())
    ref, ref_labels = reference_tokens(tokenizer, dataset, key, protocol, ctx)
    tm = protocol.token_metrics
    smoothing = tm.smoothing if tm is not None else 0.5

    def evaluate(imgs: torch.Tensor, labs: torch.Tensor | None) -> dict[str, Any]:
        return evaluate_samples(imgs, labs, protocol, dataset, device=ctx.device)

    rows = compute_anchors(
        real_images=images, real_labels=labels if labelled else None, real_tokens=real_tokens,
        reference_tokens=ref, train_tokens=train_tokens, train_labels=train_labels if labelled else None,
        codebook_size=tokenizer.codebook_size, num_classes=dataset.num_classes if labelled else None,
        decode=lambda t: decode_tokens(tokenizer, t, ctx.device), evaluate=evaluate, smoothing=smoothing, seed=seed,
    )
    if tm is not None:
        held = ref[: tm.nll_num_grids]
        add_marginal_nll(rows, held, ref_labels[: tm.nll_num_grids] if labelled else None, train_tokens,
                         train_labels if labelled else None, tokenizer.codebook_size,
                         dataset.num_classes if labelled else None, smoothing)
    record = {"version": "anchors-v1", "key": akey, "protocol_hash": protocol.hash(), "tokenizer_key": key,
              "fingerprints": fingerprints, "n": n, "seed": seed, "real_images": {"split": split, "start": start,
              "stop": stop}, "rows": rows}
    if ctx.is_main:
        save_anchors(folder / f"{akey}.json", record)
    return record


def continuous_anchor_rows(
    images: torch.Tensor, labels: torch.Tensor, tokenizer: Tokenizer, dataset: ImageDataset, split: str, start: int,
    stop: int, key: str, protocol: EvalProtocol, ctx: DistContext,
) -> dict[str, dict[str, Any]]:
    """Anchor rows of a continuous tokenizer: ``real`` (the held-out images) and ``reconstruction`` (their cached
    latents decoded: its FID is the tokenizer's rFID) under the protocol; the token columns are unavailable in
    both, and the token-histogram rows ``class_marginals`` / ``marginals`` do not exist for float latents."""
    from dlbench.eval.api import evaluate_samples
    from dlbench.runner.sampling import decode_tokens
    from dlbench.runner.tokens import tokenize_split

    labelled = bool(dataset.num_classes) and bool((labels >= 0).all())
    no_tokens = {k: v for k, v in CONTINUOUS_UNAVAILABLE.items()}
    latents, _ = tokenize_split(tokenizer, dataset, split, key, ctx)
    rows: dict[str, dict[str, Any]] = {}
    for name, imgs in (("real", images), ("reconstruction", None)):
        if imgs is None:
            imgs = decode_tokens(tokenizer, latents[start:stop], ctx.device)
        ev = evaluate_samples(imgs, labels if labelled else None, protocol, dataset, device=ctx.device)
        rows[name] = {"metrics": {k: float(v) for k, v in (ev.get("metrics") or {}).items()
                                  if isinstance(v, (int, float))},
                      "unavailable": {**(ev.get("unavailable") or {}), **no_tokens}}
    for name in ("class_marginals", "marginals"):
        rows[name] = {"metrics": {}, "unavailable": {"*": "continuous latents: no token histogram to sample"}}
    return rows


# ---------------------------------------------------------------------------------------------
# compute budgets
# ---------------------------------------------------------------------------------------------


def flops_per_image(method: Method, grid: tuple[int, int]) -> float:
    """Training FLOPs per image: ``6 * params * positions * forwards_per_step`` (the FLOPs column's rule)."""
    from dlbench.runner.generator_stage import method_positions

    params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    return 6.0 * params * method_positions(method, grid) * float(method.forwards_per_step)


def effective_training(training: Any, method: Method, grid: tuple[int, int]) -> tuple[Any, dict[str, Any] | None]:
    """A FLOPs budget becomes an images budget for the loop (``ceil(F / flops_per_image)``); returns the
    training config to run and a record of the conversion (None without a FLOPs budget)."""
    flops = getattr(training, "budget_flops", None)
    if flops is None:
        return training, None
    per_image = flops_per_image(method, grid)
    images = max(1, math.ceil(flops / per_image))
    if training.budget_images is not None:
        images = min(images, training.budget_images)
    record = {"measure": "flops", "budget_flops": flops, "flops_per_image": per_image, "budget_images": images}
    return training.model_copy(update={"budget_images": images}), record


def equal_flops_budget(plans: Sequence[RunConfig], registry: Registry) -> tuple[float, dict[str, float]]:
    """The default comparison budget: the smallest preset training FLOPs among the methods' run configs
    (``flops_per_image * batch_size * steps``), so no method trains longer than its preset says and every
    method gets the same compute. Returns ``(flops, {method: preset flops})``."""
    from dlbench.runner.generator_stage import build_method
    from dlbench.runner.tokenizer_stage import build_tokenizer

    per: dict[str, float] = {}
    for cfg in plans:
        if cfg.method.name in per:
            continue
        dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
        tokenizer = build_tokenizer(cfg, registry, dataset)  # untrained: only its codebook size and grid matter here
        grid = tokenizer.token_grid(dataset.resolution, dataset.resolution)
        method = build_method(cfg, registry, tokenizer, dataset, grid)
        per[cfg.method.name] = flops_per_image(method, grid) * cfg.training.batch_size * cfg.training.steps
    return min(per.values()), per


# ---------------------------------------------------------------------------------------------
# learning curves
# ---------------------------------------------------------------------------------------------


class CurveRecorder:
    """Cheap metrics at evenly spaced fractions ``k / points`` of the training budget (k = 1..points).

    Each point samples ``n`` grids from the current (EMA) model with the run's sampling settings, and
    records token metrics against the reference tokens plus the domain metrics (no Inception) as a
    ``curve`` event. The global RNG is saved and restored around each point, so training is unchanged.
    Anchors at the same ``n`` (:meth:`anchors`) give the curves their horizontal lines.
    """

    def __init__(self, *, cfg: RunConfig, protocol: EvalProtocol, dataset: ImageDataset, tokenizer: Tokenizer, key: str,
                 ctx: DistContext, emit: Callable[..., None], num_classes: int | None, training: Any):
        self.cfg, self.dataset, self.tokenizer, self.key, self.emit = cfg, dataset, tokenizer, key, emit
        # curve points run on rank 0 alone while the other ranks train: nothing in them may enter a
        # collective (sharded sampling, the token cache's barriers), so they see a one-process context
        self.ctx = rank_local(ctx)
        self.points = cfg.evaluation.curve_points
        self.n = cfg.evaluation.curve_samples
        self.num_classes = num_classes
        self.training = training
        self.done = 0
        self.last_step = -1
        self._ref: torch.Tensor | None = None
        update: dict[str, Any] = {"num_generated": self.n, "inception_metrics": ()}
        if is_continuous(tokenizer):  # float latents: the curve points carry the domain metrics alone
            update["token_metrics"] = None
        if not protocol.domain_metrics and update.get("token_metrics", protocol.token_metrics) is None:
            self.points = 0
        self.protocol = protocol.model_copy(update=update)

    def fraction(self, info: dict[str, Any]) -> float:
        t = self.training
        parts = [info["step"] / t.steps]
        if t.budget_images:
            parts.append(info["images_seen"] / t.budget_images)
        if t.budget_minutes:
            parts.append(info["elapsed_s"] / (60 * t.budget_minutes))
        return max(parts)

    def __call__(self, info: dict[str, Any]) -> None:
        if not self.points or self.done >= self.points - 1:
            return  # the last point is taken by finish() on the final weights
        reached = min(self.points - 1, math.floor(self.fraction(info) * self.points + 1e-9))
        if reached > self.done:  # one point even when several fractions passed at once (e.g. after a resume)
            ema = info.get("ema")
            self.record(info["step"], ema.shadow if ema is not None else info["model"])
            self.done = reached

    def finish(self, step: int, generator: Method) -> None:
        if self.points and step != self.last_step:
            self.record(step, generator)

    def record(self, step: int, generator: Method) -> None:
        from dlbench.eval.api import evaluate_samples
        from dlbench.train.checkpoint import capture_rng, restore_rng
        from dlbench.runner.sampling import decode_tokens, sample_labels, sample_tokens

        state = capture_rng()
        was_training = generator.training
        try:
            s = self.cfg.sampling
            labels = sample_labels(self.n, self.num_classes)
            tokens = sample_tokens(generator, self.n, seed=s.seed, labels=labels, batch_size=s.batch_size,
                                   steps=s.steps, guidance=s.guidance, options=s.options,
                                   ctx=self.ctx)
            metrics: dict[str, float] = {}
            if self.protocol.token_metrics is not None:
                if self._ref is None:
                    self._ref = reference_tokens(self.tokenizer, self.dataset, self.key, self.protocol, self.ctx)[0]
                metrics.update(token_metrics(tokens, self._ref, self.tokenizer.codebook_size,
                                             self.protocol.token_metrics.smoothing))
            if self.protocol.domain_metrics:
                ev = evaluate_samples(decode_tokens(self.tokenizer, tokens, self.ctx.device), labels, self.protocol,
                                      self.dataset, device=self.ctx.device)
                metrics.update({k: v for k, v in ev["metrics"].items() if isinstance(v, (int, float))})
            self.emit("curve", step=step, n=self.n, **metrics)
            self.last_step = step
        finally:
            generator.train(was_training)
            restore_rng(state)

    def anchors(self, seed: int = 0) -> dict[str, Any] | None:
        if not self.points:
            return None
        return anchors_for(self.protocol, self.dataset, self.tokenizer, self.key, self.ctx, seed=seed)
