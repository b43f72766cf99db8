"""Shared machinery of the dataset loaders: configs, split containers, search paths, fingerprints.

A loader subclasses :class:`LocalImageDataset` and implements ``_find(split)`` (locate the data or
return why each candidate failed) and ``_load(split, found)`` (build a split). Nothing touches disk in
``__init__``: ``dlbench list`` builds components freely, and a missing dataset fails in ``split()`` /
``fingerprint()`` with a :class:`DatasetNotFoundError` that lists every place searched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from pydantic import Field
from torch.utils.data import Dataset

from dlbench.data.errors import CorruptImageError, DatasetConfigError, DatasetNotFoundError
from dlbench.data.transforms import Crop, decode_image, fit_square, preprocess
from dlbench.interfaces import ComponentConfig, ImageDataset
from dlbench.registry import DlbenchError

ENV_VAR = "DLBENCH_DATA"

#: bumped whenever preprocessing code changes the pixels a config produces (old fingerprints then differ)
PREPROCESS_VERSION = "dlbench-data-v1"


# =============================================================================================
# Configs
# =============================================================================================


class ImageConfig(ComponentConfig):
    """Output format of a dataset: every image comes out uint8 ``"c R R"``."""

    resolution: int = Field(32, ge=4, le=4096, description="output side length R in pixels")
    channels: Literal[1, 3] = Field(3, description="1 = grey, 3 = RGB; sources are converted explicitly")
    crop: Crop = Field(
        "center",
        description="center: central square crop then resize; resize: stretch to R x R; pad: zero-pad to R x R",
    )
    max_images: int | None = Field(None, ge=1, description="keep only the first N images of each split")


class LocalDataConfig(ImageConfig):
    """A dataset read from local files."""

    data_dir: str | None = Field(
        None, description=f"where the data is; default: ${ENV_VAR}/<name>/ and the dataset's standard places"
    )
    skip_bad: bool = Field(False, description="skip (and count) unreadable images instead of failing")


# =============================================================================================
# Split containers
# =============================================================================================


class TensorSplit(Dataset):
    """An in-memory split: ``images`` uint8 ``"n c H W"``, ``labels`` long ``"n"`` (-1 = unlabelled)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 'n c H W', got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.to(torch.long)
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


Reader = Callable[[str], bytes]


class FileSplit(Dataset):
    """A split of encoded images decoded on access (folders, zips, LMDBs).

    ``keys`` are the entries (relative paths / LMDB keys), ``labels`` their ints, ``reader(key)`` their
    bytes, ``describe(key)`` how an error names them. ``reader`` must be picklable for DataLoader
    workers (see :class:`LazyHandle`).

    With ``skip_bad`` a bad entry is recorded in ``bad`` (``skipped = len(bad)``): :meth:`load`
    returns None for it and ``__getitem__`` substitutes the next readable entry, so map-style access
    keeps working; :func:`load_split_tensors` skips it outright. Counts from DataLoader worker
    processes stay in the workers.
    """

    def __init__(
        self,
        keys: Sequence[str],
        labels: Sequence[int],
        reader: Reader,
        describe: Callable[[str], str],
        config: ImageConfig,
        skip_bad: bool,
    ):
        self.keys, self.labels = list(keys), list(labels)
        self.reader, self.describe = reader, describe
        self.resolution, self.channels, self.crop = config.resolution, config.channels, config.crop
        self.skip_bad = skip_bad
        self.bad: dict[int, str] = {}

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int) -> tuple[torch.Tensor, int] | None:
        """Image ``i`` as ``("c R R" uint8, label)``; None when it is bad and ``skip_bad`` is set."""
        key = self.keys[i]
        try:
            try:
                data = self.reader(key)
            except Exception as exc:
                raise CorruptImageError(self.describe(key), f"cannot read: {type(exc).__name__}: {exc}") from exc
            img = decode_image(data, self.describe(key), self.channels)
        except CorruptImageError as exc:
            if not self.skip_bad:
                raise
            self.bad[i] = str(exc)
            return None
        try:
            img = fit_square(img[None], self.resolution, self.crop)[0]
        except ValueError as exc:
            raise DatasetConfigError(f"{self.describe(key)}: {exc}") from exc
        return img, self.labels[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.keys)
        for step in range(n):
            item = self.load((i + step) % n)
            if item is not None:
                return item
        raise DlbenchError(f"every one of the {n} images of this split is unreadable (skip_bad=True skipped them all)")


