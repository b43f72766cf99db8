"""The clean-fid backend (``mode="clean"``): FID and KID computed by clean-fid's own functions.

clean-fid reads image folders: the protocol's uint8 images are written losslessly as PNG, its PIL-bicubic
resize and feature loop run as clean-fid wrote them, with the Inception built from the resolved offline
weights (no download). Reference features are cached under the dlbench cache dir. Dispatched to by
:func:`dlbench.eval.backends.compute_backend_metrics`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dlbench.eval.backends import Uint8ImageDataset, _as_dataset
from dlbench.eval.inception import InceptionWeights, build_inception, cache_dir, inception_pool3_from_normalized
from dlbench.eval.protocol import EvalProtocol

__all__ = ["clean_fid_extractor", "clean_fid_metrics", "write_png_folder"]

def clean_fid_extractor(weights: InceptionWeights, device: torch.device | str = "cpu"):
    """A ``custom_feat_extractor`` for clean-fid built from the resolved weights (no download).

    clean-fid hands it float ``"b 3 299 299"`` in [0, 255] (already resized by PIL bicubic) and its
    own ``InceptionV3W`` computes ``layers((x - 128) / 128)``; this does the same on torch-fidelity's
    module, whose conv/BN weights are the same network (checked at conversion).
    """
    net = build_inception(weights).to(device)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, torch.float32)
        assert x.shape[2:] == (299, 299), f"clean-fid should resize to 299 first, got {tuple(x.shape)}"
        return inception_pool3_from_normalized(net, (x - 128) / 128)

    return fn


def write_png_folder(images: Dataset, folder: str | os.PathLike) -> Path:
    """Write uint8 ``"3 H W"`` items losslessly as PNG (clean-fid reads image folders)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(images)):  # type: ignore[arg-type]
        arr = images[i].permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{i:07d}.png")
    return folder


def _clean_features(images: Uint8ImageDataset, fn, batch_size: int, device: torch.device,
                    stage: str = "inception_features") -> np.ndarray:
    from cleanfid import fid as cfid

    from dlbench.observe.progress import task

    with tempfile.TemporaryDirectory(prefix="dlbench-cleanfid-") as tmp:
        write_png_folder(images, tmp)
        with task(stage, len(images), "images") as bar:

            def counted(x: torch.Tensor) -> torch.Tensor:
                out = fn(x)
                bar.update(advance=len(x))
                return out

            with contextlib.redirect_stdout(io.StringIO()):
                return cfid.get_folder_features(
                    tmp, counted, num_workers=0, batch_size=batch_size, device=device, mode="clean", verbose=False
                )


def clean_fid_metrics(
    generated: torch.Tensor | Dataset,
    reference: torch.Tensor | Dataset,
    protocol: EvalProtocol,
    weights: InceptionWeights,
    *,
    reference_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[dict[str, float], dict[str, str]]:
    """clean-fid (``mode="clean"``) FID and KID; returns ``(metrics, unavailable)``."""
    from cleanfid import fid as cfid

    device = torch.device(device)
    gen, ref = _as_dataset(generated), _as_dataset(reference, protocol.num_reference)
    fn = clean_fid_extractor(weights, device)
    cache_file = cache_dir() / "clean-fid" / f"{reference_cache_name}.npz" if reference_cache_name else None
    if cache_file is not None and cache_file.is_file():
        from dlbench.safeload import CorruptFileError, np_load

        ref_feats = np_load(cache_file, what="clean-fid reference features").get("feats")
        if ref_feats is None or ref_feats.ndim != 2:
            raise CorruptFileError(f"{cache_file}: clean-fid reference features lack a 2-d 'feats' array; delete it")
    else:
        ref_feats = _clean_features(ref, fn, batch_size, device, "inception_features/reference")
        if cache_file is not None:
            from dlbench.fsutil import atomic_write

            with atomic_write(cache_file) as fh:
                np.savez(fh, feats=ref_feats)
    gen_feats = _clean_features(gen, fn, batch_size, device, "inception_features/generated")
    out: dict[str, float] = {}
    if "fid" in protocol.inception_metrics:
        mu1, s1 = np.mean(gen_feats, axis=0), np.cov(gen_feats, rowvar=False)
        mu2, s2 = np.mean(ref_feats, axis=0), np.cov(ref_feats, rowvar=False)
        out["fid"] = float(cfid.frechet_distance(mu1, s1, mu2, s2))
    if "kid" in protocol.inception_metrics:
        # kernel_distance draws subsets from numpy's global RNG: seed it locally and restore it
        state = np.random.get_state()
        try:
            np.random.seed(protocol.kid_seed)
            out["kid_mean"] = cfid.kernel_distance(
                gen_feats, ref_feats, num_subsets=protocol.kid_subsets, max_subset_size=protocol.kid_subset_size
            )
        finally:
            np.random.set_state(state)
    return out, {}
