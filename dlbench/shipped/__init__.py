"""One-off artefacts of the embedded default, shipped inside the package.

The README's first run (``dlbench run vqlcmd`` on ``fashion-mnist-small`` with the ``default``
preset and protocol) would otherwise spend most of its time on work that is the same for every user:
training the default tokenizer, training the domain classifier, and extracting Inception features of
the reference images. ``scripts/build_shipped_artifacts.py`` produces them with the project's own code
(the same functions a run calls, the default config and seeds, fp32) and records each in
``manifest.json`` next to this file:

- ``kind``: ``tokenizer`` | ``domain-classifier`` | ``reference-features`` | ``anchors``;
- ``key``: the cache key a run computes for the same inputs (:func:`dlbench.runner.tokenizer_stage.tokenizer_key`,
  :func:`dlbench.eval.domain.classifier_key`, :meth:`EvalProtocol.reference_key`), and ``config``: what
  that key hashes, for humans;
- ``file``, ``sha256``, ``size``; ``command`` (how it was built) and ``built_with`` (versions, machine).

Lookup happens only on a cache miss, by kind and key, so a shipped artefact is used exactly when a
run would otherwise compute the same thing: the run's identity (tokenizer key, classifier key,
protocol hash) is the same whether the artefact was shipped or trained locally. Before use the file's
size and sha256 are checked against the manifest; a mismatch is refused with a
:class:`ShippedArtifactError` naming the file. The verified artefact is then installed in the cache
where a local computation would have written it (so later runs find it there, and ``info.json`` of a
tokenizer says ``"source": "shipped"``). Files are safetensors, JSON and ``.npz`` read with
``allow_pickle=False``: nothing here can run code.

Bit-for-bit, a locally trained artefact can differ from the shipped one in the last float bits (CPU
kernels differ between machines); the configuration, and therefore the key, is the same.

``DLBENCH_NO_SHIPPED=1`` ignores the shipped artefacts (everything is computed locally); the build
script sets it so that it always trains from scratch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from dlbench.registry import DlbenchError

__all__ = [
    "SHIPPED_DIR",
    "MANIFEST_NAME",
    "ShippedArtifactError",
    "enabled",
    "read_manifest",
    "find",
    "verified_path",
    "install_tokenizer",
    "install_domain_classifier",
    "install_reference_features",
    "install_anchors",
    "safetensors_bytes",
    "write_artifact",
    "write_manifest",
]

SHIPPED_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
KINDS = ("tokenizer", "domain-classifier", "reference-features", "anchors")


class ShippedArtifactError(DlbenchError):
    """A shipped artefact that fails its checks (size, sha256, manifest)."""


def enabled() -> bool:
    """False when ``DLBENCH_NO_SHIPPED`` is set to anything but ``""``/``0``."""
    return os.environ.get("DLBENCH_NO_SHIPPED", "") in ("", "0")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _read_manifest_cached(path: str, mtime_ns: int) -> dict[str, Any]:  # noqa: ARG001 - mtime keys the cache
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("artifacts"), list):
        raise ShippedArtifactError(f"{path}: not a dlbench shipped-artefact manifest (format {MANIFEST_FORMAT})")
    return data


def read_manifest(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of ``directory`` (default: the package's); an empty one when there is none."""
    path = Path(directory or SHIPPED_DIR) / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "artifacts": []}
    return _read_manifest_cached(str(path), path.stat().st_mtime_ns)