class LazyHandle:
    """A per-process handle (zip file, LMDB environment) opened on first use, never pickled.

    DataLoader workers fork/spawn copies of the split; each reopens its own handle.
    """

    def __init__(self, opener: Callable[[], Any]):
        self._opener, self._handle, self._pid = opener, None, -1

    def get(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._opener(), os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        return {"_opener": self._opener, "_handle": None, "_pid": -1}


# =============================================================================================
# Fingerprint helpers
# =============================================================================================

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, cached per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def stat_entry(path: Path, root: Path) -> list[Any]:
    """``[relative path, size, mtime_ns]``: the cheap identity of a file inside a large tree."""
    st = path.stat()
    return [path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns]


def digest(obj: Any) -> str:
    """sha256 hex of a JSON-serialisable object (sorted keys, so dict order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# =============================================================================================
# Base dataset
# =============================================================================================


class LocalImageDataset(ImageDataset):
    """Base of the built-in datasets. Subclasses set ``name``, ``Config``, ``layout`` and implement
    ``_find(split) -> (found, looked)`` and ``_load(split, found) -> Dataset``.
    """

    name: ClassVar[str] = "?"
    Config: ClassVar[type[ComponentConfig]] = LocalDataConfig
    #: one-line description of the expected on-disk layout (shown in not-found errors)
    layout: ClassVar[str] = ""
    #: extra directories searched after data_dir / $DLBENCH_DATA (e.g. Debian's /usr/share/datasets)
    default_dirs: ClassVar[tuple[str, ...]] = ()
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, config: ComponentConfig | None = None, **_context: Any):
        self.config = config if config is not None else self.Config()
        self._cache: dict[str, Dataset] = {}

    # -- interface ---------------------------------------------------------------------------
    @property
    def channels(self) -> int:  # type: ignore[override]
        return self.config.channels

    @property
    def resolution(self) -> int:  # type: ignore[override]
        return self.config.resolution

    @property
    def skipped(self) -> int:
        """Bad images skipped so far (``skip_bad=True``), over all loaded splits."""
        return sum(getattr(ds, "skipped", 0) for ds in self._cache.values())

    def split(self, name: str) -> Dataset:
        self._check_split(name)
        if name not in self._cache:
            found = self._locate(name)
            self._cache[name] = self._load(name, found)
        return self._cache[name]

    def fingerprint(self, name: str) -> str:
        self._check_split(name)
        found = self._locate(name)
        return digest(
            {
                "version": PREPROCESS_VERSION,
                "dataset": self.name,
                "split": name,
                "source": self._source_identity(name, found),
                "preprocess": self._preprocess_identity(),
            }
        )

    # -- for subclasses ----------------------------------------------------------------------
    def _find(self, split: str, root: Path) -> tuple[Any | None, str]:
        """Look for ``split`` under one candidate ``root``: ``(found, "")`` or ``(None, why not)``."""
        raise NotImplementedError

    def _load(self, split: str, found: Any) -> Dataset:
        raise NotImplementedError

    def _source_identity(self, split: str, found: Any) -> Any:
        raise NotImplementedError

    def _preprocess_identity(self) -> dict[str, Any]:
        cfg = self.config.model_dump()
        cfg.pop("data_dir", None)  # where the data lives is not what it is
        return cfg

    def candidate_roots(self) -> list[Path]:
        """Where to look, in order: explicit data_dir only if set; else $DLBENCH_DATA/<name>, defaults."""
        data_dir = getattr(self.config, "data_dir", None)
        if data_dir:
            root = Path(data_dir).expanduser()
            return [root, root / self.name]
        roots = []
        env = os.environ.get(ENV_VAR)
        if env:
            roots.append(Path(env).expanduser() / self.name)
        roots += [Path(d) for d in self.default_dirs]
        return roots

    # -- helpers -----------------------------------------------------------------------------
    def _check_split(self, name: str) -> None:
        if name not in self.splits:
            raise DlbenchError(f"dataset {self.name!r} has no split {name!r}; its splits are: {', '.join(self.splits)}")

    def _unset_sources(self) -> list[tuple[str, str]]:
        """The configurable places that are not configured (so the error says they were not used)."""
        if getattr(self.config, "data_dir", None):
            return []
        notes = [("dataset.data_dir", "not set")]
        if not os.environ.get(ENV_VAR):
            notes.append((f"${ENV_VAR}/{self.name}", f"{ENV_VAR} not set"))
        return notes

    def _locate(self, split: str) -> Any:
        looked: list[tuple[Path | str, str]] = list(self._unset_sources())
        for root in self.candidate_roots():
            if not root.exists():
                looked.append((root, "does not exist"))
                continue
            found, why = self._find(split, root)
            if found is not None:
                return found
            looked.append((root, why))
        raise DatasetNotFoundError(self.name, looked, self.layout)

    def _limit(self, n: int) -> int:
        m = self.config.max_images
        return n if m is None else min(n, m)

    def _tensor_split(self, images: torch.Tensor, labels: torch.Tensor) -> TensorSplit:
        """Preprocess a raw uint8 ``"n c H W"`` batch (after ``max_images``) into a TensorSplit."""
        n = self._limit(len(images))
        cfg = self.config
        try:
            out = preprocess(images[:n], resolution=cfg.resolution, channels=cfg.channels, crop=cfg.crop)
        except ValueError as exc:
            raise DatasetConfigError(f"dataset {self.name!r}: {exc}") from exc
        return TensorSplit(out, labels[:n])

    def _file_split(self, keys: Sequence[str], labels: Sequence[int], reader: Reader, describe: Callable[[str], str]) -> FileSplit:
        """A decode-on-access split of the first ``max_images`` entries."""
        n = self._limit(len(keys))
        return FileSplit(keys[:n], labels[:n], reader, describe, self.config, getattr(self.config, "skip_bad", False))


# =============================================================================================
# Runner helper
# =============================================================================================


def load_split_tensors(dataset: ImageDataset, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first ``limit``) images of a split: ``(images uint8 "n c H W", labels long "n")``.

    In-memory splits are sliced (no copy); other splits are iterated in order, bad images skipped
    when the split supports skipping (:class:`FileSplit` with ``skip_bad``).
    """
    ds = dataset.split(split)
    if isinstance(ds, TensorSplit):
        n = len(ds) if limit is None else min(limit, len(ds))
        return ds.images[:n], ds.labels[:n]
    load = getattr(ds, "load", None) or ds.__getitem__
    images, labels = [], []
    for i in range(len(ds)):  # type: ignore[arg-type]
        if limit is not None and len(images) >= limit:
            break
        item = load(i)
        if item is None:
            continue
        images.append(item[0])
        labels.append(int(item[1]))
    if not images:
        c, r = dataset.channels, dataset.resolution
        return torch.empty((0, c, r, r), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
