"""dlbench plugin: VQ-Diffusion (Gu et al. 2022) with Improved VQ-Diffusion sampling (Tang et al. 2022).

See ``docs/methods/vq-diffusion.md`` and METHODS.md section B.
"""
