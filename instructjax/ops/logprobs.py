"""Token log-probabilities, entropy, and masked reductions over valid tokens.

Conventions shared by every module in `instructjax.ops`:
  * masks are boolean (0/1 is accepted and cast) and broadcastable to the data;
  * masks are applied with `jnp.where`, never by multiplication, so inf/nan sitting in
    padding positions can never leak into a result (0 * inf = nan);
  * logits are upcast to float32 before any softmax;
  * reductions run over valid entries only; an empty mask gives 0, never nan.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from instructjax.ops.head_chunks import map_head

Array = jax.Array
Axis = Optional[Union[int, Sequence[int]]]


def _float(x: Array) -> Array:
  """Upcast to at least float32 (bf16 sums lose too much precision)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _bool_mask(mask: Array, shape: Sequence[int]) -> Array:
  return jnp.broadcast_to(jnp.asarray(mask).astype(bool), shape)


def scaled_logits(logits: Array, temperature: float = 1.0) -> Array:
  """float32 logits / temperature. temperature must be > 0 (greedy is a sampling concern)."""
  logits = logits.astype(jnp.float32)
  if isinstance(temperature, (int, float)) and temperature == 1.0:
    return logits  # Static fast path: skip a full [B, T, V] division.
  return logits / temperature


def token_logprobs(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
  """Log-probability of each target token under softmax(logits / temperature).

  Args:
    logits: [B, T, V] (any float dtype; computed in float32).
    targets: [B, T] int token ids in [0, V).
    temperature: the sampling temperature, so PPO scores tokens under the same
      distribution they were sampled from.

  Returns:
    [B, T] float32 log p(targets).
  """
  # target logit / T - logsumexp(logits / T): the value of log_softmax then gather, without
  # a [B, T, V] array in the forward pass (neither the log_softmax nor logits / T).
  logits = logits.astype(jnp.float32)
  target = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return scaled_logits(target, temperature) - _scaled_logsumexp(logits, temperature)


def _scaled_logsumexp(logits: Array, temperature: float) -> Array:
  """logsumexp(logits / temperature) over the last axis, float32, reading `logits` twice (max,
  then the sum) so that the scaled array is never materialised."""
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  total = jnp.sum(jnp.exp(scaled_logits(logits - m, temperature)), axis=-1)
  return jnp.log(total) + scaled_logits(m[..., 0], temperature)


def _entropy(x: Array) -> Array:
  """Entropy of softmax(x) over the last axis; x float32 (-inf entries allowed)."""
  logp = jax.nn.log_softmax(x, axis=-1)
  p = jnp.exp(logp)
  # where, not p * logp: p == 0 with logp == -inf would give nan.
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def logprobs_from_hidden(hidden: Array, head: Array, targets: Array, temperature: float = 1.0,
                         chunk: int = 0, with_entropy: bool = False):
  """token_logprobs(hidden @ head, targets) without a [B, T, V] array, chunk by chunk.

  The sequence is cut into chunks of `chunk` positions; each chunk's [B, chunk, V] logits
  are computed, reduced to log-probabilities (and entropies) and dropped, under
  jax.checkpoint, so the backward pass recomputes them chunk by chunk too
  (`head_chunks.map_head`). Peak memory of the head goes from B*T*V floats (several of them,
  forward and backward) to B*chunk*V.

  Args:
    hidden: [B, T, d] final-norm hidden states (`DecoderLM(..., return_hidden=True)`).
    head: [d, V] the LM head (`models.lm_head_weight`).
    targets: [B, T] int ids.
    temperature: as in `token_logprobs`.
    chunk: positions per chunk; 0 (or >= T) computes everything at once
      (`head_chunks.positions_per_chunk` picks it from a token budget).
    with_entropy: also return the entropy of softmax(logits / temperature) per position.

  Returns:
    [B, T] float32 log p(targets) (and [B, T] entropies with `with_entropy`).
  """
  def block(logits, tgt):
    lp = token_logprobs(logits, tgt, temperature)
    return (lp, _entropy(scaled_logits(logits, temperature))) if with_entropy else lp

  return map_head(block, hidden, head, (targets.astype(jnp.int32),), chunk)


def entropy_from_logits(logits: Array, temperature: float = 1.0) -> Array:
  """Entropy of softmax(logits / temperature) over the last axis.

  Filtered logits of -inf (top-k/top-p) are allowed: their 0 * log 0 terms count as 0.

  Args:
    logits: [B, T, V].

  Returns:
    [B, T] float32 entropy in nats.
  """
  return _entropy(scaled_logits(logits, temperature))  # [B, T]


def masked_count(mask: Array, axis: Axis = None, keepdims: bool = False,
                 shape: Optional[Sequence[int]] = None) -> Array:
  """Number of valid entries (float32), with mask broadcast to `shape` if given."""
  mask = jnp.asarray(mask).astype(bool)
  if shape is not None:
    mask = jnp.broadcast_to(mask, shape)
  return jnp.sum(mask, axis=axis, keepdims=keepdims).astype(jnp.float32)


def masked_sum(x: Array, mask: Array, axis: Axis = None, keepdims: bool = False) -> Array:
  """Sum of x over entries where mask is True (mask broadcastable to x)."""
  x = _float(x)
  return jnp.sum(jnp.where(_bool_mask(mask, x.shape), x, 0.0), axis=axis, keepdims=keepdims)


def masked_mean(x: Array, mask: Array, axis: Axis = None, keepdims: bool = False,
                count: Optional[Array] = None) -> Array:
  """Mean of x over valid entries; 0 where a slice has no valid entry.

  count: divide by this instead of the number of valid entries here. Micro-batches of one
  batch pass the whole batch's count: their results then add up to the batch's mean.
  """
  x = _float(x)
  total = masked_sum(x, mask, axis=axis, keepdims=keepdims)
  if count is None:
    count = masked_count(mask, axis=axis, keepdims=keepdims, shape=x.shape)
  return total / jnp.maximum(count, 1.0)


def masked_var(x: Array, mask: Array, axis: Axis = None, keepdims: bool = False,
               unbiased: bool = False) -> Array:
  """Variance of x over valid entries.

  Biased (population, divide by n) by default so that `masked_whiten` output has
  exactly unit variance over its valid entries; `unbiased=True` divides by n - 1.
  Slices with too few entries give 0.
  """
  x = _float(x)
  mask = _bool_mask(mask, x.shape)
  mean = masked_mean(x, mask, axis=axis, keepdims=True)
  centered = jnp.where(mask, x - mean, 0.0)
  sq = jnp.sum(jnp.square(centered), axis=axis, keepdims=keepdims)
  count = masked_count(mask, axis=axis, keepdims=keepdims)
  denom = count - 1.0 if unbiased else count
  return sq / jnp.maximum(denom, 1.0)


def masked_max(x: Array, mask: Array, axis: Axis = None, keepdims: bool = False) -> Array:
  """Max of x over valid entries; 0 where a slice has no valid entry."""
  x = _float(x)
  mask = _bool_mask(mask, x.shape)
  m = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=keepdims)
  return jnp.where(jnp.any(mask, axis=axis, keepdims=keepdims), m, 0.0)


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
  """Standardize x with the mean and (biased) variance of its valid entries.

  Statistics are global over all valid entries (the whole batch), as in PPO advantage
  normalization. With shift_mean=False the mean is added back, i.e. only the scale is
  normalized (used for reward whitening, where the sign of rewards matters).

  Returns:
    Same shape as x, float32; masked positions are 0.
  """
  x = _float(x)
  mask = _bool_mask(mask, x.shape)
  mean = masked_mean(x, mask)
  var = masked_var(x, mask)
  whitened = (jnp.where(mask, x, mean) - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask, whitened, 0.0)
