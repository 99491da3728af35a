"""Generalized advantage estimation (Schulman et al. 2016) as a reverse lax.scan over time."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.ops.logprobs import masked_whiten

Array = jax.Array


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float,
        whiten_advantages: bool = False) -> tuple[Array, Array]:
  """GAE advantages and value targets for one response per row.

  The episode ends with the response: the value after the last valid token is 0.
  Masked positions are skipped, not treated as steps: a valid token's "next state" is
  the next valid token in its row, and padding neither contributes reward/value nor
  propagates the carry. This is exact for right padding (the usual case) and also
  for left padding or holes; padding may hold garbage, nan included.

    delta_t = r_t + gamma * V_next(t) - V_t
    A_t     = delta_t + gamma * lam * A_next(t)
    R_t     = A_t + V_t          (value target, before any whitening)

  Gradients flow through the math; PPO callers treat both outputs as constants
  (compute them outside the differentiated loss or wrap in stop_gradient).

  Args:
    rewards: [B, T] per-token rewards (see ops.rewards.compute_rewards).
    values: [B, T] value estimates V(s_t) from the rollout.
    mask: [B, T] bool, True on response tokens.
    gamma: discount (may be traced).
    lam: GAE lambda (may be traced).
    whiten_advantages: static; standardize advantages over all valid tokens of the
      batch (returns are computed from the raw advantages first).

  Returns:
    (advantages [B, T], returns [B, T]), float32, 0 on padding.
  """
  mask = jnp.asarray(mask).astype(bool)
  r = jnp.where(mask, rewards.astype(jnp.float32), 0.0)
  v = jnp.where(mask, values.astype(jnp.float32), 0.0)

  def step(carry, xs):
    next_value, next_adv = carry  # [B], [B]: from the next valid token (0 past the end).
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = delta + gamma * lam * next_adv
    # Padding leaves the carry untouched, so it skips over masked positions.
    carry = (jnp.where(m_t, v_t, next_value), jnp.where(m_t, adv, next_adv))
    return carry, jnp.where(m_t, adv, 0.0)

  zeros = jnp.zeros(r.shape[:1], jnp.float32)
  _, adv_tb = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, mask.T), reverse=True)
  advantages = adv_tb.T  # [B, T]
  returns = jnp.where(mask, advantages + v, 0.0)
  if whiten_advantages:
    advantages = masked_whiten(advantages, mask)
  return advantages, returns
