import numpy as np
import pytest
import torch

from dlbench.seeding import PerSampleRNG, derive_seed, sample_seeds, shard_indices, splitmix64


def test_splitmix64_reference_values():
    # reference: the canonical splitmix64 stream from state 0 (Vigna's C code: next() adds the constant first)
    ref = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    state = 0
    for want in ref:
        assert int(splitmix64(np.array([state], dtype=np.uint64))[0]) == want
        state = (state + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)


def test_sample_seeds_properties():
    s = sample_seeds(5, torch.arange(1000))
    assert s.dtype == torch.int64 and (s >= 0).all() and len(s.unique()) == 1000
    assert torch.equal(sample_seeds(5, [3, 7]), s[[3, 7]])  # a function of (seed, index) only
    assert not torch.equal(sample_seeds(6, [3, 7]), s[[3, 7]])
    assert derive_seed(11, 0) == 11 and derive_seed(11, 1) != 11
    with pytest.raises(ValueError):
        sample_seeds(0, [-1])


def _sampler(rng: PerSampleRNG):
    """A toy sampler that draws like a real one: several calls of different kinds."""
    x = rng.randn(2, 3)
    for _ in range(3):
        x = x + 0.1 * rng.rand(2, 3) + rng.gumbel(2, 3)
    return x, rng.randint(0, 10, 4), rng.categorical(torch.zeros(len(rng), 5, 7))


def test_per_sample_rng_independent_of_batching_and_world_size():
    n = 10
    seeds = sample_seeds(42, range(n))
    full = _sampler(PerSampleRNG(seeds))
    # batch size 3
    batched = [_sampler(PerSampleRNG(seeds[i : i + 3])) for i in range(0, n, 3)]
    for k in range(3):
        assert torch.equal(torch.cat([b[k] for b in batched]), full[k])
    # world size 3, strided shards, reassembled by index
    for world in (2, 3):
        out = [torch.empty_like(f) for f in full]
        for rank in range(world):
            idx = shard_indices(n, rank, world)
            part = _sampler(PerSampleRNG(sample_seeds(42, idx)))
            for k in range(3):
                out[k][idx] = part[k]
        for k in range(3):
            assert torch.equal(out[k], full[k])
    # rows really differ between samples
    assert not torch.equal(full[0][0], full[0][1])


def test_gumbel_and_categorical_distribution():
    rng = PerSampleRNG(sample_seeds(0, range(4000)))
    g = rng.gumbel()
    assert abs(float(g.mean()) - 0.5772) < 0.06  # Euler-Mascheroni constant
    logits = torch.log(torch.tensor([0.2, 0.5, 0.3])).expand(4000, 3)
    freq = torch.bincount(rng.categorical(logits), minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.03)


def test_shard_indices_partition():
    parts = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))
    with pytest.raises(ValueError):
        shard_indices(4, 3, 3)
