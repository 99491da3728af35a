"""The jitted KV-cache sampler: one prefill, then single-token steps in a lax.while_loop.

    sample = make_sampler(model, sampling, shard=None)
    out = sample(params, prompt_tokens, prompt_mask, rng)  # -> SampleOutput

Shapes: prompt_tokens int32 [B, P] LEFT padded with pad_id, prompt_mask [B, P] 0/1. The
cache holds P + N slots (N = max_new_tokens). The whole prompt is prefilled in one call, so
every row's last prompt token sits in column P - 1 and the next-token logits of all rows come
out of the same column; generated token i of every row is then written at slot P + i, with
position id (number of prompt tokens of the row) + i, so left padding shifts nothing.

The loop runs on device with no host round-trips and stops as soon as every row has emitted
EOS (or after N tokens). A row that has finished keeps emitting PAD with response_mask False,
and its PAD is fed to the model with segment id 0 (attending nowhere, seen by nothing). A row
whose prompt_mask is all 0 (a batch-padding row) has no next-token distribution: it starts
finished-without-EOS and generates nothing (lengths 0, finished False), so it never holds the
loop open.

Compilation: one jit per (B, P, N) shape (N is in the static SamplingConfig); `make_sampler`
is memoised on (model, sampling, shard), so equal arguments share one compilation cache.

The cache is written in place: each decode step writes B new slots per layer into the
carried [L, B, Hkv, P + N, Dh] arrays (see models/layers.py), nothing cache-sized is copied.
`make_prefill_and_decode` jits the two halves separately (benchmarks, profiles); they are the
same functions `make_sampler` composes.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from instructjax.generation.config import SampleOutput, SamplingConfig
from instructjax.models import DecoderLM, KVCache, lm_head_weight, positions_from_mask
from instructjax.ops.head_chunks import head_logits
from instructjax.ops.logprobs import token_logprobs
from instructjax.ops.sampling import sample_token
from instructjax.parallel.sharding import ShardingContext, constrain

Array = jax.Array

_B = ("act_batch",)
_BT = ("act_batch", "act_length")


@flax.struct.dataclass
class _LoopState:
  """Carry of the decode loop; column `step` of the response buffers is written next."""
  step: Array  # [] int32
  cache: KVCache
  logits: Array  # [B, V] float32, next-token logits
  done: Array  # [B] bool: emitted EOS, or a batch-padding row
  tokens: Array  # [B, N] int32
  mask: Array  # [B, N] bool
  logprobs: Array  # [B, N] float32
  prompt_len: Array  # [B] int32 real prompt tokens (the position id of the first new token)


def _constrain_cache(shard: Optional[ShardingContext], cache: KVCache) -> KVCache:
  if shard is None:
    return cache
  return cache.replace(**{name: constrain(shard, getattr(cache, name), axes)
                          for name, axes in KVCache.LOGICAL_AXES.items() if axes})


def _constrain_state(shard: Optional[ShardingContext], s: _LoopState) -> _LoopState:
  if shard is None:
    return s
  return s.replace(cache=_constrain_cache(shard, s.cache),
                   logits=constrain(shard, s.logits, ("act_batch", "act_vocab")),
                   prompt_len=constrain(shard, s.prompt_len, _B),
                   done=constrain(shard, s.done, _B), tokens=constrain(shard, s.tokens, _BT),
                   mask=constrain(shard, s.mask, _BT), logprobs=constrain(shard, s.logprobs, _BT))


def _emit(s: _LoopState, rng: Array, sampling: SamplingConfig) -> _LoopState:
  """Samples column `s.step` from `s.logits` for every unfinished row and records it."""
  key = jax.random.fold_in(rng, s.step)
  tok = sample_token(key, s.logits, sampling.temperature, sampling.top_k, sampling.top_p)
  # Scored under the unfiltered softmax(logits / T): the distribution PPO recomputes.
  lp = token_logprobs(s.logits[:, None, :], tok[:, None], sampling.logprob_temperature)[:, 0]
  active = ~s.done
  tok = jnp.where(active, tok, sampling.pad_id)
  lp = jnp.where(active, lp, 0.0)
  col = (0, s.step)
  return s.replace(
      done=s.done | (active & (tok == sampling.eos_id)),
      tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], col),
      mask=jax.lax.dynamic_update_slice(s.mask, active[:, None], col),
      logprobs=jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], col))


def _prefill(model: DecoderLM, sampling: SamplingConfig, shard: Optional[ShardingContext],
             params, prompt_tokens: Array, prompt_mask: Array, rng: Array) -> _LoopState:
  """One forward over the whole prompt into a fresh cache of P + N slots, then column 0."""
  b, p = prompt_tokens.shape
  n = sampling.max_new_tokens
  prompt_tokens = constrain(shard, prompt_tokens.astype(jnp.int32), _BT)
  prompt_seg = constrain(shard, (prompt_mask != 0).astype(jnp.int32), _BT)
  prompt_len = prompt_seg.sum(axis=-1)  # [B]; also the position id of the first new token.

  cache = _constrain_cache(shard, KVCache.init(model.cfg, b, p + n))
  hidden, cache = model.apply({"params": params}, prompt_tokens,
                              positions_from_mask(prompt_seg), prompt_seg, cache,
                              return_hidden=True)  # [B, P, d]
  # Only column P - 1's logits are needed: the head runs on [B, d], not on [B, P, d].
  logits = head_logits(hidden[:, -1], lm_head_weight(model.cfg, params))  # [B, V]
  if sampling.banned_first_tokens:
    ids = jnp.asarray(sampling.banned_first_tokens)
    banned = jnp.zeros(logits.shape[-1], bool).at[ids].set(True)  # [V]
    logits = jnp.where(banned, -jnp.inf, logits)
  state = _LoopState(
      step=jnp.zeros((), jnp.int32), cache=cache, logits=logits, done=prompt_len == 0,
      tokens=jnp.full((b, n), sampling.pad_id, jnp.int32), mask=jnp.zeros((b, n), bool),
      logprobs=jnp.zeros((b, n), jnp.float32), prompt_len=prompt_len)
  # Column 0 comes straight from the prefill logits, so the loop never runs a forward whose
  # logits go unused (after the last column, or after the last row finished).
  return _constrain_state(shard, _emit(_constrain_state(shard, state), rng, sampling))


def _decode(model: DecoderLM, sampling: SamplingConfig, shard: Optional[ShardingContext],
            params, state: _LoopState, rng: Array) -> _LoopState:
  """Single-token steps until every row is done or column N - 1 is written."""
  n = sampling.max_new_tokens
  variables = {"params": params}

  def cond(s: _LoopState) -> Array:
    return (s.step + 1 < n) & ~jnp.all(s.done)

  def body(s: _LoopState) -> _LoopState:
    last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step, 1, axis=1)  # [B, 1]
    seg = jax.lax.dynamic_slice_in_dim(s.mask, s.step, 1, axis=1).astype(jnp.int32)
    pos = (s.prompt_len + s.step)[:, None]
    logits, cache = model.apply(variables, last, pos, seg, s.cache)
    s = s.replace(step=s.step + 1, cache=cache, logits=logits[:, -1])
    return _constrain_state(shard, _emit(s, rng, sampling))

  return jax.lax.while_loop(cond, body, state)


def _finish(shard: Optional[ShardingContext], state: _LoopState, prompt_tokens: Array,
            prompt_mask: Array) -> SampleOutput:
  prompt_tokens = constrain(shard, prompt_tokens.astype(jnp.int32), _BT)
  prompt_seg = constrain(shard, (prompt_mask != 0).astype(jnp.int32), _BT)
  finished = state.done & (state.prompt_len > 0)
  return SampleOutput(
      tokens=constrain(shard, jnp.concatenate([prompt_tokens, state.tokens], axis=1), _BT),
      segment_ids=constrain(shard, jnp.concatenate(
          [prompt_seg, state.mask.astype(jnp.int32)], axis=1), _BT),
      response_tokens=state.tokens, response_mask=state.mask, logprobs=state.logprobs,
      finished=constrain(shard, finished, _B),
      lengths=constrain(shard, state.mask.sum(axis=-1).astype(jnp.int32), _B),
      num_steps=state.step + 1)


def _sample(model: DecoderLM, sampling: SamplingConfig, shard: Optional[ShardingContext],
            params, prompt_tokens: Array, prompt_mask: Array, rng: Array) -> SampleOutput:
  state = _prefill(model, sampling, shard, params, prompt_tokens, prompt_mask, rng)
  state = _decode(model, sampling, shard, params, state, rng)
  return _finish(shard, state, prompt_tokens, prompt_mask)


def make_sampler(model: DecoderLM, sampling: SamplingConfig,
                 shard: Optional[ShardingContext] = None) -> Callable[..., SampleOutput]:
  """Returns `sample(params, prompt_tokens, prompt_mask, rng) -> SampleOutput`, jitted.

  Args:
    model: an "lm"-head DecoderLM; give it the same `shard` so its activations are
      constrained too.
    sampling: static decoding settings (N = sampling.max_new_tokens).
    shard: optional ShardingContext; batch dimensions of inputs, loop state, cache
      (KVCache.LOGICAL_AXES) and outputs are constrained with it.

  The function compiles once per (B, P) (N is fixed by `sampling`); keep it (or hand
  `generate_texts` a JitCache) to reuse those compilations.
  """
  if model.head != "lm":
    raise ValueError(f"make_sampler needs a model with an lm head, got head={model.head!r}")
  return jax.jit(functools.partial(_sample, model, sampling, shard))


def make_prefill_and_decode(model: DecoderLM, sampling: SamplingConfig,
                            shard: Optional[ShardingContext] = None):
  """The sampler's two halves, each jitted on its own (for benchmarks and profiles).

  Returns (prefill, decode): `state = prefill(params, prompt_tokens, prompt_mask, rng)` runs
  the prompt forward and emits column 0; `state = decode(params, state, rng)` runs the
  while loop (state donated). `make_sampler` runs exactly these two in one jit, then
  assembles the SampleOutput; `state.step + 1` is its num_steps.
  """
  if model.head != "lm":
    raise ValueError(f"the sampler needs a model with an lm head, got head={model.head!r}")
  prefill = jax.jit(functools.partial(_prefill, model, sampling, shard))
  decode = jax.jit(functools.partial(_decode, model, sampling, shard), donate_argnums=(1,))
  return prefill, decode
