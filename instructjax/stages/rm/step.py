"""The reward-model step: a scalar head on the trunk, trained with the InstructGPT ranking loss.

The batch contract (instructjax/data `make_comparison_iterator`): one batch element is one prompt
with its K ranked responses, best first:
  tokens, positions, segment_ids  int32 [B, K_max, T]  prompt + response_k + EOS, right padded
  k_mask                          bool  [B, K_max]     which slots hold a response (K varies)
  last_index                      int32 [B, K_max]     column of each slot's last real token
The prompt is segment 1 of each row and the response (with its EOS) segment 2. The model sees
the slots as B * K_max independent rows; a response's reward is the scalar head read at its
last real token (the EOS), so it has attended to the whole prompt and response; with
model.score_logprob > 0, plus the weighted log-likelihood of the response (DecoderLM).

Packed layout (`make_comparison_iterator(packed_len=...)`): tokens, positions, segment_ids
[B, T] hold the prompt once (segment 1) followed by the K responses (segments 2..K+1), the
model attends with `shared_prefix` so each response sees the prompt and itself only, and
last_index [B, K_max] gives each response's EOS column: the same scores from ~K times fewer
tokens. The eval step also takes response_id [B, K_max] (equal ids = identical responses).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from instructjax.models import DecoderLM
from instructjax.models.response_loglik import (prediction_columns, scoring_segments,
                                                segment_cumsum)
from instructjax.models.transformer import RESPONSE_LOGLIK, gather_at
from instructjax.ops.reward_loss import pairwise_ranking_loss
from instructjax.training.state import TrainState

RM_KEYS = ("tokens", "positions", "segment_ids", "k_mask", "last_index")
EVAL_KEYS = RM_KEYS + ("response_id",)  # response_id: packed batches only.


def is_packed(batch) -> bool:
  return batch["tokens"].ndim == 2


def _model_rows(model: DecoderLM, batch) -> tuple[jax.Array, jax.Array, jax.Array, bool,
                                                  jax.Array]:
  """(tokens, positions, segment_ids, shared_prefix, last_index) of the model call: packed rows
  [B, T] as they are; unpacked [B, K_max, T] as B * K_max rows, last_index [B * K_max]."""
  if is_packed(batch):
    return (batch["tokens"], batch["positions"], batch["segment_ids"], True,
            batch["last_index"])
  b, k, t = batch["tokens"].shape
  flat = lambda x: x.reshape(b * k, t)
  # Rows are prompt (segment 1) + response (segment 2): as they are for a model with the
  # log-likelihood term, one segment each for a plain one (`scoring_segments`).
  segment_ids, shared_prefix = scoring_segments(model.cfg.score_logprob,
                                                flat(batch["segment_ids"]))
  return (flat(batch["tokens"]), flat(batch["positions"]), segment_ids, shared_prefix,
          batch["last_index"].reshape(b * k))


def rm_scores_and_loglik(model: DecoderLM, params, batch, with_loglik: bool
                         ) -> tuple[jax.Array, Optional[tuple[jax.Array, jax.Array]]]:
  """(scores [B, K_max] float32, (loglik, num_tokens) [B, K_max] or None).

  With `with_loglik` (a model with the log-likelihood term only) also each slot's response
  log-likelihood under the reward model's own LM head (EOS included) and its number of
  tokens; padding slots hold whatever the model says.
  """
  tokens, positions, segment_ids, shared_prefix, last_index = _model_rows(model, batch)
  k_max = batch["k_mask"].shape[1]
  as_slots = lambda x: x.reshape(-1, k_max)  # [B * K] or [B, K] -> [B, K]
  # Always deterministic: dropout noise in the scores would leak into the ranking targets.
  if not with_loglik:
    values, _ = model.apply({"params": params}, tokens, positions, segment_ids,
                            deterministic=True, shared_prefix=shared_prefix)  # [rows, T]
    return as_slots(gather_at(values, last_index)), None
  if not model.cfg.score_logprob:
    raise ValueError("the response log-likelihood needs a reward model with score_logprob > 0")
  (values, _), sown = model.apply({"params": params}, tokens, positions, segment_ids,
                                  deterministic=True, shared_prefix=shared_prefix,
                                  mutable=["intermediates"])
  token_loglik = sown["intermediates"][RESPONSE_LOGLIK][0]  # [rows, T], running sums
  _, scored = prediction_columns(segment_ids)
  num_tokens = segment_cumsum(scored.astype(jnp.float32), segment_ids)  # [rows, T]
  return as_slots(gather_at(values, last_index)), (
      as_slots(gather_at(token_loglik, last_index)), as_slots(gather_at(num_tokens, last_index)))


def rm_scores(model: DecoderLM, params, batch) -> jax.Array:
  """Scores [B, K_max] float32 of every slot (padding slots hold whatever the model says)."""
  return rm_scores_and_loglik(model, params, batch, with_loglik=False)[0]


def response_nll(loglik: jax.Array, num_tokens: jax.Array, k_mask: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood of the batch's responses (valid slots, [B, K_max])."""
  total = jnp.where(k_mask, loglik, 0.0).sum()
  count = jnp.where(k_mask, num_tokens, 0.0).sum()
  return -total / jnp.maximum(count, 1.0)


