"""Loading files without running code, and naming the file when it is damaged.

Every file dlbench reads -- its caches, run directories, user-given paths, and the caches and weights
that libraries (torch-fidelity) read on its behalf -- goes through one of these loaders:

- :func:`torch_load`: ``torch.load(weights_only=True)`` (tensors, plain containers, numpy arrays);
  a pickle that would need any other global is refused before anything is built.
- :func:`forced_weights_only`: a context in which *every* ``torch.load`` -- including a library's own
  ``torch.load(..., weights_only=False)`` on its cache or weights -- is redirected to :func:`torch_load`.
- :func:`np_load`: ``np.load(allow_pickle=False)``, arrays read eagerly.
- :func:`read_json_file`: UTF-8 JSON.

Errors are :class:`UnsafeFileError` (the file would need code to load) and :class:`CorruptFileError`
(truncated, empty, not the expected format), both one-line :class:`~dlbench.registry.DlbenchError`
that name the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

from dlbench.registry import DlbenchError

__all__ = ["UnsafeFileError", "CorruptFileError", "torch_load", "forced_weights_only", "np_load", "read_json_file",
           "SAFE_NUMPY_GLOBALS"]


class UnsafeFileError(DlbenchError):
    """A file whose loading would run code (a pickle of arbitrary objects); it is never loaded."""


class CorruptFileError(DlbenchError):
    """A file that is empty, truncated or not in the expected format."""


def _numpy_globals() -> list[Any]:
    """numpy's array-rebuilding functions and numeric dtype classes: enough for pickled arrays (what
    torch-fidelity caches), nothing that can call an arbitrary function."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    out: list[Any] = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        out.append(fn)
        # files written under the other numpy major version name the other module path
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out.append((fn, f"{mod}.{fn.__name__}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n not in {"ObjectDType"}]
    return out


SAFE_NUMPY_GLOBALS: list[Any] = []


def _safe_globals() -> list[Any]:
    if not SAFE_NUMPY_GLOBALS:
        SAFE_NUMPY_GLOBALS.extend(_numpy_globals())
    return SAFE_NUMPY_GLOBALS


_REAL_TORCH_LOAD = None
_FORCE_LOCK = threading.RLock()


def _real_torch_load():
    import torch

    global _REAL_TORCH_LOAD
    if _REAL_TORCH_LOAD is None:
        _REAL_TORCH_LOAD = torch.load
    return _REAL_TORCH_LOAD


def torch_load(path: str | Path, *, what: str = "file", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; :class:`UnsafeFileError` / :class:`CorruptFileError`
    naming ``path`` otherwise. ``what`` says what the file is (for the message)."""
    import torch

    load = _real_torch_load()
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise CorruptFileError(f"{path}: {what} is empty (0 bytes; a write was interrupted); delete it")
        with torch.serialization.safe_globals(_safe_globals()):
            return load(path, map_location=map_location, weights_only=True)
    except DlbenchError:
        raise
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        hint = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UnsafeFileError(
            f"{path}: refusing to load {what}: it is not a plain tensor file and loading it could run code"
            + (f" ({hint})" if hint else "") + "; delete it (dlbench recreates what it owns) or replace it "
            "with a trusted copy"
        ) from None
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: {what} does not exist") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            TypeError, IndexError) as exc:
        msg = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CorruptFileError(
            f"{path}: {what} is corrupt or truncated ({type(exc).__name__}: {msg}); delete it"
        ) from None


@contextlib.contextmanager
def forced_weights_only(what: str = "file read by a library") -> Iterator[None]:
    """Within the block every ``torch.load`` call goes through :func:`torch_load` (weights only),
    whatever ``weights_only`` the caller -- e.g. torch-fidelity on its feature cache or Inception
    weights -- passes. Nested and thread-safe (a lock serialises patching)."""
    import torch

    real = _real_torch_load()

    def guarded(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(f, (str, Path)):  # file objects: still weights only
            with torch.serialization.safe_globals(_safe_globals()):
                try:
                    return real(f, map_location=map_location, weights_only=True)
                except pickle.UnpicklingError:
                    raise UnsafeFileError(f"refusing to load a {what} (stream): loading it could run code") from None
        return torch_load(f, what=what, map_location=map_location)

    with _FORCE_LOCK:
        previous = torch.load
        torch.load = guarded  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.load = previous  # type: ignore[assignment]


def np_load(path: str | Path, *, what: str = "file") -> dict[str, Any]:
    """All arrays of an ``.npz`` (or the array of an ``.npy`` under key ``"arr"``), without pickle."""
    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if isinstance(data, np.ndarray):
                return {"arr": data}
            with data:
                return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: {what} does not exist") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsafeFileError(
                f"{path}: refusing to load {what}: it holds pickled objects, which could run code; delete it"
            ) from None
        raise CorruptFileError(f"{path}: {what} is corrupt or truncated (ValueError: {exc}); delete it") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CorruptFileError(
            f"{path}: {what} is corrupt or truncated ({type(exc).__name__}: {str(exc)[:160]}); delete it"
        ) from None


def read_json_file(path: str | Path, *, what: str = "JSON file", default: Any = None) -> Any:
    """Parsed UTF-8 JSON; ``default`` when the file does not exist; :class:`CorruptFileError` naming
    the file when it is torn, empty or not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return default
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: {what} is a directory, expected a file") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: {what} is not UTF-8 text (byte {exc.start}); restore or delete it") from None
    except json.JSONDecodeError as exc:
        state = "empty" if not raw.strip() else f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        raise CorruptFileError(f"{path}: {what} is {state}; restore or delete it") from None
