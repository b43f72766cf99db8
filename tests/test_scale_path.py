"""Scale path: memory-mapped token cache (sharded extraction), gradient accumulation, and the paper path
at toy size (VQGAN with every loss term, imported taming checkpoint, 2-rank torchrun resumed on 1 rank)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dlbench.data.base import TensorSplit
from dlbench.data.token_cache import TokenArray, encode_shard, extract_tokens, token_dtype, token_paths
from dlbench.registry import DlbenchError
from dlbench.train.accumulate import accumulate_backward, check_accumulation
from dlbench.train.loop import TensorBatches


def _ctx(rank=0, world=1):
    return SimpleNamespace(rank=rank, world_size=world, is_main=rank == 0, barrier=lambda: None)


def _split(n=37):
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 3)


def _encode(x):  # "b 1 8 8" -> "b 2 2" ids < 300 (needs uint16)
    return (x[:, 0, ::4, ::4] * 140 + 150).round().long().clamp(0, 299)


def test_token_dtype():
    assert token_dtype(256) == np.uint8 and token_dtype(1024) == np.uint16 and token_dtype(70_000) == np.int32


def test_tokens_extracted_once_to_a_memmap(tmp_path):
    split = _split()
    tokens, labels = extract_tokens(_encode, split, tmp_path, "train", "f" * 64, codebook_size=300, ctx=_ctx(),
                                    device=torch.device("cpu"), batch_size=8)
    ref = _encode(split.images.float() / 127.5 - 1)
    assert isinstance(tokens, TokenArray) and isinstance(tokens.array, np.memmap)
    assert tokens.array.dtype == np.uint16 and tokens.shape == (37, 2, 2)
    assert torch.equal(tokens.to_tensor(), ref) and torch.equal(labels, split.labels)
    idx = torch.tensor([5, 0, 36])
    assert tokens[idx].dtype == torch.long and torch.equal(tokens[idx], ref[idx])
    # a second call reads the files, it does not encode again
    again, _ = extract_tokens(lambda x: 1 / 0, split, tmp_path, "train", "f" * 64, codebook_size=300, ctx=_ctx(),
                              device=torch.device("cpu"))
    assert torch.equal(again.to_tensor(), ref)
    # training batches read rows from the memmap: same batches as from the in-memory tensor
    a, b = TensorBatches(tokens, labels, batch_size=6, seed=1), TensorBatches(ref, labels, batch_size=6, seed=1)
    for step in range(8):
        assert all(torch.equal(x, y) for x, y in zip(a.batch(step), b.batch(step)))


def test_sharded_extraction_matches_one_process_and_drops_bad_images(tmp_path):
    split = _split()
    one, _ = extract_tokens(_encode, split, tmp_path / "one", "train", "a" * 64, codebook_size=300, ctx=_ctx(),
                            device=torch.device("cpu"))
    for rank in (2, 1):  # what ranks 1 and 2 of 3 write before the barrier
        encode_shard(_encode, split, tmp_path / "three", "train", "a" * 64, codebook_size=300, rank=rank, world=3,
                     device=torch.device("cpu"), batch_size=4)
    three, lab = extract_tokens(_encode, split, tmp_path / "three", "train", "a" * 64, codebook_size=300,
                                ctx=_ctx(0, 3), device=torch.device("cpu"), batch_size=4)  # rank 0 assembles
    assert torch.equal(three.to_tensor(), one.to_tensor()) and torch.equal(lab, split.labels)
    assert not list((tmp_path / "three").glob(".*part*"))

    class Bad(TensorSplit):
        def load(self, i):
            return None if i in (3, 10) else self[i]

    bad = Bad(split.images, split.labels)
    toks, lab = extract_tokens(_encode, bad, tmp_path / "bad", "train", "b" * 64, codebook_size=300, ctx=_ctx(),
                               device=torch.device("cpu"))
    keep = [i for i in range(37) if i not in (3, 10)]
    assert torch.equal(toks.to_tensor(), one.to_tensor()[keep]) and torch.equal(lab, split.labels[keep])
    assert token_paths(tmp_path / "bad", "train", "b" * 64)[0].is_file()


def test_gradient_accumulation_gives_the_full_batch_gradient():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randn(8, 3)

    def loss_fn(a, b):
        loss = (model(a) - b).pow(2).mean()
        return loss, {"mse": loss.detach()}

    grads, losses = [], []
    for m in (1, 2, 4):
        model.zero_grad()
        loss, terms = accumulate_backward(loss_fn, (x, y), m, lambda: torch.autocast("cpu", enabled=False))
        grads.append([p.grad.clone() for p in model.parameters()])
        losses.append(loss)
        assert torch.isclose(terms["mse"], loss)
    for g in grads[1:]:
        for a, b in zip(grads[0], g):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(losses[0], losses[2])
    check_accumulation(16, 2, 4)
    with pytest.raises(DlbenchError, match="grad_accum=3 does not divide the per-process batch 8"):
        check_accumulation(16, 2, 3)


# ---------------------------------------------------------------------------------------------
# the paper path at toy size, through the CLI
# ---------------------------------------------------------------------------------------------

TOY_VQGAN = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,2,2,2]", "tokenizer.num_res_blocks=1", "tokenizer.z_channels=16",
             "tokenizer.codebook_size=64", "tokenizer.code_dim=8", "tokenizer.disc_channels=8", "tokenizer.disc_start=1",
             "dataset.resolution=64", "dataset.max_images=64"]
TOY_RUN = ["evaluation.enabled=false", "sampling.num_samples=4", "sampling.batch_size=4", "sampling.steps=2",
           "training.batch_size=8", "training.checkpoint_every=2", "training.log_every=1"]


def _cli(args, nproc=None, timeout=900):
    cmd = [sys.executable, "-m", "dlbench", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "dlbench", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _events(run):
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_paper_path_at_toy_size(tmp_path):
    """VQGAN at 64 px with L1 + LPIPS (stand-in VGG16 file) + PatchGAN from step 1, trained by 2 gloo ranks under
    torchrun; tokens extracted (sharded) to the memmap cache; generator on 2 ranks, resumed on 1 rank with
    grad_accum 2; then an imported taming-layout checkpoint through the safe loader."""
    import torchvision

    vgg = tmp_path / "vgg16-standin.pth"
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, vgg)
    sets = [*TOY_VQGAN, *TOY_RUN, f"tokenizer.lpips_vgg_weights={vgg}", "tokenizer.training.steps=2",
            "tokenizer.training.batch_size=4", "tokenizer.seed=19", "training.steps=2"]
    base = ["run", "vqlcmd", "--preset", "quick", "--tokenizer", "vqgan", "--out", str(tmp_path / "runs")]
    args = base + [a for s in sets for a in ("--set", s)]
    proc = _cli(args, nproc=2)
    assert proc.stdout.count("run directory:") == 1
    (run,) = (tmp_path / "runs").glob("vqlcmd/*/*")
    ev = _events(run)
    tok_log = [e for e in ev if e["event"] == "tokenizer_train"]
    assert tok_log and {"l1", "lpips", "g_loss", "d_loss", "adaptive_weight"} <= set(tok_log[-1])
    assert next(e for e in ev if e["event"] == "tokenizer_train_start")["world_size"] == 2
    assert next(e for e in ev if e["event"] == "train_end")["step"] == 2
    key = next(e for e in ev if e["event"] == "tokenizer")["key"]
    from dlbench.eval.inception import cache_dir

    tok_files = list((cache_dir() / "tokenizers" / key).glob("tokens-train-*.npy"))
    assert len(tok_files) == 1 and np.load(tok_files[0], mmap_mode="r").shape == (64, 8, 8)

    # resume on one process, with accumulation keeping the global batch of 8
    resume = base + [a for s in [*sets[:-1], "training.steps=4", "training.grad_accum=2"] for a in ("--set", s)]
    _cli(resume + ["--resume", str(run)])
    ev = _events(run)
    res = [e for e in ev if e["event"] == "train_resume"]
    assert res and res[-1]["step"] == 2
    assert any(e["event"] == "warning" and "world size 1 != 2" in e.get("message", "") for e in ev)
    assert [e for e in ev if e["event"] == "train_end"][-1]["step"] == 4
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"

    # an imported taming-layout checkpoint: no tokenizer training, decodes in the run
    from dlbench.nn.vqgan import VQGAN, VQGANConfig
    from _vqgan_data import taming_ckpt

    params = dict(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1, z_channels=16, codebook_size=64, code_dim=8,
                  disc_channels=8, perceptual_weight=0.0)
    torch.manual_seed(3)
    ckpt = taming_ckpt(VQGAN(VQGANConfig(**params), channels=1, resolution=64), tmp_path / "last.ckpt")
    sets = [*TOY_VQGAN, *TOY_RUN, f"tokenizer.checkpoint={ckpt}", "tokenizer.perceptual_weight=0", "training.steps=1"]
    _cli(["run", "vqlcmd", "--preset", "quick", "--tokenizer", "vqgan", "--out", str(tmp_path / "imported")]
         + [a for s in sets for a in ("--set", s)])
    (run2,) = (tmp_path / "imported").glob("vqlcmd/*/*")
    tok = next(e for e in _events(run2) if e["event"] == "tokenizer")
    assert tok["action"] == "imported" and not any(e["event"] == "tokenizer_train_start" for e in _events(run2))
