"""Decoder invariants: KV cache == full forward, left padding and packing change nothing."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.models import (DecoderLM, KVCache, gather_at, get_preset, last_token_index,
                                positions_from_mask)
from instructjax.models.layers import rope_inv_freq

FAMILIES = {
    "llama": dict(family="llama", n_kv_heads=2),
    "qwen2": dict(family="qwen2", n_kv_heads=1),
    "gpt2": dict(family="gpt2", n_kv_heads=4, tie_embeddings=True),
}


def make(family, **kw):
  cfg = get_preset("test", **{**FAMILIES[family], **kw})
  model = DecoderLM(cfg)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens, tokens, tokens + 1))["params"]
  # Non-zero biases so that bias paths are exercised.
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape), params)
  return cfg, model, params


def forward(model, params, tokens, segment_ids, positions=None):
  if positions is None:
    positions = positions_from_mask(segment_ids)
  return model.apply({"params": params}, tokens, positions, segment_ids)[0]


def random_tokens(shape, vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_then_single_steps_equals_full_forward(family):
  cfg, model, params = make(family)
  b, t, prefill = 3, 12, 5
  tokens = random_tokens((b, t), cfg.vocab_size)
  # Left-padded prompts of different lengths: row r has r padding tokens.
  seg = jnp.ones((b, t), jnp.int32).at[1, :1].set(0).at[2, :3].set(0)
  pos = positions_from_mask(seg)
  full = forward(model, params, tokens, seg, pos)

  cache = KVCache.init(cfg, b, 16)
  logits, cache = model.apply({"params": params}, tokens[:, :prefill], pos[:, :prefill],
                              seg[:, :prefill], cache)
  steps = [logits]
  for i in range(prefill, t):
    logits, cache = model.apply({"params": params}, tokens[:, i:i + 1], pos[:, i:i + 1],
                                seg[:, i:i + 1], cache)
    steps.append(logits)
  incremental = jnp.concatenate(steps, axis=1)
  assert int(cache.index) == t
  valid = np.asarray(seg, bool)
  np.testing.assert_allclose(np.asarray(incremental)[valid], np.asarray(full)[valid],
                             atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_left_padding_leaves_real_token_logits_unchanged(family):
  cfg, model, params = make(family)
  t, pad = 9, 4
  row = random_tokens((1, t), cfg.vocab_size, seed=3)
  unpadded = forward(model, params, row, jnp.ones((1, t), jnp.int32))
  padded_tokens = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), row], axis=1)
  padded_seg = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones((1, t), jnp.int32)], 1)
  padded = forward(model, params, padded_tokens, padded_seg)
  np.testing.assert_allclose(np.asarray(padded[:, pad:]), np.asarray(unpadded), atol=2e-5)
  # Position ids come from the mask, so the first real token sits at position 0.
  assert positions_from_mask(padded_seg)[0, pad] == 0


@pytest.mark.parametrize("family,corrupt", [("gpt2", lambda p: p + 3), ("llama", lambda p: 2 * p)])
def test_wrong_position_ids_would_change_logits(family, corrupt):
  # Guards the test above against passing vacuously. With RoPE only relative positions matter,
  # so a uniform shift is invisible there (as it should be) and a stretch is used instead.
  cfg, model, params = make(family)
  row = random_tokens((1, 6), cfg.vocab_size, seed=4)
  seg = jnp.ones((1, 6), jnp.int32)
  wrong = forward(model, params, row, seg, corrupt(positions_from_mask(seg)))
  assert float(jnp.abs(wrong - forward(model, params, row, seg)).max()) > 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_documents_do_not_attend_to_each_other(family):
  cfg, model, params = make(family)
  a = random_tokens((1, 5), cfg.vocab_size, seed=5)
  b = random_tokens((1, 7), cfg.vocab_size, seed=6)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 7 + [0] * 2], jnp.int32)
  pos = jnp.array([list(range(5)) + list(range(7)) + [0, 0]], jnp.int32)
  out = forward(model, params, packed, seg, pos)
  alone_a = forward(model, params, a, jnp.ones((1, 5), jnp.int32))
  alone_b = forward(model, params, b, jnp.ones((1, 7), jnp.int32))
  np.testing.assert_allclose(np.asarray(out[:, :5]), np.asarray(alone_a), atol=2e-5)
  np.testing.assert_allclose(np.asarray(out[:, 5:12]), np.asarray(alone_b), atol=2e-5)


def test_scan_and_unrolled_layers_share_parameters_and_outputs():
  cfg, model, params = make("llama", n_layers=3)
  unrolled = DecoderLM(cfg.replace(scan_layers=False))
  remat = DecoderLM(cfg.replace(remat="full"))
  tokens = random_tokens((2, 7), cfg.vocab_size)
  seg = jnp.ones((2, 7), jnp.int32)
  ref = forward(model, params, tokens, seg)
  np.testing.assert_allclose(forward(unrolled, params, tokens, seg), ref, atol=1e-6)

  def loss(m, p):
    return forward(m, p, tokens, seg).mean()
  g_ref = jax.grad(lambda p: loss(model, p))(params)
  g_remat = jax.grad(lambda p: loss(remat, p))(params)
  for x, y in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_scalar_head_reads_last_real_token():
  cfg = get_preset("test")
  model = DecoderLM(cfg, head="scalar")
  tokens = random_tokens((2, 6), cfg.vocab_size)
  seg = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens, seg, seg))["params"]
  assert "score_kernel" in params and "lm_head" not in params
  values, _ = model.apply({"params": params}, tokens, positions_from_mask(seg), seg)
  assert values.shape == (2, 6) and values.dtype == jnp.float32
  idx = last_token_index(seg)
  np.testing.assert_array_equal(idx, [3, 5])
  scores = gather_at(values, idx)
  np.testing.assert_allclose(scores, [values[0, 3], values[1, 5]])
  # The score of row 0 does not depend on what is in its right padding.
  other = tokens.at[0, 4:].set(7)
  values2, _ = model.apply({"params": params}, other, positions_from_mask(seg), seg)
  np.testing.assert_allclose(gather_at(values2, idx)[0], scores[0], atol=1e-6)


def test_llama3_rope_scaling_matches_reference_formula():
  cfg = get_preset("test", d_model=64, n_heads=2, rope_theta=500000.0, rope_scaling_factor=8.0,
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=64)
  dim = cfg.resolved_head_dim
  inv = 1.0 / (500000.0 ** (np.arange(0, dim, 2) / dim))
  expected = []
  for f in inv:  # The published Llama-3 recipe, frequency by frequency.
    wavelen = 2 * math.pi / f
    if wavelen < 64 / 4.0:
      expected.append(f)
    elif wavelen > 64 / 1.0:
      expected.append(f / 8.0)
    else:
      smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
      expected.append((1 - smooth) * f / 8.0 + smooth * f)
  np.testing.assert_allclose(rope_inv_freq(cfg), np.array(expected), rtol=1e-5)
  assert not np.allclose(expected, inv)  # The scaling is not the identity here.


def test_bfloat16_compute_is_close_to_float32():
  cfg, model, params = make("llama")
  bf16 = DecoderLM(cfg.replace(dtype="bfloat16"))
  tokens = random_tokens((2, 8), cfg.vocab_size)
  seg = jnp.ones((2, 8), jnp.int32)
  ref = forward(model, params, tokens, seg)
  out = forward(bf16, params, tokens, seg)
  assert out.dtype == jnp.float32  # Logits stay float32 for log-probabilities.
  assert float(jnp.abs(out - ref).max()) < 0.1
