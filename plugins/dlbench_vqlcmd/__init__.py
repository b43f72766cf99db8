"""VQ-LCMD (latent consistency-matching diffusion on learnable VQ-token embeddings) and its ablations.

See METHODS.md §A and docs/methods/vqlcmd.md. Registered through :mod:`dlbench_vqlcmd.plugin`.
"""

from .method import CSDM, VQLCMD, FixedEmbedding, VQLCMDConfig, VQLCMDNoDrop, VQLCMDNoShift
from .regularizers import ConsistencyMatching, RandomDropping

__all__ = [
    "CSDM",
    "ConsistencyMatching",
    "FixedEmbedding",
    "RandomDropping",
    "VQLCMD",
    "VQLCMDConfig",
    "VQLCMDNoDrop",
    "VQLCMDNoShift",
]
