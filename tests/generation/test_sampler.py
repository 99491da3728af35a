"""The KV-cache sampler against full-forward references: greedy tokens, EOS handling,
log-probs, seeding, top-k=1, early loop exit, and sharded == single-device."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.generation import SampleOutput, SamplingConfig, make_sampler
from instructjax.models import DecoderLM, positions_from_mask
from instructjax.ops.logprobs import token_logprobs
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh

PAD = 0
N = 8
LENGTHS = [6, 3, 1, 5, 0]  # Left-padded prompts of different lengths; the last is batch padding.
REAL = 4  # Rows with a prompt.
WIDTH = 6


def no_eos(vocab):
  """An EOS id outside the vocabulary: rows never finish, so every row runs all N steps."""
  return vocab


def check_conventions(out: SampleOutput, prompt_tokens, prompt_mask, sampling):
  """Invariants every SampleOutput must satisfy."""
  b, p = prompt_tokens.shape
  n = sampling.max_new_tokens
  assert out.tokens.shape == out.segment_ids.shape == (b, p + n)
  assert out.response_tokens.shape == out.response_mask.shape == out.logprobs.shape == (b, n)
  assert out.response_mask.dtype == jnp.bool_ and out.logprobs.dtype == jnp.float32
  assert out.tokens.dtype == out.response_tokens.dtype == out.lengths.dtype == jnp.int32
  np.testing.assert_array_equal(out.tokens[:, :p], prompt_tokens)
  np.testing.assert_array_equal(out.tokens[:, p:], out.response_tokens)
  np.testing.assert_array_equal(out.segment_ids[:, :p], prompt_mask)
  np.testing.assert_array_equal(out.segment_ids[:, p:], out.response_mask.astype(np.int32))
  mask = np.asarray(out.response_mask)
  resp = np.asarray(out.response_tokens)
  lengths = np.asarray(out.lengths)
  # The mask is a prefix of each row, of length `lengths`.
  np.testing.assert_array_equal(mask, np.arange(n)[None] < lengths[:, None])
  assert (resp[~mask] == sampling.pad_id).all()
  assert (np.asarray(out.logprobs)[~mask] == 0).all()
  assert (np.asarray(out.logprobs)[mask] <= 0).all()
  eos_at = (resp == sampling.eos_id) & mask
  finished = np.asarray(out.finished)
  np.testing.assert_array_equal(finished, eos_at.any(-1))
  # EOS, when present, is the last response token; an unfinished row ran all N steps unless
  # it is batch padding.
  for r in range(b):
    if finished[r]:
      assert eos_at[r].sum() == 1 and resp[r, lengths[r] - 1] == sampling.eos_id
    elif np.asarray(prompt_mask)[r].any():
      assert lengths[r] == n


def greedy(cfg, n=N):
  return SamplingConfig(max_new_tokens=n, eos_id=no_eos(cfg.vocab_size), pad_id=PAD,
                        temperature=0.0)


def full_forward_logprobs(model, params, out: SampleOutput, temperature):
  """Log-probs of the response tokens from one full forward over out.tokens (no cache)."""
  @jax.jit
  def score(params, tokens, seg, response):
    logits, _ = model.apply({"params": params}, tokens, positions_from_mask(seg), seg)
    # Column WIDTH - 1 + i predicts response token i.
    n = response.shape[1]
    return token_logprobs(logits[:, WIDTH - 1:WIDTH - 1 + n], response, temperature)
  return np.asarray(score(params, out.tokens, out.segment_ids, out.response_tokens))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_equals_argmax_over_full_forwards(family, make_lm, prompts, reference_greedy):
  cfg, model, params = make_lm(family)
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  sampling = greedy(cfg)
  out = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(0))
  check_conventions(out, tokens, mask, sampling)
  ref_tok, ref_mask = reference_greedy(model, params, tokens, mask, N, sampling.eos_id, PAD)
  np.testing.assert_array_equal(out.response_tokens, ref_tok)
  np.testing.assert_array_equal(out.response_mask, ref_mask)
  assert not np.asarray(out.response_mask[REAL:]).any()  # Batch padding generates nothing.
  # The rows really differ (a degenerate model would make this test vacuous).
  assert len({tuple(r) for r in np.asarray(out.response_tokens[:REAL])}) == REAL
  # Greedy log-probs are scored at temperature 1.
  valid = np.asarray(out.response_mask)
  ref_lp = full_forward_logprobs(model, params, out, 1.0)
  np.testing.assert_allclose(np.asarray(out.logprobs)[valid], ref_lp[valid], atol=1e-5)


def test_after_eos_only_pad_and_lengths(make_lm, prompts, reference_greedy):
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  free = greedy(cfg)
  ref_tok, _ = reference_greedy(model, params, tokens, mask, N, free.eos_id, PAD)
  assert not (ref_tok[:REAL] == free.eos_id).any()
  # EOS := the token row 0 emits at step 3: each row stops at its first occurrence (if any),
  # and everything before that is unchanged.
  eos = int(ref_tok[0, 3])
  sampling = dataclasses.replace(free, eos_id=eos)
  out = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(0))
  check_conventions(out, tokens, mask, sampling)
  hits = ref_tok[:REAL] == eos
  expected_len = np.where(hits.any(-1), hits.argmax(-1) + 1, N)
  np.testing.assert_array_equal(out.lengths, list(expected_len) + [0])
  np.testing.assert_array_equal(out.finished, list(hits.any(-1)) + [False])
  assert expected_len[0] <= 4 and len(set(expected_len)) > 1
  for r, n in enumerate(expected_len):
    np.testing.assert_array_equal(out.response_tokens[r, :n], ref_tok[r, :n])
  assert int(out.num_steps) == expected_len.max()


def test_logprobs_equal_full_forward_recompute(make_lm, prompts):
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  # Filters change what is drawn, not how it is scored: softmax(logits / T), unfiltered.
  sampling = SamplingConfig(max_new_tokens=N, eos_id=no_eos(cfg.vocab_size), pad_id=PAD,
                            temperature=0.7, top_k=10, top_p=0.9)
  out = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(3))
  check_conventions(out, tokens, mask, sampling)
  valid = np.asarray(out.response_mask)
  assert valid.sum() == REAL * N
  ref = full_forward_logprobs(model, params, out, 0.7)
  np.testing.assert_allclose(np.asarray(out.logprobs)[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_seeds_reproduce_and_differ(make_lm, prompts):
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  sampling = SamplingConfig(max_new_tokens=N, eos_id=no_eos(cfg.vocab_size), pad_id=PAD,
                            temperature=1.0)
  sample = make_sampler(model, sampling)
  a = sample(params, tokens, mask, jax.random.key(7))
  b = sample(params, tokens, mask, jax.random.key(7))
  c = sample(params, tokens, mask, jax.random.key(8))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert (np.asarray(a.response_tokens) != np.asarray(c.response_tokens)).any()


def test_top_k_one_equals_greedy(make_lm, prompts):
  cfg, model, params = make_lm("gpt2")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  top1 = dataclasses.replace(greedy(cfg), temperature=1.0, top_k=1)
  g = make_sampler(model, greedy(cfg))(params, tokens, mask, jax.random.key(0))
  t = make_sampler(model, top1)(params, tokens, mask, jax.random.key(5))
  np.testing.assert_array_equal(t.response_tokens, g.response_tokens)
  # Both score under softmax(logits / 1).
  np.testing.assert_allclose(t.logprobs, g.logprobs, atol=1e-6)


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: make_sampler memoises.
class CountingModel:
  """A DecoderLM that records, from inside the compiled program, each forward's length."""
  inner: DecoderLM
  log: list = dataclasses.field(default_factory=list)

  @property
  def cfg(self):
    return self.inner.cfg

  @property
  def head(self):
    return self.inner.head

  def apply(self, variables, tokens, *args, **kw):
    jax.debug.callback(lambda t: self.log.append(t.shape[1]), tokens)
    return self.inner.apply(variables, tokens, *args, **kw)


