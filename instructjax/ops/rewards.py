"""Per-token PPO rewards: -beta * KL on every response token, RM score on the last one."""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from instructjax.ops.kl import MAX_LOG_RATIO, kl_estimate
from instructjax.ops.logprobs import masked_whiten

Array = jax.Array


class TokenRewards(NamedTuple):
  rewards: Array  # [B, T] float32; 0 on padding.
  non_score_reward: Array  # [B] sum over valid tokens of -beta * kl_t.
  kl: Array  # [B] sum over valid tokens of kl_t (what the KL controller consumes).


def last_valid_index(mask: Array) -> tuple[Array, Array]:
  """Index of the last True in each row, and whether the row has one.

  Args:
    mask: [B, T] bool/0-1.

  Returns:
    (index [B] int32, has_any [B] bool); index is 0 for rows with no True.
  """
  mask = jnp.asarray(mask).astype(bool)
  length = mask.shape[-1]
  has_any = jnp.any(mask, axis=-1)
  idx = length - 1 - jnp.argmax(mask[..., ::-1], axis=-1)
  return jnp.where(has_any, idx, 0).astype(jnp.int32), has_any


def compute_rewards(score: Array, logp: Array, ref_logp: Array, response_mask: Array,
                    beta: Array, kl_estimator: str = "k1",
                    max_log_ratio: Optional[float] = MAX_LOG_RATIO) -> TokenRewards:
  """InstructGPT/Ziegler per-token rewards for PPO.

  r_t = -beta * kl_t on valid response tokens, plus the (already normalized and
  penalized) RM score at the last valid token of each row, i.e. the last True in
  response_mask (EOS when the response finished, the last sampled token otherwise).

  Args:
    score: [B] reward-model score per response.
    logp: [B, T] policy (rollout-time) log-probs of the sampled response tokens.
    ref_logp: [B, T] reference-policy log-probs of the same tokens.
    response_mask: [B, T] bool, True on response tokens; rows without any True get no
      score and all-zero rewards.
    beta: scalar KL coefficient (may be traced, e.g. a controller's beta).
    kl_estimator: static, "k1" | "k2" | "k3" (see ops.kl).
    max_log_ratio: static log-ratio clamp passed to `kl_estimate`.

  Returns:
    TokenRewards(rewards [B, T], non_score_reward [B], kl [B]); float32, 0 on padding.
  """
  mask = jnp.asarray(response_mask).astype(bool)
  kl = kl_estimate(logp, ref_logp, kl_estimator, mask=mask, max_log_ratio=max_log_ratio)
  non_score = jnp.where(mask, -jnp.asarray(beta, jnp.float32) * kl, 0.0)  # [B, T]
  last, has_any = last_valid_index(mask)
  at_last = (jnp.arange(mask.shape[-1])[None, :] == last[:, None]) & has_any[:, None]
  rewards = non_score + jnp.where(at_last, score.astype(jnp.float32)[:, None], 0.0)
  return TokenRewards(rewards=rewards, non_score_reward=jnp.sum(non_score, axis=-1),
                      kl=jnp.sum(kl, axis=-1))


def whiten_rewards(rewards: Array, mask: Array, shift_mean: bool = False) -> Array:
  """Scale-normalizes per-token rewards over valid tokens (mean kept by default, so the
  sign of the reward signal survives). Padding positions are 0."""
  return masked_whiten(rewards, mask, shift_mean=shift_mean)


def apply_no_eos_penalty(score: Array, finished: Array, penalty: float,
                         replace: bool = False) -> Array:
  """Penalizes responses that hit the length limit without emitting EOS.

  Args:
    score: [B] RM scores (after normalization).
    finished: [B] bool, True when the response contains EOS.
    penalty: static or traced float. With replace=False the score of unfinished
      responses becomes `score - penalty`; with replace=True it becomes `penalty`
      itself (e.g. -1.0), discarding the RM's opinion of a truncated response.

  Returns:
    [B] float32 scores.
  """
  score = score.astype(jnp.float32)
  penalized = jnp.full_like(score, penalty) if replace else score - penalty
  return jnp.where(jnp.asarray(finished).astype(bool), score, penalized)
