"""The speed-work entry points equal the plain paths they replace.

  * `ops.logprobs.logprobs_from_hidden` (chunked head, no [B, T, V] array) == token_logprobs
    of the full logits, values and gradients, entropies too;
  * `DecoderLM(..., return_hidden=True)` @ `lm_head_weight` == the model's logits;
  * the sampler's halves (`make_prefill_and_decode`) == `make_sampler`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.generation import SamplingConfig, make_prefill_and_decode, make_sampler
from instructjax.models import DecoderLM, get_preset, lm_head_weight, positions_from_mask
from instructjax.ops.logprobs import entropy_from_logits, logprobs_from_hidden, token_logprobs
from instructjax.training.state import init_params


@pytest.mark.parametrize("chunk", [0, 4, 5, 16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_hidden_equals_full_logits(chunk, temperature):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(3, 13, 8)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(8, 21)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 21, (3, 13)))

  def full(h, w):
    logits = jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST)
    return token_logprobs(logits, targets, temperature), entropy_from_logits(logits, temperature)

  def chunked(h, w):
    return logprobs_from_hidden(h, w, targets, temperature, chunk=chunk, with_entropy=True)

  (lp, ent), (lp_c, ent_c) = full(hidden, head), jax.jit(chunked)(hidden, head)
  np.testing.assert_allclose(lp_c, lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent_c, ent, rtol=1e-5, atol=1e-5)
  assert lp_c.shape == (3, 13) and lp_c.dtype == jnp.float32

  weights = jnp.asarray(rng.normal(size=(3, 13)), jnp.float32)
  loss = lambda f: lambda h, w: jnp.sum(f(h, w)[0] * weights) + jnp.sum(f(h, w)[1])
  g = jax.grad(loss(full), argnums=(0, 1))(hidden, head)
  g_c = jax.jit(jax.grad(loss(chunked), argnums=(0, 1)))(hidden, head)
  for a, b in zip(g_c, g):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_logprobs_from_hidden_never_builds_the_full_logits():
  b, t, d, v, chunk = 2, 64, 8, 1000, 8
  hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
  head = jax.ShapeDtypeStruct((d, v), jnp.float32)
  targets = jax.ShapeDtypeStruct((b, t), jnp.int32)
  fn = lambda h, w, y: jnp.sum(logprobs_from_hidden(h, w, y, chunk=chunk))
  text = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(hidden, head, targets).as_text()
  assert f"{b}x{t}x{v}x" not in text and f"{b}x{chunk}x{v}x" in text


@pytest.mark.parametrize("preset,tied", [("test", False), ("tiny-gpt2", True)])
def test_return_hidden_times_head_is_the_logits(preset, tied):
  cfg = get_preset(preset, n_layers=2)
  assert cfg.tie_embeddings == tied
  model = DecoderLM(cfg)
  params, _ = init_params(model, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 9)))
  seg = jnp.ones((2, 9), jnp.int32)
  pos = positions_from_mask(seg)
  logits, _ = model.apply({"params": params}, tokens, pos, seg)
  hidden, _ = model.apply({"params": params}, tokens, pos, seg, return_hidden=True)
  assert hidden.shape == (2, 9, cfg.d_model) and hidden.dtype == jnp.float32
  again = jnp.dot(hidden, lm_head_weight(cfg, params), precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(again, logits, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="lm head"):
    DecoderLM(cfg, head="scalar").init(jax.random.key(0), tokens, pos, seg, return_hidden=True)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefill_then_decode_is_the_sampler(temperature):
  cfg = get_preset("test")
  model = DecoderLM(cfg)
  params, _ = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(2)
  tokens = np.zeros((3, 6), np.int32)
  mask = np.zeros((3, 6), np.int32)
  for r, n in enumerate((6, 3, 0)):  # The last row is batch padding.
    if n:
      tokens[r, 6 - n:] = rng.integers(3, cfg.vocab_size, n)
      mask[r, 6 - n:] = 1
  sampling = SamplingConfig(max_new_tokens=5, eos_id=2, pad_id=0, temperature=temperature)
  key = jax.random.key(3)
  out = make_sampler(model, sampling)(params, tokens, mask, key)
  prefill, decode = make_prefill_and_decode(model, sampling)
  state = decode(params, prefill(params, tokens, mask, key), key)
  np.testing.assert_array_equal(state.tokens, out.response_tokens)
  np.testing.assert_array_equal(state.mask, out.response_mask)
  np.testing.assert_allclose(state.logprobs, out.logprobs, rtol=1e-6, atol=1e-6)
  assert int(state.step) + 1 == int(out.num_steps)