def test_loop_stops_when_every_row_has_finished(make_lm, prompts):
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  # Identical prompts finish together: with EOS := a token whose first greedy occurrence is at
  # step k, every row finishes at step k (batch-padding rows never hold the loop open).
  rows = np.array([0, 0, 0, REAL])
  same = tokens[rows], mask[rows]
  ref = np.asarray(make_sampler(model, greedy(cfg))(params, *same, jax.random.key(0))
                   .response_tokens[0])
  first = {}
  for i, t in enumerate(ref):
    first.setdefault(int(t), i)
  counting = CountingModel(model)
  late = max((kv for kv in first.items() if kv[1] < N - 1), key=lambda kv: kv[1])
  assert late[1] >= 2
  for eos, k in [(int(ref[0]), 0), late]:
    counting.log.clear()
    out = make_sampler(counting, dataclasses.replace(greedy(cfg), eos_id=eos))(
        params, *same, jax.random.key(0))
    jax.effects_barrier()
    np.testing.assert_array_equal(out.lengths, [k + 1] * 3 + [0])
    assert out.finished[:3].all() and int(out.num_steps) == k + 1
    # The prefill, then exactly k single-token forwards (none after the last EOS).
    assert counting.log == [WIDTH] + [1] * k


def test_sharded_sampler_matches_single_device(make_lm, prompts):
  cfg, model, params = make_lm("llama")
  ctx = ShardingContext(make_mesh(8, 1, 1), get_rules("dp"))
  tokens, mask = prompts(cfg.vocab_size, [6, 3, 1, 5, 2, 6, 4, 0], WIDTH)
  sampling = SamplingConfig(max_new_tokens=N, eos_id=no_eos(cfg.vocab_size), pad_id=PAD,
                            temperature=0.8, top_p=0.95)
  ref = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(2))
  sharded_model = DecoderLM(cfg, shard=ctx)
  sh = ctx.batch_sharding(2)
  out = make_sampler(sharded_model, sampling, ctx)(
      params, jax.device_put(tokens, sh), jax.device_put(mask, sh), jax.random.key(2))
  # Each of the 8 devices holds one row.
  assert out.response_tokens.addressable_shards[0].data.shape == (1, N)
  np.testing.assert_array_equal(out.response_tokens, ref.response_tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_banned_first_tokens_only_restrict_the_first_token(make_lm, prompts):
  """With the free greedy first tokens banned, each row's first token is the argmax of the rest
  and every later token is again the model's greedy choice given what came before."""
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  free = make_sampler(model, greedy(cfg))(params, tokens, mask, jax.random.key(0))
  banned = tuple(sorted({int(t) for t in np.asarray(free.response_tokens[:REAL, 0])}))
  sampling = dataclasses.replace(greedy(cfg), banned_first_tokens=banned)
  out = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(0))
  check_conventions(out, tokens, mask, sampling)
  first = np.asarray(out.response_tokens[:REAL, 0])
  assert not set(first.tolist()) & set(banned)
  logits, _ = model.apply({"params": params}, out.tokens, positions_from_mask(out.segment_ids),
                          out.segment_ids)
  logits = np.asarray(logits, np.float32)  # [B, WIDTH + N, V]
  allowed = logits[:REAL, WIDTH - 1].copy()
  allowed[:, list(banned)] = -np.inf
  np.testing.assert_array_equal(first, allowed.argmax(-1))
  later = logits[:REAL, WIDTH:WIDTH + N - 1].argmax(-1)  # Column WIDTH - 1 + i predicts token i.
  np.testing.assert_array_equal(np.asarray(out.response_tokens[:REAL, 1:]), later)
  assert np.isfinite(np.asarray(out.logprobs)).all()


