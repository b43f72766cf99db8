"""Anchor rows: what trivial and ideal token generators score under the same protocol (the table's scale).

Every comparison table carries four anchors, computed once per (dataset, tokenizer, protocol) and cached:

1. ``real``: held-out real images (disjoint from the reference set, same n) -- the floor of every metric;
2. ``reconstruction``: the tokenizer's decode of those images' tokens -- the ceiling of any token generator
   (its FID is the rFID); its token metrics equal ``real``'s by construction (same tokens);
3. ``class_marginals``: tokens drawn independently per position from the class-conditional per-position
   token marginals of the training split (labels ``i mod C``, as methods sample), decoded (labelled data);
4. ``marginals``: the same with the unconditional per-position marginals.

A method that does not beat ``class_marginals`` has learned less than a histogram. The NLL anchors are
exact: the held-out cross-entropy of the (add-alpha smoothed) marginal models in nats per token.

:func:`compute_anchors` is a pure function of tensors and two callables (``decode``, ``evaluate``), so the
result depends only on (dataset, tokenizer, protocol). :func:`anchor_key` names it; records are small JSON
files that :func:`load_anchors` reads from the cache or from any directory (e.g. precomputed anchors
shipped with the package for the embedded default dataset: :data:`SEARCH_DIRS`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dlbench.eval.token_metrics import class_position_marginals, sample_from_marginals, token_metrics
from dlbench.registry import DlbenchError

__all__ = ["ANCHOR_VERSION", "ANCHORS", "ANCHOR_LABELS", "anchor_key", "heldout_plan", "compute_anchors",
           "marginal_nll", "add_marginal_nll", "load_anchors", "save_anchors", "find_anchors", "placement", "anchor_values"]

ANCHOR_VERSION = "anchors-v1"
#: best first (the ladder, top to bottom)
ANCHORS = ("real", "reconstruction", "class_marginals", "marginals")
ANCHOR_LABELS = {"real": "real (held-out)", "reconstruction": "reconstruction", "class_marginals": "class marginals",
                 "marginals": "marginals"}
#: extra read-only places searched for ``<key>.json`` (a package may append its shipped anchors directory)
SEARCH_DIRS: list[Path] = []


class AnchorError(DlbenchError):
    pass


def anchor_key(*, fingerprints: dict[str, str], tokenizer_key: str, protocol_hash: str, n: int, seed: int) -> str:
    """Cache key of an anchor record: sha256 of (version, dataset split fingerprints, tokenizer cache key,
    protocol hash, n, seed), first 24 hex digits."""
    payload = json.dumps({"version": ANCHOR_VERSION, "fingerprints": fingerprints, "tokenizer": tokenizer_key,
                          "protocol": protocol_hash, "n": n, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def heldout_plan(
    split_lengths: dict[str, int], reference_split: str, num_reference: int | None, n_anchor: int, n_val: int = 0
) -> dict[str, tuple[str, int, int] | None]:
    """Where the real-anchor images and the validation images (sampler tuning) come from, never overlapping
    the reference set: first what follows the reference inside its split, then the other splits (test before
    train). Returns ``{"anchor": (split, start, stop) | None, "validation": ... | None}``."""
    segments: list[list[Any]] = []
    if num_reference is not None and split_lengths.get(reference_split, 0) > num_reference:
        segments.append([reference_split, num_reference, split_lengths[reference_split]])
    for name in sorted((s for s in split_lengths if s != reference_split), key=lambda s: (s != "test", s)):
        segments.append([name, 0, split_lengths[name]])
    out: dict[str, tuple[str, int, int] | None] = {"anchor": None, "validation": None}
    for role, n in (("anchor", n_anchor), ("validation", n_val)):
        if n <= 0:
            continue
        for seg in segments:
            if seg[2] - seg[1] >= n:
                out[role] = (seg[0], seg[1], seg[1] + n)
                seg[1] += n
                break
    return out


def marginal_nll(heldout: torch.Tensor, labels: torch.Tensor | None, train_tokens: torch.Tensor,
                 train_labels: torch.Tensor | None, k: int, num_classes: int | None, alpha: float) -> dict[str, float]:
    """Exact held-out NLL (nats/token) of the per-position marginal model with add-``alpha`` smoothing of the
    training counts: ``-1/P sum_i log p_i(x_i | y)``, mean and standard error over grids."""
    n = heldout.shape[0]
    rows = torch.zeros(n, dtype=torch.long) if labels is None or not num_classes else labels.long().cpu()
    counts = []
    for c in range(num_classes if (labels is not None and num_classes) else 1):
        sel = train_tokens if labels is None or not num_classes else train_tokens[train_labels == c]
        flat = sel.reshape(sel.shape[0], -1)
        counts.append(torch.stack([torch.bincount(flat[:, i], minlength=k) for i in range(flat.shape[1])]).double())
    probs = (torch.stack(counts) + alpha) / (torch.stack(counts) + alpha).sum(-1, keepdim=True)  # "c p k"
    x = heldout.reshape(n, -1).cpu()
    lp = probs[rows].log().gather(-1, x[..., None]).squeeze(-1)  # "n p"
    per = -lp.mean(1)
    se = float(per.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"nll_bound": float(per.mean()), "nll_bound_se": se}


def compute_anchors(
    *,
    real_images: torch.Tensor,
    real_labels: torch.Tensor | None,
    real_tokens: torch.Tensor,
    reference_tokens: torch.Tensor,
    train_tokens: torch.Tensor,
    train_labels: torch.Tensor | None,
    codebook_size: int,
    num_classes: int | None,
    decode: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[torch.Tensor, torch.Tensor | None], dict[str, Any]],
    smoothing: float = 0.5,
    seed: int = 0,
    names: Sequence[str] = ANCHORS,
) -> dict[str, dict[str, Any]]:
    """The anchor rows ``{name: {"metrics": {...}, "unavailable": {...}}}`` (module docstring).

    ``real_images`` uint8 ``"n c H W"`` with ``real_tokens "n h w"`` their tokens; ``reference_tokens`` the
    tokens of the protocol's reference images; ``train_*`` the training split's tokens and labels.
    ``decode(tokens) -> uint8 images``; ``evaluate(images, labels) -> {"metrics", "unavailable"}`` is the
    protocol's image evaluation (it must accept exactly ``n`` images). Labelled anchors evaluate class
    consistency against ``real_labels`` (real, reconstruction) or the balanced labels ``i mod C``.
    """
    n, grid = real_tokens.shape[0], tuple(real_tokens.shape[1:])
    conditional = bool(num_classes) and train_labels is not None and bool((train_labels >= 0).all())
    balanced = torch.arange(n) % num_classes if conditional else None
    out: dict[str, dict[str, Any]] = {}

    def finish(name: str, images: torch.Tensor, labels: torch.Tensor | None, tokens: torch.Tensor,
               extra: dict[str, float], unavailable: dict[str, str]) -> None:
        ev = evaluate(images, labels)
        metrics = {k: float(v) for k, v in (ev.get("metrics") or {}).items() if isinstance(v, (int, float))}
        metrics.update(token_metrics(tokens, reference_tokens, codebook_size, smoothing))
        metrics.update(extra)
        out[name] = {"metrics": metrics, "unavailable": {**(ev.get("unavailable") or {}), **unavailable}}

    no_nll = {"nll_bound": "no likelihood model (real tokens)"}
    if "real" in names:
        finish("real", real_images, real_labels if conditional else None, real_tokens, {}, no_nll)
    if "reconstruction" in names:
        finish("reconstruction", decode(real_tokens), real_labels if conditional else None, real_tokens, {}, no_nll)
    if "class_marginals" in names:
        if conditional:
            marg = class_position_marginals(train_tokens, train_labels, codebook_size, num_classes)
            toks = sample_from_marginals(marg, grid, balanced, n, seed)
            finish("class_marginals", decode(toks), balanced, toks, {}, {})
        else:
            out["class_marginals"] = {"metrics": {}, "unavailable": {"*": "unlabelled dataset"}}
    if "marginals" in names:
        marg = class_position_marginals(train_tokens, None, codebook_size, None)
        toks = sample_from_marginals(marg, grid, None, n, seed + 1)
        finish("marginals", decode(toks), balanced, toks, {}, {})
    return out


def add_marginal_nll(rows: dict[str, dict[str, Any]], heldout: torch.Tensor, heldout_labels: torch.Tensor | None,
                     train_tokens: torch.Tensor, train_labels: torch.Tensor | None, k: int,
                     num_classes: int | None, alpha: float) -> None:
    """Fill the exact NLL of the two marginal anchors on the held-out grids (in place)."""
    if "marginals" in rows:
        rows["marginals"]["metrics"].update(marginal_nll(heldout, None, train_tokens, None, k, None, alpha))
    if "class_marginals" in rows and rows["class_marginals"]["metrics"] and heldout_labels is not None:
        rows["class_marginals"]["metrics"].update(
            marginal_nll(heldout, heldout_labels, train_tokens, train_labels, k, num_classes, alpha))


# ---------------------------------------------------------------------------------------------
# records: JSON, cached by key
# ---------------------------------------------------------------------------------------------


def save_anchors(path: str | Path, record: dict[str, Any]) -> None:
    from dlbench.runs import atomic_write_json

    atomic_write_json(path, record)


def load_anchors(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """Read an anchor record (plain JSON, no code) and check its version and, if given, its key."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AnchorError(f"cannot read anchors {path}: {exc}") from None
    if not isinstance(record, dict) or record.get("version") != ANCHOR_VERSION or "rows" not in record:
        raise AnchorError(f"{path} is not a {ANCHOR_VERSION} anchor record; delete it to recompute")
    if key is not None and record.get("key") != key:
        raise AnchorError(f"{path} holds anchors {record.get('key')}, expected {key}")
    return record


