"""generate_texts: decoded responses without EOS/PAD, in prompt order, and no recompilation
for new prompt lengths inside a bucket."""
import dataclasses

import numpy as np
import pytest

from instructjax.generation import SamplingConfig, bucket_length, generate_texts, left_pad
from instructjax.models.compiled import JitCache
from instructjax.tokenizer import CharTokenizer

SET_A = ["abc", "hello there", "x", "what is 2", "zz top"]  # 1..11 chars: bucket 16.
SET_B = ["abcdefghijkl", "0123456789abcd", "the quick brown"]  # 12..15 chars: bucket 16.
N = 6


@dataclasses.dataclass
class VisibleTokenizer:
  """CharTokenizer whose EOS is an ordinary character and whose decode hides nothing, so an
  EOS or PAD left in a response would show up in the text."""
  inner: CharTokenizer
  eos_id: int

  @property
  def pad_id(self):
    return self.inner.pad_id

  def encode(self, text):
    return self.inner.encode(text)

  def decode(self, ids):
    return self.inner.decode(ids, skip_special=False)


def test_bucket_length_and_left_pad():
  assert [bucket_length(n, 8, 128) for n in (1, 16, 17, 33)] == [16, 16, 32, 48]
  # Near the model's limit the bucket shrinks so that P + N fits, never below the prompt.
  assert bucket_length(50, 20, 64) == 50 and bucket_length(40, 20, 64) == 44
  assert bucket_length(70, 20, 64) == 70
  tokens, mask = left_pad([[5, 6], [7]], 4, rows=3, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_texts_match_greedy_reference_without_recompiling(make_lm, reference_greedy):
  char = CharTokenizer()
  cfg, model, params = make_lm("llama", vocab_size=char.vocab_size)
  prompts = SET_A + SET_B
  # Reference: greedy continuations of every prompt with EOS off (id outside the vocabulary).
  ids = [char.encode(p) for p in prompts]
  tokens, mask = left_pad(ids, 16, len(ids), char.pad_id)
  ref, _ = reference_greedy(model, params, tokens, mask, N, cfg.vocab_size, char.pad_id)
  # EOS := the character the first prompt generates third, so some responses end early.
  eos = int(ref[0, 2])
  tok = VisibleTokenizer(char, eos)
  expected = []
  for row in ref:
    hit = np.flatnonzero(row == eos)
    expected.append((char.decode(row[:hit[0]] if hit.size else row), bool(hit.size)))
  assert any(f for _, f in expected) and not all(f for _, f in expected)

  sampling = SamplingConfig(max_new_tokens=N, eos_id=eos, pad_id=char.pad_id, temperature=0.0)
  cache = JitCache()  # The owner's cache: every call below uses its one sampler.
  out_a = generate_texts(model, params, tok, SET_A, sampling, batch_size=4, cache=cache)
  sample = cache.get(("sampler", sampling, None), lambda: None)
  assert len(cache) == 1 and sample._cache_size() == 1  # Two chunks of 4 rows, one shape.
  out_b = generate_texts(model, params, tok, SET_B, sampling, batch_size=4, cache=cache)
  assert sample._cache_size() == 1  # New lengths and count, same bucket: no compile.
  assert out_a + out_b == expected
  generate_texts(model, params, tok, ["a prompt of 20 chars"], sampling, batch_size=4,
                 cache=cache)
  assert len(cache) == 1 and sample._cache_size() == 2  # Bucket 32.


def test_sampled_texts_are_reproducible(make_lm):
  char = CharTokenizer()
  cfg, model, params = make_lm("gpt2", vocab_size=char.vocab_size)
  sampling = SamplingConfig(max_new_tokens=N, eos_id=char.eos_id, pad_id=char.pad_id,
                            temperature=1.0)
  a = generate_texts(model, params, char, SET_A, sampling, seed=1, batch_size=4)
  b = generate_texts(model, params, char, SET_A, sampling, seed=1, batch_size=4)
  c = generate_texts(model, params, char, SET_A, sampling, seed=2, batch_size=4)
  assert a == b and a != c
  assert all(isinstance(t, str) and isinstance(f, bool) for t, f in a)


def test_empty_prompt_is_an_error(make_lm):
  char = CharTokenizer()
  _, model, params = make_lm("llama", vocab_size=char.vocab_size)
  sampling = SamplingConfig(max_new_tokens=N, eos_id=char.eos_id, pad_id=char.pad_id)
  with pytest.raises(ValueError, match="prompt 1"):
    generate_texts(model, params, char, ["ok", ""], sampling)