def rm_loss(model: DecoderLM, params, batch, lm_coef: float = 0.0) -> tuple[jax.Array, dict]:
  """(loss, metrics) of one comparison batch: the ranking loss (metrics as
  `pairwise_ranking_loss`), plus with lm_coef > 0 lm_coef times the per-token NLL of the
  compared responses under the reward model's own LM head (metrics ranking_loss, response_nll).

  Why the LM term: through the log-likelihood term the ranking loss also trains the LM, and
  left alone it lowers the likelihood of good answers along with bad ones (as preference
  losses on likelihoods do); the term then stops telling a right answer from a wrong one and
  PPO finds the wrong ones. The responses are SFT samples, so the loss keeps the LM where SFT
  had it.
  """
  scores, loglik = rm_scores_and_loglik(model, params, batch, with_loglik=lm_coef > 0)
  loss, metrics = pairwise_ranking_loss(scores, batch["k_mask"])
  if not lm_coef:
    return loss, metrics
  nll = response_nll(*loglik, batch["k_mask"])
  return loss + lm_coef * nll, {**metrics, "ranking_loss": loss, "response_nll": nll}


def make_rm_train_step(model: DecoderLM, tx: optax.GradientTransformation,
                       schedule: Optional[optax.Schedule] = None,
                       lm_coef: float = 0.0) -> Callable:
  """Returns the pure `step(state, batch, rng) -> (state, metrics)` (rng unused: no dropout).

  Metrics: loss, accuracy (pairs ordered right, per-prompt mean), margin, reward_mean,
  reward_std (over valid slots), num_pairs, grad_norm, lr (with `schedule`), and with
  lm_coef > 0 (`rm_loss`) ranking_loss and response_nll.
  """
  if lm_coef < 0:
    raise ValueError(f"lm_coef must be >= 0, got {lm_coef}")
  if lm_coef and not model.cfg.score_logprob:
    raise ValueError("lm_coef > 0 trains the log-likelihood term's LM: it needs "
                     "score_logprob > 0")
  if model.head != "scalar":
    raise ValueError(f"the reward model needs head='scalar', got {model.head!r}")

  def step(state: TrainState, batch, rng):
    del rng
    (loss, m), grads = jax.value_and_grad(lambda p: rm_loss(model, p, batch, lm_coef),
                                          has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": m["accuracy"], "margin": m["margin"],
               "reward_mean": m["reward_mean"], "reward_std": m["reward_std"],
               "num_pairs": m["num_pairs"], "grad_norm": optax.global_norm(grads)}
    if lm_coef:
      metrics["ranking_loss"], metrics["response_nll"] = m["ranking_loss"], m["response_nll"]
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_rm_eval_step(model: DecoderLM) -> Callable:
  """Pure `eval(params, batch) -> {"loss", "num_prompts", "scores", "k_mask", "same"}`.

  The loss is the mean over this batch's prompts that have pairs; weight it by num_prompts to
  average over batches. scores and k_mask are [B, K_max], same [B, K_max, K_max] (slots holding
  identical sequences); they come back so that accuracies are computed on the host
  (`pairwise_agreement`) from the step's outputs alone, which jit can replicate to every host.
  """
  def evaluate(params, batch):
    scores = rm_scores(model, params, batch)
    loss, m = pairwise_ranking_loss(scores, batch["k_mask"])
    if is_packed(batch):
      ids = batch["response_id"]
      same = ids[:, :, None] == ids[:, None, :]
    else:
      tokens = batch["tokens"]
      same = (tokens[:, :, None, :] == tokens[:, None, :, :]).all(axis=-1)
    return {"loss": loss, "num_prompts": m["num_prompts"], "scores": scores,
            "k_mask": batch["k_mask"], "same": same}
  return evaluate
