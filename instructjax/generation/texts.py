"""`generate_texts`: strings in, strings out, with shapes bucketed so the sampler rarely compiles.

Shape policy (the sampler compiles once per (B, P)):
  * prompts are sorted by length and cut into chunks of `batch_size`; the last chunk is
    filled up with all-padding rows (they generate nothing and cost no extra loop steps), so
    B is always `batch_size`;
  * P is the chunk's longest prompt rounded UP to a multiple of 16 (`PROMPT_BUCKET`), extra
    columns being left padding. Prompt sets whose lengths fall in the same buckets therefore
    reuse the compiled sampler. Near the model's length limit P is clipped down (never below
    the longest prompt) so that P + N still fits `max_seq_len`.
Results come back in the order of `prompts`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from instructjax.generation.config import SamplingConfig
from instructjax.generation.sampler import make_sampler
from instructjax.models import DecoderLM
from instructjax.models.compiled import JitCache, cached
from instructjax.parallel.sharding import ShardingContext

PROMPT_BUCKET = 16


def bucket_length(longest: int, max_new_tokens: int, max_seq_len: int,
                  multiple: int = PROMPT_BUCKET) -> int:
  """Prompt width P for a chunk whose longest prompt has `longest` tokens."""
  rounded = -(-longest // multiple) * multiple
  return min(rounded, max(longest, max_seq_len - max_new_tokens))


def left_pad(ids: Sequence[Sequence[int]], width: int, rows: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens int32 [rows, width] left padded, mask int32 [rows, width]).

  Rows beyond len(ids) are all padding.
  """
  tokens = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), np.int32)
  for r, row in enumerate(ids):
    if row:
      tokens[r, width - len(row):] = row
      mask[r, width - len(row):] = 1
  return tokens, mask


def generate_texts(model: DecoderLM, params, tokenizer, prompts: Sequence[str],
                   sampling: SamplingConfig, seed: int = 0, batch_size: int = 32,
                   shard: Optional[ShardingContext] = None, *,
                   add_bos: bool = False,
                   cache: Optional[JitCache] = None) -> list[tuple[str, bool]]:
  """Samples one response per prompt.

  Args:
    model, params: an lm-head DecoderLM and its parameters.
    tokenizer: has encode / decode / pad_id / eos_id (instructjax.tokenizer.Tokenizer).
    prompts: raw prompt strings, tokenized exactly as given (plus BOS with `add_bos`, to match
      data pipelines that use it).
    sampling: decoding settings; its pad_id/eos_id should be the tokenizer's.
    seed: chunk c samples with fold_in(key(seed), c).
    batch_size: rows per sampler call (B); see the module docstring for why it is fixed.
    shard: optional ShardingContext, passed on to the sampler; inputs are placed batch-sharded.
    cache: the owner's JitCache (of this model): its sampler is reused across calls. Without
      one, each call compiles its own.

  Returns:
    [(response_text, finished)] in the order of `prompts`: the text excludes EOS and PAD;
    finished says the response ended with EOS within sampling.max_new_tokens.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  encoded = [list(tokenizer.encode(p, add_bos=True) if add_bos else tokenizer.encode(p))
             for p in prompts]
  for i, ids in enumerate(encoded):
    if not ids:
      raise ValueError(f"prompt {i} ({prompts[i]!r}) has no tokens: there is nothing to "
                       "condition on (use add_bos=True or a non-empty prompt)")
  sample = cached(cache, ("sampler", sampling, shard),
                  lambda: make_sampler(model, sampling, shard))
  n = sampling.max_new_tokens
  order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
  rng = jax.random.key(seed)
  results: list[Optional[tuple[str, bool]]] = [None] * len(encoded)
  for c, start in enumerate(range(0, len(order), batch_size)):
    idx = order[start:start + batch_size]
    rows = [encoded[i] for i in idx]
    width = bucket_length(max(map(len, rows)), n, model.cfg.max_seq_len)
    tokens, mask = left_pad(rows, width, batch_size, sampling.pad_id)
    if shard is not None:
      tokens, mask = jax.device_put((tokens, mask), shard.batch_sharding(2))
    out = sample(params, tokens, mask, jax.random.fold_in(rng, c))
    resp, lengths, finished = jax.device_get((out.response_tokens, out.lengths, out.finished))
    for r, i in enumerate(idx):
      # lengths counts the EOS of a finished row; the text stops before it.
      ids = resp[r, :int(lengths[r]) - int(finished[r])]
      results[i] = (tokenizer.decode([int(t) for t in ids]), bool(finished[r]))
  return results
