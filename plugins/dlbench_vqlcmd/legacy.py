"""Pre-slot flat fields of VQ-LCMD's config (``shift``, ``embed_dim``, ...) read into the schedule/embedding
slots, so run configs saved by earlier versions and ``--set method.embed_dim=8`` keep working."""

from __future__ import annotations

from typing import Any

from dlbench.interfaces import ComponentConfig


#: old flat field -> (slot, component it applied to, that component's param)
_LEGACY: dict[str, tuple[str, str, str]] = {
    "shift": ("schedule", "shifted-cosine", "shift"),
    "embed_dim": ("embedding", "learnable", "dim"),
    "normalize_embeddings": ("embedding", "learnable", "normalize"),
    "embed_init_std": ("embedding", "learnable", "init_std"),
    "standardize_codebook": ("embedding", "codebook", "standardize"),
}


def legacy_slot_fields(cls: type[ComponentConfig], data: Any) -> Any:
    """Map the pre-slot flat fields (``shift=-1``, ``embed_dim=8``...) into the slots' params, so saved run
    configs and ``--set method.embed_dim=8`` keep working. As before the slots, a flat field that does not apply
    to the chosen component is ignored (``embed_dim`` with the one-hot table), except a non-zero ``shift`` on
    another schedule, which is refused."""
    if not isinstance(data, dict) or not any(k in data for k in _LEGACY):
        return data
    data = dict(data)
    for key in [k for k in _LEGACY if k in data]:
        slot, component, param = _LEGACY[key]
        value = data.pop(key)
        default = cls.model_fields[slot].default_factory()
        current = data.get(slot, {})
        current = {"name": current} if isinstance(current, str) else dict(current)
        if "name" not in current:
            current = {"name": default.name, "params": {**default.params, **(current.get("params") or {})}}
        if current["name"].split("/")[-1] != component:
            if key == "shift" and value != 0:
                raise ValueError(f"shift={value} only applies to schedule 'shifted-cosine' (got {current['name']!r}); "
                                 "set shift=0 or schedule.params for the schedule you chose")
            continue
        current["params"] = {**(current.get("params") or {}), param: value}
        data[slot] = current
    return data
