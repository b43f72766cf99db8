"""dlbench plugin hooks of VQ-LCMD (entry point ``vqlcmd = "dlbench_vqlcmd.plugin"``)."""

from __future__ import annotations

from dlbench import hookimpl


@hookimpl
def register_methods(register):
    from .method import CSDM, VQLCMD, FixedEmbedding, VQLCMDNoDrop, VQLCMDNoShift

    register("vqlcmd", VQLCMD, description="VQ-LCMD: embedding diffusion + consistency matching (METHODS.md A)")
    register("csdm", CSDM, description="CSDM ablation: L_rec + L_DM only on learned embeddings (collapse-prone)")
    register("vqlcmd-nodrop", VQLCMDNoDrop, description="VQ-LCMD without random dropping")
    register("vqlcmd-noshift", VQLCMDNoShift, description="VQ-LCMD with the unshifted cosine schedule")
    register("fixed-embedding", FixedEmbedding, description="VQ-LCMD on the tokenizer's frozen codebook vectors")


@hookimpl
def register_regularizers(register):
    from .regularizers import ConsistencyMatching, RandomDropping

    register("consistency-matching", ConsistencyMatching)
    register("random-dropping", RandomDropping)
