"""The decoder with each `model.attention` implementation gives the reference's outputs and
gradients (LM head on packed and left-padded rows, the RM's shared-prefix rows, the KV cache),
and the cache dtype is a config field."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.models import DecoderLM, KVCache, get_preset, positions_from_mask
from instructjax.models.attention import blocked


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
  # Several query and key blocks at these lengths, so block skipping and padding are exercised.
  monkeypatch.setattr(blocked, "BLOCK_Q", 8)
  monkeypatch.setattr(blocked, "BLOCK_K", 8)


def batch(cfg, b=3, t=21):
  tokens = jax.random.randint(jax.random.key(1), (b, t), 3, cfg.vocab_size)
  seg = np.ones((b, t), np.int32)
  seg[0, :6] = 0  # Left padding.
  seg[1, 9:] = 2  # Two packed documents, then right padding.
  seg[1, 18:] = 0
  seg = jnp.asarray(seg)
  pos = np.asarray(positions_from_mask(seg)).copy()
  pos[1, 9:] = np.arange(t - 9)  # The second document starts at position 0.
  return tokens, jnp.asarray(pos), seg


def forward_and_grad(model, params, tokens, pos, seg, **kw):
  def f(p):
    return model.apply({"params": p}, tokens, pos, seg, **kw)[0]
  out, vjp = jax.vjp(f, params)
  return out, vjp(jnp.sin(out))[0]


def assert_tree_close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(float(jnp.abs(y).max()), 1e-6)
    assert float(jnp.abs(x - y).max()) <= rtol * scale


@pytest.mark.parametrize("implementation", ["blocked", "splash"])
@pytest.mark.parametrize("head", ["lm", "scalar"])
def test_decoder_equals_reference(implementation, head):
  cfg = get_preset("test", n_layers=1)
  ref = DecoderLM(cfg.replace(attention="reference"), head=head)
  model = DecoderLM(cfg.replace(attention=implementation), head=head)
  tokens, pos, seg = batch(cfg)
  params = nn.meta.unbox(ref.init(jax.random.key(0), tokens, pos, seg))["params"]
  kw = {"shared_prefix": True} if head == "scalar" else {}  # Splash hands this to blocked.
  fn = lambda m: jax.jit(lambda p: forward_and_grad(m, p, tokens, pos, seg, **kw))
  out, grads = fn(model)(params)
  out_ref, grads_ref = fn(ref)(params)
  assert_tree_close(out, out_ref)
  assert_tree_close(grads, grads_ref)


@pytest.mark.parametrize("kv_cache_dtype", ["", "bfloat16"])
def test_kv_cache_prefill_and_steps_with_blocked_attention(kv_cache_dtype):
  cfg = get_preset("test", attention="blocked", kv_cache_dtype=kv_cache_dtype)
  model = DecoderLM(cfg)
  b, t, prefill = 2, 14, 11
  tokens = jax.random.randint(jax.random.key(2), (b, t), 3, cfg.vocab_size)
  seg = jnp.ones((b, t), jnp.int32).at[1, :4].set(0)
  pos = positions_from_mask(seg)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens, pos, seg))["params"]
  full = DecoderLM(cfg.replace(attention="reference")).apply({"params": params}, tokens, pos,
                                                             seg)[0]
  cache = KVCache.init(cfg, b, 20)
  assert cache.k.dtype == (jnp.bfloat16 if kv_cache_dtype else jnp.float32)
  outs = []
  for a, z in ((0, prefill), (prefill, prefill + 1), (prefill + 1, t)):
    logits, cache = model.apply({"params": params}, tokens[:, a:z], pos[:, a:z], seg[:, a:z],
                                cache)
    outs.append(logits)
  valid = np.asarray(seg, bool)
  tol = 0.05 if kv_cache_dtype else 2e-5  # bf16 keys and values: close, not equal.
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1))[valid],
                             np.asarray(full)[valid], atol=tol)


def test_kv_cache_dtype_is_validated():
  with pytest.raises(ValueError, match="kv_cache_dtype"):
    get_preset("test", kv_cache_dtype="int8")
  with pytest.raises(ValueError, match="config.model.attention"):
    get_preset("test", attention="flash")
