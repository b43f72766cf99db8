"""Readers (and, for tests and build scripts, writers) of the raw on-disk formats.

- IDX (LeCun's MNIST format, also Fashion-MNIST): big-endian header ``0 0 dtype ndim`` then ``ndim``
  uint32 sizes, then the array in C order. Files may be gzip-compressed (``.gz``).
- Python pickles of numpy arrays (CIFAR-10 batches, the ``mnist.pkl.gz`` of deeplearning.net), read
  with an unpickler that only builds numpy arrays and plain containers, never arbitrary objects.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dlbench.data.errors import DatasetFormatError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def open_maybe_gzip(path: Path) -> BinaryIO:
    """Open ``path`` for reading, transparently gunzipping by magic bytes (not by file name)."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its stored shape."""
    path = Path(path)
    try:
        with open_maybe_gzip(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetFormatError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path} is not an IDX file (bad magic {data[:4]!r}); expected MNIST-style idx data")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"IDX file {path} is truncated or padded: header says shape {dims} ({expected} bytes), "
            f"found {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8/int8 array as an IDX file; gzip it when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array)
    code = _IDX_CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"write_idx supports uint8/int8, got {array.dtype}")
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and builtin containers only (pickles are code otherwise)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol <= 2
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")


def load_array_pickle(source: Path | bytes, *, what: str) -> Any:
    """Unpickle numpy-array data (Python 2 pickles included: ``encoding="bytes"``/``latin1`` rules).

    ``source`` is a path (gzip detected by magic) or raw bytes; ``what`` names it in errors.
    """
    try:
        if isinstance(source, bytes):
            f: BinaryIO = io.BytesIO(source)
            if source[:2] == b"\x1f\x8b":
                f = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
        else:
            f = open_maybe_gzip(Path(source))
        with f:
            # latin1 maps Python 2 str byte-for-byte, which is what numpy's array state needs
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetFormatError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc
