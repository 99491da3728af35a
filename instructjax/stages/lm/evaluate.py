"""The LM stages' held-out evaluation: the token-weighted mean loss over fixed batches."""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from instructjax.models import DecoderLM
from instructjax.stages import runner
from instructjax.stages.lm.step import make_lm_eval_step

EVAL_METRICS = ("loss",)


def make_evaluator(model: DecoderLM, batches: Sequence[dict]) -> Callable:
  """`evaluate(params) -> {"loss"}`, compiled once for the loop and the final evaluation."""
  step = jax.jit(make_lm_eval_step(model))

  def evaluate(params) -> dict[str, float]:
    parts = [jax.device_get(step(params, batch)) for batch in batches]
    return {"loss": runner.weighted_mean((m["loss"], m["tokens"]) for m in parts)}
  return evaluate
