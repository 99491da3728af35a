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


def leave_one_out_advantages(returns: Array, valid: Array, group_size: int) -> Array:
  """REINFORCE leave-one-out advantages (RLOO; Kool et al. 2019, Ahmadian et al. 2024).

  Rows come in consecutive groups of `group_size` responses to one prompt. Each response's
  baseline is the mean return of the other valid responses of its group, so the advantage
  contrasts answers to the same prompt and needs no value model:

    A_i = R_i - sum_{j != i, valid} R_j / (n_valid - 1)

  Args:
    returns: [B] float, one return per response (e.g. score - beta * summed KL).
    valid: [B] bool; invalid rows (batch padding; may hold garbage, nan included) enter no
      baseline and get 0.
    group_size: static k >= 2; B must be a multiple of it.

  Returns:
    [B] float32; 0 on invalid rows and on rows with no other valid row in their group.
  """
  b = returns.shape[0]
  if group_size < 2 or b % group_size:
    raise ValueError(f"group_size={group_size} must be >= 2 and divide the batch of {b}")
  valid = jnp.asarray(valid).astype(bool).reshape(-1, group_size)  # [G, k]
  r = jnp.where(valid, returns.astype(jnp.float32).reshape(-1, group_size), 0.0)  # [G, k]
  others = jnp.sum(valid, axis=1, keepdims=True) - 1  # [G, 1]
  baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / jnp.maximum(others, 1)
  return jnp.where(valid & (others > 0), r - baseline, 0.0).reshape(b)
