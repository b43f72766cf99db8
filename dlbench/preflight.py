"""One pre-flight check shared by ``dlbench run``, ``run --dry-run`` and ``compare``.

Everything that can be known before training is checked here, before a run directory exists, so a
mistake costs seconds instead of a training run: the output root, safe component names, the data
(every split the run will read exists and holds enough images: training, the evaluation reference
split, the held-out split of the reconstruction grid), the evaluation protocol against the data and
the sampling budget, and batch sizes against the data. ``--dry-run`` runs exactly this check, so it
refuses whatever ``run`` would refuse.

Each failure is a :class:`PreflightError` (a one-line :class:`~dlbench.registry.DlbenchError`) that
says what to pass instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlbench.config import ConfigError
from dlbench.registry import DlbenchError

__all__ = ["PreflightError", "PreflightReport", "preflight", "check_out_dir", "check_path_segment",
           "split_available", "SAFE_NAME"]

#: a component name that is also a safe single path segment (run directories are named after them)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
#: cache temp files younger than this are left alone (another host may be writing them)
CACHE_TEMP_MIN_AGE_S = 3600.0


class PreflightError(ConfigError):
    """A run that cannot succeed, detected before anything is written."""


@dataclass
class PreflightReport:
    """What pre-flight resolved: split sizes and the reference split, for ``--dry-run`` to show."""

    splits: dict[str, int] = field(default_factory=dict)
    reference_split: str | None = None
    protocol: str | None = None
    notes: list[str] = field(default_factory=list)


def check_path_segment(value: str, what: str) -> str:
    """``value`` must be usable as one directory name (no ``/``, ``..``, leading dot or control chars)."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or value in {".", ".."}:
        raise PreflightError(
            f"{what} {value!r} is not a safe directory name: use letters, digits, '.', '_', '+' and '-', "
            "starting with a letter or digit"
        )
    return value


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """``out`` (the root of run directories) is a directory or can become one, and is writable."""
    out = Path(out)
    probe = out
    while True:
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                what = "is a file" if probe == out else f"has a file in its path ({probe})"
                raise PreflightError(f"{flag} {out} {what}; pass a directory (it is created if missing)")
            if not os.access(probe, os.W_OK | os.X_OK):
                raise PreflightError(f"{flag} {out}: {probe} is not writable; pass a directory you can write to")
            return out
        if probe.parent == probe:
            return out
        probe = probe.parent


def split_available(dataset: Any, split: str) -> bool:
    """True when ``split`` is declared by the dataset *and* present on disk with at least one image."""
    if split not in getattr(dataset, "splits", ()):
        return False
    try:
        return len(dataset.split(split)) > 0
    except DlbenchError:
        return False


def _split_size(dataset: Any, split: str, name: str, role: str, hint: str) -> int:
    if split not in dataset.splits:
        raise PreflightError(
            f"dataset {name!r} has no split {split!r} (its splits: {', '.join(dataset.splits)}), which {role} "
            f"needs; {hint}"
        )
    try:
        n = len(dataset.split(split))
    except DlbenchError as exc:
        looked = getattr(exc, "looked", None)
        if split != "train" and looked:  # the data is there, only this split is not: say where it was sought
            where = "; ".join(f"{p}: {why}" for p, why in looked if "not set" not in str(why))
            raise PreflightError(f"{role} needs split {split!r} of dataset {name!r}, which is not there ({where}); "
                                 f"{hint}") from None
        raise PreflightError(f"{role} needs split {split!r} of dataset {name!r}: {exc} {hint}") from None
    if n == 0:
        raise PreflightError(f"split {split!r} of dataset {name!r} has no images, but {role} needs it; {hint}")
    return n


