"""The language-model step: pretraining (every position counts) and SFT (response tokens only).

The batch contract (see instructjax/data): tokens, positions, segment_ids, targets, loss_mask,
all [batch, seq]; targets are already shifted and loss_mask says which positions count.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import optax

from instructjax.models import DecoderLM, lm_head_weight
from instructjax.ops.head_chunks import positions_per_chunk
from instructjax.ops.lm_loss import cross_entropy_from_hidden
from instructjax.training.state import TrainState

LM_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")  # The batch contract.


def lm_loss(model: DecoderLM, params, batch, rng: Optional[jax.Array] = None,
            deterministic: bool = True, z_loss: float = 0.0):
  """(mean token cross-entropy, number of counted tokens) of `batch` under `params`.

  The logits are computed from the final hidden states `model.cfg.logits_chunk_tokens` tokens
  at a time (ops/head_chunks.py): no [B, T, vocab] array in the step.
  """
  rngs = None if deterministic else {"dropout": rng}
  hidden, _ = model.apply({"params": params}, batch["tokens"], batch["positions"],
                          batch["segment_ids"], deterministic=deterministic, rngs=rngs,
                          return_hidden=True)  # [B, T, d] float32
  b, t = batch["tokens"].shape
  chunk = positions_per_chunk(b, t, model.cfg.resolved_logits_chunk_tokens)
  return cross_entropy_from_hidden(hidden, lm_head_weight(model.cfg, params), batch["targets"],
                                   batch["loss_mask"], z_loss=z_loss, chunk=chunk)


def make_lm_train_step(model: DecoderLM, tx: optax.GradientTransformation,
                       schedule: Optional[optax.Schedule] = None,
                       z_loss: float = 0.0) -> Callable:
  """Returns the pure `step(state, batch, rng) -> (state, metrics)`."""
  use_dropout = model.cfg.dropout_rate > 0

  def step(state: TrainState, batch, rng):
    def loss_fn(params):
      return lm_loss(model, params, batch, rng, deterministic=not use_dropout, z_loss=z_loss)

    (loss, num_tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "tokens": num_tokens}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_lm_eval_step(model: DecoderLM) -> Callable:
  """Pure `eval(params, batch) -> {"loss", "tokens"}` (no dropout)."""
  def evaluate(params, batch):
    loss, num_tokens = lm_loss(model, params, batch)
    return {"loss": loss, "tokens": num_tokens}
  return evaluate
