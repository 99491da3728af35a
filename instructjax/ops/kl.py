"""Per-token KL estimators against the reference (SFT) policy, the exact per-position KL over
the vocabulary, and KL-coefficient controllers.

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

from instructjax.ops.head_chunks import head_logits, map_head
from instructjax.ops.logprobs import entropy_from_logits, scaled_logits, token_logprobs

Array = jax.Array

# |log_ratio| bound. exp(20) ~ 4.9e8 keeps k3 and its gradient finite in float32 (and
# well inside bf16 range) while no sane policy drifts 20 nats per token from the
# reference, so the clamp never changes a healthy run's numbers.
MAX_LOG_RATIO = 20.0

KL_ESTIMATORS = ("k1", "k2", "k3")


def exact_kl_from_logits(logits: Array, ref_logits: Array, temperature: float = 1.0) -> Array:
  """Exact per-position KL(softmax(logits / T) || softmax(ref_logits / T)) over the vocabulary.

  Unlike the estimators above, which see one sampled token, it compares the whole next-token
  distributions at each visited position: its gradient pulls every token's probability
  (the argmax among them) towards the reference's, not only the sampled one's.

  Args:
    logits, ref_logits: [B, T, V] (any float dtype; computed in float32).
    temperature: the sampling temperature (the distributions PPO samples from).

  Returns:
    [B, T] float32 KL in nats, >= 0 up to rounding.
  """
  logp = jax.nn.log_softmax(scaled_logits(logits, temperature), axis=-1)  # [B, T, V]
  ref_logp = jax.nn.log_softmax(scaled_logits(ref_logits, temperature), axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)


def exact_kl_from_hidden(hidden: Array, head: Array, ref_hidden: Array, ref_head: Array,
                         temperature: float = 1.0, chunk: int = 0,
                         targets: Optional[Array] = None):
  """`exact_kl_from_logits` of hidden @ head against ref_hidden @ ref_head, `chunk` positions
  at a time (`head_chunks.map_head`): no [B, T, V] array of either model.

  Args:
    hidden, ref_hidden: [B, T, d] final-norm hidden states of the policy and the reference.
    head, ref_head: [d, V] their LM heads (`models.lm_head_weight`).
    temperature: as in `exact_kl_from_logits`.
    chunk: positions per chunk; 0 computes everything at once.
    targets: optional [B, T] int ids: also the policy's log-probs of them and its entropies,
      from the same logits (one pass of the head for a loss that needs all three).

  Returns:
    [B, T] float32 KL per position; with `targets`, (log-probs, entropies, KL), each [B, T].
  """
  def block(logits, ref_h, *tgt):
    kl = exact_kl_from_logits(logits, head_logits(ref_h, ref_head), temperature)
    if not tgt:
      return kl
    return (token_logprobs(logits, tgt[0], temperature),
            entropy_from_logits(logits, temperature), kl)

  extra = () if targets is None else (targets.astype(jnp.int32),)
  return map_head(block, hidden, head, (ref_hidden, *extra), chunk)


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
