"""Import released VQGAN checkpoints into :class:`dlbench.nn.vqgan.VQGAN` (a tokenizer source).

Two upstream layouts are read, both through :func:`dlbench.nn.safe_pickle.safe_torch_load` (no code runs):

- taming-transformers ``VQModel`` Lightning checkpoints (``last.ckpt``): ``{"state_dict": {encoder.*,
  decoder.*, quant_conv.*, post_quant_conv.*, quantize.embedding.weight, loss.discriminator.*,
  loss.perceptual_loss.*}, "epoch", "global_step", "pytorch-lightning_version", "callbacks", ...}``;
- VQ-Diffusion's released tokenizers (``vqgan_ffhq_f16_1024.pth``, ``vqgan_imagenet_f16_16384.pth``):
  the same ``state_dict`` nesting, and for FFHQ the VQGAN sits under ``first_stage_model.`` of a
  taming ``Net2NetTransformer`` (VQ-Diffusion loads it that way and keeps ``.first_stage_model``).

Every tensor the dlbench model needs must be present with the right shape; the error names the first
key that is missing or mis-shaped and the architecture the file implies. The LPIPS weights under
``loss.perceptual_loss`` are dropped (dlbench resolves LPIPS itself); the discriminator is kept when
it fits. The file's sha256 is recorded, and checked when the config (or the named entry) gives one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlbench.registry import DlbenchError

_TAMING_F16 = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_levels": None,
               "z_channels": 256, "code_dim": 256}


@dataclass(frozen=True)
class PretrainedEntry:
    """A released checkpoint: its architecture, where it comes from, and its sha256 when known."""

    arch: dict[str, Any]
    source: str
    sha256: str | None = None
    notes: str = ""
    files: tuple[str, ...] = field(default_factory=tuple)


#: Released VQGANs dlbench knows by name. No sha256 is recorded: none was verifiable offline when this
#: table was written; the sha256 of the file actually imported is recorded with the tokenizer.
PRETRAINED: dict[str, PretrainedEntry] = {
    "taming-imagenet-f16-1024": PretrainedEntry(
        {**_TAMING_F16, "codebook_size": 1024}, "taming-transformers 'vqgan_imagenet_f16_1024' (ckpts/last.ckpt)",
        files=("last.ckpt",)),
    "taming-imagenet-f16-16384": PretrainedEntry(
        {**_TAMING_F16, "codebook_size": 16384}, "taming-transformers 'vqgan_imagenet_f16_16384' (ckpts/last.ckpt)",
        notes="VQ-Diffusion's ImageNet model remaps it to the 974 codes in use (METHODS.md B.5); dlbench keeps all 16384",
        files=("last.ckpt",)),
    "vqdiffusion-ffhq-f16-1024": PretrainedEntry(
        {**_TAMING_F16, "codebook_size": 1024}, "VQ-Diffusion 'vqgan_ffhq_f16_1024.pth' (taming FFHQ VQGAN)",
        notes="the tokenizer of VQ-Diffusion's FFHQ config (METHODS.md B.5)", files=("vqgan_ffhq_f16_1024.pth",)),
    "vqdiffusion-imagenet-f16-16384": PretrainedEntry(
        {**_TAMING_F16, "codebook_size": 16384}, "VQ-Diffusion 'vqgan_imagenet_f16_16384.pth'",
        files=("vqgan_imagenet_f16_16384.pth",)),
}

#: keys of the dlbench model that a checkpoint need not provide (training state dlbench adds)
_OPTIONAL_PREFIXES = ("train_steps", "quantize.usage", "quantize.ema_", "discriminator.")
_NESTING_PREFIXES = ("first_stage_model.", "module.", "model.")


class CheckpointImportError(DlbenchError):
    pass


def unknown_pretrained(name: str) -> str:
    close = difflib.get_close_matches(name, list(PRETRAINED), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown pretrained VQGAN {name!r}.{hint} Known: {', '.join(PRETRAINED)}"


def upstream_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The VQGAN tensors of a loaded checkpoint object, keyed as in dlbench's model."""
    sd = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointImportError(f"{path}: no state_dict of tensors found (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    for prefix in _NESTING_PREFIXES:  # a VQGAN nested in a larger model (VQ-Diffusion FFHQ: Net2NetTransformer)
        if any(k.startswith(prefix + "encoder.") for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or k.startswith("loss.perceptual_loss."):
            continue
        out[k.replace("loss.discriminator.", "discriminator.", 1) if k.startswith("loss.discriminator.") else k] = v
    return out


def infer_arch(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The VQGAN architecture fields implied by tensor shapes (for error messages and checks)."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        mult = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels]
        blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
        attn = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.") and ".attn." in k})
        k, d = sd["quantize.embedding.weight"].shape
        return {"ch": ch, "ch_mult": mult, "num_res_blocks": blocks,
                "attn_levels": None if attn == [len(mult) - 1] else attn,
                "z_channels": sd["encoder.conv_out.weight"].shape[0], "codebook_size": k, "code_dim": d}
    except (KeyError, IndexError, ValueError):
        return {}


def import_checkpoint(model: torch.nn.Module, config: Any) -> dict[str, Any]:
    """Load ``config.checkpoint`` into ``model`` (a VQGAN) after checking every shape; returns the record."""
    from dlbench.eval.inception import sha256_file
    from dlbench.nn.safe_pickle import safe_torch_load

    if not config.checkpoint:
        entry = PRETRAINED[config.pretrained]
        raise CheckpointImportError(
            f"pretrained VQGAN {config.pretrained!r} ({entry.source}) needs the file: download it yourself and "
            f"pass --set tokenizer.checkpoint=PATH (dlbench never downloads checkpoints)")
    path = Path(config.checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointImportError(f"tokenizer.checkpoint {path} does not exist")
    digest = sha256_file(path)
    if config.checkpoint_sha256 and digest != config.checkpoint_sha256.lower():
        raise CheckpointImportError(
            f"{path}: sha256 {digest} differs from the expected {config.checkpoint_sha256} "
            "(a different or corrupt file); fix tokenizer.checkpoint or tokenizer.checkpoint_sha256")
    sd = upstream_state_dict(safe_torch_load(path), path)
    own = model.state_dict()
    implied = infer_arch(sd)
    for key, tensor in own.items():
        if key in sd:
            if tuple(sd[key].shape) != tuple(tensor.shape):
                raise CheckpointImportError(
                    f"{path}: {key} has shape {tuple(sd[key].shape)}, the configured VQGAN needs {tuple(tensor.shape)}; "
                    f"the file implies tokenizer settings {implied}")
        elif not key.startswith(_OPTIONAL_PREFIXES):
            raise CheckpointImportError(
                f"{path}: no tensor {key!r} (not a taming/VQ-Diffusion VQGAN of this architecture); "
                f"the file implies tokenizer settings {implied or 'none (no VQGAN encoder found)'}")
    extra = sorted(k for k in sd if k not in own)
    if any(k.startswith(("encoder.", "decoder.")) for k in extra):
        raise CheckpointImportError(f"{path}: {extra[0]} is not part of the configured VQGAN; "
                                    f"the file implies tokenizer settings {implied}")
    disc_fits = all(k in sd and sd[k].shape == v.shape for k, v in own.items() if k.startswith("discriminator."))
    load = {k: v for k, v in sd.items() if k in own and (disc_fits or not k.startswith("discriminator."))}
    model.load_state_dict(load, strict=False)
    return {"path": str(path), "sha256": digest, "pretrained": config.pretrained, "tensors": len(load),
            "discriminator": disc_fits, "ignored": len(extra)}
