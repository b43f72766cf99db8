"""Tokenized splits on disk: extracted once (sharded over ranks), read memory-mapped, never held in RAM.

Layout next to the cached tokenizer (``$DLBENCH_CACHE/tokenizers/<key>/``)::

    tokens-<split>-<fingerprint>.npy   "n h w" in the smallest unsigned dtype that holds K codes
    labels-<split>-<fingerprint>.npy   "n" int64 (-1 = unlabelled)

Continuous tokenizers (``latent_kind == "continuous"``) get float32 ``latents-`` / ``latents_flip-`` files of
normalised posterior samples instead (:func:`extract_latents`, read through :class:`LatentArray`).

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


# ---------------------------------------------------------------------------------------------
# continuous latents (tokenizers with ``latent_kind == "continuous"``)
# ---------------------------------------------------------------------------------------------

#: images per posterior-noise block: block ``k`` holds dataset indices ``[k B, (k + 1) B)`` and is encoded with
#: one generator seeded by ``(encode seed, k)``, so the cache is independent of batch size and world size
LATENT_BLOCK = 64


class LatentArray:
    """Read-only memory-mapped float latents ``"n h w d"``; indexing returns float32 tensors.

    With ``flip`` (the latents of the horizontally flipped images, same shape) it has ``2n`` rows: row
    ``i < n`` is image ``i``, row ``n + i`` its flip -- the training set of a latent method, as VA-VAE trains
    on ``latents`` and ``latents_flip``."""

    def __init__(self, path: str | os.PathLike, flip: str | os.PathLike | None = None):
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.flip = None if flip is None else np.load(Path(flip), mmap_mode="r", allow_pickle=False)
        self.n = int(self.array.shape[0])

    def __len__(self) -> int:
        return self.n * (1 if self.flip is None else 2)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.array.shape[1:])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if self.flip is None:
            return torch.from_numpy(np.array(self.array[index], dtype=np.float32))
        rows = np.arange(len(self))[index]
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.float32)
        own = rows < self.n
        out[own] = self.array[rows[own]]
        out[~own] = self.flip[rows[~own] - self.n]
        return torch.from_numpy(out[0] if scalar else out)

    def to_tensor(self) -> torch.Tensor:
        return self[slice(None)]


def latent_paths(folder: Path, split: str, fingerprint: str, seed: int) -> tuple[Path, Path, Path]:
    """``latents-``, ``latents_flip-`` and ``labels-`` files of a split; the encode seed is part of the name."""
    stem = f"{split}-{fingerprint[:16]}-seed{seed}"
    return folder / f"latents-{stem}.npy", folder / f"latents_flip-{stem}.npy", folder / f"latent_labels-{stem}.npy"


@torch.no_grad()
def extract_latents(
    encode: Callable[..., torch.Tensor], split_dataset: Any, folder: Path, split: str, fingerprint: str, *,
    seed: int, ctx: Any, device: torch.device,
) -> tuple[Path, Path, torch.Tensor]:
    """Encode every image of ``split_dataset`` and its horizontal flip once into float32 ``.npy`` files of
    **normalised posterior samples** ``encode(x, sample=True, generator=g) "b h w d"`` (VA-VAE's latent
    extraction); ``g`` is seeded by ``(seed, block)`` per :data:`LATENT_BLOCK` images, blocks sharded over
    ranks. Returns ``(latents path, flipped latents path, labels long "n")``; reuses the files when present."""
    from dlbench.observe.progress import task

    lat_path, flip_path, lab_path = latent_paths(folder, split, fingerprint, seed)
    if not (lat_path.is_file() and flip_path.is_file() and lab_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        load = getattr(split_dataset, "load", None) or split_dataset.__getitem__
        n = len(split_dataset)
        blocks = list(range(ctx.rank, -(-n // LATENT_BLOCK), ctx.world_size))
        kept, lats, flips, labs = [], [], [], []
        with task("tokenize", len(blocks) * LATENT_BLOCK, "images", info=f"{split} split latents") as bar:
            for j, k in enumerate(blocks):
                items = [(i, load(i)) for i in range(k * LATENT_BLOCK, min(n, (k + 1) * LATENT_BLOCK))]
                items = [(i, it) for i, it in items if it is not None]
                bar.update((j + 1) * LATENT_BLOCK)
                if not items:
                    continue
                x = torch.stack([it[0] for _, it in items]).to(device).float() / 127.5 - 1.0
                g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
                lats.append(encode(x, sample=True, generator=g).float().cpu().numpy())
                flips.append(encode(x.flip(-1), sample=True, generator=g).float().cpu().numpy())
                kept += [i for i, _ in items]
                labs += [int(it[1]) for _, it in items]
        part = folder / f".{lat_path.stem}.part{ctx.rank}.npz"
        shape = lats[0].shape[1:] if lats else (0, 0, 0)
        np.savez(part, index=np.asarray(kept, dtype=np.int64), labels=np.asarray(labs, dtype=np.int64),
                 latents=np.concatenate(lats) if lats else np.zeros((0, *shape), np.float32),
                 flip=np.concatenate(flips) if flips else np.zeros((0, *shape), np.float32))
        ctx.barrier()
        if ctx.is_main:
            parts = [np.load(folder / f".{lat_path.stem}.part{r}.npz", allow_pickle=False)
                     for r in range(ctx.world_size)]
            index = np.concatenate([p["index"] for p in parts])
            order = np.argsort(index, kind="stable")
            full = [p for p in parts if len(p["index"])]
            for name, path in (("latents", lat_path), ("flip", flip_path)):
                _atomic_save(path, np.concatenate([p[name] for p in full])[order].astype(np.float32))
            _atomic_save(lab_path, np.concatenate([p["labels"] for p in parts])[order])
            for r in range(ctx.world_size):
                (folder / f".{lat_path.stem}.part{r}.npz").unlink(missing_ok=True)
        ctx.barrier()
    return lat_path, flip_path, torch.from_numpy(np.load(lab_path, allow_pickle=False)).long()
