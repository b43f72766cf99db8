import pytest

from dlbench.eval.protocol import PRESETS, EvalProtocol, ProtocolError, resolve_protocol
from dlbench.registry import DlbenchError


def test_hash_is_stable_and_canonical():
    a = resolve_protocol("quick")
    b = resolve_protocol(dict(PRESETS["quick"]))
    assert a.hash() == b.hash() and len(a.short_hash()) == 12 and a.hash().startswith(a.short_hash())
    # field order of the input does not matter
    c = EvalProtocol.model_validate(dict(reversed(list(a.model_dump().items()))))
    assert c.hash() == a.hash()
    # the hash is pinned: a change of the quick preset (or of hashing) must be deliberate
    assert a.canonical_json().startswith('{"backend":"torch-fidelity"')


def test_diff_names_the_differing_fields():
    a = resolve_protocol("quick")
    b = resolve_protocol("quick", num_generated=512, sampling={"steps": 50})
    d = a.diff(b)
    assert set(d) == {"num_generated", "sampling", "name"}
    assert d["num_generated"] == (256, 512)
    assert a.hash() != b.hash() and b.name == "quick+custom"


def test_frozen_and_strict():
    p = resolve_protocol("quick")
    with pytest.raises(Exception):
        p.num_generated = 3  # type: ignore[misc]
    with pytest.raises(ProtocolError, match="num_generatd"):
        resolve_protocol("quick", num_generatd=3)
    assert issubclass(ProtocolError, DlbenchError)


def test_unknown_preset_suggests():
    with pytest.raises(ProtocolError, match="Did you mean 'paper'"):
        resolve_protocol("papr")


def test_backend_rules():
    with pytest.raises(ProtocolError, match="clean-fid"):
        resolve_protocol("clean", inception_metrics=("fid", "isc"), resolve_weights=False)
    p = resolve_protocol("default", backend="clean-fid", inception_metrics=("fid",), resolve_weights=False)
    assert p.resize == "pil-bicubic-299" and p.backend_version


def test_resolve_fills_weights_sha(monkeypatch):
    from dlbench.eval import inception

    class W:
        sha256 = "ab" * 32

    monkeypatch.setattr(inception, "resolve_inception_weights", lambda: W())
    assert resolve_protocol("default").feature_extractor_sha256 == "ab" * 32
    assert resolve_protocol("quick").feature_extractor_sha256 is None  # no Inception in quick


def _pinned(**kw):
    base = dict(name="default", backend="torch-fidelity", backend_version="0.4.0", feature_extractor_sha256="0" * 64,
                num_generated=2000, num_reference=2000, reference_split="test")
    return EvalProtocol(**{**base, **kw})


def test_exact_mode_hash_is_unchanged_and_fast_mode_is_part_of_it():
    """Old runs stay comparable: the fp32 (exact feature mode) hash is the one computed before the fast
    mode existed; bf16 (fast mode) is a different protocol and a different reference-feature key."""
    exact = _pinned()
    assert exact.hash() == "244be81a0ea7b4f15d2187b7f616929fbc121e9f43955803060bcb7f01779ab0"
    assert exact.reference_key() == "499eabd3eb5b2076"
    fast = _pinned(precision="bf16")
    assert fast.hash() != exact.hash() and fast.reference_key() != exact.reference_key()
    assert exact.diff(fast) == {"precision": ("fp32", "bf16")}
    with pytest.raises(ValueError, match="torch-fidelity"):
        _pinned(precision="bf16", backend="clean-fid", resize="pil-bicubic-299", inception_metrics=("fid",))
