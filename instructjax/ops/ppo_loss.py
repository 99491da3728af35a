"""PPO clipped policy and value losses, entropy bonus and explained variance, over valid tokens."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from instructjax.ops.kl import MAX_LOG_RATIO
from instructjax.ops.logprobs import (entropy_from_logits, masked_max, masked_mean,
                                      masked_var)

Array = jax.Array


def policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array,
                clip_eps: float = 0.2,
                max_log_ratio: Optional[float] = MAX_LOG_RATIO,
                count: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
  """PPO clipped surrogate, averaged over valid tokens.

  ratio = exp(clamp(logp - old_logp)); per token
  loss_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps)).

  Args:
    logp: [B, T] current-policy log-probs of the sampled tokens (differentiated).
    old_logp: [B, T] rollout-policy log-probs (constants).
    advantages: [B, T] (constants, usually whitened GAE).
    mask: [B, T] bool; padding may hold anything, nan/inf included.
    clip_eps: PPO clip range epsilon.
    max_log_ratio: static clamp of |logp - old_logp| before exp (see ops.kl).
    count: the number of valid tokens to average over (default: mask's). A micro-batch of a
      minibatch passes the minibatch's count: the micro-batches' losses and metrics (but
      ratio_max, a max) then add up to the minibatch's.

  Returns:
    (loss, metrics), float32 scalars. Metrics, over valid tokens:
      clip_fraction: fraction of tokens where the clipped term is active (strictly larger);
      approx_kl: mean of (ratio - 1) - log ratio. Tokens were sampled from the old
        policy, so this is the unbiased, non-negative k3 estimate of KL(old || new);
      ratio_mean, ratio_max.
  """
  mask = jnp.asarray(mask).astype(bool)
  # Sanitize before exp: where() after the fact would still pass nan cotangents.
  log_ratio = jnp.where(mask, logp.astype(jnp.float32) - old_logp.astype(jnp.float32), 0.0)
  if max_log_ratio is not None:
    log_ratio = jnp.clip(log_ratio, -max_log_ratio, max_log_ratio)
  ratio = jnp.exp(log_ratio)  # exp(0) == 1 exactly: on-policy ratio is exactly 1.
  adv = jnp.where(mask, advantages.astype(jnp.float32), 0.0)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask, count=count)
  metrics = jax.lax.stop_gradient({
      "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask,
                                   count=count),
      "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask, count=count),
      "ratio_mean": masked_mean(ratio, mask, count=count),
      "ratio_max": masked_max(ratio, mask),
  })
  return loss, metrics


def value_loss(values: Array, old_values: Array, returns: Array, mask: Array,
               clip_eps: Optional[float] = 0.2,
               count: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
  """Clipped value loss 0.5 * mean(max((v - R)^2, (clip(v, v_old +- eps) - R)^2)).

  Args:
    values: [B, T] current value predictions (differentiated).
    old_values: [B, T] rollout-time values (constants).
    returns: [B, T] GAE value targets (constants).
    mask: [B, T] bool.
    clip_eps: static; None gives the plain 0.5 * MSE.
    count: the number of valid tokens to average over (default: mask's; see policy_loss).

  Returns:
    (loss, metrics{"clip_fraction"}) float32 scalars, over valid tokens.
  """
  mask = jnp.asarray(mask).astype(bool)
  v = jnp.where(mask, values.astype(jnp.float32), 0.0)
  ret = jnp.where(mask, returns.astype(jnp.float32), 0.0)
  unclipped = jnp.square(v - ret)
  if clip_eps is None:
    return (0.5 * masked_mean(unclipped, mask, count=count),
            {"clip_fraction": jnp.zeros((), jnp.float32)})
  old = jnp.where(mask, old_values.astype(jnp.float32), 0.0)
  clipped = jnp.square(jnp.clip(v, old - clip_eps, old + clip_eps) - ret)
  loss = 0.5 * masked_mean(jnp.maximum(unclipped, clipped), mask, count=count)
  clip_fraction = masked_mean((clipped > unclipped).astype(jnp.float32), mask, count=count)
  return loss, {"clip_fraction": jax.lax.stop_gradient(clip_fraction)}


def explained_variance(values: Array, returns: Array, mask: Array) -> Array:
  """1 - Var(R - v) / Var(R) over valid tokens (population variances).

  1 is a perfect critic, 0 is no better than predicting the mean, < 0 is worse.
  nan when the returns are constant (the ratio is undefined), as in Stable-Baselines.
  """
  mask = jnp.asarray(mask).astype(bool)
  values = jnp.where(mask, values.astype(jnp.float32), 0.0)
  returns = jnp.where(mask, returns.astype(jnp.float32), 0.0)
  var_y = masked_var(returns, mask)
  var_res = masked_var(returns - values, mask)
  safe = jnp.where(var_y > 0, var_y, 1.0)
  return jnp.where(var_y > 0, 1.0 - var_res / safe, jnp.nan)


def entropy_bonus(logits: Array, mask: Array, temperature: float = 1.0,
                  count: Optional[Array] = None) -> Array:
  """Mean policy entropy over valid tokens; the loss subtracts coef * this.

  Args:
    logits: [B, T, V]; padding rows may hold garbage.
    mask: [B, T] bool.
    temperature: the sampling temperature the policy is evaluated at.
    count: the number of valid tokens to average over (default: mask's; see policy_loss).

  Returns:
    float32 scalar, nats.
  """
  mask = jnp.asarray(mask).astype(bool)
  logits = jnp.where(mask[..., None], logits.astype(jnp.float32), 0.0)
  return masked_mean(entropy_from_logits(logits, temperature), mask, count=count)
