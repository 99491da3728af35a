"""Per-token KL estimators against the reference (SFT) policy, and KL-coefficient controllers.

Tokens are sampled from the policy, so with log_ratio = logp - ref_logp the
estimators of KL(policy || ref) on one sample are (Schulman, "Approximating KL
divergence", 2020):
  k1 = log_ratio                                   unbiased, high variance, can be < 0
  k2 = 0.5 * log_ratio^2                           biased, low variance, >= 0
  k3 = exp(-log_ratio) - 1 + log_ratio             unbiased, low variance, >= 0
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

# |log_ratio| bound. exp(20) ~ 4.9e8 keeps k3 and its gradient finite in float32 (and
# well inside bf16 range) while no sane policy drifts 20 nats per token from the
# reference, so the clamp never changes a healthy run's numbers.
MAX_LOG_RATIO = 20.0

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k1",
                mask: Optional[Array] = None,
                max_log_ratio: Optional[float] = MAX_LOG_RATIO) -> Array:
  """Per-token KL(policy || ref) estimate on the sampled tokens.

  Args:
    logp: [B, T] policy log-probs of the sampled tokens.
    ref_logp: [B, T] reference log-probs of the same tokens.
    estimator: static, one of "k1", "k2", "k3" (see module docstring).
    mask: optional [B, T] bool; masked positions give exactly 0 whatever they hold.
    max_log_ratio: static clamp on |logp - ref_logp| (None disables), applied for all
      estimators so they agree on what is being estimated.

  Returns:
    [B, T] float32 per-token estimates.
  """
  log_ratio = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
  if mask is not None:
    mask = jnp.asarray(mask).astype(bool)
    log_ratio = jnp.where(mask, log_ratio, 0.0)  # Before exp: no garbage in k3's gradient.
  if max_log_ratio is not None:
    log_ratio = jnp.clip(log_ratio, -max_log_ratio, max_log_ratio)
  if estimator == "k1":
    kl = log_ratio
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_ratio)
  elif estimator == "k3":
    # expm1 is exact near 0, where most tokens sit.
    kl = jnp.expm1(-log_ratio) + log_ratio
  else:
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
  if mask is not None:
    kl = jnp.where(mask, kl, 0.0)
  return kl


@flax.struct.dataclass
class KLController:
  """KL coefficient state. A pytree: beta is the only leaf, the rest is static config.

  target=None marks a fixed controller (beta never changes).
  """
  beta: Array  # [] float32
  target: Optional[float] = flax.struct.field(pytree_node=False, default=None)
  horizon: float = flax.struct.field(pytree_node=False, default=10000.0)
  max_error: float = flax.struct.field(pytree_node=False, default=0.2)


def fixed_kl_controller(beta: float) -> KLController:
  """Constant beta (InstructGPT used a fixed KL coefficient)."""
  return KLController(beta=jnp.asarray(beta, jnp.float32))


def adaptive_kl_controller(init_beta: float, target: float,
                           horizon: float = 10000.0) -> KLController:
  """Ziegler et al. (2019) proportional controller driving the KL towards `target`.

  Args:
    init_beta: starting KL coefficient.
    target: desired KL per sequence (nats, summed over response tokens).
    horizon: number of samples (episodes) over which an error is corrected.
  """
  if target <= 0 or horizon <= 0:
    raise ValueError("adaptive KL controller needs target > 0 and horizon > 0")
  return KLController(beta=jnp.asarray(init_beta, jnp.float32), target=float(target),
                      horizon=float(horizon))


def update_kl_controller(state: KLController, current_kl: Array,
                         n_steps: Array) -> KLController:
  """One controller update; pure, returns the new state.

  e = clip(current_kl / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).

  Args:
    state: the controller.
    current_kl: observed mean KL per sequence of the batch just collected.
    n_steps: number of samples (episodes) in that batch, as in Ziegler et al.
  """
  if state.target is None:
    return state
  error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / state.target - 1.0,
                   -state.max_error, state.max_error)
  mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / state.horizon
  return state.replace(beta=state.beta * mult)
