"""Artefacts shipped in dlbench/shipped/: they match today's default config, are sha256-checked, and a
run uses them instead of training (scripts/build_shipped_artifacts.py builds them)."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbench import shipped
from dlbench.config import build_config
from dlbench.plugins import get_registry
from dlbench.runs import read_json

ROOT = Path(__file__).resolve().parents[1]
SESSION_CACHE = os.environ["DLBENCH_CACHE"]  # conftest's; tests that ship their own artefacts move it
KINDS = ("tokenizer", "domain-classifier", "reference-features", "anchors")


def _entries() -> dict[str, dict]:
    entries = {e["kind"]: e for e in shipped.read_manifest()["artifacts"]}
    assert entries and set(entries) <= set(KINDS), f"manifest lists {sorted(entries)}"
    return entries


def _entry(kind: str) -> dict:
    """The package's entry of ``kind``; a checkout may ship a subset (each kind is built on its own)."""
    entry = _entries().get(kind)
    if entry is None:
        pytest.skip(f"no shipped {kind} in this checkout: python scripts/build_shipped_artifacts.py --only {kind}")
    return entry


def _default(method: str = "vqlcmd", overrides: tuple[str, ...] = ()):
    registry = get_registry()
    cfg = build_config(method, registry=registry, preset="default", device="cpu", overrides=overrides)
    return cfg, registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)


def _json(obj):
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------
# the manifest matches today's code and files
# ---------------------------------------------------------------------------------------------


def test_files_match_their_recorded_sha256_and_size():
    for kind, entry in _entries().items():
        path = shipped.verified_path(entry)  # raises on a mismatch
        assert path.parent == shipped.SHIPPED_DIR and entry["command"].startswith("python scripts/build_shipped")


@pytest.mark.parametrize("method", ["vqlcmd", "vq-diffusion"])
def test_tokenizer_key_is_todays_default(method):
    """Fails when the default tokenizer config (or its cache-key recipe) changes without a rebuild."""
    from dlbench.runner.tokenizer_stage import tokenizer_key, tokenizer_key_inputs

    cfg, ds = _default(method)
    entry = _entry("tokenizer")
    assert cfg.tokenizer.training.precision == "fp32"
    assert entry["config"] == _json(tokenizer_key_inputs(cfg, ds))
    assert entry["key"] == tokenizer_key(cfg, ds)


def test_domain_classifier_key_is_todays_default():
    from dlbench.eval.domain import DomainClassifierConfig, classifier_key

    _, ds = _default()
    entry = _entry("domain-classifier")
    assert entry["key"] == classifier_key(ds.fingerprint("train"), ds.channels, ds.num_classes, DomainClassifierConfig())
    assert entry["info"]["test_accuracy"] > 0.8  # a classifier that learned the domain


@pytest.mark.weights
def test_reference_features_key_is_todays_default_protocol():
    from dlbench.eval.api import bind_reference
    from dlbench.eval.protocol import resolve_protocol

    cfg, ds = _default()
    protocol = bind_reference(resolve_protocol(cfg.evaluation.protocol, **cfg.evaluation.overrides), ds)
    entry = _entry("reference-features")
    assert entry["key"] == protocol.reference_key()
    assert entry["shape"] == [protocol.num_reference, 2048]


@pytest.mark.weights
def test_reference_features_are_those_of_the_reference_images():
    """The first 8 shipped rows against torch-fidelity's extractor run here on the same images (other
    CPUs, batch sizes and thread counts move float32 features by ~1e-5, not more)."""
    from torch_fidelity.utils import create_feature_extractor

    from dlbench.eval.backends import Uint8ImageDataset
    from dlbench.eval.inception import resolve_inception_weights

    _, ds = _default()
    entry = _entry("reference-features")
    with np.load(shipped.verified_path(entry), allow_pickle=False) as z:
        want = torch.from_numpy(z["features"][:8])
    ref = Uint8ImageDataset(ds.split(entry["config"]["reference_split"]), 8)
    fe = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False, verbose=False,
                                  feature_extractor_weights_path=str(resolve_inception_weights().path))
    with torch.no_grad():
        got = fe(torch.stack([ref[i] for i in range(8)]))[0]
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


