"""The stages of one run in order: tokenizer -> tokens -> generator training -> samples -> evaluation.

``execute(config, registry, run_dir, resume=...)`` is what :func:`dlbench.runner.run` calls once the run
directory exists. Every stage is rank-aware: under torchrun all ranks train (DDP) and sample their shard
of the sample indices; rank 0 alone writes files and logs. Each stage lives in its own module
(:mod:`~dlbench.runner.tokenizer_stage`, :mod:`~dlbench.runner.tokens`,
:mod:`~dlbench.runner.generator_stage`, :mod:`~dlbench.runner.sampling`, :mod:`~dlbench.runner.evaluation`);
this module only wires them and assembles ``metrics.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlbench.runner.common import console, events_for, failed, safe_diagnostics
from dlbench.runner.evaluation import calibrate, evaluate_generated, resolve_run_protocol, sharded_features
from dlbench.runner.generator_stage import build_method, compute_record, engine_record, method_labels, nfe
from dlbench.runner.generator_stage import train_generator
from dlbench.runner.sampling import decode_tokens, sample_labels, sample_tokens, write_samples
from dlbench.runner.tokenizer_stage import get_tokenizer, write_recon_grid
from dlbench.runner.tokens import heldout_tokens, skipped_report, training_inputs
from dlbench.runs import EVENT_EVALUATION, RunDir
from dlbench.train.dist import init_distributed, rank_local
from dlbench.train.loop import TrainingDiverged

if TYPE_CHECKING:
    from dlbench.config import RunConfig
    from dlbench.registry import Registry


def execute(cfg: RunConfig, registry: Registry, run_dir: RunDir, *, resume: bool) -> dict[str, Any]:
    """Run every stage of one experiment; returns (and on rank 0 writes) the metrics record.

    A diverged training (NaN/Inf) ends the run with ``{"status": "failed", "reason": ...}`` in
    metrics.json instead of raising; the last good checkpoint stays for inspection.
    """
    from dlbench.runner.calibration import CurveRecorder, effective_training

    ctx = init_distributed(cfg.device)
    emit = events_for(run_dir, ctx)
    dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    protocol = resolve_run_protocol(cfg) if cfg.evaluation.enabled else None  # fail before training

    # 1. tokenizer (cached by key) and 2. the training split's tokens
    try:
        tokenizer, key, tok_info = get_tokenizer(cfg, registry, dataset, ctx, run_dir=run_dir)
    except TrainingDiverged as exc:
        return failed(run_dir, ctx, f"tokenizer training: {exc}", exc.step)
    grid = tokenizer.token_grid(dataset.resolution, dataset.resolution)
    # token ids; for a continuous tokenizer float latents "n h w d" (and their flips)
    train_tokens, train_labels = training_inputs(tokenizer, dataset, key, ctx)
    if ctx.is_main:
        write_recon_grid(tokenizer, dataset, run_dir.file("recon.png"), ctx)
        emit("recon", path=str(run_dir.file("recon.png")))

    # 3. the generator
    method = build_method(cfg, registry, tokenizer, dataset, grid)
    labels = method_labels(method, train_labels)
    tensors = (train_tokens,) if labels is None else (train_tokens, labels)
    training, budget_record = effective_training(cfg.training, method, grid)
    num_classes = dataset.num_classes if labels is not None else None
    curves = None
    if protocol is not None and cfg.evaluation.curve_points and ctx.is_main:
        curves = CurveRecorder(cfg=cfg, protocol=protocol, dataset=dataset, tokenizer=tokenizer, key=key,
                               ctx=ctx, emit=emit, num_classes=num_classes, training=training)
    try:
        result = train_generator(cfg, method, tensors, training, run_dir, ctx, resume=resume, emit=emit,
                                 on_step=curves)
    except TrainingDiverged as exc:
        return failed(run_dir, ctx, str(exc), exc.step)
    generator = result.ema.shadow if result.ema is not None else method
    if curves is not None:
        curves.finish(result.step, generator)

    # 4. samples
    s = cfg.sampling
    s_labels = sample_labels(s.num_samples, num_classes)
    tokens = sample_tokens(generator, s.num_samples, seed=s.seed, labels=s_labels, batch_size=s.batch_size,
                           steps=s.steps, guidance=s.guidance, options=s.options, ctx=ctx,
                           events=emit if ctx.is_main else None, precision=result.precision)
    metrics: dict[str, Any] = {
        "status": "ok",
        "training": result.record(),
        "engine": {**engine_record(result.precision, ctx), "precision_requested": cfg.training.precision},
        "tokenizer": {"key": key, "name": cfg.tokenizer.name, "training": tok_info.get("training"),
                      "source": tok_info.get("source", "trained"),
                      # optional Tokenizer.run_metadata(): e.g. which foundation features a VF-aligned latent used
                      **({"metadata": meta} if (meta := tokenizer.run_metadata()) else {})},
        "sampling": {"num_samples": s.num_samples, "steps": s.steps, "guidance": s.guidance,
                     "nfe_per_sample": nfe(method, s), "seed": s.seed},
        "seeds": {"train": cfg.seed, "sample": s.seed, "tokenizer": cfg.tokenizer.seed},
        "compute": {**compute_record(method, result, grid, s, ctx), "budget": budget_record},
        "method_diagnostics": safe_diagnostics(generator),
    }
    gen_features = sharded_features(tokenizer, tokens, protocol, ctx, emit)  # every rank takes part
    if not ctx.is_main:
        return metrics
    images = decode_tokens(tokenizer, tokens, ctx.device)
    write_samples(run_dir, tokens, images, s_labels)
    emit("samples", n=len(tokens), path=str(run_dir.file("samples.npz")), grid=str(run_dir.file("samples.png")),
         step=result.step)

    # 5. evaluation and calibration
    if protocol is not None:
        ev = evaluate_generated(images, s_labels, protocol, dataset, ctx, emit, generated_features=gen_features)
        metrics.update(ev)
        # rank 0 alone from here: the token cache it may fill must not wait for the other ranks
        calibrate(metrics, generator, tokens, tokenizer, dataset, key, protocol, rank_local(ctx), labels is not None,
                  cfg, curves)
        run_dir.write_json("protocol.json", {**protocol.model_dump(mode="json"), "hash": ev["protocol_hash"]})
        emit(EVENT_EVALUATION, step=result.step, protocol_hash=ev["protocol_hash"], metrics=ev["metrics"])
    try:
        report = generator.end_of_training_report(*heldout_tokens(tokenizer, dataset, key, ctx, labels is not None))
        if report:
            metrics["end_of_training"] = report
    except Exception as exc:  # noqa: BLE001 - optional diagnostics never lose a finished run
        metrics["end_of_training"] = {"error": f"{type(exc).__name__}: {exc}"}
    if getattr(getattr(cfg.dataset, "params", None), "get", lambda k: None)("skip_bad"):
        skipped = skipped_report(dataset)
        total = sum(skipped.values())
        metrics["data"] = {"skipped_images": total, "skipped_by_split": skipped}
        emit("data_skipped", skipped_images=total, by_split=skipped)
        console().print(f"--skip-bad: skipped {total} unreadable image(s)"
                        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})" if skipped else ""))
    run_dir.write_json("metrics.json", metrics)
    return metrics
