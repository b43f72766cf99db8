"""LSUN scenes (unconditional): the official LMDB export, or a folder of images.

Official layout (``fyu/lsun`` download + unzip): ``<category>_<split>_lmdb/`` holding ``data.mdb`` and
``lock.mdb``; each key is an image id, each value the encoded image (WebP in the release, JPEG in
some re-exports). A folder of images (``train/``, ``val/`` or the folder itself for train) works too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from dlbench.data.base import LocalDataConfig, stat_entry
from dlbench.data.errors import DatasetFormatError
from dlbench.data.folder import Describe, Tree, _TreeDataset, folder_tree, has_images


def _open_lmdb(path: Path) -> Any:
    try:
        import lmdb
    except ImportError as exc:  # optional dependency (extra "lmdb")
        raise DatasetFormatError(
            f"{path} is an LMDB database but the 'lmdb' package is not installed: pip install lmdb"
        ) from exc
    try:
        # read-only, no lock file writes (data may sit on a read-only mount), no readahead (random access)
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)
    except lmdb.Error as exc:
        raise DatasetFormatError(f"cannot open LMDB {path}: {exc}") from exc


_ENVS: dict[str, tuple[int, Any]] = {}


def lmdb_env(path: Path) -> Any:
    """The process's read-only environment for ``path``, opened once.

    py-lmdb refuses to open one path twice in a process, and a forked DataLoader worker inherits the
    parent's (already open) environment, so environments are shared through this table. A forked
    child that cannot reopen reuses the inherited one: safe here because it is read-only and lock-free.
    """
    key = str(path.resolve())
    hit = _ENVS.get(key)
    if hit is not None and hit[0] == os.getpid():
        return hit[1]
    try:
        env = _open_lmdb(path)
    except DatasetFormatError:
        if hit is None:
            raise
        env = hit[1]
    _ENVS[key] = (os.getpid(), env)
    return env


def close_lmdb(path: Path) -> None:
    """Close this process's environment for ``path`` (needed before writing to it in-process)."""
    hit = _ENVS.pop(str(path.resolve()), None)
    if hit is not None and hit[0] == os.getpid():
        hit[1].close()


def lmdb_keys(path: Path) -> list[str]:
    """All keys of an LMDB in key order, as latin-1 strings (a lossless bytes <-> str mapping)."""
    with lmdb_env(path).begin(write=False) as txn:
        return [k.decode("latin1") for k in txn.cursor().iternext(keys=True, values=False)]


class LmdbReader:
    """Picklable ``key -> bytes`` for an LMDB (environment from :func:`lmdb_env`)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, key: str) -> bytes:
        with lmdb_env(self.path).begin(write=False) as txn:
            value = txn.get(key.encode("latin1"))
        if value is None:
            raise KeyError(f"key {key!r} vanished from {self.path}")
        return bytes(value)


def lsun_layout(category: str) -> str:
    return (
        f"{category}_train_lmdb/ and {category}_val_lmdb/ (official LMDB export with data.mdb; data_dir "
        "may also name the LMDB folder itself, used as train), or a folder of images (train/, val/)"
    )


class LsunConfig(LocalDataConfig):
    resolution: int = Field(256, ge=4, le=4096)
    channels: Literal[1, 3] = 3


class _Lsun(_TreeDataset):
    category: ClassVar[str] = "?"
    Config: ClassVar[type[LsunConfig]] = LsunConfig
    num_classes: int | None = None
    splits: tuple[str, ...] = ("train", "val")

    def _find(self, split: str, root: Path) -> tuple[Tree | None, str]:
        if not root.is_dir():
            return None, "not a directory"
        candidates = [root / f"{self.category}_{split}_lmdb"] + ([root] if split == "train" else [])
        for db in candidates:
            if (db / "data.mdb").is_file():
                return Tree(db, lmdb_keys(db), kind="lmdb"), ""
        if has_images(root / split):
            return folder_tree(root / split), ""
        if split == "train" and not (root / "train").exists() and has_images(root):
            return folder_tree(root), ""
        return None, f"no {self.category}_{split}_lmdb/data.mdb and no images in {split}/"

    def _load(self, split: str, tree: Tree):
        if tree.kind == "lmdb":
            labels = [-1] * len(tree.keys)
            return self._file_split(tree.keys, labels, LmdbReader(tree.root), Describe(str(tree.root), " key "))
        return super()._load(split, tree)

    def _source_identity(self, split: str, tree: Tree) -> Any:
        if tree.kind != "lmdb":
            return super()._source_identity(split, tree)
        n = self._limit(len(tree.keys))
        keys = hashlib.sha256("\n".join(tree.keys[:n]).encode("latin1")).hexdigest()
        # the values are not hashed (tens of GB): size + mtime of data.mdb stand in for them
        return {"lmdb": stat_entry(tree.root / "data.mdb", tree.root), "n": n, "keys_sha256": keys}


class LsunChurch(_Lsun):
    """LSUN church_outdoor (unconditional), official LMDB export or an image folder."""

    name = "lsun-church"
    category = "church_outdoor"
    layout = lsun_layout("church_outdoor")


class LsunBedroom(_Lsun):
    """LSUN bedroom (unconditional), official LMDB export or an image folder."""

    name = "lsun-bedroom"
    category = "bedroom"
    layout = lsun_layout("bedroom")
