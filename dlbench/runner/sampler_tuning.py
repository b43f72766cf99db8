"""``compare --tune-sampling``: pick each method's sampler settings on a validation split at equal NFE.

A method declares its knobs and a small grid (``Method.sampler_grid``, keys ``guidance`` or
``options.<name>``). Every grid point is run at the network-evaluation count (NFE) of the run's own
(untuned) settings: a point whose NFE differs at the run's ``steps`` gets the number of steps that restores
it (e.g. half the steps with classifier-free guidance, which costs two evaluations per step), or is skipped.
Each point draws ``samples`` grids (seed ``sampling.seed + 1``, never the evaluation seed) and is scored by the
neighbour-pair KL to the tokens of the validation images (:func:`dlbench.eval.anchors.heldout_plan`: images
outside the protocol's reference set and the real anchor's images -- never the test reference). The best
point is then sampled and evaluated exactly like the run (same seed, n, protocol) and stored in the run
directory as ``tuned.json``; the table shows it as ``<method> (tuned)`` next to the untuned row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from dlbench.registry import Registry

OBJECTIVE = "token_kl_pair"
TUNING_VERSION = "tune-v1"


def grid_points(grid: dict[str, list[Any]], conditional: bool) -> list[dict[str, Any]]:
    """All combinations of the declared grid as ``{"guidance": g, "options": {...}}``; guidance only with labels."""
    keys = [k for k in grid if conditional or k != "guidance"]
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point: dict[str, Any] = {"guidance": None, "options": {}}
        for k, v in zip(keys, values):
            if k == "guidance":
                point["guidance"] = float(v)
            elif k.startswith("options."):
                point["options"][k.removeprefix("options.")] = v
            else:
                raise ValueError(f"sampler_grid key {k!r}: use 'guidance' or 'options.<name>'")
        out.append(point)
    return out


def _nfe(method: Any, steps: int | None, guidance: float, options: dict[str, Any]) -> int:
    return int(method.nfe(steps, guidance, **options))  # one signature (dlbench.interfaces.Method.nfe)


def at_equal_nfe(method: Any, point: dict[str, Any], base_steps: int | None, target: int) -> int | None | bool:
    """Steps that give ``point`` the NFE ``target`` (the untuned NFE), or False when none does."""
    g = point["guidance"]
    candidates = [base_steps] if base_steps is None else sorted({base_steps, *range(1, base_steps + 1)}, reverse=True)
    for steps in candidates:
        try:
            if _nfe(method, steps, g, point["options"]) == target:
                return steps
        except Exception:  # noqa: BLE001 - a setting the sampler refuses is simply not on the grid
            return False
    return False


def tune_run(run_path: Any, registry: Registry, *, samples: int = 256,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune one finished run (module docstring); cached in ``RUN/tuned.json`` by a hash of the grid and settings."""
    from dlbench.eval.anchors import heldout_plan
    from dlbench.eval.token_metrics import pair_kl
    from dlbench.runs import RunDir
    from dlbench.runner.calibration import split_lengths
    from dlbench.runner.evaluation import calibrate, resolve_run_protocol
    from dlbench.runner.generator_stage import method_labels
    from dlbench.runner.restore import load_trained_method
    from dlbench.runner.sampling import decode_tokens, sample_labels, sample_tokens
    from dlbench.runner.tokenizer_stage import tokenizer_key
    from dlbench.runner.tokens import tokenize_split

    rd = RunDir.open(run_path)
    method, tokenizer, cfg, dataset, ctx = load_trained_method(rd, registry)
    grid = dict(type(method).sampler_grid)
    s = cfg.sampling
    conditional = method_labels(method, torch.zeros(1, dtype=torch.long)) is not None and bool(dataset.num_classes)
    ident = hashlib.sha256(json.dumps({"v": TUNING_VERSION, "grid": grid, "samples": samples, "objective": OBJECTIVE,
                                       "sampling": s.model_dump(mode="json")}, sort_keys=True,
                                      default=str).encode()).hexdigest()[:16]
    cached = rd.read_json("tuned.json")
    if cached and cached.get("id") == ident:
        return cached
    if not grid:
        return {"id": ident, "unavailable": f"{cfg.method.name} declares no sampler grid"}
    from dlbench.runner.common import is_continuous

    if is_continuous(tokenizer):
        return {"id": ident, "unavailable": f"continuous latents: the tuning objective ({OBJECTIVE} of sampled "
                                            "token ids) does not exist for float latents"}
    protocol = resolve_run_protocol(cfg)
    n_eval = protocol.num_generated
    plan = heldout_plan(split_lengths(dataset), protocol.reference_split, protocol.num_reference, n_eval, samples)
    if plan["validation"] is None:
        return {"id": ident, "unavailable": f"no {samples} validation images outside the reference and anchor sets"}
    key = tokenizer_key(cfg, dataset)
    split, start, stop = plan["validation"]
    val_tokens = tokenize_split(tokenizer, dataset, split, key, ctx)[0][start:stop]
    num_classes = dataset.num_classes if conditional else None
    base = {"steps": s.steps, "guidance": s.guidance, "options": dict(s.options)}
    target = _nfe(method, s.steps, s.guidance, s.options)
    labels = sample_labels(samples, num_classes)
    scores = []
    for point in grid_points(grid, conditional):
        options = {**s.options, **point["options"]}
        guidance = s.guidance if point["guidance"] is None else point["guidance"]
        steps = at_equal_nfe(method, {"guidance": guidance, "options": options}, s.steps, target)
        if steps is False:
            continue
        toks = sample_tokens(method, samples, seed=s.seed + 1, labels=labels, batch_size=s.batch_size, steps=steps,
                             guidance=guidance, options=options, ctx=ctx)
        score = pair_kl(toks, val_tokens, tokenizer.codebook_size)
        scores.append({"steps": steps, "guidance": guidance, "options": options, OBJECTIVE: score})
        log(f"  tune {cfg.method.name}: steps={steps} guidance={guidance} {options} -> {OBJECTIVE} {score:.4f}")
    best = min(scores, key=lambda r: r[OBJECTIVE])
    s_labels = sample_labels(s.num_samples, num_classes)
    tokens = sample_tokens(method, s.num_samples, seed=s.seed, labels=s_labels, batch_size=s.batch_size,
                           steps=best["steps"], guidance=best["guidance"], options=best["options"], ctx=ctx)
    from dlbench.eval.api import evaluate_samples

    images = decode_tokens(tokenizer, tokens, ctx.device)
    ev = evaluate_samples(images[:n_eval], s_labels[:n_eval] if s_labels is not None else None, protocol, dataset,
                          device=ctx.device)
    metrics = dict(ev)
    cfg_no_anchors = cfg.model_copy(deep=True)
    cfg_no_anchors.evaluation.anchors = False  # the untuned run already carries them
    calibrate(metrics, method, tokens, tokenizer, dataset, key, protocol, ctx, conditional, cfg_no_anchors)
    record = {"id": ident, "objective": OBJECTIVE, "validation": {"split": split, "start": start, "stop": stop},
              "nfe": target, "untuned": base, "chosen": best, "scores": scores, "metrics": metrics}
    if ctx.is_main:
        rd.write_json("tuned.json", record)
        rd.event("tuned", chosen=best, nfe=target)
    return record


def tuned_records(records: Sequence[Any], order: Sequence[str], registry: Registry, *, samples: int = 256,
                  log: Callable[[str], None] = print) -> tuple[list[Any], list[str]]:
    """The records plus one ``<label> (tuned)`` record per tuned run, ordered after their untuned rows."""
    from dlbench.report.compare import RunRecord

    out = list(records)
    for r in records:
        log(f"tuning sampler settings of {r.path} on the validation split ...")
        rec = tune_run(r.path, registry, samples=samples, log=log)
        if "metrics" not in rec:
            log(f"  not tuned: {rec.get('unavailable')}")
            continue
        metrics = {**r.metrics, **{k: v for k, v in rec["metrics"].items() if k != "anchors"},
                   "tuned": {"chosen": rec["chosen"], "untuned": rec["untuned"], "nfe": rec["nfe"]}}
        metrics["anchors"] = r.metrics.get("anchors")
        config = {**r.config, "label": f"{r.label} (tuned)"}
        out.append(RunRecord(r.path, config, metrics, r.protocol, r.meta, reused=False))  # listed once, untuned
    new_order = []
    for lab in order:
        new_order += [lab, f"{lab} (tuned)"]
    return out, new_order
