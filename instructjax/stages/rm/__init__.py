"""The reward model: the ranking-loss step, comparisons (SFT samples ranked by labelers, or
files), held-out accuracy and normalisation, and the stage runner."""
from instructjax.stages.rm.step import (EVAL_KEYS, RM_KEYS, make_rm_eval_step, make_rm_train_step,
                                        rm_loss, rm_scores)

__all__ = ["EVAL_KEYS", "RM_KEYS", "make_rm_eval_step", "make_rm_train_step", "rm_loss",
           "rm_scores"]
