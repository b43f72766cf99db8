"""Sharded Inception feature extraction under torchrun: two gloo ranks each extract their share of the
generated images, rank 0 gathers them in index order and gets what one process extracts."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dlbench.eval.backends import extract_inception_features, extract_inception_features_sharded
from dlbench.seeding import shard_indices

N = 7  # odd: the ranks' shares differ in size


class _StandIn(torch.nn.Module):
    """FidInception's interface with row-wise elementwise features: exact whatever the batch composition,
    so any difference between 1 and 2 ranks is the sharding's."""

    mode = "exact"

    def forward(self, x_u8, logits=False):
        f = x_u8.double().flatten(1)
        pool = torch.sin(f[:, torch.arange(2048) % f.shape[1]] * (1 + torch.arange(2048) / 2048)).float()
        return pool, (pool[:, :1008] * 2 if logits else None)


def _images():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (N, 1, 28, 28), generator=g, dtype=torch.uint8)


def _worker(rank, world, port, out, kind):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from dlbench.train.dist import init_distributed

    ctx = init_distributed("cpu")
    mine = shard_indices(N, rank, world)
    shard = _images()[mine]
    result = {}
    if kind == "stand-in":
        feats = extract_inception_features_sharded(shard.expand(-1, 3, -1, -1), mine, N, _StandIn(), ctx,
                                                   batch_size=2, logits=True)
    else:  # the real network through the pipeline's entry point, then rank 0's metrics from the gathered features
        from _eval_data import TinyFashion
        from dlbench.eval.api import evaluate_samples, sharded_generated_features
        from dlbench.eval.protocol import resolve_protocol

        p = resolve_protocol("default", num_generated=N, num_reference=N, inception_metrics=("fid",),
                             domain_metrics=False)
        feats = sharded_generated_features(shard, mine, N, p, ctx, batch_size=1)
        if ctx.is_main:
            result = evaluate_samples(_images(), None, p, TinyFashion(64, 64), generated_features=feats)["metrics"]
    if ctx.is_main:
        torch.save({"feats": feats, "metrics": result}, os.path.join(out, "rank0.pt"))
    else:
        assert feats is None  # only rank 0 receives the gathered features
    torch.distributed.barrier()  # both ranks are done with gloo before either tears it down
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_gather_the_one_process_features_in_order(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "stand-in"), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)["feats"]
    one = extract_inception_features(_images().expand(-1, 3, -1, -1), _StandIn(), batch_size=3, logits=True)
    assert set(got) == {"2048", "logits_unbiased"}
    for k in one:
        assert torch.equal(got[k], one[k]), k
    assert not torch.equal(one["2048"][0], one["2048"][1])  # distinct rows: a wrong order would show


@pytest.mark.slow  # Inception-v3 at 299 px on CPU for 3 x 7 images: ~70 s on the shared 2-core machine
@pytest.mark.weights
def test_two_ranks_real_inception_features_and_fid_match_one_process(tmp_path):
    from _eval_data import TinyFashion
    from dlbench.eval.api import evaluate_samples, sharded_generated_features
    from dlbench.eval.protocol import resolve_protocol
    from dlbench.train.dist import DistContext

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "inception"), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    p = resolve_protocol("default", num_generated=N, num_reference=N, inception_metrics=("fid",), domain_metrics=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: same kernels
    try:
        one = sharded_generated_features(_images(), torch.arange(N), N, p, DistContext(), batch_size=1)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got["feats"]["2048"], one["2048"], rtol=0, atol=1e-5)
    # rank 0's FID from the gathered features is the one-process FID (reference features: the ranks' cache)
    single = evaluate_samples(_images(), None, p, TinyFashion(64, 64), generated_features=one)["metrics"]
    assert got["metrics"]["fid"] == pytest.approx(single["fid"], rel=1e-4) and single["fid"] > 1.0
