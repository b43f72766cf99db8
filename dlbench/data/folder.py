"""Image-file datasets: any folder tree (``folder``), FFHQ (folder or StyleGAN zip), ImageNet.

Images are decoded on access (:class:`~dlbench.data.base.FileSplit`). Entries are sorted relative
POSIX paths, so order (and ``max_images``) does not depend on the file system. Fingerprints use the
cheap identity of each file -- ``(relative path, size, mtime)`` for folders, ``(member, CRC-32, size)``
from a zip's central directory -- plus the preprocessing config.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from dlbench.data.base import FileSplit, LazyHandle, LocalDataConfig, LocalImageDataset, stat_entry
from dlbench.data.errors import DatasetFormatError, DatasetNotFoundError
from dlbench.data.transforms import IMAGE_EXTENSIONS


# =============================================================================================
# Listing and reading
# =============================================================================================


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(root: Path):
    """Relative POSIX paths of image files under ``root`` (hidden files and folders skipped).

    Symlinked folders are followed once: a folder reached again (a symlink cycle, or a second link to
    the same data) is skipped, so the scan ends and no image is counted twice."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            try:
                sub = os.stat(os.path.join(dirpath, d))
            except OSError:
                continue  # a dangling link
            if (sub.st_dev, sub.st_ino) not in seen:
                kept.append(d)
        dirnames[:] = kept
        rel = Path(dirpath).relative_to(root)
        for f in sorted(filenames):
            if is_image_name(f):
                yield (rel / f).as_posix()


def list_images(root: Path) -> list[str]:
    return sorted(iter_image_files(root))


def has_images(root: Path) -> bool:
    return root.is_dir() and next(iter_image_files(root), None) is not None


def list_zip_images(path: Path) -> list[zipfile.ZipInfo]:
    """Image members of a zip, sorted by name (``__MACOSX`` resource forks skipped)."""
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and is_image_name(i.filename) and not i.filename.startswith("__MACOSX")]
    return sorted(infos, key=lambda i: i.filename)