def find_anchors(key: str, cache: Path) -> dict[str, Any] | None:
    """The record for ``key`` from the cache directory or :data:`SEARCH_DIRS`, else None."""
    for folder in [cache, *SEARCH_DIRS]:
        path = Path(folder) / f"{key}.json"
        if path.is_file():
            try:
                return load_anchors(path, key)
            except AnchorError:
                continue
    return None


# ---------------------------------------------------------------------------------------------
# reading: where does a method sit?
# ---------------------------------------------------------------------------------------------


def anchor_values(record: dict[str, Any] | None, metric: str) -> dict[str, float]:
    """``{anchor name: value}`` of one metric, ladder order, only the anchors that have it."""
    if not record:
        return {}
    rows = record.get("rows") or {}
    out = {}
    for name in ANCHORS:
        v = (rows.get(name) or {}).get("metrics", {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[name] = float(v)
    return out


def placement(mean: float, low: float | None, high: float | None, anchors: dict[str, float],
              lower_is_better: bool) -> str:
    """Where a method's value sits on the anchor ladder, in words.

    Anchors inside the method's 95 % interval ``[low, high]`` are "not distinguishable"; otherwise the
    method is "between A and B" (its better and worse neighbours on this metric's scale), "better than
    every anchor" or "worse than A" (the worst anchor). Anchors are single draws: no interval of their own.
    """
    if not anchors:
        return "no anchors"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        same = [n for n, v in anchors.items() if low <= v <= high]
        if same:
            return "not distinguishable from " + " / ".join(ANCHOR_LABELS[n] for n in same) + " (95 % CI)"

    def better(a: float, b: float) -> bool:
        return a < b if lower_is_better else a > b

    ordered = sorted(anchors.items(), key=lambda kv: kv[1], reverse=not lower_is_better)  # best first
    above = [(n, v) for n, v in ordered if better(v, mean) or v == mean]
    below = [(n, v) for n, v in ordered if better(mean, v)]
    fmt = lambda nv: f"{ANCHOR_LABELS[nv[0]]} ({nv[1]:.3g})"  # noqa: E731
    if not above:
        return "better than every anchor, " + fmt(ordered[0])
    if not below:
        return "worse than every anchor, " + fmt(ordered[-1])
    return f"between {fmt(below[0])} and {fmt(above[-1])}"
