"""The training loop shared by every stage: checkpoints, metrics, hooks, non-finite handling."""
from instructjax.training.checkpointing import (
    CheckpointConfig,
    CheckpointError,
    Checkpointer,
    Restored,
    abstract_like,
    load_checkpoint_tokenizer,
    read_model_config,
    tokenizer_dir,
    write_checkpoint_assets,
)
from instructjax.training.hooks import CallableHook, Hook, LoopContext
from instructjax.training.loop import LoopSummary, checkpoint_dir, run_loop
from instructjax.training.metrics_writer import MetricsWriter, read_metrics
from instructjax.training.nonfinite import (
    SKIPPED,
    NonFiniteError,
    NonfiniteTracker,
    guard_nonfinite,
)

__all__ = [
    "CallableHook", "CheckpointConfig", "CheckpointError", "Checkpointer", "Hook", "LoopContext",
    "LoopSummary", "MetricsWriter", "NonFiniteError", "NonfiniteTracker", "Restored", "SKIPPED", "abstract_like",
    "checkpoint_dir", "guard_nonfinite", "load_checkpoint_tokenizer", "read_metrics",
    "read_model_config", "run_loop", "tokenizer_dir", "write_checkpoint_assets",
]