class FileReader:
    """Picklable ``key -> bytes`` for files under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


class ZipReader:
    """Picklable ``member -> bytes`` for a zip file, one open handle per process."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = LazyHandle(self._open)

    def _open(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def __call__(self, key: str) -> bytes:
        return self.handle.get().read(key)


@dataclass(frozen=True)
class Describe:
    """Picklable ``key -> "<prefix><sep><key>"`` used to name entries in errors."""

    prefix: str
    sep: str = "/"

    def __call__(self, key: str) -> str:
        return f"{self.prefix}{self.sep}{key}"


@dataclass
class Tree:
    """The entries of one split: files under a folder, members of a zip, or keys of an LMDB (``root``)."""

    root: Path
    keys: list[str]
    kind: Literal["folder", "zip", "lmdb"] = "folder"
    #: zip only: ``[member, CRC-32, size]`` per key, from the central directory
    ids: list[Any] = field(default_factory=list)


def folder_tree(root: Path) -> Tree:
    return Tree(root, list_images(root))


def zip_tree(path: Path) -> Tree:
    try:
        infos = list_zip_images(path)
    except zipfile.BadZipFile as exc:
        raise DatasetFormatError(f"{path} is not a readable zip file: {exc}") from exc
    return Tree(path, [i.filename for i in infos], kind="zip", ids=[[i.filename, i.CRC, i.file_size] for i in infos])


def tree_identity(tree: Tree) -> Any:
    if tree.kind == "zip":
        return {"zip": tree.ids}
    return {"files": [stat_entry(tree.root / k, tree.root) for k in tree.keys]}


def subfolder_labels(keys: list[str], classes: list[str], where: Path) -> list[int]:
    """Label of each key = index of its first path component in ``classes`` (sorted folder names)."""
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for k in keys:
        head, sep, _ = k.partition("/")
        if not sep:
            raise DatasetFormatError(
                f"{where / k} is not inside a class folder; with labels from sub-folders every image must be in "
                f"{where}/<class>/..., or set labels_from_subfolders=false"
            )
        if head not in index:
            raise DatasetFormatError(f"class folder {where / head} is not among the training classes ({len(classes)} found)")
        labels.append(index[head])
    return labels


def class_folders(keys: list[str]) -> list[str]:
    return sorted({k.split("/", 1)[0] for k in keys if "/" in k})


# =============================================================================================
# Datasets
# =============================================================================================


class _TreeDataset(LocalImageDataset):
    """Shared split/fingerprint logic of tree-shaped datasets; subclasses implement ``_find``."""

    def __init__(self, config: Any = None, **context: Any):
        super().__init__(config, **context)
        self._trees: dict[str, Tree] = {}

    def _locate(self, split: str) -> Tree:
        if split not in self._trees:  # listing a large tree is slow: do it once per instance
            self._trees[split] = super()._locate(split)
        return self._trees[split]

    def _labels(self, split: str, tree: Tree) -> list[int]:
        return [-1] * len(tree.keys)

    def _load(self, split: str, tree: Tree) -> FileSplit:
        labels = self._labels(split, tree)
        if tree.kind == "zip":
            return self._file_split(tree.keys, labels, ZipReader(tree.root), Describe(str(tree.root), ":"))
        return self._file_split(tree.keys, labels, FileReader(tree.root), Describe(str(tree.root)))

    def _source_identity(self, split: str, tree: Tree) -> Any:
        n = self._limit(len(tree.keys))
        ident = tree_identity(tree)
        return {k: v[:n] for k, v in ident.items()}


class FolderConfig(LocalDataConfig):
    resolution: int = Field(64, ge=4, le=4096)
    labels_from_subfolders: bool = Field(False, description="label = index of the sorted first-level sub-folder")


class ImageFolder(_TreeDataset):
    """Any folder tree of images (PNG/JPEG/WebP/...); unlabelled unless labels_from_subfolders."""

    name = "folder"
    Config: ClassVar[type[FolderConfig]] = FolderConfig
    splits: tuple[str, ...] = ("train", "val", "test")
    layout = "image files anywhere under data_dir (split 'train'), or under data_dir/train, data_dir/val, data_dir/test"

    def _find(self, split: str, root: Path) -> tuple[Tree | None, str]:
        if not root.is_dir():
            return None, "not a directory"
        if has_images(root / split):
            return folder_tree(root / split), ""
        if split == "train" and not (root / "train").exists() and has_images(root):
            return folder_tree(root), ""
        return None, f"no image files in {split}/" + (" or in the folder itself" if split == "train" else "")

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        """Number of first-level class folders of the train split with labels_from_subfolders, else None."""
        if not self.config.labels_from_subfolders:
            return None
        return len(self._class_list(self._locate("train")))

    def _class_list(self, tree: Tree) -> list[str]:
        if tree.root.name in ("val", "test") and (tree.root.parent / "train").is_dir():
            return class_folders(list_images(tree.root.parent / "train"))
        return class_folders(tree.keys)

    def _labels(self, split: str, tree: Tree) -> list[int]:
        if not self.config.labels_from_subfolders:
            return [-1] * len(tree.keys)
        return subfolder_labels(tree.keys, self._class_list(tree), tree.root)

    def _source_identity(self, split: str, tree: Tree) -> Any:
        ident = super()._source_identity(split, tree)
        if self.config.labels_from_subfolders:
            ident["classes"] = self._class_list(tree)
        return ident


class FFHQConfig(LocalDataConfig):
    resolution: int = Field(256, ge=4, le=4096)
    channels: Literal[1, 3] = 3


class FFHQ(_TreeDataset):
    """FFHQ faces (unconditional): a folder of PNG/JPEG or a StyleGAN-style dataset zip of PNGs."""

    name = "ffhq"
    Config: ClassVar[type[FFHQConfig]] = FFHQConfig
    num_classes: int | None = None
    splits: tuple[str, ...] = ("train",)
    layout = (
        "a folder of PNG/JPEG images (any depth, e.g. images1024x1024/00000/00000.png), or a StyleGAN-style "
        "zip of PNGs (e.g. ffhq-256x256.zip; data_dir may name the zip file itself)"
    )

    def _find(self, split: str, root: Path) -> tuple[Tree | None, str]:
        if root.is_file():
            return (zip_tree(root), "") if zipfile.is_zipfile(root) else (None, "not a zip file")
        if has_images(root):
            return folder_tree(root), ""
        zips = sorted(p for p in root.glob("*.zip") if p.is_file())
        if len(zips) == 1:
            return zip_tree(zips[0]), ""
        if len(zips) > 1:
            return None, f"several zips ({', '.join(p.name for p in zips)}): set data_dir to the one to use"
        return None, "no image files and no .zip"


class ImageNetConfig(LocalDataConfig):
    resolution: int = Field(256, ge=4, le=4096)
    channels: Literal[1, 3] = 3


class ImageNet(_TreeDataset):
    """ImageNet (class-conditional): train/ and val/ class folders; label = sorted folder index."""

    name = "imagenet"
    Config: ClassVar[type[ImageNetConfig]] = ImageNetConfig
    splits: tuple[str, ...] = ("train", "val")
    layout = "train/<class>/*.JPEG and val/<class>/*.JPEG (class folders such as n01440764; val sorted into folders)"

    def _find(self, split: str, root: Path) -> tuple[Tree | None, str]:
        d = root / split
        if not d.is_dir():
            return None, f"no {split}/ folder"
        tree = folder_tree(d)
        if not tree.keys:
            return None, f"no image files in {split}/"
        return tree, ""

    @property
    def classes(self) -> list[str]:
        """Sorted class folder names of the train split (val is labelled with the same list)."""
        if getattr(self, "_classes", None) is None:
            try:
                tree = self._locate("train")
            except DatasetNotFoundError:
                tree = self._locate("val")  # a val-only copy: its own folders are the classes
            self._classes = class_folders(tree.keys)
        return self._classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.classes)

    def _labels(self, split: str, tree: Tree) -> list[int]:
        return subfolder_labels(tree.keys, self.classes, tree.root)

    def _source_identity(self, split: str, tree: Tree) -> Any:
        ident = super()._source_identity(split, tree)
        ident["classes"] = self.classes
        return ident
