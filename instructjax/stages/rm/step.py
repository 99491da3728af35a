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
import optax

from instructjax.models import DecoderLM
from instructjax.models.response_loglik import scoring_segments
from instructjax.models.transformer import gather_at
from instructjax.ops.reward_loss import pairwise_ranking_loss
from instructjax.training.state import TrainState

RM_KEYS = ("tokens", "positions", "segment_ids", "k_mask", "last_index")
EVAL_KEYS = RM_KEYS + ("response_id",)  # response_id: packed batches only.


def is_packed(batch) -> bool:
  return batch["tokens"].ndim == 2


def rm_scores(model: DecoderLM, params, batch) -> jax.Array:
  """Scores [B, K_max] float32 of every slot (padding slots hold whatever the model says)."""
  if is_packed(batch):
    values, _ = model.apply({"params": params}, batch["tokens"], batch["positions"],
                            batch["segment_ids"], deterministic=True,
                            shared_prefix=True)  # [B, T]
    return gather_at(values, batch["last_index"])  # [B, K_max]
  b, k, t = batch["tokens"].shape
  flat = lambda x: x.reshape(b * k, t)
  # Rows are prompt (segment 1) + response (segment 2): as they are for a model with the
  # log-likelihood term, one segment each for a plain one (`scoring_segments`).
  segment_ids, shared_prefix = scoring_segments(model.cfg.score_logprob,
                                                flat(batch["segment_ids"]))
  # Always deterministic: dropout noise in the scores would leak into the ranking targets.
  values, _ = model.apply({"params": params}, flat(batch["tokens"]), flat(batch["positions"]),
                          segment_ids, deterministic=True,
                          shared_prefix=shared_prefix)  # [B * K, T]
  return gather_at(values, batch["last_index"].reshape(b * k)).reshape(b, k)


def rm_loss(model: DecoderLM, params, batch) -> tuple[jax.Array, dict]:
  """(ranking loss, metrics) of one comparison batch; metrics as `pairwise_ranking_loss`."""
  return pairwise_ranking_loss(rm_scores(model, params, batch), batch["k_mask"])


def make_rm_train_step(model: DecoderLM, tx: optax.GradientTransformation,
                       schedule: Optional[optax.Schedule] = None) -> Callable:
  """Returns the pure `step(state, batch, rng) -> (state, metrics)` (rng unused: no dropout).

  Metrics: loss, accuracy (pairs ordered right, per-prompt mean), margin, reward_mean,
  reward_std (over valid slots), num_pairs, grad_norm and lr (with `schedule`).
  """
  if model.head != "scalar":
    raise ValueError(f"the reward model needs head='scalar', got {model.head!r}")

  def step(state: TrainState, batch, rng):
    del rng
    (loss, m), grads = jax.value_and_grad(lambda p: rm_loss(model, p, batch),
                                          has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": m["accuracy"], "margin": m["margin"],
               "reward_mean": m["reward_mean"], "reward_std": m["reward_std"],
               "num_pairs": m["num_pairs"], "grad_norm": optax.global_norm(grads)}
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
