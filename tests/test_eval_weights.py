"""Real-weights sanity: FID separates same-domain from cross-domain data."""

import pytest

from _eval_data import fashion, mnist
from dlbench.eval.backends import compute_backend_metrics
from dlbench.eval.inception import resolve_inception_weights
from dlbench.eval.protocol import resolve_protocol

N = 200  # "a few hundred images each"; Inception at 299 px runs 4-10 img/s on 2 cores (CPU-dependent): 3 x N images


@pytest.mark.weights
@pytest.mark.slow
def test_fid_fashion_train_vs_test_is_far_below_fashion_vs_mnist():
    w = resolve_inception_weights()
    p = resolve_protocol("default", num_generated=N, num_reference=N, inception_metrics=("fid",))
    train, _ = fashion("train", N)
    test, _ = fashion("test", N)
    same, _ = compute_backend_metrics(train, test, p, w, reference_cache_name="weights-test-fashion-test")
    cross, _ = compute_backend_metrics(mnist(N), test, p, w, reference_cache_name="weights-test-fashion-test")
    print(f"FID fashion-train vs fashion-test: {same['fid']:.2f}; mnist vs fashion-test: {cross['fid']:.2f} (n={N})")
    assert same["fid"] * 2 < cross["fid"]
