"""evaluate_samples / evaluate_tokenizer on a tiny Fashion-MNIST stand-in (quick protocol: CPU seconds)."""

import pytest
import torch

from _eval_data import TinyFashion, fashion
from dlbench.eval.api import evaluate_samples, evaluate_tokenizer
from dlbench.eval.domain import DomainClassifierConfig
from dlbench.eval.protocol import ProtocolError, resolve_protocol

CFG = DomainClassifierConfig(steps=60, max_train_images=3000, max_test_images=500)


@pytest.fixture(scope="module")
def ds():
    return TinyFashion(3000, 500)


def test_quick_protocol_metrics_and_batch_size_independence(ds):
    p = resolve_protocol("quick", num_generated=64, num_reference=200)
    x, y = fashion("train", 3000)
    samples, labels = x[-64:], y[-64:]  # real images stand in for good samples
    r1 = evaluate_samples(samples, labels, p, ds, batch_size=7, domain_config=CFG)
    r2 = evaluate_samples(samples, labels, p, ds, batch_size=64, domain_config=CFG)
    assert r1["metrics"] == pytest.approx(r2["metrics"], rel=1e-9)
    assert r1["protocol_hash"] == r2["protocol_hash"] != p.hash()  # bound to the reference fingerprint
    assert r1["protocol"]["reference_fingerprint"] == ds.fingerprint("test")
    m = r1["metrics"]
    assert set(m) == {"domain_fd", "domain_is", "domain_class_acc"} and r1["n"] == 64
    assert m["domain_class_acc"] > 0.5 and m["domain_is"] > 2.0
    # garbage samples are worse on every domain metric
    bad = evaluate_samples(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), labels, p, ds, domain_config=CFG)
    assert bad["metrics"]["domain_fd"] > 5 * m["domain_fd"]
    assert bad["metrics"]["domain_class_acc"] < m["domain_class_acc"]
    unc = evaluate_samples(samples, None, p, ds, domain_config=CFG)
    assert "domain_class_acc" in unc["unavailable"]


def test_wrong_sample_count_is_refused(ds):
    p = resolve_protocol("quick", num_generated=64)
    with pytest.raises(ProtocolError, match="num_generated=64"):
        evaluate_samples(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), None, p, ds)


class _PatchTokenizer(torch.nn.Module):
    """Quantises each 7x7 patch mean to one of 8 levels: a tokenizer with known behaviour."""

    codebook_size = 8

    def encode(self, x):
        m = torch.nn.functional.avg_pool2d(x, 7)[:, 0]
        return ((m + 1) / 2 * 7).round().long().clamp(0, 7)

    def decode(self, t):
        v = t.float() / 7 * 2 - 1
        return v[:, None].repeat_interleave(7, -1).repeat_interleave(7, -2)


def test_evaluate_tokenizer_quick(ds):
    p = resolve_protocol("quick", num_generated=64)
    tok = _PatchTokenizer()
    r = evaluate_tokenizer(tok, ds, "test", p, batch_size=10, domain_config=CFG)
    r2 = evaluate_tokenizer(tok, ds, "test", p, batch_size=64, domain_config=CFG)
    assert r["metrics"] == pytest.approx(r2["metrics"], rel=1e-9)
    m = r["metrics"]
    assert 0 < m["codebook_usage"] <= 100 and m["dead_codes"] == 8 - round(m["codebook_usage"] * 8 / 100)
    assert 5 < m["psnr"] < 40 and 0 < m["ssim"] < 1 and m["domain_rfd"] > 0
    assert "rfid" in r["unavailable"]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_evaluate_tokenizer_trains_domain_classifier_under_no_grad(mode, monkeypatch, tmp_path):
    """Regression: with an empty cache, evaluate_tokenizer (itself under no_grad) called inside no_grad /
    inference mode still trains the domain classifier, and the trained classifier is the one no-grad-free
    training gives (same weights, so the same domain_rfd)."""
    from dlbench.eval.domain import train_domain_classifier

    tiny = TinyFashion(256, 64)
    cfg = DomainClassifierConfig(steps=4, batch_size=32, seed=7)
    p = resolve_protocol("quick", num_generated=32)
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "cold"))
    with mode():
        r = evaluate_tokenizer(_PatchTokenizer(), tiny, "test", p, batch_size=16, domain_config=cfg)
    assert list((tmp_path / "cold" / "domain").glob("classifier-*.pt")), "the classifier was not trained and cached"
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "grad"))
    ref, _ = train_domain_classifier(tiny.split("train"), tiny.split("test"), fingerprint=tiny.fingerprint("train"),
                                     channels=1, num_classes=10, config=cfg)
    cached = sorted((tmp_path / "cold" / "domain").glob("classifier-*.pt"))[0]
    from dlbench.eval.domain import load_domain_classifier

    got, _ = load_domain_classifier(cached)
    for a, b in zip(got.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert r["metrics"]["domain_rfd"] > 0


def test_domain_reference_features_are_extracted_once_per_process(monkeypatch):
    """Learning-curve points and the final evaluation score against one reference with one classifier: its
    features are computed once (memoised by the images' and the weights' digest), with the same numbers."""
    from dlbench.eval import domain

    torch.manual_seed(0)
    model = domain.DomainCNN(1, 3, 4, 8).eval()
    ref = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    gen = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    seen: list[str] = []
    real = domain._predict
    monkeypatch.setattr(domain, "_predict", lambda m, x, **kw: seen.append(kw.get("stage")) or real(m, x, **kw))
    monkeypatch.setattr(domain, "_REFERENCE_STATS", {})
    first = domain.domain_metrics(model, gen, ref)
    again = domain.domain_metrics(model, gen, ref)
    assert first == again and seen.count("domain_features/reference") == 1
    other = domain.DomainCNN(1, 3, 4, 8).eval()  # other weights: recomputed
    domain.domain_metrics(other, gen, ref)
    ref2 = ref.clone()
    ref2[0, 0, 0, 0] ^= 1  # other images: recomputed
    domain.domain_metrics(model, gen, ref2)
    assert seen.count("domain_features/reference") == 3
