"""InstructGPT reward-model ranking loss and reward normalization.

Contract: for each prompt the K responses are ordered best-to-worst, so slot 0 holds
the response labelers ranked best. Only slots with k_mask True exist; K_b (the number
of valid slots) varies per prompt and invalid slots may hold garbage, nan included.
Valid slots need not be contiguous: preference follows slot order among valid slots.

Loss (Ouyang et al. 2022, eq. 1): every one of the C(K_b, 2) pairs from a prompt goes
into the same batch element, the per-prompt loss is the mean over its pairs of
-log sigmoid(r_better - r_worse), and prompts are then averaged with equal weight
(prompts with fewer than 2 valid responses have no pairs and are left out). This keeps
prompts with many responses from dominating, which the paper found reduces overfitting.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from instructjax.ops.logprobs import masked_mean, masked_var

Array = jax.Array


def ranked_pairwise_loss(rewards: Array, ranks: Array,
                         k_mask: Array) -> tuple[Array, dict[str, Array]]:
  """Ranking loss from explicit ranks (0 = best); the general form.

  Pair (i, j) counts when both slots are valid and ranks[i] < ranks[j]; equal ranks
  (ties) contribute no pair.

  Args:
    rewards: [B, K] scalar reward-model outputs.
    ranks: [B, K] int or float ranks, smaller is better.
    k_mask: [B, K] bool, True for responses that exist.

  Returns:
    (loss, metrics); loss is a float32 scalar. Metrics (float32 scalars):
      accuracy: fraction of pairs with r_better > r_worse strictly (ties count as
        wrong), averaged per prompt, then over prompts, matching the loss weighting;
      margin: mean r_better - r_worse, same weighting;
      reward_mean, reward_std: over all valid responses in the batch (population std);
      num_prompts: prompts with at least one pair; num_pairs: total pairs.
  """
  k_mask = jnp.asarray(k_mask).astype(bool)
  # Sanitize first so garbage in invalid slots reaches neither values nor gradients.
  r = jnp.where(k_mask, rewards.astype(jnp.float32), 0.0)  # [B, K]
  diff = r[:, :, None] - r[:, None, :]  # [B, K, K]: diff[b, i, j] = r_i - r_j
  pair = (k_mask[:, :, None] & k_mask[:, None, :]
          & (ranks[:, :, None] < ranks[:, None, :]))  # [B, K, K]: i preferred over j
  pair_loss = -jax.nn.log_sigmoid(diff)  # Stable for large |diff|.

  n_pairs = jnp.sum(pair, axis=(1, 2))  # [B]
  prompt_valid = n_pairs > 0  # [B]
  per_prompt = lambda x: masked_mean(x, pair, axis=(1, 2))  # [B]
  loss = masked_mean(per_prompt(pair_loss), prompt_valid)
  metrics = {
      "accuracy": masked_mean(per_prompt((diff > 0).astype(jnp.float32)), prompt_valid),
      "margin": masked_mean(per_prompt(diff), prompt_valid),
      "reward_mean": masked_mean(r, k_mask),
      "reward_std": jnp.sqrt(masked_var(r, k_mask)),
      "num_prompts": jnp.sum(prompt_valid).astype(jnp.float32),
      "num_pairs": jnp.sum(n_pairs).astype(jnp.float32),
  }
  return loss, metrics


def pairwise_ranking_loss(rewards: Array, k_mask: Array) -> tuple[Array, dict[str, Array]]:
  """Ranking loss with responses ordered best-to-worst (slot 0 is best). The primary form.

  Args:
    rewards: [B, K] reward-model scores, slot i ranked above slot j whenever i < j.
    k_mask: [B, K] bool; K_b = k_mask[b].sum() may be anything from 0 to K.

  Returns:
    (loss, metrics) as in `ranked_pairwise_loss`.
  """
  ranks = jnp.broadcast_to(jnp.arange(rewards.shape[1]), rewards.shape)
  return ranked_pairwise_loss(rewards, ranks, k_mask)


def reward_normalization(scores: Array, mask: Optional[Array] = None, mode: str = "bias",
                         eps: float = 1e-6) -> tuple[Array, Array]:
  """(gain, bias) so that `gain * score + bias` normalizes scores of reference responses.

  Computed once from RM scores of SFT-model responses (InstructGPT normalizes the RM
  so demonstrations score 0 on average before RL).

  Args:
    scores: [N] (or any shape) RM scores of SFT samples.
    mask: optional bool mask of valid scores, same shape.
    mode: static; "bias" shifts the mean to 0 (gain = 1); "gain_bias" also scales the
      population std to 1.
    eps: floor on the std in "gain_bias" mode, so constant scores do not explode.

  Returns:
    (gain, bias) float32 scalars.
  """
  scores = scores.astype(jnp.float32)
  mask = jnp.ones(scores.shape, bool) if mask is None else mask
  mean = masked_mean(scores, mask)
  if mode == "bias":
    gain = jnp.ones((), jnp.float32)
  elif mode == "gain_bias":
    gain = 1.0 / jnp.maximum(jnp.sqrt(masked_var(scores, mask)), eps)
  else:
    raise ValueError(f"unknown reward normalization mode {mode!r}")
  return gain, -gain * mean


def normalize_rewards(scores: Array, gain: Array, bias: Array) -> Array:
  """Applies the affine normalization: gain * scores + bias (float32)."""
  return gain * scores.astype(jnp.float32) + bias

