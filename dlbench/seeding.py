"""Per-sample random streams: results independent of batch size and world size (DESIGN.md § Evaluation).

Sample ``i`` of a run with seed ``s`` draws all its noise from its own generator seeded with
``sample_seeds(s, [i])``, a splitmix64 hash of ``(s, i)``. Sharding the indices over ranks or cutting
them into batches of any size therefore gives bit-identical samples.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014) on ``uint64`` arrays, wrapping arithmetic."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_seeds(run_seed: int, indices: torch.Tensor | np.ndarray | list[int] | range) -> torch.Tensor:
    """Seeds ``"b"`` int64 in ``[0, 2^63)`` for sample ``indices`` of a run: ``splitmix64(splitmix64(seed) ^ i)``."""
    idx = np.asarray(torch.as_tensor(list(indices) if isinstance(indices, range) else indices).cpu(), dtype=np.int64)
    if (idx < 0).any():
        raise ValueError("sample indices must be non-negative")
    base = splitmix64(np.array([run_seed & _MASK], dtype=np.uint64))
    mixed = splitmix64(base ^ idx.astype(np.uint64))
    return torch.from_numpy((mixed >> np.uint64(1)).astype(np.int64))


def derive_seed(run_seed: int, stream: int) -> int:
    """One derived int seed (e.g. a rank's training stream); ``stream`` 0 returns ``run_seed`` itself."""
    return run_seed if stream == 0 else int(sample_seeds(run_seed, [stream])[0])


def shard_indices(n: int, rank: int, world: int) -> torch.Tensor:
    """Indices ``"m"`` of ``range(n)`` owned by ``rank`` (strided, like ``DistributedSampler``)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} not in [0, {world})")
    return torch.arange(rank, n, world, dtype=torch.long)


class PerSampleRNG:
    """One CPU ``torch.Generator`` per sample; every draw returns ``"b ..."`` with row ``i`` a function
    of ``seeds[i]`` and the number of earlier draws only. Draws happen on CPU (CPU and CUDA generators
    give different streams) and are moved to ``device``."""

    def __init__(self, seeds: torch.Tensor, device: torch.device | str = "cpu"):
        self.seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1)
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def _stack(self, draw) -> torch.Tensor:
        return torch.stack([draw(g) for g in self.generators]).to(self.device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._stack(lambda g: torch.randn(shape, generator=g, dtype=dtype))

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._stack(lambda g: torch.rand(shape, generator=g, dtype=dtype))

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return self._stack(lambda g: torch.randint(low, high, shape, generator=g))

    def gumbel(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard Gumbel noise ``-log(-log U)`` (U clamped away from 0 and 1)."""
        u = self.rand(*shape, dtype=dtype)
        tiny = torch.finfo(dtype).tiny
        return -torch.log(-torch.log(u.clamp(tiny, 1 - torch.finfo(dtype).eps)))

    def categorical(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample ``"b ... k" -> "b ..."`` by the Gumbel-max trick: ``argmax(logits + g)``."""
        g = self.gumbel(*logits.shape[1:]).to(logits.device)
        return (logits.float() + g).argmax(-1)
