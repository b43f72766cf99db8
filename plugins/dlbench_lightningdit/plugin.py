"""dlbench hooks of the LightningDiT plugin (entry point ``lightningdit = "dlbench_lightningdit.plugin"``).

Registers ``method/lightningdit`` (continuous: trains on a continuous tokenizer's latents, e.g. ``kl-vae``).
"""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_methods(register):
    from .method import LightningDiT

    register("lightningdit", LightningDiT,
             description="LightningDiT: rectified flow over continuous (kl-vae) latents, VA-VAE's generator "
                         "(arXiv 2501.01423)")
