"""Stage 4: sample tokens from a trained method (per-index seeds, sharded over ranks), decode them to
uint8 images and write ``samples.npz`` / ``samples.png``.

A method over continuous latents (``requires.inputs == "latents"``) returns float latents ``"n h w d"``
instead of token ids; they are decoded the same way (``tokenizer.decode``) and stored as ``latents``."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from dlbench.interfaces import Method, Tokenizer
from dlbench.eval.quantize import quantize_uint8
from dlbench.runner.common import save_grid
from dlbench.runs import RunDir, atomic_write_bytes
from dlbench.seeding import sample_seeds, shard_indices
from dlbench.train.dist import DistContext, gather_by_index


def sample_labels(n: int, num_classes: int | None) -> torch.Tensor | None:
    """Balanced class labels ``i mod C`` for sample index ``i`` (None when unconditional)."""
    return None if not num_classes else torch.arange(n) % num_classes


@torch.no_grad()
def sample_tokens(
    method: Method, n: int, *, seed: int, labels: torch.Tensor | None, batch_size: int, steps: int | None,
    guidance: float, options: dict[str, Any], ctx: DistContext, events=None, precision: str = "fp32",
) -> torch.Tensor:
    """``"n h w"`` tokens for sample indices ``0..n-1``, each from its own seed; sharded over ranks and
    batched, with results independent of both (:mod:`dlbench.seeding`). ``precision="bf16"`` runs the
    network under bf16 autocast (the denoiser returns float32 logits, so the sampler's math stays fp32)."""
    from dlbench.observe.progress import task

    method.eval()
    mine = shard_indices(n, ctx.rank, ctx.world_size)
    out = []
    seen: dict[str, int] = {}

    def on_step(info: dict[str, Any]) -> None:  # dlbench.interfaces.SAMPLE_CALLBACK_KEYS, both families
        seen["steps"], seen["of"] = int(info["i"]) + 1, int(info["steps"])

    with task("sample", len(mine), "images", info=f"{steps or 'default'} steps, guidance {guidance}") as bar:
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            lab = labels[idx].to(ctx.device) if labels is not None else None
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                toks = method.sample(lab, sample_seeds(seed, idx).to(ctx.device), num_samples=len(idx),
                                     steps=steps, guidance=guidance, callback=on_step, **options)
            out.append(toks.cpu())
            bar.update(start + len(idx))
            if events is not None:  # sampler_steps: steps the sampler reported for this batch (None: no callback)
                events("sampling", done=int(start + len(idx)), of=len(mine), rank=ctx.rank,
                       sampler_steps=seen.get("steps"))
    if out:
        mine_tokens = torch.cat(out)
    else:  # an idle rank still takes part in the gather
        on_latents = getattr(type(method).requires, "inputs", "token_ids") == "latents"
        mine_tokens = torch.empty((0,), dtype=torch.float32 if on_latents else torch.long)
    if ctx.world_size == 1:
        return mine_tokens
    return gather_by_index(mine_tokens, mine, n, ctx)


@torch.no_grad()
def decode_tokens(tokenizer: Tokenizer, tokens: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """uint8 images ``"n c H W"`` from tokens ``"n h w"``."""
    return torch.cat([quantize_uint8(tokenizer.decode(tokens[i : i + batch_size].to(device)))
                      for i in range(0, len(tokens), batch_size)])


def write_samples(run_dir: RunDir, tokens: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None,
                  stem: str = "samples") -> None:
    """``<stem>.npz`` (tokens -- or ``latents`` when they are float --, images, labels; no pickles) and a PNG
    grid of the first 64 images."""
    buf = io.BytesIO()
    arrays = {"latents" if tokens.is_floating_point() else "tokens": tokens.numpy(), "images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(run_dir.file(f"{stem}.npz"), buf.getvalue())
    save_grid(images[:64], run_dir.file(f"{stem}.png"))
