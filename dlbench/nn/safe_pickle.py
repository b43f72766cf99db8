"""Load third-party ``torch.save`` checkpoints (Lightning ``.ckpt``, ``.pth``) without running their code.

These files are pickles. ``torch.load(weights_only=True)`` refuses any class it does not know, and a
Lightning checkpoint carries metadata objects (callback classes as dict keys, ``AttributeDict`` /
OmegaConf hyper-parameters, numpy scalars) next to its tensors. :func:`safe_torch_load` runs
``torch.load`` with a restricted unpickler instead:

- tensors and containers are rebuilt from an explicit allow-list (:data:`ALLOWED`: torch's tensor
  rebuild functions, ``torch.Size``, dtypes, ``OrderedDict``, ``set``/``frozenset``/``complex``/``slice``);
- any global from a *metadata* namespace (:data:`METADATA_NAMESPACES`: ``pytorch_lightning``,
  ``lightning``, ``omegaconf``, ``numpy``, ``argparse``, ``pathlib``, ``taming``, ...) becomes an inert
  :class:`Opaque` placeholder: its module is never imported, and "calling" it only records the arguments;
- any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with
  :class:`UnsafeCheckpointError`, which names the file and the global, before anything is called.
"""

from __future__ import annotations

import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from dlbench.registry import DlbenchError

#: module prefixes whose globals become inert placeholders (checkpoint metadata, never code we run)
METADATA_NAMESPACES: tuple[str, ...] = (
    "pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "numpy", "argparse", "pathlib",
    "taming", "image_synthesis", "main", "__main__", "typing", "enum", "datetime", "collections",
)
_TORCH_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("torch", "device"),
}
_BUILTINS_ALLOWED = {"set", "frozenset", "complex", "slice", "bytearray", "bytes", "dict", "list", "tuple"}


class UnsafeCheckpointError(DlbenchError):
    """A checkpoint refers to code dlbench will not run."""


class Opaque(dict):
    """Inert stand-in for a metadata object: remembers constructor args, state and items, runs nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.__dict__["_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_items", []).extend(items)

    def __repr__(self) -> str:
        return f"<opaque {self._qualname}>"

    __hash__ = object.__hash__  # usable as a dict key (Lightning keys callbacks by their class)


def _opaque(module: str, name: str) -> type:
    return type(name, (Opaque,), {"__module__": f"opaque:{module}", "_qualname": f"{module}.{name}"})


def _allowed(module: str, name: str) -> Any | None:
    if (module, name) in _TORCH_ALLOWED:
        mod = __import__(module, fromlist=[name])
        return getattr(mod, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "collections" and name == "OrderedDict":
        from collections import OrderedDict

        return OrderedDict
    if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
        return getattr(__import__("builtins"), name)
    return None


def _make_module(path: Path) -> types.ModuleType:
    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found = _allowed(module, name)
            if found is not None:
                return found
            if module.split(".")[0] in METADATA_NAMESPACES:
                return _opaque(module, name)
            raise UnsafeCheckpointError(
                f"{path}: refused to load, the file refers to {module}.{name}, which is neither tensor data nor "
                "known checkpoint metadata (it may run code when loaded). Only use checkpoints from a source you trust; "
                "dlbench will not unpickle it"
            )

    def load(f: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(f, **kwargs).load()

    mod = types.ModuleType("dlbench_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.__name__ = "dlbench_restricted_pickle"
    return mod


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of ``path`` through the restricted unpickler (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DlbenchError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, pickle_module=_make_module(path), weights_only=False)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, ...
        raise DlbenchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
