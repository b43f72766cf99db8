#!/usr/bin/env python
"""Build ``dlbench/data/embedded/fashion_mnist_small.{npz.xz,json}`` from the Fashion-MNIST IDX files.

Source: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``), i.e. the
original Zalando Research release (MIT licence). Selection: for each class c = 0..9, a
``numpy.random.default_rng(seed)`` draws ``per_class`` indices without replacement from the indices of
class c (classes in order, one generator for all); the union is sorted, so images keep their source
order. The chosen indices are written to the JSON, so the subset is reproducible from the JSON alone
even if numpy's sampling algorithm ever changes.

Usage: ``python scripts/build_embedded_dataset.py [--source-dir DIR] [--out-dir DIR] [--seed 0]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlbench.data.embedded import CLASS_NAMES, DATA_FILE, META_FILE  # noqa: E402
from dlbench.data.formats import read_idx  # noqa: E402
from dlbench.data.mnist import find_idx_pair  # noqa: E402

LZMA_PRESET = 9 | lzma.PRESET_EXTREME


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices with exactly ``per_class`` of each class 0..9, drawn without replacement."""
    picks = []
    for c in range(10):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has only {len(pool)} images, {per_class} requested")
        picks.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def debian_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--out-dir", type=Path, default=REPO / "dlbench" / "data" / "embedded")
    ap.add_argument("--train-per-class", type=int, default=2000)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    arrays: dict[str, np.ndarray] = {}
    source_files: dict[str, str] = {}
    selection: dict[str, object] = {"seed": args.seed, "rng": "numpy.random.default_rng (PCG64)"}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        pair = find_idx_pair(args.source_dir, split)
        if pair is None:
            raise SystemExit(f"no Fashion-MNIST {split} idx files in {args.source_dir} (apt install dataset-fashion-mnist)")
        for p in pair:
            source_files[p.name] = sha256(p.read_bytes())
        images, labels = read_idx(pair[0]), read_idx(pair[1])
        idx = stratified_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = np.ascontiguousarray(images[idx])
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
        selection[f"{split}_per_class"] = per_class
        selection[f"{split}_source_size"] = int(len(labels))
        selection[f"{split}_indices"] = idx.tolist()

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: xz on top compresses far better than zip's deflate
    blob = lzma.compress(buf.getvalue(), preset=LZMA_PRESET)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / DATA_FILE).write_bytes(blob)

    meta = {
        "name": "fashion-mnist-small",
        "description": "stratified Fashion-MNIST subset, 28x28 uint8 grey, zero-padded to 32x32 at load time",
        "credit": "Fashion-MNIST by Zalando Research (Han Xiao, Kashif Rasul, Roland Vollgraf, 2017, "
        "arXiv:1708.07747), https://github.com/zalandoresearch/fashion-mnist",
        "licence": "MIT, Copyright (c) 2017 Zalando SE",
        "classes": list(CLASS_NAMES),
        "source": {
            "debian_package": "dataset-fashion-mnist",
            "debian_version": debian_version("dataset-fashion-mnist"),
            "dir": str(args.source_dir),
            "sha256": source_files,
        },
        "build_script": "scripts/build_embedded_dataset.py",
        "format": "xz (LZMA2 preset 9e) of an uncompressed .npz (numpy.savez)",
        "data_file": DATA_FILE,
        "data_sha256": sha256(blob),
        "arrays": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256(v.tobytes())} for k, v in arrays.items()
        },
        "selection": selection,
    }
    (args.out_dir / META_FILE).write_text(_dump_meta(meta))
    print(
        f"wrote {args.out_dir / DATA_FILE} ({len(blob) / 1e6:.2f} MB; npz_compressed would be "
        f"{_savez_compressed_size(arrays) / 1e6:.2f} MB) and {args.out_dir / META_FILE}"
    )


def _dump_meta(meta: dict) -> str:
    """Indented JSON, with the long index lists and shapes on one line each."""
    compact: dict[str, str] = {}

    def squash(obj):
        if isinstance(obj, dict):
            return {k: squash(v) for k, v in obj.items()}
        if isinstance(obj, list) and all(isinstance(x, int) for x in obj):
            key = f"@@{len(compact)}@@"
            compact[key] = json.dumps(obj, separators=(",", ":"))
            return key
        return obj

    text = json.dumps(squash(meta), indent=1)
    for key, value in compact.items():
        text = text.replace(f'"{key}"', value)
    return text + "\n"


def _savez_compressed_size(arrays: dict[str, np.ndarray]) -> int:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return len(buf.getvalue())


if __name__ == "__main__":
    main()
