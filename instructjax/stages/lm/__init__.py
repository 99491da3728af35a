"""Pretraining and SFT: the language-model step, its data and evaluation, and the stage runner."""
from instructjax.stages.lm.step import LM_KEYS, lm_loss, make_lm_eval_step, make_lm_train_step

__all__ = ["LM_KEYS", "lm_loss", "make_lm_eval_step", "make_lm_train_step"]
