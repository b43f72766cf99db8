"""Machine description printed and recorded with every benchmark figure."""

from __future__ import annotations

import os
import platform

from dlbench.train.dist import cpu_name  # one reader of /proc/cpuinfo


def machine_line() -> str:
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"machine: {cpu_name()}; {os.cpu_count()} cores; python {platform.python_version()}; "
            f"torch {torch.__version__}; threads {torch.get_num_threads()}; load average {load}")


def print_and_record(lines: list[str], record: str | None) -> None:
    """Print a benchmark's markdown report and, with ``--record PATH``, write it there."""
    from pathlib import Path

    text = "\n".join(lines) + "\n"
    print(text)
    if record:
        Path(record).write_text(text)
