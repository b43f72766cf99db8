"""Anchor rows on constructed cases with known answers (identity tokenizer, known per-position marginals)."""

from __future__ import annotations

import pytest
import torch

from dlbench.eval.anchors import (
    AnchorError,
    add_marginal_nll,
    anchor_key,
    compute_anchors,
    find_anchors,
    heldout_plan,
    load_anchors,
    placement,
    save_anchors,
)
from dlbench.eval.token_metrics import entropy, sample_from_marginals

K, GRID, C = 6, (3, 3), 3
LEVELS = torch.linspace(0, 255, K).round().to(torch.uint8)


def identity_decode(tokens: torch.Tensor) -> torch.Tensor:
    """The identity tokenizer: one pixel per token, token k <-> grey level LEVELS[k]."""
    return LEVELS[tokens][:, None]


def identity_encode(images: torch.Tensor) -> torch.Tensor:
    return (images[:, 0, :, :, None].int() - LEVELS.int()).abs().argmin(-1)


def true_marginals(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(C, GRID[0] * GRID[1], K, generator=g) * 2.5, -1).double()


def bayes_evaluator(marg: torch.Tensor):
    """Class consistency of images: argmax_c log p(tokens | c) under the true class marginals."""
    def evaluate(images, labels):
        toks = identity_encode(images).reshape(len(images), -1)
        ll = torch.stack([marg[c].log().gather(-1, toks.T).sum(0) for c in range(C)], 1)
        metrics = {"mean_level": images.double().mean().item()}
        if labels is not None:
            metrics["class_acc"] = (ll.argmax(1) == labels).double().mean().item()
        return {"metrics": metrics, "unavailable": {}}
    return evaluate


def make_data(n_train=6000, n=3000, seed=0):
    marg = true_marginals(seed)
    train_labels = torch.arange(n_train) % C
    train = sample_from_marginals(marg, GRID, train_labels, n_train, seed=seed + 1)
    real_labels = torch.arange(n) % C
    real = sample_from_marginals(marg, GRID, real_labels, n, seed=seed + 2)
    ref_labels = torch.arange(n) % C
    ref = sample_from_marginals(marg, GRID, ref_labels, n, seed=seed + 3)
    return marg, train, train_labels, real, real_labels, ref, ref_labels


def test_identity_tokenizer_reconstruction_equals_real():
    marg, train, train_labels, real, real_labels, ref, _ = make_data(n=600)
    assert torch.equal(identity_encode(identity_decode(real)), real)
    rows = compute_anchors(real_images=identity_decode(real), real_labels=real_labels, real_tokens=real,
                           reference_tokens=ref, train_tokens=train, train_labels=train_labels, codebook_size=K,
                           num_classes=C, decode=identity_decode, evaluate=bayes_evaluator(marg))
    assert rows["reconstruction"]["metrics"] == rows["real"]["metrics"]
    assert set(rows) == {"real", "reconstruction", "class_marginals", "marginals"}


def test_class_marginals_anchor_matches_data_from_known_marginals():
    marg, train, train_labels, real, real_labels, ref, ref_labels = make_data()
    rows = compute_anchors(real_images=identity_decode(real), real_labels=real_labels, real_tokens=real,
                           reference_tokens=ref, train_tokens=train, train_labels=train_labels, codebook_size=K,
                           num_classes=C, decode=identity_decode, evaluate=bayes_evaluator(marg), seed=5)
    real_m, cm, um = (rows[n]["metrics"] for n in ("real", "class_marginals", "marginals"))
    # the data *is* i.i.d. per position given the class: the class-marginal sampler is the data distribution
    assert cm["token_kl_unigram"] == pytest.approx(real_m["token_kl_unigram"], abs=0.02)
    assert cm["token_kl_pair"] == pytest.approx(real_m["token_kl_pair"], abs=0.03)
    assert cm["class_acc"] == pytest.approx(real_m["class_acc"], abs=0.04)  # ~ 3 binomial s.e. at n = 3000
    assert real_m["class_acc"] > 0.8
    # the unconditional sampler keeps the per-position mixture but forgets the class
    assert um["class_acc"] < 0.5 and um["token_kl_unigram"] < 0.02
    # exact NLL of the marginal models on held-out grids: the class model reaches the conditional entropy
    add_marginal_nll(rows, ref, ref_labels, train, train_labels, K, C, alpha=0.5)
    h_cond = float(entropy(marg).mean())
    h_uncond = float(entropy(marg.mean(0)).mean())
    assert rows["class_marginals"]["metrics"]["nll_bound"] == pytest.approx(h_cond, abs=0.03)
    assert rows["marginals"]["metrics"]["nll_bound"] == pytest.approx(h_uncond, abs=0.03)
    assert h_cond < h_uncond


def test_placement_words():
    anchors = {"real": 1.0, "reconstruction": 5.0, "class_marginals": 40.0, "marginals": 60.0}
    assert placement(20.0, 18.0, 22.0, anchors, True) == \
        "between class marginals (40) and reconstruction (5)"
    assert placement(41.0, 35.0, 45.0, anchors, True) == "not distinguishable from class marginals (95 % CI)"
    assert placement(80.0, None, None, anchors, True).startswith("worse than every anchor, marginals")
    assert placement(0.5, None, None, anchors, True).startswith("better than every anchor, real")
    acc = {"real": 0.9, "class_marginals": 0.8, "marginals": 0.1}
    assert placement(0.5, 0.45, 0.55, acc, False) == "between marginals (0.1) and class marginals (0.8)"


def test_heldout_plan_never_overlaps_the_reference():
    plan = heldout_plan({"train": 20000, "test": 5000}, "test", 2000, 2000, 1000)
    assert plan == {"anchor": ("test", 2000, 4000), "validation": ("test", 4000, 5000)}
    plan = heldout_plan({"train": 512, "test": 512}, "test", 1000, 16, 64)
    assert plan == {"anchor": ("train", 0, 16), "validation": ("train", 16, 80)}
    assert heldout_plan({"train": 100}, "train", None, 500)["anchor"] is None


def test_records_round_trip_and_keys(tmp_path):
    key = anchor_key(fingerprints={"train": "a", "test": "b"}, tokenizer_key="t", protocol_hash="p", n=4, seed=0)
    assert key != anchor_key(fingerprints={"train": "a", "test": "b"}, tokenizer_key="t", protocol_hash="q", n=4,
                             seed=0)
    rec = {"version": "anchors-v1", "key": key, "rows": {"real": {"metrics": {"fid": 1.0}, "unavailable": {}}}}
    save_anchors(tmp_path / f"{key}.json", rec)
    assert find_anchors(key, tmp_path) == rec
    assert find_anchors("0" * 24, tmp_path) is None
    with pytest.raises(AnchorError, match="expected"):
        load_anchors(tmp_path / f"{key}.json", key="x")
