"""Tokenized splits on disk: extracted once (sharded over ranks), read memory-mapped, never held in RAM.

Layout next to the cached tokenizer (``$DLBENCH_CACHE/tokenizers/<key>/``)::

    tokens-<split>-<fingerprint>.npy   "n h w" in the smallest unsigned dtype that holds K codes
    labels-<split>-<fingerprint>.npy   "n" int64 (-1 = unlabelled)

Plain ``.npy`` files (``allow_pickle=False``). :class:`TokenArray` opens them with ``mmap_mode="r"``:
a training batch reads only its own rows through the page cache, so ImageNet's 1.28M x 16 x 16 grid
(655 MB as uint16) costs no process memory. Extraction is sharded like sampling
(:func:`dlbench.seeding.shard_indices`): rank ``r`` encodes images ``r::world`` into a part file, then
rank 0 assembles them in index order into the final file, written under a temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def token_dtype(k: int) -> type[np.integer]:
    """Smallest dtype for ids ``0..k-1`` (uint8 up to 256 codes, uint16 up to 65536, else int32)."""
    return np.uint8 if k <= 256 else np.uint16 if k <= 65536 else np.int32


class TokenArray:
    """Read-only memory-mapped token grids ``"n h w"``; indexing returns ``long`` tensors.

    Duck-types the part of a tensor :class:`dlbench.train.loop.TensorBatches` and the pipeline use:
    ``len``, ``shape``, and ``[index tensor | slice | int]``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.asarray(self.array[index], dtype=np.int64))

    def to_tensor(self) -> torch.Tensor:
        """Every row as one ``long`` tensor (small splits only)."""
        return self[slice(None)]


def token_paths(folder: Path, split: str, fingerprint: str) -> tuple[Path, Path]:
    return folder / f"tokens-{split}-{fingerprint[:16]}.npy", folder / f"labels-{split}-{fingerprint[:16]}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    from dlbench.fsutil import atomic_write

    with atomic_write(path) as fh:
        np.save(fh, array, allow_pickle=False)


@torch.no_grad()
def extract_tokens(
    encode: Callable[[torch.Tensor], torch.Tensor], split_dataset: Any, folder: Path, split: str, fingerprint: str, *,
    codebook_size: int, ctx: Any, device: torch.device, batch_size: int = 256,
) -> tuple[TokenArray, torch.Tensor]:
    """Encode every image of ``split_dataset`` (items ``(uint8 "c H W", label)``, or None for a skipped bad
    image) once into the memory-mapped cache; returns ``(tokens, labels long "n")``. Reuses the files when
    present. ``encode`` maps float images ``"b c H W"`` in [-1, 1] to ids ``"b h w"``."""
    tok_path, lab_path = token_paths(folder, split, fingerprint)
    if not (tok_path.is_file() and lab_path.is_file()):
        encode_shard(encode, split_dataset, folder, split, fingerprint, codebook_size=codebook_size, rank=ctx.rank,
                     world=ctx.world_size, device=device, batch_size=batch_size)
        ctx.barrier()
        if ctx.is_main:
            _assemble(folder, tok_path, lab_path, ctx.world_size, token_dtype(codebook_size))
        ctx.barrier()
    labels = torch.from_numpy(np.load(lab_path, allow_pickle=False)).long()
    return TokenArray(tok_path), labels


@torch.no_grad()
def encode_shard(
    encode: Callable[[torch.Tensor], torch.Tensor], split_dataset: Any, folder: Path, split: str, fingerprint: str, *,
    codebook_size: int, rank: int, world: int, device: torch.device, batch_size: int = 256,
) -> Path:
    """Rank ``rank``'s part: images ``rank::world`` encoded into ``.<tokens>.part<rank>.npz`` (index, tokens, labels)."""
    from dlbench.seeding import shard_indices

    folder.mkdir(parents=True, exist_ok=True)
    tok_path, _ = token_paths(folder, split, fingerprint)
    dtype = token_dtype(codebook_size)
    load = getattr(split_dataset, "load", None) or split_dataset.__getitem__
    mine = shard_indices(len(split_dataset), rank, world).tolist()
    from dlbench.observe.progress import task

    kept, toks, labs = [], [], []
    with task("tokenize", len(mine), "images", info=f"{split} split") as bar:
        for start in range(0, len(mine), batch_size):
            items = [(i, load(i)) for i in mine[start : start + batch_size]]
            items = [(i, it) for i, it in items if it is not None]
            bar.update(min(start + batch_size, len(mine)))
            if not items:
                continue
            images = torch.stack([it[0] for _, it in items]).to(device).float() / 127.5 - 1.0
            toks.append(encode(images).cpu().numpy().astype(dtype))
            kept += [i for i, _ in items]
            labs += [int(it[1]) for _, it in items]
    part = folder / f".{tok_path.stem}.part{rank}.npz"
    grid = toks[0].shape[1:] if toks else (0, 0)
    np.savez(part, index=np.asarray(kept, dtype=np.int64), labels=np.asarray(labs, dtype=np.int64),
             tokens=np.concatenate(toks) if toks else np.zeros((0, *grid), dtype=dtype))
    return part


def _assemble(folder: Path, tok_path: Path, lab_path: Path, world: int, dtype: type[np.integer]) -> None:
    """Merge the ranks' part files in dataset-index order into the final ``.npy`` files (one part in RAM at a time)."""
    parts = [folder / f".{tok_path.stem}.part{r}.npz" for r in range(world)]
    index = np.concatenate([np.load(p, allow_pickle=False)["index"] for p in parts])
    order = np.argsort(index, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # row of each (rank-ordered) item in the final file
    grid = next((np.load(p, allow_pickle=False)["tokens"].shape[1:] for p in parts
                 if len(np.load(p, allow_pickle=False)["index"])), (0, 0))
    tmp = tok_path.with_name(f".{tok_path.name}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(index), *grid))
    labels = np.empty(len(index), dtype=np.int64)
    offset = 0
    for p in parts:
        data = np.load(p, allow_pickle=False)
        m = len(data["index"])
        rows = position[offset : offset + m]
        out[rows] = data["tokens"]
        labels[rows] = data["labels"]
        offset += m
    out.flush()
    del out
    os.replace(tmp, tok_path)
    _atomic_save(lab_path, labels)
    for p in parts:
        p.unlink(missing_ok=True)
