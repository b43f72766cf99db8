"""User-facing dataset errors (the CLI prints a :class:`DlbenchError` as one line, exit code 2)."""

from __future__ import annotations

from pathlib import Path

from dlbench.registry import DlbenchError

HOW_TO_PROVIDE = (
    "Provide the data with the dataset config field data_dir (in a config file, or "
    "`--set dataset.data_dir=/path/to/data`), or set the environment variable DLBENCH_DATA=/root "
    "so that the data sits in $DLBENCH_DATA/{name}/"
)


class DatasetNotFoundError(DlbenchError, FileNotFoundError):
    """The data of a dataset is in none of the places searched.

    ``looked`` holds ``(path, why it did not qualify)`` for every place searched, in order.
    """

    def __init__(self, name: str, looked: list[tuple[Path | str, str]], layout: str, how: str | None = None):
        self.name, self.looked = name, list(looked)
        where = "; ".join(f"{p} ({why})" for p, why in self.looked) or "(no candidate paths)"
        how = HOW_TO_PROVIDE.format(name=name) if how is None else how
        super().__init__(f"dataset {name!r} not found. Looked in: {where}. Expected layout: {layout}. {how}.")

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror)
        return self.args[0]


class CorruptImageError(DlbenchError, ValueError):
    """An image file (or archive/LMDB entry) that cannot be decoded; ``source`` names it."""

    def __init__(self, source: str, reason: str):
        self.source = source
        super().__init__(
            f"cannot decode image {source}: {reason}. Repair or remove the file, or set "
            "`--set dataset.skip_bad=true` to skip (and count) unreadable images"
        )


class DatasetFormatError(DlbenchError, ValueError):
    """A data file is present but not in the expected format (wrong magic, shape, keys)."""


class DatasetConfigError(DlbenchError, ValueError):
    """The preprocessing config cannot be applied to this dataset (e.g. padding to a smaller size)."""
