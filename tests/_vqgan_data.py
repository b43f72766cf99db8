"""A taming-transformers ``VQModel`` Lightning checkpoint built in the test (random weights, upstream layout)."""

import sys
import types

import torch

from dlbench.nn.vqgan import VQGAN


def _fake_module(name: str, **attrs):
    """Register a module the test pickles against, so the file names it like the real packages would."""
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(mod, k, v)
    sys.modules[name] = mod
    parts = name.split(".")
    for i in range(1, len(parts)):  # pickle imports the parents too
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return mod


def taming_ckpt(src: VQGAN, path, nest: str = "", lightning: bool = True):
    """``src``'s weights in taming's ``VQModel`` layout (loss.discriminator.*, loss.perceptual_loss.*,
    no dlbench buffers), nested under ``nest``, wrapped in Lightning metadata."""
    sd = {}
    for k, v in src.state_dict().items():
        if k in ("train_steps", "quantize.usage"):
            continue
        sd[nest + (("loss." + k) if k.startswith("discriminator.") else k)] = v.clone()
    sd[nest + "loss.perceptual_loss.lin0.model.1.weight"] = torch.rand(1, 64, 1, 1)
    sd[nest + "loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    if nest:
        sd["transformer.tok_emb.weight"] = torch.zeros(5, 3)  # the rest of a Net2NetTransformer
    obj = {"state_dict": sd}
    names = []
    if lightning:
        class ModelCheckpoint:  # noqa: D401 - stands for pytorch_lightning's class (pickled by reference)
            pass

        class AttributeDict(dict):
            pass

        class DictConfig:
            def __init__(self, content):
                self._content = content

        names = ["pytorch_lightning.callbacks.model_checkpoint", "pytorch_lightning.utilities.parsing", "omegaconf.dictconfig"]
        _fake_module(names[0], ModelCheckpoint=ModelCheckpoint)
        _fake_module(names[1], AttributeDict=AttributeDict)
        _fake_module(names[2], DictConfig=DictConfig)
        hp = AttributeDict(ddconfig=DictConfig({"ch": 32}), n_embed=16)
        obj.update({"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "dirpath": "logs/x"}},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9)}]}],
                    "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": hp})
    try:
        torch.save(obj, path)
    finally:
        for n in [m for m in sys.modules if m.split(".")[0] in ("pytorch_lightning", "omegaconf")]:
            sys.modules.pop(n, None)  # the loader must not find (or import) them
    return path
