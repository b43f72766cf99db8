"""The training engine: loop, checkpoints, distributed helpers (the run itself is :mod:`dlbench.runner`)."""

from dlbench.train.checkpoint import CheckpointError, ResumeConfigMismatch, latest_checkpoint, load_checkpoint
from dlbench.train.dist import DistContext, init_distributed, resolve_device
from dlbench.train.loop import TensorBatches, TrainingDiverged, TrainResult, train

__all__ = [
    "CheckpointError", "DistContext", "ResumeConfigMismatch", "TensorBatches", "TrainResult",
    "TrainingDiverged", "init_distributed", "latest_checkpoint", "load_checkpoint", "resolve_device", "train",
]
