"""The log-likelihood term of a reward model that scores a response with its own language
model too (ModelConfig.score_logprob > 0).

Rows hold a prompt (segment 1, the shared prefix) and one or more responses (segments >= 2),
read with shared-prefix attention: a response's first token is predicted by the prompt's last
column, every later one by the column before it. The term at column t is the sum of
log p(token_s | what precedes it) over the response tokens s <= t of t's segment, so read at a
response's last token it is the response's log-likelihood.

The LM head is applied to hidden states chunk by chunk (ops/head_chunks.py): no [B, T, vocab]
array, forward or backward, as in the LM losses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.models.attention import SHARED_PREFIX_SEGMENT
from instructjax.ops.logprobs import logprobs_from_hidden

Array = jax.Array


def prediction_columns(segment_ids: Array) -> tuple[Array, Array]:
  """(pred int32 [B, T], scored bool [B, T]) of rows of segment ids [B, T].

  pred[b, t] is the column whose hidden state predicts token t: the column before t when it
  is in t's segment, else the shared prefix's last column. scored says which tokens count:
  those after the shared prefix (segments >= 2) with a predicting column (a segment's first
  token needs the row to have a prefix). Prefix and padding tokens are never scored.
  """
  t = segment_ids.shape[1]
  cols = jnp.arange(t)
  prefix_last = jnp.where(segment_ids == SHARED_PREFIX_SEGMENT, cols, -1).max(
      axis=-1, keepdims=True)  # [B, 1]; -1: no prefix.
  prev_seg = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))  # [B, T]
  continues = (prev_seg == segment_ids) & (cols > 0)
  scored = (segment_ids > SHARED_PREFIX_SEGMENT) & (continues | (prefix_last >= 0))
  pred = jnp.where(continues, cols - 1, jnp.maximum(prefix_last, 0))
  return pred.astype(jnp.int32), scored


def segment_cumsum(x: Array, segment_ids: Array) -> Array:
  """Cumulative sum of x [B, T] along T, restarting at every change of segment id.

  A segmented scan (no subtraction of running totals, so no cancellation in long rows).
  """
  prev_seg = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = prev_seg != segment_ids  # [B, T] True where a segment begins.

  def combine(a, b):
    (av, af), (bv, bf) = a, b
    return jnp.where(bf, bv, av + bv), af | bf

  total, _ = jax.lax.associative_scan(combine, (x, starts), axis=1)
  return total


def prefix_token_logprobs(hidden: Array, head: Array, tokens: Array, segment_ids: Array,
                          chunk: int = 0) -> Array:
  """log p(token_t | what precedes it) [B, T] float32 of the tokens after the shared prefix,
  0 elsewhere (`prediction_columns`).

  Args:
    hidden: [B, T] x d final-norm hidden states (float32).
    head: [d, V] the LM head.
    tokens, segment_ids: [B, T] int.
    chunk: positions per chunk of the head (`head_chunks.positions_per_chunk`); 0 = at once.
  """
  pred, scored = prediction_columns(segment_ids)
  h = jnp.take_along_axis(hidden, pred[..., None], axis=1)  # [B, T, d]: h[b, t] predicts t.
  lp = logprobs_from_hidden(h, head, tokens, chunk=chunk)  # [B, T]
  return jnp.where(scored, lp, 0.0)


def response_loglik(hidden: Array, head: Array, tokens: Array, segment_ids: Array,
                    chunk: int = 0) -> Array:
  """[B, T] float32: at column t, the log-likelihood of t's segment's tokens up to t (after
  the shared prefix; 0 in the prefix and padding)."""
  return segment_cumsum(prefix_token_logprobs(hidden, head, tokens, segment_ids, chunk),
                        segment_ids)


def scoring_segments(score_logprob: float, segment_ids: Array) -> tuple[Array, bool]:
  """(segment_ids, shared_prefix) to call a scalar-head model with on rows of prompt
  (segment 1) + response (segment 2), segment_ids [B, T] (0 = padding).

  With the log-likelihood term (score_logprob > 0) the rows go as they are, with shared_prefix
  (the attention of one sequence; the term needs to know where the response starts). Without
  it, each row is one segment and there is no shared prefix: the very call a plain reward
  model had before the term existed (the same attention kernel, the same bits).
  """
  if score_logprob:
    return segment_ids, True
  return jnp.where(segment_ids != 0, 1, 0).astype(segment_ids.dtype), False
