"""Plain ``torch.distributed`` for training and sampling (DESIGN.md § Scale past one machine).

Under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) :func:`init_distributed` starts the
process group (nccl on CUDA, gloo on CPU); otherwise it returns a single-process context and every
collective below is a no-op. Rank 0 alone writes checkpoints, logs and shows progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlbench.registry import DlbenchError


class DeviceError(DlbenchError):
    pass


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    device = str(device)
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
        return torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device(device)
    return torch.device(device)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_min(self, value: float) -> float:
        """Minimum of a scalar over ranks (used so every rank takes the same stop decision)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return float(t.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Context from torchrun's env vars; starts the process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP wrapper when distributed, the module itself otherwise. ``find_unused_parameters`` is on
    because plugin losses may leave parameters unused on some steps (e.g. a null-class row)."""
    if not ctx.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def gather_by_index(values: torch.Tensor, indices: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble ``"m ..."`` rows that rank ``r`` computed for ``indices`` into ``"n ..."`` in index order
    (every rank gets the full tensor)."""
    parts = ctx.all_gather_object((indices.cpu(), values.cpu()))
    out = torch.empty((n, *values.shape[1:]), dtype=values.dtype)
    filled = torch.zeros(n, dtype=torch.bool)
    for idx, val in parts:
        out[idx] = val
        filled[idx] = True
    if not bool(filled.all()):
        raise RuntimeError(f"gather_by_index: {int((~filled).sum())} of {n} rows missing")
    return out


def gather_to_main_by_index(values: torch.Tensor, indices: torch.Tensor, n: int,
                            ctx: DistContext) -> torch.Tensor | None:
    """Like :func:`gather_by_index`, but only rank 0 receives the ``"n ..."`` tensor (``gather_object``;
    other ranks get None): for large per-sample results such as Inception features of 50k samples, which
    only rank 0 needs to compute the metrics."""
    if not ctx.enabled:
        return gather_by_index(values, indices, n, ctx)
    parts: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object((indices.cpu(), values.cpu()), parts, dst=0)
    if not ctx.is_main:
        return None
    out = torch.empty((n, *values.shape[1:]), dtype=values.dtype)
    filled = torch.zeros(n, dtype=torch.bool)
    for idx, val in parts:  # type: ignore[union-attr]
        out[idx] = val
        filled[idx] = True
    if not bool(filled.all()):
        raise RuntimeError(f"gather_to_main_by_index: {int((~filled).sum())} of {n} rows missing")
    return out


def rank_local(ctx: "DistContext") -> "DistContext":
    """A one-process context on ``ctx``'s device, for work that rank 0 does alone while the other ranks
    are elsewhere (curve points, evaluation): with it nothing can enter a collective and deadlock."""
    return ctx if ctx.world_size == 1 else DistContext(device=ctx.device)


def cpu_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what :mod:`platform` says); recorded with
    benchmarks and with machine-specific caches such as the bf16 FID deviation."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in its flags);
    ``None`` when that cannot be told (no ``/proc/cpuinfo``, or a non-x86 CPU).

    Without them ``torch.autocast("cpu", bfloat16)`` converts in software: on a 2-core AMD EPYC without
    AVX-512 a tiny-denoiser step ran 13x slower in bf16 than in fp32, while a CPU with avx512_bf16 ran it
    1.6x faster (``benchmarks/results/train_precision.md``)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_warning(device: torch.device, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    """The warning to give before training in bf16 on ``device``, or None when bf16 is a sound choice."""
    if device.type == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return f"precision bf16 on {torch.cuda.get_device_name(device)}, which does not support bf16; use fp32"
        return None
    if device.type == "cpu" and cpu_has_native_bf16(cpuinfo) is False:
        return ("precision bf16 on a CPU without avx512_bf16/amx_bf16: autocast emulates bf16 and is typically "
                "much slower than fp32 here (13x in benchmarks/results/train_precision.md); "
                "use --precision fp32 (or --set training.precision=fp32)")
    return None


def resolve_precision(precision: str, device: torch.device | str, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """``"auto"`` -> ``"bf16"`` where the hardware computes bf16 natively (a CUDA GPU that supports it,
    or an x86 CPU whose flags list ``avx512_bf16`` or ``amx_bf16``), else ``"fp32"``; ``"fp32"`` and
    ``"bf16"`` pass through. Decided at run time from what the machine reports; the run records the result."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16(cpuinfo) is True else "fp32"
    return "fp32"