def test_config_validation():
  with pytest.raises(ValueError, match="banned_first_tokens"):
    SamplingConfig(max_new_tokens=4, eos_id=2, pad_id=0, banned_first_tokens=[3])
  with pytest.raises(ValueError, match="banned_first_tokens"):
    SamplingConfig(max_new_tokens=4, eos_id=2, pad_id=0, banned_first_tokens=(-1,))
  with pytest.raises(ValueError, match="max_new_tokens"):
    SamplingConfig(max_new_tokens=0, eos_id=2, pad_id=0)
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(max_new_tokens=4, eos_id=2, pad_id=0, top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(max_new_tokens=4, eos_id=2, pad_id=0, temperature=-1.0)


def test_decode_loop_writes_the_cache_in_place(make_lm, prompts):
  # The compiled decode loop makes no new buffer the size of the KV cache (a float32 cache;
  # XLA on CPU computes bf16 writes in float32): every step writes its slots in place.
  from instructjax.benchmarking import checks  # pylint: disable=import-outside-toplevel
  from instructjax.generation import make_prefill_and_decode  # pylint: disable=import-outside-toplevel
  cfg, model, params = make_lm("llama")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  prefill, decode = make_prefill_and_decode(model, greedy(cfg))
  state = prefill(params, tokens, mask, jax.random.key(0))
  compiled = decode.lower(params, state, jax.random.key(0)).compile()
  assert checks.cache_buffers(compiled, state.cache.k.shape)["whole"] == 0


def test_bfloat16_cache_samples_like_the_float32_cache(make_lm, prompts):
  cfg, model, params = make_lm("llama")
  _, bf16_model, _ = make_lm("llama", kv_cache_dtype="bfloat16")
  tokens, mask = prompts(cfg.vocab_size, LENGTHS, WIDTH)
  sampling = SamplingConfig(max_new_tokens=N, eos_id=no_eos(cfg.vocab_size), pad_id=PAD,
                            temperature=1.0)
  ref = make_sampler(model, sampling)(params, tokens, mask, jax.random.key(3))
  out = make_sampler(bf16_model, sampling)(params, tokens, mask, jax.random.key(3))
  check_conventions(out, tokens, mask, sampling)
  # Same tokens where the bf16 keys and values do not flip a draw; log-probs within bf16 error.
  valid = np.asarray(ref.response_mask)
  same = np.asarray(out.response_tokens == ref.response_tokens)[valid]
  first = valid[:, 0]
  assert np.asarray(out.response_tokens == ref.response_tokens)[first, 0].all()
  assert same.mean() > 0.5
  np.testing.assert_allclose(np.asarray(out.logprobs)[first, 0], np.asarray(ref.logprobs)[first, 0],
                             atol=0.05)