def device_memory_bytes(device: str) -> tuple[int | None, str]:
    """Total memory of the device a run will use: ``(bytes or None if unknown, description)``."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"
    except (ValueError, OSError, AttributeError):
        return None, "memory"


def batch_memory_lower_bounds(cfg: Any, dataset: Any) -> dict[str, int]:
    """Bytes that one training step must hold at the very least, per batch-size setting.

    Tokenizer: the float32 input batch, its reconstruction and their gradient, ``3 * b * c * R^2 * 4``.
    Generator: backprop keeps every block's input and MLP hidden state, at least
    ``b * positions * width * depth * (2 + mlp_ratio) * 4`` with ``positions = (R / downsample)^2``
    (the token grid; the pixel grid when the tokenizer does not say). Real use is several times more:
    these bounds only catch batch sizes that cannot possibly fit."""
    c, r = int(dataset.channels), int(dataset.resolution)
    positions = max(1, r * r)
    try:  # the tokenizer's own token grid, from a weightless build on the meta device (dlbench plan's way)
        from dlbench.plan import tokenizer_and_grid

        h, w = tokenizer_and_grid(cfg, c, r)[1]
        positions = max(1, int(h) * int(w))
    except Exception:  # noqa: BLE001 - a tokenizer that cannot build on meta: the pixel grid bounds it
        down = int((cfg.tokenizer.params or {}).get("downsample") or 1)
        positions = max(1, (r // max(1, down)) ** 2)
    bb = cfg.backbone.params or {}
    width, depth, ratio = int(bb.get("width", 1)), int(bb.get("depth", 1)), float(bb.get("mlp_ratio", 0.0))
    return {
        "tokenizer.training.batch_size": 3 * cfg.tokenizer.training.batch_size * c * r * r * 4,
        "training.batch_size": int(cfg.training.batch_size * positions * width * depth * (2 + ratio) * 4),
    }


def check_batch_memory(cfg: Any, dataset: Any) -> None:
    total, what = device_memory_bytes(cfg.device)
    if total is None:
        return
    for where, need in batch_memory_lower_bounds(cfg, dataset).items():
        if need > total:
            raise PreflightError(
                f"{where} cannot be allocated: one step needs at least {need / 2**30:.1f} GiB but the {what} is "
                f"{total / 2**30:.1f} GiB; lower {where}"
            )


#: whether the run pipeline runs methods over continuous latents (``requires.inputs == "latents"``, e.g.
#: ``lightningdit``): it has a float latent cache and latent sampling (docs/methods/vavae.md, "Wiring
#: LightningDiT into the run pipeline"). Set False to refuse such runs here, before the tokenizer is trained.
LATENT_METHODS_SUPPORTED = True


def _check_latent_kind(cfg: Any, registry: Any) -> None:
    """Tokenizer and method must agree on the latent kind: a tokenizer declaring ``latent_kind = "continuous"``
    (float latents, no codebook) feeds only a method with ``requires.inputs == "latents"``, and such a method
    needs a continuous tokenizer. Refused before the tokenizer is trained."""
    tok = registry.get("tokenizer", cfg.tokenizer.name).factory
    continuous = getattr(tok, "latent_kind", "discrete") == "continuous"
    requires = getattr(registry.get("method", cfg.method.name).factory, "requires", None)
    on_latents = getattr(requires, "inputs", "token_ids") == "latents"
    if continuous and not on_latents:
        raise PreflightError(
            f"tokenizer {cfg.tokenizer.name!r} gives continuous latents but method {cfg.method.name!r} trains on "
            "discrete token ids; choose a discrete tokenizer (e.g. vqvae, vqvae-vf)"
        )
    if on_latents and not continuous:
        raise PreflightError(
            f"method {cfg.method.name!r} trains on continuous latents but tokenizer {cfg.tokenizer.name!r} gives "
            "discrete token ids; choose a continuous tokenizer (e.g. kl-vae, kl-vae-vf)"
        )
    if on_latents and not LATENT_METHODS_SUPPORTED:
        raise PreflightError(
            f"method {cfg.method.name!r} trains on continuous latents, which `dlbench run` does not run yet; train "
            "it from Python (docs/methods/vavae.md, \"LightningDiT baseline\")"
        )


def preflight(cfg: Any, *, out: str | Path | None = None, dataset: Any = None, registry: Any = None) -> PreflightReport:
    """Check a resolved :class:`~dlbench.config.RunConfig` (see module docstring). Builds the dataset
    (listing files, not decoding images) unless one is given, from ``registry`` (default: the installed
    plugins' registry). Raises :class:`PreflightError`."""
    report = PreflightReport()
    for section in ("method", "dataset", "tokenizer"):
        check_path_segment(getattr(cfg, section).name, section)
    if out is not None:
        check_out_dir(out)
    if registry is None:
        from dlbench.plugins import get_registry

        registry = get_registry()
    _check_latent_kind(cfg, registry)
    if dataset is None:
        dataset = registry.get("dataset", cfg.dataset.name).build(cfg.dataset.params)
    name = cfg.dataset.name
    n_train = _split_size(dataset, "train", name, "training", "check dataset.data_dir")
    report.splits["train"] = n_train
    check_batch_memory(cfg, dataset)
    for where, bs in (("training.batch_size", cfg.training.batch_size),
                      ("tokenizer.training.batch_size", cfg.tokenizer.training.batch_size)):
        if bs > n_train:
            report.notes.append(f"{where} = {bs} exceeds the {n_train} training images: batches repeat images")
    if cfg.evaluation.enabled:
        from dlbench.runner.evaluation import resolve_run_protocol

        protocol = resolve_run_protocol(cfg)
        report.protocol = protocol.name
        ref = protocol.reference_split
        report.reference_split = ref
        alt = "train" if ref != "train" else None
        hint = (f"pass --set evaluation.overrides.reference_split={alt} to compare with the {alt} images, "
                if alt else "") + "or --set evaluation.enabled=false to skip evaluation"
        n_ref = _split_size(dataset, ref, name, f"evaluation protocol {protocol.name!r} (reference_split={ref!r})", hint)
        report.splits[ref] = n_ref
        used = n_ref if protocol.num_reference is None else protocol.num_reference
        if protocol.inception_metrics and protocol.num_reference is not None and n_ref < protocol.num_reference:
            raise PreflightError(
                f"evaluation protocol {protocol.name!r} needs num_reference = {protocol.num_reference} images of split "
                f"{ref!r} but {name!r} has {n_ref}; raise dataset.max_images or set "
                f"--set evaluation.overrides.num_reference={n_ref} (a different protocol hash)"
            )
        if min(n_ref, used) < 2 or protocol.num_generated < 2:
            raise PreflightError(
                f"evaluation needs at least 2 reference and 2 generated images (Fréchet distances use covariances); "
                f"{name!r} split {ref!r} has {n_ref}, num_generated = {protocol.num_generated}; raise "
                "dataset.max_images / evaluation.overrides.num_generated or --set evaluation.enabled=false"
            )
        if "kid" in protocol.inception_metrics and protocol.kid_subset_size > min(protocol.num_generated, used, n_ref):
            raise PreflightError(
                f"kid_subset_size = {protocol.kid_subset_size} exceeds the {min(protocol.num_generated, used, n_ref)} "
                "images available to KID; set --set evaluation.overrides.kid_subset_size=N with a smaller N"
            )
        if protocol.domain_metrics and getattr(dataset, "num_classes", None) and n_train < 2:
            raise PreflightError(f"domain metrics train a classifier on {name!r}/train, which has {n_train} image(s)")
    else:
        report.notes.append("evaluation disabled")
    if "test" in dataset.splits and not split_available(dataset, "test"):
        report.notes.append("no 'test' split on disk: the reconstruction grid uses 'train'")
    from dlbench.eval.inception import cache_dir
    from dlbench.fsutil import clean_cache_temps

    # a shared cache may be written from other hosts, whose pids mean nothing here: only old debris
    clean_cache_temps(cache_dir(), min_age_s=CACHE_TEMP_MIN_AGE_S)
    return report
