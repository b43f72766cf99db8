"""Machine description printed and recorded with every benchmark figure."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


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
