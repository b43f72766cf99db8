"""Entry point ``vqdiffusion = "dlbench_vqdiffusion.plugin"``: registers the ``vq-diffusion`` method.

The discrete schedules it uses live in ``dlbench.schedules.discrete`` and are registered by the core.
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
