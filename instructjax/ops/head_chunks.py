"""The LM head applied chunk by chunk along the sequence, so no [B, T, vocab] array exists.

Losses and log-probabilities need, per position, a few numbers of the [V] logits (the target's
logit, the log-sum-exp, the entropy). `map_head` computes each chunk's [B, chunk, V] float32
logits from the final hidden states, reduces them with `fn` and drops them; the chunks run in
a lax.map under jax.checkpoint, so the backward pass recomputes them chunk by chunk too and
the head's gradient is accumulated over chunks. Gradients are exact: the same operations,
only scheduled chunk by chunk.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def positions_per_chunk(batch: int, length: int, chunk_tokens: int) -> int:
  """Positions per chunk such that a chunk holds at most `chunk_tokens` tokens (at least one
  position); 0 when the whole [batch, length] fits, i.e. no chunking."""
  if not chunk_tokens or batch * length <= chunk_tokens:
    return 0
  return max(1, chunk_tokens // batch)


def head_logits(hidden: Array, head: Array) -> Array:
  """float32 logits [..., V] of hidden [..., d] under the head [d, V] (as the model's head)."""
  return jnp.dot(hidden.astype(jnp.float32), head.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)


def map_head(fn: Callable[..., Any], hidden: Array, head: Array, inputs: Sequence[Array],
             chunk: int) -> Any:
  """fn(logits [B, c, V], *inputs' chunks [B, c, ...]) over chunks of `chunk` positions.

  Args:
    fn: reduces one chunk's float32 logits to a pytree of [B, c, ...] arrays.
    hidden: [B, T, d] final-norm hidden states.
    head: [d, V] the LM head.
    inputs: per-position arrays [B, T, ...] (targets, masks) cut like the hidden states.
    chunk: positions per chunk; 0 (or >= T) computes everything at once.

  Returns:
    fn's pytree with every leaf [B, T, ...], as if fn had seen the whole [B, T, V] logits.
  """
  t = hidden.shape[1]
  if not chunk or chunk >= t:
    return fn(head_logits(hidden, head), *inputs)
  n = -(-t // chunk)
  pad = n * chunk - t

  def cut(x):  # [B, T, ...] -> [n, B, chunk, ...]; padded positions are dropped at the end.
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)) if pad else x
    return jnp.swapaxes(x.reshape((x.shape[0], n, chunk) + x.shape[2:]), 0, 1)

  def one(args):
    h, *rest = args
    return fn(head_logits(h, head), *rest)

  out = jax.lax.map(jax.checkpoint(one), (cut(hidden), *map(cut, inputs)))

  def join(y):  # [n, B, chunk, ...] -> [B, T, ...]
    y = jnp.swapaxes(y, 0, 1)
    return y.reshape((y.shape[0], n * chunk) + y.shape[3:])[:, :t]

  return jax.tree.map(join, out)