@pytest.mark.weights
def test_anchors_key_is_todays_default_run():
    """The shipped anchor record is the one the README's run looks up: same tokenizer key, the run's own
    protocol (token metrics in) bound to the reference set, the dataset's fingerprints, n and seed."""
    from dlbench.eval.anchors import anchor_key
    from dlbench.eval.api import bind_reference
    from dlbench.runner.evaluation import resolve_run_protocol
    from dlbench.runner.tokenizer_stage import tokenizer_key

    entry = _entry("anchors")
    cfg, ds = _default()
    protocol = bind_reference(resolve_run_protocol(cfg), ds)
    key = anchor_key(fingerprints={s: ds.fingerprint(s) for s in ds.splits}, tokenizer_key=tokenizer_key(cfg, ds),
                     protocol_hash=protocol.hash(), n=protocol.num_generated, seed=0)
    assert entry["key"] == key, "default run config changed: python scripts/build_shipped_artifacts.py --only anchors"
    record = json.loads(shipped.verified_path(entry).read_text())
    assert record["key"] == key and set(record["rows"]) == {"real", "reconstruction", "class_marginals", "marginals"}
    assert record["tokenizer_key"] == _entry("tokenizer")["key"]


def test_package_data_ships_every_manifest_file():
    """A non-editable install must carry the files (setuptools package-data)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dlbench.shipped"]
    names = ["manifest.json"] + [e["file"] for e in _entries().values()]
    for name in names:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in data), name


# ---------------------------------------------------------------------------------------------
# the mechanism, on artefacts a test ships for the quick preset's keys (cheap, and independent of
# which real artefacts are built)
# ---------------------------------------------------------------------------------------------


def _quick():
    registry = get_registry()
    cfg = build_config("vqlcmd", registry=registry, preset="quick", device="cpu")
    return cfg, registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)


@pytest.fixture
def quick_shipped(tmp_path, monkeypatch):
    """A shipped directory holding an (untrained, seeded) tokenizer and domain classifier under the quick
    preset's keys, plus reference features under a made-up key; the package's directory is swapped for it."""
    from dlbench.eval.domain import DomainClassifierConfig, DomainCNN, classifier_key
    from dlbench.plugins import get_registry
    from dlbench.runner.tokenizer_stage import build_tokenizer, tokenizer_key

    cfg, ds = _quick()
    directory = tmp_path / "shipped"
    directory.mkdir()
    torch.manual_seed(123)
    tok = build_tokenizer(cfg, get_registry(), ds)
    tkey = tokenizer_key(cfg, ds)
    clf = DomainCNN(ds.channels, ds.num_classes)
    ckey = classifier_key(ds.fingerprint("train"), ds.channels, ds.num_classes, DomainClassifierConfig())
    feats = torch.randn(50, 2048, generator=torch.Generator().manual_seed(0)).abs()
    buf = io.BytesIO()
    np.savez_compressed(buf, features=feats.numpy())
    entries = [
        {"kind": "tokenizer", "key": tkey, "info": {"key": tkey, "name": "vqvae"},
         **shipped.write_artifact(directory, "tok.safetensors", shipped.safetensors_bytes(tok.state_dict()))},
        {"kind": "domain-classifier", "key": ckey,
         "info": {"key": ckey, "config": DomainClassifierConfig().model_dump(), "channels": ds.channels,
                  "num_classes": ds.num_classes, "test_accuracy": None},
         **shipped.write_artifact(directory, "clf.safetensors", shipped.safetensors_bytes(clf.state_dict()))},
        {"kind": "reference-features", "key": "feedfacefeedface", "shape": [50, 2048],
         **shipped.write_artifact(directory, "ref.npz", buf.getvalue())},
    ]
    anchors = _anchor_record()
    entries.append({"kind": "anchors", "key": anchors["key"],
                    **shipped.write_artifact(directory, "anchors.json", json.dumps(anchors).encode())})
    shipped.write_manifest(directory, entries)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", directory)
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "cache"))
    return {"dir": directory, "entries": {e["kind"]: e for e in entries}, "tokenizer": tok, "classifier": clf,
            "features": feats, "cfg": cfg, "ds": ds, "anchors": anchors}


def _anchor_record(**change) -> dict:
    from dlbench.eval.anchors import anchor_key

    inputs = {"fingerprints": {"train": "a" * 8, "test": "b" * 8}, "tokenizer_key": "c" * 16,
              "protocol_hash": "d" * 12, "n": 20, "seed": 0}
    key = anchor_key(**inputs)
    rows = {name: {"metrics": {"fid": float(i)}} for i, name in
            enumerate(("real", "reconstruction", "class_marginals", "marginals"))}
    return {"version": "anchors-v1", "key": key, **inputs, "rows": rows, **change}


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the size stays, the sha256 does not
    path.write_bytes(bytes(data))


def test_installed_artefacts_are_the_shipped_ones_in_their_consumers_layout(quick_shipped, tmp_path):
    from dlbench.eval.domain import DomainClassifierConfig, train_domain_classifier
    from dlbench.train.dist import init_distributed
    from dlbench.plugins import get_registry
    from dlbench.runner.tokenizer_stage import get_tokenizer

    cfg, ds, e = quick_shipped["cfg"], quick_shipped["ds"], quick_shipped["entries"]
    tok, key, info = get_tokenizer(cfg, get_registry(), ds, init_distributed("cpu"), train_if_missing=False)  # no training allowed
    assert key == e["tokenizer"]["key"] and info["source"] == "shipped"
    want = quick_shipped["tokenizer"].state_dict()
    assert set(tok.state_dict()) == set(want) and all(torch.equal(v, want[k]) for k, v in tok.state_dict().items())
    assert read_json(tmp_path / "cache" / "tokenizers" / key / "info.json")["shipped_sha256"] == e["tokenizer"]["sha256"]
    _, _, again = get_tokenizer(cfg, get_registry(), ds, init_distributed("cpu"), train_if_missing=False)  # now from the cache
    assert again == info

    model, cinfo = train_domain_classifier(
        [], None, fingerprint=ds.fingerprint("train"), channels=ds.channels, num_classes=ds.num_classes,
        config=DomainClassifierConfig(),  # an empty train set: any attempt to train would fail
    )
    want = quick_shipped["classifier"].state_dict()
    assert cinfo["source"] == "shipped" and cinfo["key"] == e["domain-classifier"]["key"]
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())

    from dlbench.eval.backends import reference_feature_file

    os.environ["DLBENCH_CACHE"], saved = str(tmp_path / "cache"), os.environ["DLBENCH_CACHE"]
    try:
        assert shipped.install_reference_features("feedfacefeedface", "dlbench-ref-x")
        with np.load(reference_feature_file("dlbench-ref-x"), allow_pickle=False) as data:
            got = torch.from_numpy(data["2048"])
        assert got.dtype == torch.float32 and torch.equal(got, quick_shipped["features"])
        assert not shipped.install_reference_features("feedfacefeedface", "dlbench-ref-x")  # already there
    finally:
        os.environ["DLBENCH_CACHE"] = saved


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_file_is_refused_naming_it(quick_shipped, tmp_path, kind):
    entry = quick_shipped["entries"][kind]
    path = quick_shipped["dir"] / entry["file"]
    _flip_a_bit(path)
    install = {
        "tokenizer": lambda: shipped.install_tokenizer(entry["key"], tmp_path / "tok"),
        "domain-classifier": lambda: shipped.install_domain_classifier(entry["key"], tmp_path / "clf.pt"),
        "reference-features": lambda: shipped.install_reference_features(entry["key"], f"ref-{tmp_path.name}"),
        "anchors": lambda: shipped.install_anchors(entry["key"], tmp_path / "anchors"),
    }[kind]
    with pytest.raises(shipped.ShippedArtifactError) as err:
        install()
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "sha256" in msg
    assert not any((tmp_path / p).exists() for p in ("tok", "clf.pt", "tf", "anchors"))  # nothing installed


def test_shipped_anchors_install_into_the_cache_and_a_lookup_finds_them(quick_shipped, tmp_path):
    from dlbench.eval.anchors import find_anchors

    want = quick_shipped["anchors"]
    folder = tmp_path / "anchors"
    got = shipped.install_anchors(want["key"], folder)
    assert got == {**want, "source": "shipped"}
    assert find_anchors(want["key"], folder) == got  # later runs read the cache copy
    assert shipped.install_anchors("0" * 24, folder) is None


def test_an_anchor_record_whose_fields_do_not_hash_to_its_key_is_refused(tmp_path, monkeypatch):
    """An edited record (e.g. its rows moved to another tokenizer) cannot pass as the shipped one."""
    record = _anchor_record()
    forged = {**record, "tokenizer_key": "e" * 16}
    directory = tmp_path / "shipped"
    directory.mkdir()
    entry = {"kind": "anchors", "key": record["key"],
             **shipped.write_artifact(directory, "anchors.json", json.dumps(forged).encode())}
    shipped.write_manifest(directory, [entry])
    with pytest.raises(shipped.ShippedArtifactError, match="do not hash to key"):
        shipped.install_anchors(record["key"], tmp_path / "cache", directory)
    assert not (tmp_path / "cache").exists()


def test_unknown_key_and_opt_out_fall_through(quick_shipped, tmp_path, monkeypatch):
    key = quick_shipped["entries"]["tokenizer"]["key"]
    assert shipped.install_tokenizer("0" * 16, tmp_path / "a") is None and not (tmp_path / "a").exists()
    monkeypatch.setenv("DLBENCH_NO_SHIPPED", "1")
    assert shipped.install_tokenizer(key, tmp_path / "b") is None and not (tmp_path / "b").exists()


def test_a_run_uses_the_shipped_tokenizer_and_classifier(quick_shipped, tmp_path):
    from dlbench.api import run

    out = run("vqlcmd", preset="quick", device="cpu", out=tmp_path / "runs")
    events = out.run_dir.events()
    kinds = [e["event"] for e in events]
    assert "tokenizer" in kinds and not any(k.startswith("tokenizer_train") for k in kinds)
    tok = next(e for e in events if e["event"] == "tokenizer")
    assert tok["action"] == "installed" and tok["key"] == quick_shipped["entries"]["tokenizer"]["key"]
    metrics = read_json(out.run_dir.path / "metrics.json")
    assert metrics["status"] == "ok" and metrics["tokenizer"]["key"] == tok["key"]
    assert metrics["tokenizer"]["source"] == "shipped" and metrics["details"]["domain_classifier_source"] == "shipped"


def test_a_run_trains_its_tokenizer_when_nothing_ships_under_its_key(quick_shipped, tmp_path):
    """The other side of the test above: a different tokenizer seed is a different key."""
    from dlbench.api import run

    out = run("vqlcmd", preset="quick", device="cpu", out=tmp_path / "runs", overrides=["tokenizer.seed=1"])
    kinds = [e["event"] for e in out.run_dir.events()]
    assert "tokenizer_train_start" in kinds and read_json(out.run_dir.path / "metrics.json")["tokenizer"]["source"] == "trained"


def test_cli_refuses_a_tampered_tokenizer_in_one_line(quick_shipped, tmp_path):
    entry = quick_shipped["entries"]["tokenizer"]
    _flip_a_bit(quick_shipped["dir"] / entry["file"])
    code = ("import pathlib, dlbench.shipped as s; s.SHIPPED_DIR = pathlib.Path(%r); "
            "from dlbench.cli import main; main(%r)") % (
        str(quick_shipped["dir"]), ["run", "vqlcmd", "--preset", "quick", "--out", str(tmp_path / "runs")])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}", "COLUMNS": "200",
           "DLBENCH_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "shipped tokenizer" in lines[0] and str(quick_shipped["dir"] / entry["file"]) in lines[0]
    assert not (tmp_path / "cache" / "tokenizers" / entry["key"] / "tokenizer.pt").exists()


class _Untouchable(torch.utils.data.Dataset):
    """A reference set whose images must not be read: its features must come from the cache."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        raise AssertionError("a reference image was read: the installed features were not used")


@pytest.mark.weights
def test_torch_fidelity_reads_the_installed_reference_features(quick_shipped, tmp_path, monkeypatch):
    from dlbench.eval.api import bind_reference
    from dlbench.eval.backends import compute_backend_metrics
    from dlbench.eval.inception import resolve_inception_weights
    from dlbench.eval.protocol import resolve_protocol

    ds = quick_shipped["ds"]
    monkeypatch.setenv("DLBENCH_CACHE", SESSION_CACHE)  # the weights converted once per session
    weights = resolve_inception_weights()
    monkeypatch.setenv("DLBENCH_CACHE", str(tmp_path / "cache"))
    protocol = bind_reference(resolve_protocol("default", inception_metrics=("fid",), num_generated=8,
                                               num_reference=50), ds)
    name = f"dlbench-ref-{protocol.reference_key()}"
    assert shipped.install_reference_features("feedfacefeedface", name)  # into DLBENCH_CACHE (tmp_path)
    gen = torch.stack([torch.as_tensor(ds.split("test")[i][0]) for i in range(8)]).expand(-1, 3, -1, -1).contiguous()
    metrics, _ = compute_backend_metrics(gen, _Untouchable(50), protocol, weights, reference_cache_name=name)
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
