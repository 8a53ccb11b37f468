"""The one training loop and its checkpoints."""
from .checkpoint import Checkpoint, CheckpointError, check_schema, load_checkpoint, load_encoder, save_checkpoint
from .local import EpochLog, LocalReporter
from ..errors import NonFiniteLossError
from .loop import Reporter, Runtime, train

__all__ = ["Checkpoint", "CheckpointError", "EpochLog", "LocalReporter", "NonFiniteLossError", "Reporter", "Runtime",
           "check_schema", "load_checkpoint", "load_encoder", "save_checkpoint", "train"]