def find(kind: str, key: str, directory: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The manifest entry of ``kind`` with cache key ``key``, or None (also when disabled)."""
    if kind not in KINDS:
        raise ValueError(f"unknown shipped artefact kind {kind!r}; kinds are {KINDS}")
    if not enabled():
        return None
    for entry in read_manifest(directory)["artifacts"]:
        if entry.get("kind") == kind and entry.get("key") == key:
            return entry
    return None


def verified_path(entry: dict[str, Any], directory: str | os.PathLike | None = None) -> Path:
    """The entry's file after checking its size and sha256 against the manifest."""
    path = Path(directory or SHIPPED_DIR) / entry["file"]
    hint = "reinstall dlbench, or set DLBENCH_NO_SHIPPED=1 to compute it locally"
    if not path.is_file():
        raise ShippedArtifactError(f"shipped {entry['kind']} {path} is missing; {hint}")
    size = path.stat().st_size
    digest = _sha256(path)
    if size != entry["size"] or digest != entry["sha256"]:
        raise ShippedArtifactError(
            f"shipped {entry['kind']} {path} fails its check (sha256 {digest[:12]}..., {size} bytes; manifest says "
            f"{entry['sha256'][:12]}..., {entry['size']} bytes); {hint}"
        )
    return path


# ---------------------------------------------------------------------------------------------
# build side (scripts/build_shipped_artifacts.py, and tests that ship a small artefact of their own)
# ---------------------------------------------------------------------------------------------


def safetensors_bytes(state: dict) -> bytes:
    """A state_dict as safetensors bytes (tensors made contiguous and unshared)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def write_artifact(directory: str | os.PathLike, name: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` as ``directory/name``; returns the manifest fields ``file``, ``sha256``, ``size``."""
    (Path(directory) / name).write_bytes(data)
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_manifest(directory: str | os.PathLike, artifacts: list[dict[str, Any]], **fields: Any) -> Path:
    """Write ``manifest.json`` listing ``artifacts`` (each with kind, key, file, sha256, size, ...)."""
    for entry in artifacts:
        missing = {"kind", "key", "file", "sha256", "size"} - set(entry)
        if missing or entry["kind"] not in KINDS:
            raise ShippedArtifactError(f"manifest entry {entry.get('file')}: missing {sorted(missing)} or bad kind")
    path = Path(directory) / MANIFEST_NAME
    data = {"format": MANIFEST_FORMAT, **fields, "artifacts": artifacts}
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _torch_save_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# installers: called on a cache miss; each writes what a local computation would have written
# ---------------------------------------------------------------------------------------------


def install_tokenizer(key: str, folder: str | os.PathLike, directory: str | os.PathLike | None = None) -> dict | None:
    """Install the shipped tokenizer with cache key ``key`` into its cache ``folder`` (``tokenizer.pt`` +
    ``info.json``, as :func:`dlbench.runner.tokenizer_stage.get_tokenizer` writes them). Returns its info, or
    None when nothing with that key ships."""
    from safetensors.torch import load_file

    from dlbench.runs import atomic_write_bytes, atomic_write_json

    entry = find("tokenizer", key, directory)
    if entry is None:
        return None
    state = load_file(str(verified_path(entry, directory)))
    folder = Path(folder)
    info = {**entry["info"], "source": "shipped", "shipped_sha256": entry["sha256"]}
    atomic_write_json(folder / "info.json", info)
    atomic_write_bytes(folder / "tokenizer.pt", _torch_save_bytes(state))  # last: marks a complete entry
    return info


def install_domain_classifier(key: str, path: str | os.PathLike, directory: str | os.PathLike | None = None) -> bool:
    """Install the shipped domain classifier with cache key ``key`` at ``path`` (the
    ``{"state_dict", "info"}`` file :func:`dlbench.eval.domain.train_domain_classifier` writes)."""
    from safetensors.torch import load_file

    from dlbench.runs import atomic_write_bytes

    entry = find("domain-classifier", key, directory)
    if entry is None:
        return False
    state = load_file(str(verified_path(entry, directory)))
    info = {**entry["info"], "source": "shipped"}
    atomic_write_bytes(path, _torch_save_bytes({"state_dict": state, "info": info}))
    return True


def install_reference_features(reference_key: str, cache_name: str, directory: str | os.PathLike | None = None) -> bool:
    """Install the shipped Inception features of the reference set with ``reference_key`` where the
    torch-fidelity backend caches them (:func:`dlbench.eval.backends.reference_feature_file`: an ``.npz``
    holding ``"2048": float32 "n 2048"``, read without pickle). Returns False when the file is already there
    or nothing with that key ships."""
    import numpy as np

    from dlbench.eval.backends import reference_feature_file

    target = reference_feature_file(cache_name)
    if target.is_file():
        return False
    entry = find("reference-features", reference_key, directory)
    if entry is None:
        return False
    with np.load(verified_path(entry, directory), allow_pickle=False) as data:
        feats = np.ascontiguousarray(data["features"])
    if tuple(feats.shape) != tuple(entry["shape"]) or feats.dtype != np.float32:
        raise ShippedArtifactError(
            f"shipped reference-features {entry['file']}: {tuple(feats.shape)} {feats.dtype}, manifest says {entry['shape']}"
        )
    from dlbench.fsutil import atomic_write

    with atomic_write(target) as fh:
        np.savez(fh, **{"2048": feats})
    return True


def install_anchors(key: str, folder: str | os.PathLike, directory: str | os.PathLike | None = None) -> dict | None:
    """Install the shipped anchor record with key ``key`` (:func:`dlbench.eval.anchors.anchor_key`) into the
    cache's anchors ``folder`` as ``<key>.json``, as :func:`dlbench.runner.calibration.anchors_for` writes it.
    Returns the record (marked ``"source": "shipped"``), or None when nothing with that key ships.

    The record is JSON (no code can run); its key is re-derived from the fields it states, so a record
    edited into another dataset/tokenizer/protocol is refused.
    """
    from dlbench.eval.anchors import anchor_key
    from dlbench.runs import atomic_write_json

    entry = find("anchors", key, directory)
    if entry is None:
        return None
    record = json.loads(verified_path(entry, directory).read_text())
    inputs = {k: record.get(k) for k in ("fingerprints", "tokenizer_key", "protocol_hash", "n", "seed")}
    if not isinstance(record, dict) or record.get("key") != key or anchor_key(
        fingerprints=inputs["fingerprints"], tokenizer_key=inputs["tokenizer_key"],
        protocol_hash=inputs["protocol_hash"], n=inputs["n"], seed=inputs["seed"]) != key:
        raise ShippedArtifactError(f"shipped anchors {entry['file']}: its fields do not hash to key {key}")
    record = {**record, "source": "shipped"}
    atomic_write_json(Path(folder) / f"{key}.json", record)
    return record
