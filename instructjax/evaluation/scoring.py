"""Batched forward passes that score token sequences: continuation log-probs and reward scores.

Rows are RIGHT padded: row r holds its ids in columns [0, L_r) with segment id 1, padding after
with segment id 0. Causal attention restricted to segment 1 means padding is invisible to real
tokens, and position ids come from the mask (`positions_from_mask`), so a row scores exactly
as it would alone. Shape policy (one compile per (B, T)): rows are sorted by length and cut into
chunks of `batch_size` (the last chunk filled with all-padding rows), and T is the chunk's
longest row rounded up to a multiple of 16, capped at the model's max_seq_len.

Sequences longer than the model's context are cut from the LEFT of the prompt (the part next to
the scored tokens matters most); the scored part itself is never cut.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models import DecoderLM, gather_at, last_token_index, positions_from_mask
from instructjax.models.compiled import JitCache, cached
from instructjax.models.response_loglik import scoring_segments

LENGTH_BUCKET = 16


def _width(longest: int, cap: int) -> int:
  return min(-(-longest // LENGTH_BUCKET) * LENGTH_BUCKET, cap)


def _chunks(rows: Sequence[Sequence[int]], batch_size: int, cap: int, pad_id: int
            ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
  """(row indices, tokens int32 [B, T], segment_ids int32 [B, T]) per chunk, right padded."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    width = _width(max(len(rows[i]) for i in idx), cap)
    tokens = np.full((batch_size, width), pad_id, np.int32)
    segs = np.zeros((batch_size, width), np.int32)
    for r, i in enumerate(idx):
      tokens[r, :len(rows[i])] = rows[i]
      segs[r, :len(rows[i])] = 1
    yield idx, tokens, segs


def fit_prompt(prompt_ids: Sequence[int], scored_len: int, max_len: int) -> list[int]:
  """The prompt cut from the left so that prompt + scored tokens fit `max_len`.

  At least one prompt token must remain: the first scored token is predicted from it.
  """
  room = max_len - scored_len
  if room < 1 or not prompt_ids:
    raise ValueError(f"cannot score {scored_len} tokens after a prompt of {len(prompt_ids)} "
                     f"tokens within the model's {max_len}-token context (need >= 1 prompt "
                     "token; use add_bos for empty prompts)")
  return list(prompt_ids[-room:])


def _logprob_fn(model: DecoderLM, temperature: float):
  """Jitted (params, tokens, segs, extra_ids) -> (next-token logp [B, T], logp of extra ids
  [B, T, S]); only gathered values leave the device, never the [B, T, V] distribution."""
  def fn(params, tokens, segs, extra_ids):
    logits, _ = model.apply({"params": params}, tokens, positions_from_mask(segs), segs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)  # [B, T, V]
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # Next token at t.
    chosen = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return chosen, jnp.take(logp, extra_ids, axis=-1)
  return jax.jit(fn)


def _score_fn(model: DecoderLM):
  """Jitted (params, tokens, segs) -> scalar head at each row's last real token [B]; segs
  [B, T] 0 = padding, 1 the prompt, 2 the response (or all 1: no prompt given)."""
  def fn(params, tokens, segs):
    rm_segs, shared_prefix = scoring_segments(model.cfg.score_logprob, segs)
    values, _ = model.apply({"params": params}, tokens, positions_from_mask(segs != 0), rm_segs,
                            shared_prefix=shared_prefix)
    return gather_at(values, last_token_index(segs))
  return jax.jit(fn)


def continuation_logprobs(model: DecoderLM, params, prompt_ids: Sequence[Sequence[int]],
                          cont_ids: Sequence[Sequence[int]], *, pad_id: int,
                          batch_size: int = 32, temperature: float = 1.0,
                          extra_ids: Sequence[int] = (), cache: Optional[JitCache] = None
                          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Log-probs of each continuation token given its prompt and the continuation before it.

  Args:
    model, params: an lm-head DecoderLM.
    prompt_ids: per row, the conditioning ids (>= 1 token; cut from the left if too long).
    cont_ids: per row, the ids to score (may be empty).
    pad_id: the padding id (its value never matters: padding is masked).
    batch_size: rows per forward.
    temperature: log-probs under softmax(logits / temperature).
    extra_ids: S token ids whose log-probs are also returned at every continuation position
      (e.g. the set of stop tokens, to score "the response ends here" as a set event).
    cache: the model's JitCache, to reuse the compiled forward across calls.

  Returns:
    (token_logps, extra_logps): per row float32 [C] and [C, S], where C = len(cont_ids[r]);
    entry j is read at the position that predicts cont_ids[r][j].
  """
  if len(prompt_ids) != len(cont_ids):
    raise ValueError(f"{len(prompt_ids)} prompts but {len(cont_ids)} continuations")
  cap = model.cfg.max_seq_len
  prompts = [fit_prompt(p, len(c), cap) for p, c in zip(prompt_ids, cont_ids)]
  rows = [p + list(c) for p, c in zip(prompts, cont_ids)]
  fn = cached(cache, ("logprobs", float(temperature)),
              lambda: _logprob_fn(model, float(temperature)))
  extra = jnp.asarray(np.asarray(list(extra_ids), np.int32).reshape(-1))
  tok_out: list = [None] * len(rows)
  extra_out: list = [None] * len(rows)
  for idx, tokens, segs in _chunks(rows, batch_size, cap, pad_id):
    chosen, ex = jax.device_get(fn(params, tokens, segs, extra))
    for r, i in enumerate(idx):
      start, n = len(prompts[i]) - 1, len(cont_ids[i])
      tok_out[i] = np.asarray(chosen[r, start:start + n], np.float32)
      extra_out[i] = np.asarray(ex[r, start:start + n], np.float32)
  return tok_out, extra_out


def last_token_scores(model: DecoderLM, params, ids: Sequence[Sequence[int]], *, pad_id: int,
                      batch_size: int = 32, cache: Optional[JitCache] = None,
                      prefix_lens: Optional[Sequence[int]] = None) -> np.ndarray:
  """Scalar-head value at the last token of each row (the reward model's score), float32 [N].

  Rows longer than the context keep their last max_seq_len tokens. With `prefix_lens` (the
  prompt's length in each row) the prompt is given to the model as segment 1 and the rest as
  segment 2, as the reward model was trained: what a reward model that scores the response's
  log-likelihood (ModelConfig.score_logprob) needs; a plain one scores the same either way.
  """
  if model.head != "scalar":
    raise ValueError(f"scores need a scalar-head model, got head={model.head!r}")
  cap = model.cfg.max_seq_len
  rows = [list(r)[-cap:] for r in ids]
  if any(not r for r in rows):
    raise ValueError("cannot score an empty sequence")
  if prefix_lens is not None and len(prefix_lens) != len(rows):
    raise ValueError(f"{len(prefix_lens)} prefix lengths for {len(rows)} rows")
  fn = cached(cache, "scores", lambda: _score_fn(model))
  out = np.zeros(len(rows), np.float32)
  for idx, tokens, segs in _chunks(rows, batch_size, cap, pad_id):
    if prefix_lens is not None:
      for r, i in enumerate(idx):
        cut = len(ids[i]) - len(rows[i])  # Tokens dropped from the left.
        segs[r, max(prefix_lens[i] - cut, 0):len(rows[i])] = 2
    values = np.asarray(jax.device_get(fn(params, tokens, segs)))
    out[idx] = values[:len(idx)]
  return out
