"""Logit filters for sampling (temperature, top-k, top-p) and a one-step token sampler.

Filtered-out tokens get -inf through `jnp.where`, so softmax gives them exactly 0 and
categorical sampling never picks them; at least the top token always survives, so a
row is never all -inf. Filters apply in the order temperature -> top-k -> top-p.
"""
from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

Array = jax.Array


def _keep_from_indices(idx: Array, flags: Array, vocab: int) -> Array:
  """[..., k] token ids and their bool flags -> [..., V] bool mask (False elsewhere)."""
  lead = idx.shape[:-1]
  idx2 = idx.reshape(-1, idx.shape[-1])  # [N, k]
  rows = jnp.arange(idx2.shape[0])[:, None]  # [N, 1]
  keep = jnp.zeros((idx2.shape[0], vocab), bool).at[rows, idx2].set(
      flags.reshape(idx2.shape))
  return keep.reshape(*lead, vocab)


def apply_temperature(logits: Array, temperature: Union[float, Array]) -> Array:
  """float32 logits / temperature (temperature > 0; greedy is handled by sample_token)."""
  return logits.astype(jnp.float32) / temperature


def top_k_filter(logits: Array, k: int) -> Array:
  """Keeps exactly the k largest logits per row (ties broken towards lower ids).

  Args:
    logits: [..., V].
    k: static int; k <= 0 or k >= V disables the filter.

  Returns:
    [..., V] float32, -inf outside the top k.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  if k <= 0 or k >= vocab:
    return logits
  # Scatter the top-k ids rather than threshold at the k-th value: a threshold keeps
  # more than k tokens when values tie.
  _, idx = jax.lax.top_k(logits, k)  # [..., k]
  keep = _keep_from_indices(idx, jnp.ones(idx.shape, bool), vocab)
  return jnp.where(keep, logits, -jnp.inf)


def top_p_filter(logits: Array, p: Union[float, Array]) -> Array:
  """Nucleus filter: keeps the smallest set of most-likely tokens whose probability is >= p.

  A token is kept when the total probability of the strictly more likely tokens
  (in a stable descending sort) is < p, which is exactly the minimal prefix reaching
  p; the top token is always kept, so p <= 0 means greedy-like top-1.

  Args:
    logits: [..., V] (may already contain -inf from other filters).
    p: python float (p >= 1 returns logits unchanged, statically) or traced scalar.

  Returns:
    [..., V] float32, -inf outside the nucleus.
  """
  logits = logits.astype(jnp.float32)
  if isinstance(p, (int, float)) and p >= 1.0:
    return logits
  sorted_idx = jnp.argsort(-logits, axis=-1, stable=True)  # [..., V] descending
  sorted_logits = jnp.take_along_axis(logits, sorted_idx, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  cum = jnp.cumsum(probs, axis=-1)
  # Exclusive cumsum by shifting (not cum - probs, which rounds).
  mass_before = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
  keep_sorted = mass_before < p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = _keep_from_indices(sorted_idx, keep_sorted, logits.shape[-1])
  filtered = jnp.where(keep, logits, -jnp.inf)
  # A traced p == 1 must keep everything even if the float cumsum reaches 1 early.
  return jnp.where(p >= 1.0, logits, filtered)


def filter_logits(logits: Array, temperature: Union[float, Array] = 1.0, top_k: int = 0,
                  top_p: Union[float, Array] = 1.0) -> Array:
  """temperature -> top-k -> top-p; the distribution sample_token draws from (T > 0)."""
  logits = apply_temperature(logits, temperature)
  logits = top_k_filter(logits, top_k)
  return top_p_filter(logits, top_p)


def sample_token(rng: Array, logits: Array, temperature: float = 1.0, top_k: int = 0,
                 top_p: Union[float, Array] = 1.0) -> Array:
  """Samples one token per row.

  Args:
    rng: PRNG key.
    logits: [B, V] next-token logits.
    temperature: static python float; 0 means greedy argmax (filters are then moot).
    top_k: static int, 0 disables.
    top_p: float or traced scalar, 1 disables.

  Returns:
    [B] int32 token ids.
  """
  if temperature == 0.0:
    return jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
