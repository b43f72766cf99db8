"""Entry point ``vqdiffusion = "dlbench_vqdiffusion.plugin"``: registers the ``vq-diffusion`` method.

Its schedule is any registered discrete ``schedule`` (the core registers ``vqdiffusion-alpha1`` and
``mask-and-replace``; a plugin may add more), chosen by ``method.schedule``.
"""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_methods(register):
    from dlbench_vqdiffusion.method import VQDiffusion

    register(
        "vq-diffusion",
        VQDiffusion,
        description="VQ-Diffusion: mask-and-replace discrete diffusion on VQ tokens (+ Improved VQ-Diffusion samplers)",
    )
