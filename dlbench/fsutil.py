"""File-system hygiene: temp files a killed process left behind, and disk-full errors that say where.

Temporary files and directories that dlbench writes carry the writer's pid
(``.<name>.<pid>.<random>[.tmp]`` from :func:`temp_prefix`, or ``<name>.tmp<pid>``); a later start
removes those whose process is gone (:func:`clean_stale_temps`), so a kill never leaves debris that
grows with every retry. A full disk (``ENOSPC``/``EDQUOT``) while writing becomes one
:class:`DiskFullError` line naming the file. :func:`exclusive` serialises a once-per-cache computation
between processes sharing a cache (the second waits, then finds the first one's result).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from dlbench.registry import DlbenchError

__all__ = ["DiskFullError", "atomic_write", "disk_errors", "temp_prefix", "clean_stale_temps", "clean_cache_temps",
           "exclusive"]

#: ``.<name>.<pid>.<8 random chars>`` (+ ``.tmp``): tempfile.mkstemp/mkdtemp with :func:`temp_prefix`
_PREFIXED = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}(\.tmp)?$")
#: ``<name>.tmp<pid>`` (+ an extension): the cache writers' ``with_suffix(f".tmp{pid}")``
_SUFFIXED = re.compile(r"\.tmp(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")


class DiskFullError(DlbenchError):
    """No space left on the device holding a file dlbench was writing."""


def temp_prefix(name: str) -> str:
    """Prefix of a temp file/dir for ``name``: hidden, with this process's pid."""
    return f".{name}.{os.getpid()}."


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised in the block into a :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = Path(path)
            raise DiskFullError(
                f"no space left on device while writing {where} (file system of {where.parent}); free space "
                "there or point --out / DLBENCH_CACHE elsewhere, then resume with `dlbench run --resume RUN_DIR`"
            ) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a binary file handle so readers see either the old or the new file, never
    a torn one: the block writes a temp file in the same directory (``.<name>.<pid>.<random>.tmp``, see
    :func:`temp_prefix`), which is fsynced and renamed over ``path`` when the block ends, and removed when
    it raises. A full disk becomes a :class:`DiskFullError` naming ``path``. The one atomic-write helper of
    dlbench (``torch.save``, ``np.save``/``np.savez`` and JSON writers all go through it)."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temps(*directories: str | Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove temp files/dirs (see module docstring) in ``directories`` whose writer pid is dead on
    this host and that were last modified at least ``min_age_s`` ago. Not recursive. Returns what
    was removed."""
    import time

    now = time.time()
    removed: list[Path] = []
    for d in directories:
        d = Path(d)
        try:
            entries = list(d.iterdir())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for p in entries:
            m = _PREFIXED.match(p.name) or _SUFFIXED.search(p.name)
            if m is None or _pid_alive(int(m.group("pid"))):
                continue
            try:
                if min_age_s and now - p.lstat().st_mtime < min_age_s:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def clean_cache_temps(root: str | Path, depth: int = 3, min_age_s: float = 0.0) -> list[Path]:
    """:func:`clean_stale_temps` over ``root`` and its sub-directories down to ``depth`` levels."""
    root = Path(root)
    removed = clean_stale_temps(root, min_age_s=min_age_s)
    if depth > 0 and root.is_dir():
        for sub in root.iterdir():
            if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
                removed += clean_cache_temps(sub, depth - 1, min_age_s=min_age_s)
    return removed


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    ``fcntl.flock`` on POSIX: the kernel drops it when the process dies, so a killed holder never leaves a
    stale lock. Where ``fcntl`` does not exist (Windows) the block runs unlocked: the worst case is the
    computation done twice, each result written atomically.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
